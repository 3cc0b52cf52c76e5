"""Schemathesis fuzzes every operation of the serving app's OpenAPI document over real HTTP.

Valid and invalid inputs, derived from the document itself, against a running replica
with two live versions, on SQLite and on PostgreSQL: no answer may be a 5xx, and every answer must be one the
document lists for that operation, with the body shape it documents. Generation is
seeded and bounded (Hypothesis ``derandomize``), so a run is reproducible.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi import checks

from lockstep.batch import steps as batch
from lockstep.serving import ServingConfig
from lockstep.store import routing
from tests.serving.conftest import deploy
from tests.serving.harness import TOKEN, serve

EXAMPLES = int(os.environ.get("LOCKSTEP_FUZZ_EXAMPLES", "40"))  # per operation and mode (raise it to explore)

# One check judges a design choice, not a bug
# (a generated, schema-valid request may still be refused by rules a schema cannot
# express: no record with that id to delete, a click on a request that never was, a pin
# on a version that is not serving)
EXCLUDED = [checks.positive_data_acceptance]
# clicks on unknown requests would each wait for another replica's log flush
FUZZ_CONFIG = ServingConfig(poll_interval=0.05, tail_interval=0.1, log_flush_interval=0.1, feedback_wait=0.05, replica="fuzz")


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_every_operation_answers_only_documented_statuses_and_never_a_5xx(backend, mode, request, lockstep_home, tmp_path):
    url = f"sqlite:///{tmp_path / 'lockstep.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    d = deploy(url, tmp_path)
    routing.set_weights({"1": 90, "2": 10}, engine=d.engine)
    with pytest.MonkeyPatch.context() as mp:  # batch rows for both versions: GET /related answers, never a 503
        mp.setenv("LOCKSTEP_DATABASE_URL", url)
        batch.run()
    with serve(d.app(config=FUZZ_CONFIG)) as s:
        schema = schemathesis.openapi.from_url(f"{s.url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
            "POST /search", "PUT /records/{record_id}", "DELETE /records/{record_id}", "POST /feedback",
            "GET /routing", "GET /healthz", "GET /readyz", "GET /metrics",
            "GET /related/{record_id}",  # batch serving
        }
        for operation in operations:
            if mode is GenerationMode.NEGATIVE and not takes_input(operation):
                continue  # no parameter and no body: nothing to make invalid
            fuzz(operation, s.url, mode)


def takes_input(operation) -> bool:
    definition = operation.definition.raw
    return bool(definition.get("parameters") or definition.get("requestBody"))


def fuzz(operation, base_url: str, mode: GenerationMode) -> None:
    @settings(
        max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
        phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case) -> None:
        case.call_and_validate(
            base_url=base_url, headers={"Authorization": f"Bearer {TOKEN}"}, excluded_checks=EXCLUDED, timeout=30
        )

    run()
