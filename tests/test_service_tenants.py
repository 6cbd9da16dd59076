"""Tokens as tenants, tried from the attacker's side: with tokens A and B, B gets 404 on every one of
A's jobs, events, circuits (every format, diffs, node queries), watches, and cannot cancel, scan or
delete them; lists show B only its own rows; an admin token sees everything; /healthz has no
per-tenant data. The routes come from the app itself: a route this file does not cover fails
test_every_route_is_covered, so a new route cannot skip the check."""

import os
import shutil
import time

import httpx
import pytest
from conftest import token_rows
from service_helpers import is_problem, job_body, make_model_root, settings, wait_for

from discovery.io.export import FORMATS
from service.server import BackgroundServer, build_app
from service.store.db import Database
from service.store.tokens import create_token


@pytest.fixture(scope="module")
def tenants(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tenants")
    root = make_model_root(tmp)
    path = os.path.join(root, "run", "step-1")  # a checkpoint directory for A's watch
    shutil.copytree(os.path.join(root, "tiny-gpt2"), path)
    for f in os.listdir(path):
        os.utime(os.path.join(path, f), (time.time() - 3600,) * 2)
    s = settings(tmp, root)
    db = Database(s.resolved_database_url())
    db.migrate()
    secrets = {name: create_token(db, name, admin=(name == "admin"))[1] for name in ("a", "b", "admin")}
    server = BackgroundServer(build_app(s, dispatcher=True, db=db)).start()
    clients = {n: httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {k}"}, timeout=60)
               for n, k in secrets.items()}
    a = clients["a"]
    job = a.post("/v1/jobs", json=job_body(callback_url="https://a.example/private-hook")).json()
    done = wait_for(a, job["id"])
    assert done["status"] == "succeeded", done
    other = wait_for(a, a.post("/v1/jobs", json=job_body(seed=1)).json()["id"])
    watch = a.post("/v1/watches", json={"source": "run", "tasks": [{"rows": token_rows(n=4), "name": "toks"}],
                                         "method": {"name": "eap", "curve": False}, "interval_s": 3600,
                                         "enabled": False}).json()
    assert "id" in watch, watch
    ids = {"job_id": done["id"], "circuit_id": done["circuit_id"], "a": done["circuit_id"],
           "b": other["circuit_id"], "watch_id": watch["id"]}
    yield clients, ids, server
    for c in clients.values():
        c.close()
    server.stop()


def _get(c, path, **kw):
    return c.get(path, **kw)


# Every route of the app: (method, path) -> how to call it; "own" says the call is on A's data (B
# must get 404, A and the admin must not), "list" that B must see none of A's rows, "public" a
# route without tenant data (B's answer must not contain A's data).
ROUTES = {
    ("POST", "/v1/jobs"): "submit",
    ("GET", "/v1/jobs"): "list",
    ("GET", "/v1/jobs/{job_id}"): "own",
    ("POST", "/v1/jobs/{job_id}/cancel"): "own-change",
    ("GET", "/v1/jobs/{job_id}/events"): "own",
    ("GET", "/v1/circuits"): "list",
    ("GET", "/v1/circuits/{circuit_id}"): "own",
    ("GET", "/v1/circuits/{a}/diff/{b}"): "own",
    ("POST", "/v1/watches"): "submit",
    ("GET", "/v1/watches"): "list",
    ("GET", "/v1/watches/{watch_id}"): "own",
    ("DELETE", "/v1/watches/{watch_id}"): "own-change",
    ("POST", "/v1/watches/{watch_id}/run"): "own-change",
    ("GET", "/v1/watches/{watch_id}/timeline"): "own",
    ("GET", "/healthz"): "public",
}


def _app_routes(server) -> set[tuple[str, str]]:
    out = set()
    for route in server.app.routes:
        for method in getattr(route, "methods", None) or ():
            if method in ("HEAD", "OPTIONS"):
                continue
            out.add((method, route.path))
    return out


def test_every_route_is_covered(tenants):
    clients, ids, server = tenants
    spec = clients["a"].get("/openapi.json").json()
    in_openapi = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    missing = sorted(in_openapi - set(ROUTES))
    assert not missing, f"routes without a tenancy check in this file: {missing}"
    # routes outside the OpenAPI document: the /ui pages (data-free HTML shells) and the docs
    others = {r for r in _app_routes(server) - in_openapi
              if not r[1].startswith("/ui") and r[1] not in ("/docs", "/docs/oauth2-redirect", "/redoc",
                                                                 "/openapi.json") and not r[1].startswith("/docs/")}
    assert not others, f"routes neither in the OpenAPI document nor known shells: {sorted(others)}"


def _fill(path: str, ids: dict) -> str:
    for k, v in ids.items():
        path = path.replace("{" + k + "}", v)
    return path


@pytest.mark.parametrize("route", sorted(k for k, v in ROUTES.items() if v == "own"), ids=" ".join)
def test_another_owner_gets_404_and_the_owner_and_admin_do_not(tenants, route):
    clients, ids, _ = tenants
    method, path = route
    url = _fill(path, ids)
    variants = [{}]
    if path == "/v1/circuits/{circuit_id}":
        variants = [{"params": {"format": f}} for f in FORMATS]
    if path.endswith("/events"):
        variants = [{}, {"headers": {"Accept": "text/event-stream"}}, {"params": {"after": 0}}]
    for kw in variants:
        r = clients["b"].request(method, url, **kw)
        assert is_problem(r, 404), (route, kw, r.status_code, r.text[:200])
        assert ids["job_id"] not in r.text or path.startswith("/v1/jobs/{job_id}")  # only the id B sent back
        for who in ("a", "admin"):
            r = clients[who].request(method, url, **kw)
            assert r.status_code == 200, (who, route, kw, r.status_code, r.text[:200])


def test_another_owner_cannot_change_anything(tenants):
    clients, ids, _ = tenants
    b, a = clients["b"], clients["a"]
    queued = a.post("/v1/jobs", json=job_body(seed=7, n_rows=8)).json()  # may be queued or running
    assert is_problem(b.post(f"/v1/jobs/{queued['id']}/cancel"), 404)
    assert a.get(f"/v1/jobs/{queued['id']}").json()["status"] != "cancelled"
    assert is_problem(b.post(f"/v1/watches/{ids['watch_id']}/run"), 404)
    assert is_problem(b.delete(f"/v1/watches/{ids['watch_id']}"), 404)
    watch = a.get(f"/v1/watches/{ids['watch_id']}").json()
    assert watch["id"] == ids["watch_id"] and watch["checkpoints"] == []  # B's scan queued nothing
    assert wait_for(a, queued["id"])["status"] == "succeeded"
    # a diff across owners is refused whichever side is B's
    mine = wait_for(b, b.post("/v1/jobs", json=job_body(seed=3)).json()["id"])
    assert is_problem(b.get(f"/v1/circuits/{mine['circuit_id']}/diff/{ids['a']}"), 404)
    assert is_problem(b.get(f"/v1/circuits/{ids['a']}/diff/{mine['circuit_id']}"), 404)
    assert b.get(f"/v1/circuits/{mine['circuit_id']}/diff/{mine['circuit_id']}").status_code == 200
    # the admin token may change A's data
    assert clients["admin"].post(f"/v1/watches/{ids['watch_id']}/run").status_code == 200


@pytest.mark.parametrize("route", sorted(k for k, v in ROUTES.items() if v == "list"), ids=" ".join)
def test_lists_show_only_the_callers_rows(tenants, route):
    clients, ids, _ = tenants
    _, path = route
    b_items = clients["b"].get(path).json()["items"]
    a_items = clients["a"].get(path).json()["items"]
    admin_items = clients["admin"].get(path).json()["items"]
    a_ids = {x["id"] for x in a_items}
    assert a_ids and not a_ids & {x["id"] for x in b_items}
    assert a_ids <= {x["id"] for x in admin_items}
    assert "private-hook" not in clients["b"].get(path).text
    if path == "/v1/circuits":  # node queries are filtered the same way
        r = clients["b"].get(path, params={"node": "m0"}).json()["items"]
        assert not a_ids & {x["id"] for x in r}
        assert a_ids & {x["id"] for x in clients["a"].get(path, params={"node": "m0"}).json()["items"]}


def test_submissions_are_the_callers_own(tenants):
    clients, _, _ = tenants
    r = clients["b"].post("/v1/jobs", json=job_body(seed=11), headers={"Idempotency-Key": "same-key"})
    assert r.status_code == 202
    # A's use of the same idempotency key is A's own: B's job is not returned to A
    r2 = clients["a"].post("/v1/jobs", json=job_body(seed=11), headers={"Idempotency-Key": "same-key"})
    assert r2.status_code == 202 and r2.json()["id"] != r.json()["id"]


def test_healthz_has_no_tenant_data(tenants):
    clients, ids, _ = tenants
    anonymous = httpx.get(clients["a"].base_url.join("/healthz"), timeout=10)
    assert anonymous.status_code == 200
    body = anonymous.json()
    assert body["status"] == "ok" and "jobs" not in body
    for v in ids.values():
        assert v not in anonymous.text


def test_ui_pages_are_data_free_shells(tenants):
    clients, ids, server = tenants
    for method, path in sorted(_app_routes(server)):
        if not path.startswith("/ui") or method != "GET" or "{name}" in path:
            continue
        r = httpx.get(clients["a"].base_url.join(_fill(path, ids)), timeout=10)  # no token at all
        assert r.status_code == 200 and "private-hook" not in r.text and "tiny-gpt2" not in r.text, path


def test_tokens_create_admin_from_the_cli(tmp_path, capsys):
    from discovery.cli import main

    url = f"sqlite:///{tmp_path}/t.db"
    assert main(["tokens", "--database-url", url, "create", "--name", "ops", "--admin"]) == 0
    out = capsys.readouterr().out
    assert "(ops, admin): cty_" in out and "callback signing secret: " in out
    assert main(["tokens", "--database-url", url, "create", "--name", "alice"]) == 0
    assert "admin" not in capsys.readouterr().out.splitlines()[0]
    assert main(["tokens", "--database-url", url, "list"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert "active, admin" in rows[0] and "admin" not in rows[1]
