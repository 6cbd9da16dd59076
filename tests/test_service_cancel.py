"""Cancel means stop, and progress is continuous: a running inline job reports its batches as
progress between 30% and 80%, and once cancelled it stops within about a batch: the only slot is free
for the next job long before the cancelled one would have finished, and nothing of it is stored."""

import time

import pytest
from service_helpers import job_body, start_service, wait_for
from sqlalchemy import func, select

from service.jobs.pipeline import BatchProgress
from service.store.tables import CircuitRow

# EAP-IG with many steps over 48 single-row batches: tens of seconds on the tiny model
SLOW = {**job_body(n_rows=48), "method": {"name": "eap-ig", "steps": 256, "batch_size": 1, "curve": False}}


@pytest.fixture()
def svc(tmp_path):
    server, client, db, _ = start_service(tmp_path, concurrency=1, lease_s=5.0, heartbeat_s=0.3)
    yield client, db
    client.close()
    server.stop()


def _progress(client, job_id):
    return [e["progress"] for e in client.get(f"/v1/jobs/{job_id}/events").json()["items"]
            if e["kind"] == "progress" and e["progress"] is not None]


def test_running_job_reports_progress_and_stops_when_cancelled(svc):
    client, db = svc
    slow = client.post("/v1/jobs", json=SLOW).json()
    deadline = time.monotonic() + 60
    while len([p for p in _progress(client, slow["id"]) if 0.3 < p < 0.8]) < 3:  # several batch reports
        assert time.monotonic() < deadline, client.get(f"/v1/jobs/{slow['id']}").json()
        time.sleep(0.2)
    steps = [p for p in _progress(client, slow["id"]) if p >= 0.3]
    assert steps == sorted(steps)  # progress only grows
    job = client.get(f"/v1/jobs/{slow['id']}").json()
    assert job["status"] == "running" and "batch" in job["message"]
    done_at_cancel = max(steps)
    cancelled_at = time.monotonic()
    assert client.post(f"/v1/jobs/{slow['id']}/cancel").json()["status"] == "cancelled"
    fast = client.post("/v1/jobs", json=job_body(seed=5)).json()  # needs the one slot
    finished = wait_for(client, fast["id"], timeout=60)
    waited = time.monotonic() - cancelled_at
    assert finished["status"] == "succeeded"
    # the slow job had done well under half its work; stopping within a batch frees the slot in seconds
    assert done_at_cancel < 0.6 and waited < 15, (done_at_cancel, waited)
    assert client.get(f"/v1/jobs/{slow['id']}").json()["status"] == "cancelled"
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(CircuitRow).where(CircuitRow.job_id == slow["id"])) == 0


def test_batch_progress_grows_and_is_throttled():
    reports, now = [], [0.0]
    p = BatchProgress(lambda prog, msg: reports.append((prog, msg)), 0.3, 0.8, every_s=1.0, clock=lambda: now[0])
    for total, desc in ((4, "eap-ig"), (3, None), (3, None)):
        for done in range(total + 1):
            now[0] += 0.6
            p(done, total, desc)
    values = [r[0] for r in reports]
    assert values == sorted(values) and all(0.3 <= v < 0.8 for v in values)
    assert len(reports) < 14  # at most one report a second of 14 calls 0.6 s apart
    assert reports[0][1].startswith("eap-ig: batch")
