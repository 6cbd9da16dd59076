"""`circuitry scan add` as a tenant of the service: a watch made with --token or --owner belongs to that
token (the API shows it to that token and to no other, as for POST /v1/watches); the store options
(--model-root, --database-url) work after the subcommand too, and a directory outside every model root
is refused with what to do; `scan add --help` names the same default method as `discover`."""

from __future__ import annotations

import os
import shutil

import httpx
import pytest

from discovery.cli import main
from service_helpers import make_model_root
from service.server import BackgroundServer, build_app
from service.store.db import Database
from service.store.tokens import create_token


@pytest.fixture
def store(tmp_path):
    """A store with two normal tokens (alice, bob) and an admin; the API over it (no dispatcher, no
    scheduler: nothing runs); a model root with one checkpoint directory run/step-7."""
    from service.config import Settings

    url = f"sqlite:///{tmp_path}/scan.db"
    root = make_model_root(tmp_path)
    os.makedirs(os.path.join(root, "run"))
    shutil.copytree(os.path.join(root, "tiny-gpt2"), os.path.join(root, "run", "step-7"))
    db = Database(url)
    db.migrate()
    secrets = {name: create_token(db, name, admin=name == "ops")[1] for name in ("alice", "bob", "ops")}
    server = BackgroundServer(build_app(Settings(database_url=url, model_roots=[root]), dispatcher=False,
                                        db=db)).start()
    yield url, root, secrets, server.url
    server.stop()


def _get(base: str, secret: str, path: str) -> httpx.Response:
    return httpx.get(base + path, headers={"Authorization": f"Bearer {secret}"}, timeout=30)


def _add(url, *args) -> list[str]:
    return ["scan", "add", "--database-url", url, "--source", "toy:induction", "--task", "induction", "--n", "4",
            "--every", "1h", *args]


@pytest.mark.parametrize("how", ["token", "owner-name", "owner-id"])
def test_watch_belongs_to_the_token_that_made_it(store, capsys, how):
    url, root, secrets, base = store
    who = {"token": ["--token", secrets["alice"]], "owner-name": ["--owner", "alice"], "owner-id": ["--owner", "1"]}
    assert main(_add(url, *who[how])) == 0
    out = capsys.readouterr().out
    wid = out.split()[1]
    assert "owner token 1 (alice)" in out
    r = _get(base, secrets["alice"], f"/v1/watches/{wid}")
    assert r.status_code == 200 and r.json()["id"] == wid
    assert [w["id"] for w in _get(base, secrets["alice"], "/v1/watches").json()["items"]] == [wid]
    assert _get(base, secrets["alice"], f"/v1/watches/{wid}/timeline").status_code == 200
    assert _get(base, secrets["bob"], f"/v1/watches/{wid}").status_code == 404  # another tenant's
    assert _get(base, secrets["bob"], "/v1/watches").json()["items"] == []
    assert _get(base, secrets["ops"], f"/v1/watches/{wid}").status_code == 200  # an admin sees everything
    assert main(["scan", "list", "--database-url", url]) == 0
    assert "owner alice (token 1)" in capsys.readouterr().out


def test_jobs_of_a_token_watch_are_the_tokens(store, capsys):
    """The jobs a scan queues run as the watch's owner: the token sees them, another does not."""
    url, root, secrets, base = store
    assert main(_add(url, "--owner", "alice")) == 0
    wid = capsys.readouterr().out.split()[1]
    assert main(["scan", "run-now", wid, "--database-url", url]) == 0
    queued = capsys.readouterr().out
    assert "queued 6 jobs" in queued
    jobs = _get(base, secrets["alice"], "/v1/jobs").json()["items"]
    assert len(jobs) == 6 and _get(base, secrets["bob"], "/v1/jobs").json()["items"] == []
    assert all(j["status"] == "queued" for j in jobs)


def test_unknown_owner_and_token_are_one_line(store, capsys):
    url, root, secrets, base = store
    assert main(_add(url, "--owner", "carol")) == 2
    err = capsys.readouterr().err
    assert "no live token" in err and "tokens create --name carol" in err and "Traceback" not in err
    assert main(_add(url, "--token", "cty_not-a-token")) == 2
    assert "not a live token" in capsys.readouterr().err
    create_token(Database(url), "alice")  # a second live alice: ambiguous by name
    assert main(_add(url, "--owner", "alice")) == 2
    assert "pass one id" in capsys.readouterr().err
    assert main(_add(url, "--owner", "1", "--token", secrets["alice"])) == 2  # one of the two
    assert "not allowed with" in capsys.readouterr().err


def test_model_root_after_add_and_placement_error(store, capsys, tmp_path, monkeypatch):
    url, root, secrets, base = store
    # the store options after the subcommand, as a user types them
    assert main(["scan", "add", "--source", "run", "--model-root", root, "--database-url", url, "--task", "induction",
                 "--every", "1h", "--owner", "bob", "--settle", "0"]) == 0
    out = capsys.readouterr().out
    assert "(dir run)" in out
    wid = out.split()[1]
    assert main(["scan", "--database-url", url, "run-now", wid, "--model-root", root]) == 0
    assert "queued 1 jobs" in capsys.readouterr().out
    # a checkpoint directory that exists here but under no root: the error says what to do
    monkeypatch.chdir(root)
    assert main(["scan", "add", "--database-url", url, "--source", "run", "--task", "induction", "--every", "1h"]) == 2
    err = capsys.readouterr().err
    assert "not a directory under a configured model root" in err and "--model-root DIR" in err
    assert len(err.strip().splitlines()) == 1


def test_add_help_default_method_is_discovers(capsys):
    from discovery.pipeline.options import DEFAULT_METHOD

    for argv in (["scan", "add", "--help"], ["discover", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
    text = " ".join(capsys.readouterr().out.split())
    assert f"{DEFAULT_METHOD} (default" in text and "eap-ig (default" not in text
