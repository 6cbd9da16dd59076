"""The API boundary, strict: numbers are numbers (no "4" or true read as one), a cron schedule has five
fields, a job cancelled while queued still sends its callback (to a receiver on 127.0.0.1), and the
OpenAPI spec says what the server does (cursor pattern, export formats, tau only with ACDC methods,
Allow on 405 listing every method of the path)."""

import json

import httpx
import jsonschema
import pytest
from service_helpers import is_problem, job_body, make_model_root, settings, wait_for
from test_service_callbacks import Receiver

from discovery.core.errors import UserError
from service.server import BackgroundServer, build_app
from service.store.db import Database
from service.store.tokens import create_token
from service.watches.scheduler import check_cron


def _start(tmp_path, **kw):
    s = settings(tmp_path, make_model_root(tmp_path), **kw)
    db = Database(s.resolved_database_url())
    db.migrate()
    row, secret = create_token(db, "t")
    server = BackgroundServer(build_app(s, dispatcher=False, db=db)).start()  # jobs stay queued
    client = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {secret}"}, timeout=30)
    return server, client, row


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    server, client, _ = _start(tmp_path_factory.mktemp("boundary"))
    yield client
    client.close()
    server.stop()


@pytest.mark.parametrize("patch,field", [
    ({"task": {"builtin": "ioi", "n": "4"}}, "'n'"),
    ({"task": {"builtin": "ioi", "n": True}}, "'n'"),
    ({"selection": {"top_n": True}}, "'top_n'"),
    ({"selection": {"top_n": "10"}}, "'top_n'"),
    ({"method": {"name": "acdc", "tau": ["0.1"]}, "selection": {}}, "'tau'"),
    ({"method": {"name": "eap", "batch_size": False}}, "'batch_size'"),
    ({"seed": "1"}, None),
])
def test_no_string_or_boolean_is_read_as_a_number(api, patch, field):
    r = api.post("/v1/jobs", json={**job_body(), **patch})
    assert is_problem(r, 422), r.text
    if field:
        assert field in r.json()["detail"] and "number" in r.json()["detail"], r.text


def test_numbers_still_accepted(api):
    assert api.post("/v1/jobs", json={**job_body(), "selection": {"top_n": 4}}).status_code == 202
    r = api.post("/v1/jobs", json={**job_body(), "method": {"name": "acdc", "tau": 0.1}, "selection": {}})
    assert r.status_code == 202, r.text


@pytest.mark.parametrize("expr", ["0 */30 * * * *", "* * * *", "0 0 3 * * * 2030"])
def test_cron_needs_five_fields(expr):
    with pytest.raises(UserError, match="five"):
        check_cron(expr)
    check_cron("*/30 * * * *")


def test_job_cancelled_in_the_queue_sends_its_callback(tmp_path):
    receiver = Receiver()
    server, client, token = _start(tmp_path, callback_allow=["127.0.0.1"])
    try:
        job = client.post("/v1/jobs", json=job_body(callback_url=f"http://127.0.0.1:{receiver.port}/hook")).json()
        assert job["status"] == "queued"
        assert client.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
        deadline = 30
        import time
        end = time.monotonic() + deadline
        while not receiver.requests and time.monotonic() < end:
            time.sleep(0.05)
        assert len(receiver.requests) == 1, "no callback for a job cancelled in the queue"
        body = json.loads(receiver.requests[0][1])
        assert body["id"] == job["id"] and body["status"] == "cancelled"
        events = [e for e in client.get(f"/v1/jobs/{job['id']}/events").json()["items"] if e["kind"] == "callback"]
        while not events and time.monotonic() < end:
            time.sleep(0.05)
            events = [e for e in client.get(f"/v1/jobs/{job['id']}/events").json()["items"]
                      if e["kind"] == "callback"]
        assert events and "delivered" in events[0]["message"], events
        assert wait_for(client, job["id"])["status"] == "cancelled"
    finally:
        client.close()
        server.stop()
        receiver.close()


