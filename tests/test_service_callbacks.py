"""Callbacks from the attacker's side, on 127.0.0.1 only: a loopback receiver is refused (as a literal
address at submission, and as a host name resolved at send time), and reached when the operator's
allow-list names it; each POST is signed (HMAC-SHA256 over timestamp and body with the token's
callback secret); a failing receiver is retried with backoff; every outcome is a job event."""

import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import ipaddress
import pytest
from service_helpers import is_problem, job_body, make_model_root, settings, wait_for

from service.api.callbacks import Callbacks, Refused, check_address, resolve
from service.jobs.queue import Queue
from service.server import BackgroundServer, build_app
from service.store.db import Database
from service.store.tokens import create_token


class Receiver:
    """An HTTP receiver on 127.0.0.1 that records every request; `fail_first` answers 500 first."""

    def __init__(self, fail_first: int = 0):
        self.requests, self.fail_first = [], fail_first
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests.append((dict(self.headers), body))
                code = 500 if len(outer.requests) <= outer.fail_first else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def receiver():
    r = Receiver()
    yield r
    r.close()


def _service(tmp_path, allow):
    s = settings(tmp_path, make_model_root(tmp_path), callback_allow=allow)
    db = Database(s.resolved_database_url())
    db.migrate()
    row, secret = create_token(db, "t")
    server = BackgroundServer(build_app(s, dispatcher=True, db=db)).start()
    client = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {secret}"}, timeout=30)
    return server, client, row


def _events(client, job_id, kind="callback", timeout=30.0):
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in client.get(f"/v1/jobs/{job_id}/events").json()["items"] if e["kind"] == kind]
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"no {kind} event for job {job_id}")


def test_allow_listed_loopback_receiver_gets_a_signed_post(tmp_path, receiver):
    server, client, token = _service(tmp_path, ["127.0.0.1"])
    try:
        job = client.post("/v1/jobs", json=job_body(callback_url=f"http://127.0.0.1:{receiver.port}/hook")).json()
        assert wait_for(client, job["id"])["status"] == "succeeded"
        event = _events(client, job["id"])[0]
        assert "delivered" in event["message"] and "HTTP 200" in event["message"], event
        headers, body = receiver.requests[0]
        assert json.loads(body)["id"] == job["id"] and json.loads(body)["status"] == "succeeded"
        stamp = headers["X-Circuitry-Timestamp"]
        expected = "sha256=" + hmac.new(token.callback_secret.encode(), f"{stamp}.".encode() + body,
                                        hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-Circuitry-Signature"], expected)
        assert headers["Host"] == f"127.0.0.1:{receiver.port}"
    finally:
        client.close()
        server.stop()


def test_loopback_is_refused_without_the_allow_list(tmp_path, receiver, monkeypatch):
    import socket

    real = socket.getaddrinfo

    def dns(host, *a, **kw):  # a public-looking name whose DNS answer is loopback (as a rebinding attack gives)
        return real("127.0.0.1" if host == "hooks.example.org" else host, *a, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", dns)
    server, client, _ = _service(tmp_path, [])
    try:
        r = client.post("/v1/jobs", json=job_body(callback_url=f"http://127.0.0.1:{receiver.port}/hook"))
        assert is_problem(r, 422) and "callback_url" in r.json()["detail"] and "loopback" in r.json()["detail"]
        for url in ("http://[::1]/x", "http://169.254.169.254/latest/meta-data", "http://10.0.0.1/x",
                    "http://localhost/x", "http://192.168.1.1/x"):
            assert is_problem(client.post("/v1/jobs", json=job_body(callback_url=url)), 422), url
        # a host name passes submission and is resolved at send time, where its loopback answer is refused
        job = client.post("/v1/jobs", json=job_body(callback_url=f"http://hooks.example.org:{receiver.port}/hook")).json()
        assert "id" in job, job
        assert wait_for(client, job["id"])["status"] == "succeeded"
        event = _events(client, job["id"])[0]
        assert "refused" in event["message"] and "127.0.0.1" in event["message"], event
        assert receiver.requests == []  # nothing was sent
    finally:
        client.close()
        server.stop()


def test_failing_receiver_is_retried(tmp_path):
    receiver = Receiver(fail_first=2)
    s = settings(tmp_path, make_model_root(tmp_path), callback_allow=["127.0.0.0/8"])
    db = Database(s.resolved_database_url())
    db.migrate()
    queue = Queue(db, s)
    job, _ = queue.enqueue("-", job_body(callback_url=f"http://127.0.0.1:{receiver.port}/h"), model="m",
                           revision=None, task="t", method="eap", request_hash="x",
                           callback_url=f"http://127.0.0.1:{receiver.port}/h")
    queue.cancel(job.id)  # a finished job (cancelled is finished too)
    try:
        outcome = Callbacks(queue, s, backoff_s=0.05).deliver(job.id)
        assert "delivered" in outcome and "attempt 3" in outcome and len(receiver.requests) == 3
        assert "X-Circuitry-Signature" not in receiver.requests[0][0]  # no token, no server secret: unsigned
        gone = Receiver()
        gone.close()  # nothing listens there any more
        job2, _ = queue.enqueue("-", job_body(), model="m", revision=None, task="t", method="eap", request_hash="y",
                                callback_url=f"http://127.0.0.1:{gone.port}/h")
        queue.cancel(job2.id)
        outcome = Callbacks(queue, s, attempts=3, backoff_s=0.05).deliver(job2.id)
        assert "gave up after 3 attempts" in outcome
        assert [e.message for e in queue.events(job2.id) if e.kind == "callback"] == [outcome]
    finally:
        receiver.close()


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "10.1.2.3", "172.16.0.1", "192.168.0.1", "169.254.169.254",
                                     "100.100.100.200", "fd00:ec2::254", "0.0.0.0", "::ffff:127.0.0.1", "224.0.0.1"])
def test_guard_refuses_every_non_public_address(address):
    with pytest.raises(Refused):
        check_address("h", ipaddress.ip_address(address), [])
    check_address("h", ipaddress.ip_address(address), [address])  # ... unless allow-listed


def test_guard_checks_the_resolved_address():
    with pytest.raises(Refused, match="127.0.0.1"):
        resolve("localhost", 80, [])
    check_address("example.org", ipaddress.ip_address("93.184.215.14"), [])  # public: passes (nothing is sent)
