"""Shared pieces of the service tests: a tiny saved model under a model root, settings with short
leases, a token, and the service on a loopback port."""

from __future__ import annotations

import os
import socket
import time
import uuid
from contextlib import contextmanager

import httpx
import pytest

import tiny
from conftest import token_rows

TERMINAL = ("succeeded", "failed", "cancelled")


def make_model_root(base) -> str:
    root = os.path.join(str(base), "models")
    path = os.path.join(root, "tiny-gpt2")
    if not os.path.isdir(path):
        tiny.build("gpt2").save_pretrained(path)
    return root


def job_body(n_rows: int = 6, seed: int = 0, method: str = "eap", top_n: int = 10, **extra) -> dict:
    body = {"model": {"name": "tiny-gpt2"}, "task": {"rows": token_rows(n=n_rows, seed=seed)},
            "method": {"name": method}, "selection": {"top_n": top_n}}
    body.update(extra)
    return body


def settings(tmp, root, **kw):
    from service.config import Settings

    defaults = dict(database_url=f"sqlite:///{tmp}/circuitry.db", model_roots=[root], executor="inline",
                    lease_s=3.0, heartbeat_s=0.3, poll_s=0.05, backoff_s=0.1)
    defaults.update(kw)
    return Settings(**defaults)


def wait_for(client: httpx.Client, job_id: str, states=TERMINAL, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in states:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['status']} after {timeout}s: {job}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_problem(r: httpx.Response, status: int | None = None) -> bool:
    ok = r.headers.get("content-type", "").startswith("application/problem+json")
    body = r.json() if ok else {}
    return ok and 400 <= r.status_code < 500 and (status is None or r.status_code == status) \
        and isinstance(body.get("detail"), str) and body.get("status") == r.status_code


def start_service(tmp, *, dispatcher: bool = True, **kw):
    """The service over a fresh store under tmp (settings(...) with kw), on a loopback port, and a client
    with a new token: (server, client, db, token id). The caller closes the client and stops the server."""
    from service.server import BackgroundServer, build_app
    from service.store.db import Database
    from service.store.tokens import create_token

    s = settings(tmp, make_model_root(tmp), **kw)
    db = Database(s.resolved_database_url())
    db.migrate()
    token, secret = create_token(db, "tests")
    server = BackgroundServer(build_app(s, dispatcher=dispatcher, db=db)).start()
    client = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {secret}"}, timeout=30)
    return server, client, db, token


PG = os.environ.get("CIRCUITRY_TEST_PG", "postgresql+psycopg://root@127.0.0.1:5432/test")


@contextmanager
def pg_schema(prefix: str):
    """A fresh schema on the test PostgreSQL (PG), dropped afterwards; the test is skipped when the server
    cannot be reached."""
    psycopg = pytest.importorskip("psycopg")
    dsn = PG.replace("postgresql+psycopg://", "postgresql://")
    try:
        conn = psycopg.connect(dsn, connect_timeout=3, autocommit=True)
    except Exception as exc:
        pytest.skip(f"PostgreSQL is not reachable at {PG} ({str(exc).splitlines()[0]})")
    schema = f"{prefix}_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield schema
    finally:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")
        conn.close()

