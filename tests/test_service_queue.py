"""The durable queue on a real SQLite store: claim, lease expiry and retry with backoff, fencing of
stale workers, exactly one circuit per job, and cancellation fencing off a running worker."""

import json
import time

import pytest
from service_helpers import job_body

from service.config import Settings
from service.store.db import Database
from service.jobs.queue import Queue
from service.store.results import store_circuit
from service.store.tables import CircuitRow


def _circuit() -> dict:
    return {"model": {"name": "m", "model_type": "gpt2"}, "task": {"name": "t", "content_hash": "h"},
            "method": {"name": "eap", "params": {}}, "selection": {"kind": "top-n", "value": 1},
            "metrics": {"n_edges": 1, "n_nodes": 2}, "code_version": "x",
            "nodes": [{"id": "input", "kind": "input", "in_circuit": True},
                      {"id": "logits", "kind": "logits", "in_circuit": True}],
            "edges": [{"name": "input->logits", "source": "input", "target": "logits", "slot": "logits",
                       "score": 1.0, "in_circuit": True}]}


def _store(s, job_id):
    c = _circuit()
    return store_circuit(s, job_id, c, json.dumps(c).encode(), None)


@pytest.fixture
def queue(tmp_path):
    db = Database(f"sqlite:///{tmp_path}/q.db")
    db.migrate()
    return Queue(db, Settings(lease_s=0.3, backoff_s=0.2, max_attempts=2))


def _enqueue(q, **kw):
    job, created = q.enqueue("-", job_body(), model="m", revision=None, task="t", method="eap", request_hash="h",
                             **kw)
    assert created
    return job


def test_claim_is_exclusive_and_fifo(queue):
    a, b = _enqueue(queue), _enqueue(queue)
    first, second = queue.claim("w1"), queue.claim("w2")
    assert (first.job_id, second.job_id) == (a.id, b.id)
    assert queue.claim("w3") is None


def test_expired_lease_retries_with_backoff_then_fails(queue):
    job = _enqueue(queue)
    lease = queue.claim("w1")
    time.sleep(0.35)
    assert queue.reap() == 1
    j = queue.get(job.id)
    assert j.status == "queued" and j.not_before > time.time()  # backing off
    assert queue.claim("w2") is None
    time.sleep(0.25)
    lease2 = queue.claim("w2")
    assert lease2.attempt == 2
    # the first worker comes back: every write it makes is fenced off
    assert not queue.heartbeat(lease, progress=0.5)
    assert not queue.complete(lease, _store)
    assert not queue.fail(lease, "late")
    time.sleep(0.35)
    queue.reap()
    j = queue.get(job.id)
    assert j.status == "failed" and "2 attempts" in j.error
    kinds = [e.kind for e in queue.events(job.id)]
    assert kinds.count("retry") == 1 and kinds[-1] == "status"


def test_exactly_one_circuit_per_job(queue):
    job = _enqueue(queue)
    lease = queue.claim("w1")
    time.sleep(0.35)
    queue.reap()
    time.sleep(0.25)
    lease2 = queue.claim("w2")
    assert queue.complete(lease2, _store)
    assert not queue.complete(lease, _store)  # the stale attempt finishes later: discarded
    with queue.db.read() as s:
        assert s.query(CircuitRow).filter_by(job_id=job.id).count() == 1
    assert queue.get(job.id).status == "succeeded"


def test_heartbeat_keeps_the_lease(queue):
    job = _enqueue(queue)
    lease = queue.claim("w1")
    for _ in range(4):
        time.sleep(0.15)
        assert queue.heartbeat(lease)
        queue.reap()
    assert queue.get(job.id).status == "running"


def test_cancel_fences_a_running_worker(queue):
    job = _enqueue(queue)
    lease = queue.claim("w1")
    assert queue.heartbeat(lease, progress=0.2, message="working", status="labeling")
    queue.cancel(job.id)
    assert not queue.heartbeat(lease)
    assert not queue.complete(lease, _store)
    assert queue.get(job.id).status == "cancelled" and queue.get(job.id).circuit_id is None


def test_migrations_are_versioned_and_idempotent(queue):
    queue.db.migrate()  # again: nothing to do
    with queue.db.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "0004"  # 0003: tenants; 0004: job warnings
        mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
    assert mode == "wal"
