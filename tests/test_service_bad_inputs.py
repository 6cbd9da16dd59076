"""Every bad input of issue 16, from the user's side: the API answers a 4xx problem+json naming the
field (checked at submission, before anything is queued), the CLI one line and exit 2, no traceback."""

import base64
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from conftest import token_rows
from service_helpers import free_port, is_problem, job_body, make_model_root, settings

import tiny
from discovery.core.circuit import Circuit
from discovery.cli import main
from service.server import BackgroundServer, build_app
from service.store.db import Database
from service.store.tokens import create_token


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    s = settings(tmp, make_model_root(tmp), max_body_bytes=256 * 1024)
    db = Database(s.resolved_database_url())
    db.migrate()
    _, secret = create_token(db, "t")
    server = BackgroundServer(build_app(s, dispatcher=False, db=db)).start()
    client = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {secret}"}, timeout=60)
    yield client
    client.close()
    server.stop()


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def test_cursors_and_event_ids(api):
    job = api.post("/v1/jobs", json=job_body()).json()
    for cursor in ("1" * 30, "s" + "9" * 30, "s-1", "s²", "%%%", _b64("s:1"), "0"):  # the spec's pattern: 422
        for path in ("/v1/jobs", "/v1/circuits"):
            r = api.get(path, params={"cursor": cursor})
            assert is_problem(r, 422) and "cursor" in r.text, (path, cursor, r.text)
    for path in ("/v1/jobs", "/v1/circuits"):  # a cursor before the first row: an empty last page
        assert api.get(path, params={"cursor": "s0"}).json() == {"items": [], "next_cursor": None}
    for bad in ("²".encode("latin-1"), "²".encode(), b"1" * 30, b"-3", b"x"):
        r = api.get(f"/v1/jobs/{job['id']}/events", headers={"Accept": "text/event-stream", "Last-Event-ID": bad})
        assert is_problem(r, 400) and "Last-Event-ID" in r.json()["detail"], (bad, r.text)