def test_spec_matches_the_server(api):
    spec = api.get("/openapi.json").json()
    # cursors: the spec's pattern is what the server takes; a zero cursor is an empty page, not a 400
    for path in ("/v1/jobs", "/v1/circuits"):
        param = next(p for p in spec["paths"][path]["get"]["parameters"] if p["name"] == "cursor")
        pattern = param["schema"]["anyOf"][0]["pattern"] if "anyOf" in param["schema"] else param["schema"]["pattern"]
        for cursor, ok in (("s0", True), ("s12", True), ("0", False), ("garbage!", False)):
            schema_ok = jsonschema.Draft202012Validator({"type": "string", "pattern": pattern}).is_valid(cursor)
            r = api.get(path, params={"cursor": cursor})
            assert schema_ok == ok and (r.status_code == 200) == ok, (path, cursor, r.status_code, r.text)
    # export formats: an enum in the spec; one outside it is a 422 by that enum
    param = next(p for p in spec["paths"]["/v1/circuits/{circuit_id}"]["get"]["parameters"] if p["name"] == "format")
    assert "json" in param["schema"]["enum"] and "nonsense" not in param["schema"]["enum"]
    assert is_problem(api.get("/v1/circuits/x", params={"format": "nonsense"}), 422)
    # tau with a non-ACDC method: refused by the spec's schema as by the server
    resolver = {"components": spec["components"]}
    method_schema = {**spec["components"]["schemas"]["MethodOptions"], **resolver}
    validator = jsonschema.Draft202012Validator(method_schema)
    for method, ok in (({"name": "auto", "tau": [0.1]}, False), ({"tau": [0.1]}, False),
                       ({"name": "eap", "candidates": 5}, False), ({"name": "acdc", "tau": [0.1]}, True),
                       ({"name": "auto"}, True)):
        r = api.post("/v1/jobs", json={**job_body(), "method": method, "selection": {}})
        assert validator.is_valid(method) == ok and (r.status_code == 202) == ok, (method, r.status_code, r.text)
    # 405: Allow lists every method the spec documents on the path
    for path, method in (("/v1/jobs", "PUT"), ("/v1/watches", "PATCH"), ("/v1/watches/x", "PUT")):
        r = api.request(method, path)
        assert r.status_code == 405, (path, r.status_code)
        allowed = {m.upper() for m in spec["paths"][path.replace("/x", "/{watch_id}")]}
        assert set(r.headers["allow"].replace(" ", "").split(",")) == allowed, (path, r.headers["allow"])


def test_damaged_weights_fail_the_job_as_a_user_error(tmp_path):
    """A truncated checkpoint under a model root: the job fails with one line naming the file (a user
    error), not "internal error: SafetensorError"."""
    import shutil

    root = make_model_root(tmp_path)
    shutil.copytree(f"{root}/tiny-gpt2", f"{root}/broken")
    weights = f"{root}/broken/model.safetensors"
    data = open(weights, "rb").read()
    open(weights, "wb").write(data[: len(data) // 2])
    s = settings(tmp_path, root)
    db = Database(s.resolved_database_url())
    db.migrate()
    _, secret = create_token(db, "t")
    server = BackgroundServer(build_app(s, dispatcher=True, db=db)).start()
    client = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {secret}"}, timeout=30)
    try:
        body = job_body()
        body["model"] = {"name": "broken"}
        r = client.post("/v1/jobs", json=body)
        if r.status_code == 422:  # refused at submission: as good, if it names the file
            assert "model.safetensors" in r.json()["detail"], r.text
            return
        job = wait_for(client, r.json()["id"])
        assert job["status"] == "failed" and "internal error" not in job["error"], job
        assert "model.safetensors" in job["error"] and "damaged" in job["error"] and "\n" not in job["error"], job
    finally:
        client.close()
        server.stop()
