"""nginx and Prometheus reach every serving replica (nginx -t and promtool when
installed)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from tests.compose.helpers import (
    DEPLOY,
    PROXY,
    SERVING_NAME,
    SERVING_REPLICAS,
    nginx_binary,
    serving_port,
)


def test_nginx_config_routes_to_every_serving_replica(compose):
    text = (DEPLOY / "nginx.conf").read_text(encoding="utf-8")
    proxy = compose["services"][PROXY]
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in proxy["volumes"]
    host_var = re.search(r"set \$(\w+) ([\w-]+);", text)
    assert host_var and host_var.group(2) == SERVING_NAME
    assert f"proxy_pass http://${host_var.group(1)}:{serving_port(compose)};" in text
    # Resolved at run time through Docker's DNS: the alias of every replica.
    assert re.search(r"resolver 127\.0\.0\.11\b", text)
    listen = re.search(r"listen (\d+);", text).group(1)
    assert any(str(p).endswith(f":{listen}") for p in proxy["ports"])
    assert re.search(
        rf"http://127\.0\.0\.1:{listen}/nginx-health", " ".join(proxy["healthcheck"]["test"])
    )


@pytest.mark.skipif(
    nginx_binary() is None, reason="nginx not installed (apt-get install nginx-light)"
)
def test_nginx_config_passes_nginx_t(tmp_path):
    result = subprocess.run(
        [
            nginx_binary(),
            "-t",
            "-c",
            str(DEPLOY / "nginx.conf"),
            "-p",
            str(tmp_path),
            "-e",
            str(tmp_path / "error.log"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_prometheus_scrapes_each_serving_replica(compose):
    prometheus = compose["services"]["prometheus"]
    assert prometheus["profiles"] == ["monitoring"]
    mount = next(v for v in prometheus["volumes"] if v.startswith("./deploy/prometheus.yml:"))
    assert f"--config.file={mount.split(':')[1]}" in prometheus["command"]
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text(encoding="utf-8"))
    job = next(j for j in config["scrape_configs"] if j["job_name"] == SERVING_NAME)
    assert job["metrics_path"] == "/metrics"
    (sd,) = job["dns_sd_configs"]
    assert (
        sd["names"] == [SERVING_NAME]
        and sd["type"] == "A"
        and all(str(sd["port"]) == serving_port(compose, name) for name in SERVING_REPLICAS)
    )


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_prometheus_config_passes_promtool():
    result = subprocess.run(
        ["promtool", "check", "config", str(DEPLOY / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