def test_chunked_body_too_large_is_413(api):
    def chunks():  # 50 MB, no Content-Length: Transfer-Encoding chunked
        piece = b'{"model": {"name": "tiny-gpt2"}, "task": {"rows": [' + b" " * (1 << 20)
        yield piece
        for _ in range(49):
            yield b" " * (1 << 20)

    try:
        r = api.post("/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    except httpx.WriteError:  # the server answered and closed while we were still sending
        pytest.fail("the server closed the connection without an answer")
    assert is_problem(r, 413) and "larger than" in r.json()["detail"]
    small = json.dumps(job_body()).encode()
    r = api.post("/v1/jobs", content=iter([small[:50], small[50:]]), headers={"Content-Type": "application/json"})
    assert r.status_code == 202, r.text  # a small chunked body still works


@pytest.mark.parametrize("change, field", [
    ({"task": {"rows": [{**token_rows(n=1)[0], "answer_id": 5000}]}}, "task.rows[0].answer_id"),
    ({"task": {"rows": [{**token_rows(n=1)[0], "clean_ids": [1] * 100, "corrupted_ids": [2] * 100}]}},
     "task.rows[0].clean_ids"),
    ({"model": {"name": "toy:ioi", "revision": "step-999999"}}, "model.revision"),
    ({"model": {"name": "tiny-gpt2", "revision": "main"}}, "model.revision"),
    ({"labeling": {"backend": "nope"}}, "labeling.backend"),
    ({"labeling": {"backend": "heuristic", "options": {"temperature": 2}}}, "labeling.options.temperature"),
    ({"method": {"name": "eap-ig", "steps": 0}}, "method.steps"),
    ({"selection": {"threshold": "nan"}}, "selection.threshold"),
    ({"task": {"builtin": "ioi", "n": 10**9}}, "task.n"),
])
def test_checked_at_submission_naming_the_field(api, change, field):
    r = api.post("/v1/jobs", json={**job_body(), **change})
    assert is_problem(r) and r.status_code == 422, r.text
    assert r.json()["detail"].startswith(field), (field, r.json()["detail"])
    assert api.get("/v1/jobs", params={"limit": 200}).json()["items"] == [] or all(
        j["request"]["task"] != change.get("task") for j in api.get("/v1/jobs").json()["items"])  # nothing queued


# ------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("m")
    tiny.build("gpt2").save_pretrained(d)
    return d


def _one_line_error(capsys, argv, match):
    t0 = time.monotonic()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "Traceback" not in err and match in err, err
    return time.monotonic() - t0


def test_cli_bad_inputs(tmp_path, capsys, model_dir, monkeypatch):
    task = tmp_path / "t.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in token_rows(n=4)))
    base = ["discover", "--model", model_dir, "--task", task, "--quiet"]
    import torch

    if not torch.cuda.is_available():
        _one_line_error(capsys, base + ["--out", tmp_path / "o.json", "--device", "cuda"], "CUDA is not available")
    _one_line_error(capsys, base + ["--out", tmp_path / "o.json", "--device", "gpu"], "is not a device")
    _one_line_error(capsys, base + ["--out", tmp_path / "missing" / "o.json"], "does not exist")
    _one_line_error(capsys, base + ["--out", tmp_path], "is a directory")
    took = _one_line_error(capsys, ["discover", "--model", model_dir, "--task", "ioi", "--n", "1000000000",
                                    "--out", tmp_path / "o.json"], "--n must be between 1 and")
    assert took < 5  # refused before any row is built
    long_rows = [{"clean_ids": [1] * 80, "corrupted_ids": [2] * 80, "answer_id": 3, "wrong_id": 4}]
    (tmp_path / "long.jsonl").write_text(json.dumps(long_rows[0]) + "\n")
    _one_line_error(capsys, ["discover", "--model", model_dir, "--task", tmp_path / "long.jsonl", "--quiet",
                             "--out", tmp_path / "o.json"], "longer than the model's context of 64")
    assert not (tmp_path / "o.json").exists()

    db_dir = tmp_path / "db"
    _one_line_error(capsys, ["tokens", "--database-url", f"sqlite:///{db_dir}/nowhere/c.db", "list"], "does not exist")
    db_dir.mkdir()
    (db_dir / "corrupt.db").write_bytes(b"this is not a database" * 100)
    _one_line_error(capsys, ["tokens", "--database-url", f"sqlite:///{db_dir}/corrupt.db", "list"],
                    "not a SQLite database")
    _one_line_error(capsys, ["serve", "--port", "99999", "--database-url", f"sqlite:///{db_dir}/ok.db"],
                    "--port must be between 1 and 65535")
    monkeypatch.setenv("CIRCUITRY_MAX_ROWS", "abc")
    _one_line_error(capsys, ["serve", "--database-url", f"sqlite:///{db_dir}/ok.db"], "CIRCUITRY_MAX_ROWS='abc'")
    monkeypatch.setenv("CIRCUITRY_MAX_ROWS", "-5")
    _one_line_error(capsys, ["tokens", "--database-url", f"sqlite:///{db_dir}/ok.db", "list"], "CIRCUITRY_MAX_ROWS")


def test_circuit_files_are_written_atomically(tmp_path, monkeypatch):
    from conftest import token_rows as rows
    from discovery import task_from_rows, wrap_model
    from discovery.pipeline.discover import discover

    c = discover(wrap_model(tiny.build("gpt2", n_layers=1)), task_from_rows(rows(n=2), vocab_size=tiny.VOCAB),
                 "eap", curve=False)
    out = tmp_path / "c.json"
    c.save(out)
    before = out.read_text()
    monkeypatch.setattr(Circuit, "model_dump_json", lambda self, **kw: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        c.save(out)
    assert out.read_text() == before and sorted(os.listdir(tmp_path)) == ["c.json"]  # no half file, no temp left


def test_serve_prints_its_url_and_how_to_get_a_token(tmp_path):
    port = free_port()
    env = dict(os.environ, CIRCUITRY_HOME=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "discovery.cli", "serve", "--executor", "inline", "--port", str(port),
                             "--no-scheduler"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    out = "".join(lines) + rest
    assert f"http://127.0.0.1:{port}" in lines[0] and "tokens create" in lines[1], out
    assert "alembic" not in out.lower() and "Traceback" not in out, out


def test_docs_are_served_from_local_assets(api):
    """/docs works offline: the page loads Swagger UI from this server, never from a CDN."""
    page = api.get("/docs")
    assert page.status_code == 200
    assert "cdn." not in page.text and "jsdelivr" not in page.text and "unpkg" not in page.text, page.text[:500]
    for asset in ("/docs/static/swagger-ui-bundle.js", "/docs/static/swagger-ui.css"):
        assert asset in page.text
        r = api.get(asset)
        assert r.status_code == 200 and len(r.content) > 10_000, asset
