"""lockstep_maintenance with dag.test(): checkpoint, compact and purge in one real run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, insert, select

from tests.dags.conftest import task_states

pytestmark = [pytest.mark.airflow]


def test_maintenance_run_checkpoints_compacts_and_purges(lockstep_home, airflow_db):
    import lockstep_maintenance

    from lockstep.index.manifest import read_manifest
    from lockstep.index.storage import index_location, save_index
    from lockstep.index.vector_index import VectorIndex
    from lockstep.model.embedding import TextEmbedder
    from lockstep.ops.retention import compacted_through
    from lockstep.store import routing
    from lockstep.store.records import RecordStore
    from lockstep.store.schema import changes, request_log

    store = RecordStore()
    texts = {f"r{i}": f"record {i} about topic {i % 4} and words {i * 7}" for i in range(12)}
    store.upsert_many([{"id": k, "text": v} for k, v in texts.items()])
    embedder = TextEmbedder(dim=4, min_df=1, random_state=0).fit(list(texts.values()))
    snap = store.snapshot()
    location = index_location("test-model", "1")
    save_index(VectorIndex.build(snap.ids, embedder.transform([r.text for r in snap.records])), location,
               model_name="test-model", model_version="1", fingerprint=embedder.fingerprint, applied_seq=snap.seq)
    model_file = embedder.save(location.parent / "model-v1.joblib")
    routing.register_slot("1", str(model_file), str(location), embedder.fingerprint, state="ready")
    store.upsert("r1", "record 1 rewritten")
    store.delete("r2")
    with store.engine.begin() as conn:
        conn.execute(insert(request_log).values(
            request_id="old", at=datetime.now(UTC) - timedelta(days=40), model_version="1", k=10, latency_ms=1.0,
            status=200, top_ids=[]))

    run = lockstep_maintenance.dag.test(run_conf={"change_log_retention_days": 0, "log_retention_days": 30})
    assert run.state == "success", task_states(run)

    head = store.head()
    assert read_manifest(location).applied_seq == head  # checkpointed
    assert compacted_through(store.engine) == head
    with store.engine.connect() as conn:
        assert conn.execute(select(changes).where(changes.c.record_id.in_(["r1", "r2"]))).all()[0].seq == head - 1
        assert conn.execute(select(func.count()).select_from(changes)).scalar() == 11  # r2's rows are all gone
        assert conn.execute(select(func.count()).select_from(request_log)).scalar() == 0
    assert store.get("r2") is None
