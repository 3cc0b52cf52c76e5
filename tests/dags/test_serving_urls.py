"""The rollout and rollback DAGs' default replicas to verify: LOCKSTEP_SERVING_URLS, which
docker-compose.yaml sets to every replica's own URL, else the embedded stack's one."""

from __future__ import annotations


def test_serving_url_default_reads_every_replica_from_the_environment(monkeypatch):
    from lockstep.ops.dag_support import serving_url_default
    from lockstep.rollout.steps import RolloutConfig

    monkeypatch.delenv("LOCKSTEP_SERVING_URLS", raising=False)
    assert serving_url_default() == "http://127.0.0.1:8000"

    monkeypatch.setenv("LOCKSTEP_SERVING_URLS", " http://lockstep-serving-1:8000,http://lockstep-serving-2:8000 ")
    default = serving_url_default()
    assert RolloutConfig(serving_url=default).serving_urls == [
        "http://lockstep-serving-1:8000",
        "http://lockstep-serving-2:8000",
    ]
