"""The Ray executor on the shared local Ray: model actors keep a model loaded across jobs, the least
recently used idle actor is evicted, and a job's error comes back as the job's error."""

import os
import shutil

import httpx
import pytest
from service_helpers import job_body, make_model_root, settings, wait_for

from service.store.db import Database
from service.server import BackgroundServer, build_app


@pytest.fixture
def ray_service(ray_local, tmp_path):
    root = make_model_root(tmp_path)
    shutil.copytree(os.path.join(root, "tiny-gpt2"), os.path.join(root, "tiny-gpt2-b"))
    s = settings(tmp_path, root, executor="ray", auth=False, actor_cpus=0.25, max_actors=1, device="cpu")
    db = Database(s.resolved_database_url())
    server = BackgroundServer(build_app(s, db=db)).start()
    client = httpx.Client(base_url=server.url, timeout=30)
    yield client, server.app.state.dispatcher.executor
    client.close()
    server.stop()
    server.app.state.dispatcher.executor.close()


def test_model_actors_are_reused_and_evicted(ray_service):
    client, executor = ray_service
    for seed in (0, 1):
        job = wait_for(client, client.post("/v1/jobs", json=job_body(seed=seed)).json()["id"], timeout=120)
        assert job["status"] == "succeeded", job
    assert executor.created == 1  # the second job ran on the first job's actor
    other = {**job_body(), "model": {"name": "tiny-gpt2-b"}}
    job = wait_for(client, client.post("/v1/jobs", json=other).json()["id"], timeout=120)
    assert job["status"] == "succeeded", job
    assert executor.created == 2 and [k[0] for k in executor.actor_keys()] == ["tiny-gpt2-b"]  # LRU evicted
    circuit = client.get(f"/v1/circuits/{job['circuit_id']}").json()
    assert circuit["model"]["name"] == "tiny-gpt2-b"

    bad = job_body()
    bad["task"]["rows"] = [{"clean": "a b", "corrupted": "a c", "answer": "x", "wrong": "y"}]  # text rows, a model without a tokenizer: fails on the actor
    job = wait_for(client, client.post("/v1/jobs", json=bad).json()["id"], timeout=120)
    assert job["status"] == "failed" and "need a tokenizer" in job["error"] and job["attempt"] == 1


def test_cancel_stops_a_running_job_on_its_actor(ray_service):
    """The actor's batches are the job's progress, and a cancel stops the run within about a batch:
    the same actor (not killed) takes the next job at once."""
    import time

    client, executor = ray_service
    slow = {**job_body(n_rows=48), "method": {"name": "eap-ig", "steps": 256, "batch_size": 1, "curve": False}}
    job = client.post("/v1/jobs", json=slow).json()
    deadline = time.monotonic() + 120
    while True:
        seen = [e["progress"] for e in client.get(f"/v1/jobs/{job['id']}/events").json()["items"]
                if e["kind"] == "progress" and e["progress"] is not None and 0.2 < e["progress"] < 0.8]
        if len(seen) >= 2:
            break
        assert time.monotonic() < deadline, client.get(f"/v1/jobs/{job['id']}").json()
        time.sleep(0.3)
    assert seen == sorted(seen)
    cancelled_at = time.monotonic()
    assert client.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    fast = wait_for(client, client.post("/v1/jobs", json=job_body(seed=9)).json()["id"], timeout=120)
    assert fast["status"] == "succeeded" and time.monotonic() - cancelled_at < 20
    assert executor.created == 1  # stopped on its actor, which ran the next job
