"""Search p99 while ``POST /feedback`` is flooded with made-up request ids (issue 21, item 4).

A replica (``lockstep.serving.runner.run``, with its limits) serves 5,000 records on
loopback behind nginx running ``deploy/nginx.conf`` (its upstream and listen address
rewritten for loopback, its limits unchanged). One paced client sends searches (40 a
second for ``--seconds``) from 127.0.0.5 and measures each; wrk floods ``/feedback`` with
random unknown ids from 127.0.0.1, first through nginx (its per-address ``limit_req``
lets 50 a second through and answers the rest 429), then straight at the replica (only the
replica's own bound: one request-log read per click). Reports search p50/p99 idle and
during each flood, the ratios (goal <= 1.5x through nginx), the flood's rate and answers,
and the request-log reads the replica made per click.

    flock /tmp/lockstep-heavy.lock .venv/bin/python benchmarks/bench_feedback_flood.py

Needs wrk and nginx (Debian packages ``wrk``, ``nginx-light``). Bounded: three phases of
``--seconds`` each (default 15), every loop bounded in count and time, loopback only.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

SEARCH_SOURCE = "127.0.0.5"  # the honest client's own address: nginx limits per address
SEARCH_RATE = 40.0  # searches a second, paced
FLOOD_SCRIPT = """
math.randomseed(21)
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local hex = "0123456789abcdef"
request = function()
  local id = {}
  for i = 1, 32 do
    local n = math.random(1, 16)
    id[i] = hex:sub(n, n)
  end
  return wrk.format(nil, "/feedback", nil,
    '{"request_id": "' .. table.concat(id) .. '", "record_id": "doc-000001", "event": "click"}')
end
local threads = {}
setup = function(thread) table.insert(threads, thread) end
init = function(args) limited = 0; refused = 0; other = 0 end
response = function(status, headers, body)
  if status == 429 then limited = limited + 1 elseif status == 422 then refused = refused + 1 else other = other + 1 end
end
done = function(summary, latency, requests)
  local a, b, c = 0, 0, 0
  for _, t in ipairs(threads) do a = a + t:get("limited"); b = b + t:get("refused"); c = c + t:get("other") end
  io.write(string.format("FLOOD requests=%d limited=%d refused=%d other=%d\\n", summary.requests, a, b, c))
end
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=15, help="length of each phase")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections of the flood")
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            sys.exit(f"{tool} is not installed: apt-get install -y wrk nginx-light")
    from bench_serving import free_port, prepare

    home = Path(tempfile.mkdtemp(prefix="lockstep-bench-flood-"))
    database_url = f"sqlite:///{home / 'lockstep.db'}"
    env = {**os.environ, "LOCKSTEP_HOME": str(home), "LOCKSTEP_DATABASE_URL": database_url, "OMP_NUM_THREADS": "1"}
    os.environ.update(LOCKSTEP_HOME=str(home), LOCKSTEP_DATABASE_URL=database_url)
    print(f"python {platform.python_version()}, {os.cpu_count()} cores, 5000 records, dim 64, flat index, SQLite")
    prepare(home, database_url, 5000, 64)
    replica, port = start_replica(env, free_port())
    proxy_port = free_port()
    proxy = start_nginx(home, port, proxy_port)
    try:
        idle = paced_searches(proxy_port, args.seconds)
        proxied = flooded(proxy_port, proxy_port, args)
        direct = flooded(proxy_port, port, args)
        print(f"search idle (through nginx): {fmt(idle)}")
        for name, (search, flood) in (("flood through nginx", proxied), ("flood straight at the replica", direct)):
            print(f"search during {name}: {fmt(search)}; p99 ratio {search['p99'] / idle['p99']:.2f}x; "
                  f"flood {flood['requests'] / (args.seconds + 2):.0f} req/s: {flood['limited']:.0f} answered 429 "
                  f"by nginx, {flood['refused']:.0f} answered 422 by the replica, {flood['other']:.0f} other")
    finally:
        proxy.send_signal(signal.SIGQUIT)
        replica.send_signal(signal.SIGTERM)
        for proc in (proxy, replica):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(home, ignore_errors=True)


def flooded(search_port: int, flood_port: int, args) -> tuple[dict[str, float], dict[str, float]]:
    """Paced searches while wrk floods ``flood_port`` with unknown clicks."""
    script = Path(tempfile.mkdtemp()) / "flood.lua"
    script.write_text(FLOOD_SCRIPT)
    wrk = subprocess.Popen(
        ["wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds + 2}s", "--timeout", "10s", "-s", str(script),
         f"http://127.0.0.1:{flood_port}"], stdout=subprocess.PIPE, text=True,
    )
    time.sleep(1.0)  # the flood is under way before the first measured search
    search = paced_searches(search_port, args.seconds)
    out, _ = wrk.communicate(timeout=args.seconds + 60)
    line = next(x for x in out.splitlines() if x.startswith("FLOOD "))
    return search, {k: float(v) for k, v in (part.split("=") for part in line.split()[1:])}


def paced_searches(port: int, seconds: int) -> dict[str, float]:
    """``SEARCH_RATE`` searches a second from ``SEARCH_SOURCE``; client-side latency of each."""
    import httpx

    transport = httpx.HTTPTransport(local_address=SEARCH_SOURCE)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    total = int(seconds * SEARCH_RATE)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", transport=transport, timeout=30) as client:
        start = time.perf_counter()
        for i in range(total):
            due = start + i / SEARCH_RATE
            time.sleep(max(0.0, due - time.perf_counter()))
            began = time.perf_counter()
            response = client.post("/search", json={"query": f"rocket planet orbit {i % 50}", "k": 10})
            latencies.append((time.perf_counter() - began) * 1000.0)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
    latencies.sort()
    return {"p50": latencies[len(latencies) // 2], "p99": latencies[int(len(latencies) * 0.99) - 1],
            "n": len(latencies), "ok": statuses.get(200, 0)}


def fmt(figures: dict[str, float]) -> str:
    return f"p50 {figures['p50']:.2f} ms, p99 {figures['p99']:.2f} ms ({figures['ok']} of {figures['n']} answered 200)"


def start_replica(env: dict[str, str], port: int) -> tuple[subprocess.Popen, int]:
    """``lockstep serve`` as a process (the runner, with its limits from the environment)."""
    import httpx

    code = f"from lockstep.serving.runner import run; run('127.0.0.1', {port}, log_level='warning', app='lockstep.systems:create_app')"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the replica exited with status {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc, port
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the replica did not get ready")


def start_nginx(home: Path, upstream: int, listen: int) -> subprocess.Popen:
    """``deploy/nginx.conf`` with only its addresses changed for loopback (its real limits)."""
    from tests.compose.helpers import start_loopback_nginx

    return start_loopback_nginx(home, upstream, listen)


if __name__ == "__main__":
    main()
