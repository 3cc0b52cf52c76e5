"""The proxy's flood limits, run for real: nginx on ``deploy/nginx.conf`` in front of a stub.

The rates are set to one request a minute in the test's copy of the file, so only the
burst allowance decides which request is refused: the outcome does not depend on how fast
this machine sends them. The rates themselves are configuration (README, Security).
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.compose.helpers import nginx_binary, start_loopback_nginx

pytestmark = pytest.mark.skipif(nginx_binary() is None, reason="nginx not installed (apt-get install nginx-light)")

FEEDBACK_BURST = 100  # deploy/nginx.conf: limit_req zone=lockstep_feedback burst=100


class _Replica(BaseHTTPRequestHandler):
    """Answers every request as a replica would accept a click (202), counting what reached it."""

    reached: list[str] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        type(self).reached.append(self.path)
        body = b'{"accepted": true}'
        self.send_response(202)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:  # quiet
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def proxy(tmp_path):
    _Replica.reached = []
    replica = ThreadingHTTPServer(("127.0.0.1", 0), _Replica)
    threading.Thread(target=replica.serve_forever, daemon=True).start()
    listen = _free_port()
    nginx = start_loopback_nginx(tmp_path, replica.server_address[1], listen,
                                 rates={"lockstep_feedback": "1r/m", "lockstep_requests": "1r/m"})
    try:
        yield f"http://127.0.0.1:{listen}"
    finally:
        nginx.terminate()
        nginx.wait(timeout=30)
        replica.shutdown()
        replica.server_close()


def test_a_feedback_flood_past_its_burst_is_refused_with_a_json_429(proxy):
    click = {"request_id": "r-unknown", "record_id": "x", "event": "click"}
    with httpx.Client(base_url=proxy, timeout=30) as client:
        answers = [client.post("/feedback", json=click) for _ in range(FEEDBACK_BURST + 20)]
        other = client.get("/routing")  # another path: not counted by the /feedback zone
    statuses = [a.status_code for a in answers]
    # One request at the rate plus the burst get through; every later one is refused.
    assert statuses[: FEEDBACK_BURST + 1] == [202] * (FEEDBACK_BURST + 1)
    assert set(statuses[FEEDBACK_BURST + 2 :]) == {429}
    refused = answers[-1]
    assert refused.headers["Retry-After"] == "1"
    assert "too many requests" in json.loads(refused.text)["detail"]
    assert _Replica.reached.count("/feedback") == statuses.count(202)  # refused clicks never reach a replica
    assert other.status_code == 202 and _Replica.reached[-1] == "/routing"
