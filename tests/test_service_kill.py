"""Crash safety with real processes: `circuitry serve` (API + dispatcher, inline executor) is
SIGKILLed while it runs a job and while another job waits in its queue. A new server process on
the same SQLite store re-runs the interrupted job (attempt 2, after its lease expires) and runs the
queued one; each job ends with exactly one stored circuit."""

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from service_helpers import free_port, job_body, make_model_root, wait_for
from sqlalchemy import func, select

from service.store.db import Database
from service.store.tables import CircuitRow
from service.store.tokens import create_token


def _serve(tmp, db_url, root, log_name):
    port = free_port()
    env = dict(os.environ, CIRCUITRY_POLL_S="0.05", CIRCUITRY_HOME=str(tmp), PYTHONUNBUFFERED="1")
    env.pop("DATABASE_URL", None)
    log = open(os.path.join(tmp, log_name), "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "discovery.cli", "serve", "--executor", "inline", "--port", str(port),
         "--database-url", db_url, "--model-root", root, "--lease-s", "2", "--heartbeat-s", "0.3",
         "--backoff-s", "0.1", "--device", "cpu"],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"server did not start: {open(os.path.join(tmp, log_name)).read()[-2000:]}")
        time.sleep(0.1)


def test_worker_killed_mid_job_and_restarted(tmp_path):
    root = make_model_root(tmp_path)
    db_url = f"sqlite:///{tmp_path}/store.db"
    db = Database(db_url)
    db.migrate()
    _, secret = create_token(db, "kill-test")
    auth = {"Authorization": f"Bearer {secret}"}

    proc, url = _serve(tmp_path, db_url, root, "first.log")
    try:
        with httpx.Client(base_url=url, headers=auth, timeout=10) as c:
            # slow enough (~4 s of scoring on an idle machine) that the kill lands mid-discovery
            slow = c.post("/v1/jobs", json={**job_body(n_rows=128), "method": {"name": "eap-ig", "steps": 100}}).json()
            queued = c.post("/v1/jobs", json=job_body(seed=7)).json()
            deadline = time.monotonic() + 60
            while not any((e["message"] or "").startswith("discovering")
                          for e in c.get(f"/v1/jobs/{slow['id']}/events").json()["items"]):
                assert time.monotonic() < deadline, "the job never started discovering"
                time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)  # mid-discovery: no clean-up, the lease is simply abandoned
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()

    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(CircuitRow)) == 0

    proc, url = _serve(tmp_path, db_url, root, "second.log")
    try:
        with httpx.Client(base_url=url, headers=auth, timeout=10) as c:
            assert c.get(f"/v1/jobs/{queued['id']}").json()["status"] in ("queued", "running", "succeeded")
            first = wait_for(c, slow["id"], timeout=300)  # ~10 s idle; 2-core CI under load took >90 s
            second = wait_for(c, queued["id"], timeout=120)
            events = c.get(f"/v1/jobs/{slow['id']}/events").json()["items"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()

    assert first["status"] == "succeeded" and first["attempt"] == 2, first
    assert any(e["kind"] == "retry" for e in events)
    assert second["status"] == "succeeded" and second["attempt"] == 1, second
    with db.read() as s:
        for job in (first, second):
            n = s.scalar(select(func.count()).select_from(CircuitRow).where(CircuitRow.job_id == job["id"]))
            assert n == 1 and job["circuit_id"]
