"""A dispatcher that heals: database errors injected into claim() (longer than a lease) and into
storing a result; the queue keeps going with one slot, /healthz says 503 with the reason while the
store is unreachable and ok again after, and the result is stored exactly once."""

import threading
import time

import pytest
from service_helpers import job_body, start_service, wait_for
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from service.jobs.queue import Queue
from service.store.tables import CircuitRow


class Faults:
    """Makes the wrapped Queue method raise a database error while `until` is in the future, or for
    the next `count` calls."""

    def __init__(self, monkeypatch, name: str):
        self.until, self.count, self.raised = 0.0, 0, 0
        self.lock = threading.Lock()
        real = getattr(Queue, name)

        def wrapper(queue, *args, **kw):
            with self.lock:
                fail = time.monotonic() < self.until or self.count > 0
                if fail:
                    self.count = max(0, self.count - 1)
                    self.raised += 1
            if fail:
                raise OperationalError("injected", {}, Exception("database is locked"))
            return real(queue, *args, **kw)

        monkeypatch.setattr(Queue, name, wrapper)


@pytest.fixture()
def svc(tmp_path):
    server, client, db, _ = start_service(tmp_path, lease_s=1.0, heartbeat_s=0.2, concurrency=1)
    yield client, db
    client.close()
    server.stop()


def test_claim_errors_longer_than_a_lease(svc, monkeypatch):
    client, db = svc
    faults = Faults(monkeypatch, "claim")
    faults.until = time.monotonic() + 2.5  # the store "unreachable" for 2.5 leases
    job = client.post("/v1/jobs", json=job_body()).json()  # the API still accepts jobs
    seen_503 = None
    while time.monotonic() < faults.until:
        r = client.get("/healthz")
        if r.status_code == 503:
            seen_503 = r.json()
        time.sleep(0.1)
    assert faults.raised >= 3  # claim was retried (with backoff), not given up on
    assert seen_503 is not None and seen_503["status"] == "unavailable", "healthz never said so"
    assert "claim" in seen_503["reason"] and "database is locked" in seen_503["reason"]
    done = wait_for(client, job["id"], timeout=60)  # the one slot was given back: the queue moves again
    assert done["status"] == "succeeded", done
    assert client.get("/healthz").json()["status"] == "ok"
    second = wait_for(client, client.post("/v1/jobs", json=job_body(seed=1)).json()["id"], timeout=60)
    assert second["status"] == "succeeded"


def test_errors_storing_the_result_are_retried_once_stored(svc, monkeypatch):
    client, db = svc
    faults = Faults(monkeypatch, "complete")
    faults.count = 3
    done = wait_for(client, client.post("/v1/jobs", json=job_body()).json()["id"], timeout=60)
    assert done["status"] == "succeeded" and faults.raised == 3
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(CircuitRow).where(CircuitRow.job_id == done["id"])) == 1


def test_errors_recording_a_failure_are_retried(svc, monkeypatch):
    client, db = svc
    faults = Faults(monkeypatch, "fail")
    faults.count = 2
    bad = job_body(task={"rows": [{"clean": "a b", "corrupted": "a c", "answer": "x", "wrong": "y"}]})  # text rows, no tokenizer: fails when it runs
    r = client.post("/v1/jobs", json=bad)
    assert r.status_code == 202, r.text
    done = wait_for(client, r.json()["id"], timeout=60)
    assert done["status"] == "failed" and faults.raised == 2
