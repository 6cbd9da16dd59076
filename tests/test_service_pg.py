"""The same store on PostgreSQL (DATABASE_URL=postgresql+psycopg://...), in a schema of its own:
migrations, concurrent claims (FOR UPDATE SKIP LOCKED), fencing, and one job through HTTP."""

import json
import threading

import httpx
import pytest
from service_helpers import PG, job_body, make_model_root, pg_schema, settings, wait_for

from service.store.db import Database
from service.jobs.queue import Queue
from service.server import BackgroundServer, build_app



@pytest.fixture
def pg_url():
    with pg_schema("circuitry_test") as schema:
        yield f"{PG}?options=-csearch_path%3D{schema}"


def test_postgres_queue_and_api(pg_url, tmp_path):
    root = make_model_root(tmp_path)
    s = settings(tmp_path, root, database_url=pg_url, auth=False)
    db = Database(pg_url)
    db.migrate()
    db.migrate()
    q = Queue(db, s)
    for i in range(6):
        q.enqueue("-", job_body(seed=i), model="m", revision=None, task="t", method="eap", request_hash=str(i))
    claimed, lock = [], threading.Lock()

    def worker(n):
        while (lease := q.claim(f"w{n}")) is not None:
            with lock:
                claimed.append(lease.job_id)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(claimed) == len(set(claimed)) == 6  # SKIP LOCKED: no job claimed twice
    for job_id in claimed:
        q.cancel(job_id)

    server = BackgroundServer(build_app(s, db=db)).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            r = c.post("/v1/jobs", json=job_body(), headers={"Idempotency-Key": "pg"})
            assert c.post("/v1/jobs", json=job_body(), headers={"Idempotency-Key": "pg"}).json()["id"] == r.json()["id"]
            job = wait_for(c, r.json()["id"], timeout=60)
            assert job["status"] == "succeeded", job
            circuit = c.get(f"/v1/circuits/{job['circuit_id']}").json()
            node = next(n["id"] for n in circuit["nodes"] if n["in_circuit"] and n["kind"] != "input")
            assert [x["id"] for x in c.get("/v1/circuits", params={"node": node}).json()["items"]] == [job["circuit_id"]]
            assert json.loads(json.dumps(circuit))["task"]["rows"] == 6
    finally:
        server.stop()
        db.dispose()
