"""Store outages as a client sees them: a real PostgreSQL reached through a TCP proxy that this test stops
(the system PostgreSQL keeps running; only the proxy's port goes dead) and starts again.

During the outage every /v1 route, the token lookup included, answers 503 problem+json with Retry-After
(never a 500, never a dropped connection); /healthz on a server without a dispatcher says 503 and names
the failing part (store_read / store_write); a submission repeated with its Idempotency-Key after the
outage makes one job."""

import socket
import threading
import time

import httpx
import pytest
from service_helpers import PG, job_body, make_model_root, settings
from service_helpers import pg_schema as pg_schema_of

from service.server import BackgroundServer, build_app
from service.store.db import Database
from service.store.tokens import create_token



class Proxy:
    """TCP forwarding from a loopback port to PostgreSQL; stop() closes the listener and every
    connection (the port then refuses connections, as a dead database host would)."""

    def __init__(self, target=("127.0.0.1", 5432), port=0):
        self.target, self.port, self.socks, self.lock = target, port, [], threading.Lock()

    def start(self):
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.port = self.listener.getsockname()[1]
        self.listener.listen(64)
        self.running = True
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self):
        while self.running:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self):
        self.running = False
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() (close alone would not)
        except OSError:
            pass
        self.listener.close()
        with self.lock:
            for s in self.socks:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self.socks = []


@pytest.fixture
def pg_schema():
    with pg_schema_of("circuitry_outage") as schema:
        yield schema


def _is_503(r: httpx.Response) -> bool:
    body = r.json()
    return (r.status_code == 503 and r.headers["content-type"].startswith("application/problem+json")
            and int(r.headers["retry-after"]) > 0 and body["status"] == 503 and "unavailable" in body["detail"])


def test_store_outage_is_503_with_retry_after_and_healthz_says_which_part(pg_schema, tmp_path):
    proxy = Proxy().start()
    host = PG.split("@", 1)[1].split("/", 1)[0]
    url = PG.replace(host, f"127.0.0.1:{proxy.port}") + f"?options=-csearch_path%3D{pg_schema}&connect_timeout=2"
    db = Database(url)
    db.migrate()
    _, secret = create_token(db, "outage")
    s = settings(tmp_path, make_model_root(tmp_path), database_url=url)
    server = BackgroundServer(build_app(s, dispatcher=False, db=db)).start()  # API only: no dispatcher
    client = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {secret}"}, timeout=30)
    try:
        assert client.get("/healthz").json()["status"] == "ok"
        first = client.post("/v1/jobs", json=job_body(seed=0))
        assert first.status_code == 202, first.text
        job_id = first.json()["id"]

        proxy.stop()  # the database host is gone
        key = {"Idempotency-Key": "outage-1"}
        calls = [client.get("/v1/jobs"), client.get(f"/v1/jobs/{job_id}"),
                 client.post("/v1/jobs", json=job_body(seed=1), headers=key),
                 client.post(f"/v1/jobs/{job_id}/cancel"), client.get(f"/v1/jobs/{job_id}/events"),
                 client.get("/v1/circuits")]
        for r in calls:
            assert _is_503(r), (r.request.url, r.status_code, r.text)
        health = client.get("/healthz")
        assert health.status_code == 503 and int(health.headers["retry-after"]) > 0, health.text
        body = health.json()
        assert body["status"] == "unavailable" and body["checks"]["store_read"] != "ok"
        assert body["reason"].startswith("store_read: ") and "dispatcher" not in body["checks"]

        proxy = Proxy(port=proxy.port).start()  # the database is back on the same address
        deadline = time.monotonic() + 20
        while (r := client.get("/healthz")).status_code != 200:
            assert time.monotonic() < deadline, r.text
            time.sleep(0.2)
        assert r.json()["checks"] == {"store_read": "ok", "store_write": "ok"}
        again = client.post("/v1/jobs", json=job_body(seed=1), headers=key)
        assert again.status_code == 202, again.text
        repeat = client.post("/v1/jobs", json=job_body(seed=1), headers=key)
        assert repeat.status_code == 200 and repeat.json()["id"] == again.json()["id"]
        ids = {j["id"] for j in client.get("/v1/jobs").json()["items"]}
        assert ids == {job_id, again.json()["id"]}  # the refused submission left nothing behind
    finally:
        client.close()
        server.stop()
        db.dispose() if hasattr(db, "dispose") else None
        proxy.stop()
