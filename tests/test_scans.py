"""Scheduled scans of checkpoints (service/watches/: sources, scheduler; service/api/watches.py): a new checkpoint
is queued exactly once even with two schedulers ticking at once; a checkpoint still being written waits;
hub listing through a fake HfApi; a checkpoint that fails to load fails its own job while the others
run; the timeline in training order through the API; the diff endpoint; bad input as problem+json."""

import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time

import httpx
import pytest
from service_helpers import is_problem, make_model_root, settings, wait_for
from sqlalchemy import func, select

from conftest import token_rows
from service.store.db import Database
from service.jobs.queue import Queue
from service.watches.scheduler import Scheduler, next_run, tick
from service.server import BackgroundServer, build_app
from service.store.tables import Job, Watch, WatchCheckpoint
from service.store.tokens import create_token
from service.watches.schemas import WatchRequest
from service.watches.store import create_watch, get_watch

OLD = time.time() - 3600  # an mtime well past any quiet period


def _checkpoint(root: str, run: str, name: str, *, old: bool = True, weights: bytes | None = None) -> str:
    """A copy of the tiny model as checkpoint `run/name` (old: files written an hour ago)."""
    path = os.path.join(root, run, name)
    shutil.copytree(os.path.join(root, "tiny-gpt2"), path)
    if weights is not None:  # a checkpoint whose weights do not load
        with open(os.path.join(path, "model.safetensors"), "wb") as fh:
            fh.write(weights)
    if old:
        for f in os.listdir(path):
            os.utime(os.path.join(path, f), (OLD, OLD))
    return path


def _watch_body(source: str, **kw) -> dict:
    body = {"source": source, "tasks": [{"rows": token_rows(n=6), "name": "toks"}], "method": {"name": "eap"},
            "selection": {"top_n": 10}, "interval_s": 60, "quiet_s": 30}
    body.update(kw)
    return body


def _counts(db):
    with db.read() as s:
        return (s.scalar(select(func.count()).select_from(Job)),
                s.scalar(select(func.count()).select_from(WatchCheckpoint)))


@pytest.fixture()
def store(tmp_path):
    root = make_model_root(tmp_path)
    s = settings(tmp_path, root)
    db = Database(s.resolved_database_url())
    db.migrate()
    yield s, db, root
    db.dispose()


# ----------------------------------------------------------------------------------- exactly once
def test_new_checkpoint_queued_once_with_two_schedulers(store):
    s, db, root = store
    _checkpoint(root, "run", "step-100")
    watch = create_watch(db, s, WatchRequest.model_validate(_watch_body("run")), owner="-")
    # two schedulers as two processes would be: each its own engine (no shared in-process lock)
    dbs = [Database(s.resolved_database_url()) for _ in range(2)]
    queues = [Queue(d, s) for d in dbs]

    def together(fn):
        barrier, out = threading.Barrier(2), [None, None]

        def run(i):
            barrier.wait()
            out[i] = fn(i)
        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        return out

    for round_, new in enumerate(["step-200", "step-300", None]):
        a, b = together(lambda i: tick(dbs[i], queues[i], s, get_watch(dbs[i], watch.id)))
        assert a.error is None and b.error is None
        jobs, recorded = _counts(db)
        assert jobs == recorded == round_ + 1  # one job per checkpoint, whichever tick won
        ids = {x.job_id for x in a.submitted + b.submitted}
        assert len(ids) <= 1 and sum(x.created for x in a.submitted + b.submitted) <= 1
        if new:
            _checkpoint(root, "run", new)
    with db.read() as sess:
        keys = sorted(sess.scalars(select(Job.idempotency_key)))
    assert all(k.startswith(f"watch:{watch.id}:") and k.endswith(":toks") for k in keys) and len(set(keys)) == 3

    # the scheduled path: the tick is claimed once between two schedulers, and nothing is queued twice
    _checkpoint(root, "run", "step-400")
    schedulers = [Scheduler(dbs[i], s, queues[i], poll_s=0.05) for i in range(2)]
    with db.write() as sess:
        sess.get(Watch, watch.seq).next_run_at = time.time() - 1
    reports = together(lambda i: schedulers[i].run_due())
    assert sum(len(r) for r in reports) == 1
    assert _counts(db) == (4, 4)
    assert get_watch(db, watch.id).next_run_at > time.time() + 50  # the next tick is an interval away
    for d in dbs:
        d.dispose()


def test_two_scheduler_processes_queue_once(store):
    """The same, with two OS processes ticking the watch at the same instant (no shared memory at all)."""
    s, db, root = store
    for name in ("step-100", "step-200", "step-300"):
        _checkpoint(root, "run", name)
    watch = create_watch(db, s, WatchRequest.model_validate(_watch_body("run")), owner="-")
    start = time.time() + 12  # both processes import first, then tick together
    code = textwrap.dedent(f"""
        import time
        from service.config import Settings
        from service.store.db import Database
        from service.jobs.queue import Queue
        from service.watches.scheduler import tick
        from service.watches.store import get_watch
        s = Settings(database_url={s.database_url!r}, model_roots={s.model_roots!r}, executor="inline")
        db = Database(s.database_url)
        watch = get_watch(db, {watch.id!r})
        time.sleep(max(0.0, {start!r} - time.time()))
        report = tick(db, Queue(db, s), s, watch)
        print(report.error, sum(x.created for x in report.submitted))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    created = [int(out.split()[-1]) for out, _ in outs]
    assert all(out.split()[0] == "None" for out, _ in outs)
    assert sum(created) == 3 and _counts(db) == (3, 3)  # three checkpoints, three jobs, between both processes


def test_checkpoint_being_written_is_not_taken(store):
    s, db, root = store
    _checkpoint(root, "run", "step-1")
    fresh = _checkpoint(root, "run", "step-2", old=False)  # files just written: inside the quiet period
    partial = os.path.join(root, "run", "step-3")
    os.makedirs(partial)
    shutil.copy(os.path.join(root, "tiny-gpt2", "config.json"), partial)  # weights not there yet
    marked = _checkpoint(root, "run", "step-4", old=False)
    os.makedirs(os.path.join(root, "run", ".tmp-step-5"))  # a hidden temporary directory: never looked at
    watch = create_watch(db, s, WatchRequest.model_validate(_watch_body("run", marker="COMPLETE")), owner="-")
    q = Queue(db, s)

    r = tick(db, q, s, get_watch(db, watch.id))
    assert [x.checkpoint for x in r.submitted] == ["step-1"]
    waiting = {w["checkpoint"]: w["reason"] for w in r.waiting}
    assert set(waiting) == {"step-2", "step-3", "step-4"}
    assert "changed" in waiting["step-2"] and "weights" in waiting["step-3"]

    open(os.path.join(marked, "COMPLETE"), "w").close()  # the writer says it is done: taken at once
    r = tick(db, q, s, get_watch(db, watch.id))
    assert [x.checkpoint for x in r.submitted] == ["step-4"]

    for f in os.listdir(fresh):  # quiet for the period now
        os.utime(os.path.join(fresh, f), (OLD, OLD))
    r = tick(db, q, s, get_watch(db, watch.id))
    assert [x.checkpoint for x in r.submitted] == ["step-2"] and [w["checkpoint"] for w in r.waiting] == ["step-3"]
    assert _counts(db) == (3, 3)


# ----------------------------------------------------------------------------------- hub
class _FakeHfApi:
    """Stands in for huggingface_hub.HfApi: list_repo_refs answers from `REFS` (or raises `FAIL`)."""
    REFS: dict = {}
    FAIL: Exception | None = None
    calls: list = []

    def list_repo_refs(self, repo_id, *, repo_type=None, **kw):
        from huggingface_hub.hf_api import GitRefInfo, GitRefs

        _FakeHfApi.calls.append((repo_id, repo_type))
        if _FakeHfApi.FAIL is not None:
            raise _FakeHfApi.FAIL
        refs = self.REFS[repo_id]
        return GitRefs(branches=[GitRefInfo(name=n, ref=f"refs/heads/{n}", target_commit=c) for n, c in refs.items()],
                       converts=[], tags=[])


def test_hub_branches_through_fake(store, monkeypatch):
    import huggingface_hub

    s, db, root = store
    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeHfApi)
    repo = "EleutherAI/pythia-70m"
    _FakeHfApi.REFS = {repo: {"main": "c" * 40, "step1000": "a" * 40, "step3000": "c" * 40, "step2000": "b" * 40,
                              "dev": "d" * 40}}
    body = _watch_body(repo, pattern="step*", tasks=[{"builtin": "induction", "n": 8}], method={"name": "eap"})
    watch = create_watch(db, s, WatchRequest.model_validate(body), owner="-")
    assert watch.source_kind == "hub"
    q = Queue(db, s)

    r = tick(db, q, s, get_watch(db, watch.id))
    assert [x.checkpoint for x in r.submitted] == ["step1000", "step2000", "step3000"]
    with db.read() as sess:
        jobs = {j.revision: j for j in sess.scalars(select(Job))}
    assert set(jobs) == {"a" * 40, "b" * 40, "c" * 40}  # jobs load the commit, not the moving branch
    assert all(j.model == repo and j.spec["model"]["revision"] == j.revision for j in jobs.values())
    assert _FakeHfApi.calls[-1] == (repo, "model")

    _FakeHfApi.REFS[repo]["step4000"] = "e" * 40  # a new checkpoint is published
    r = tick(db, q, s, get_watch(db, watch.id))
    assert [(x.checkpoint, x.created) for x in r.submitted] == [("step4000", True)]
    assert _counts(db) == (4, 4)

    _FakeHfApi.FAIL = OSError("hub unreachable")  # a listing error is the watch's, and the next tick retries
    try:
        r = tick(db, q, s, get_watch(db, watch.id))
    finally:
        _FakeHfApi.FAIL = None
    assert r.error and "hub unreachable" in r.error and "hub unreachable" in get_watch(db, watch.id).last_error
    r = tick(db, q, s, get_watch(db, watch.id))
    assert r.error is None and r.submitted == [] and get_watch(db, watch.id).last_error is None


def test_schedules():
    class W:
        cron, interval_s = None, 90.0
    assert next_run(W, 1000.0) == 1090.0
    W.cron = "*/15 * * * *"
    t = next_run(W, 1_700_000_000.0)  # 2023-11-14 22:13:20 UTC -> 22:15
    assert t == 1_700_000_100.0


# ----------------------------------------------------------------------------------- through the API
@pytest.fixture(scope="module")
def api(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scans")
    root = make_model_root(tmp)
    for name in ("step-3", "step-100", "step-1000"):  # lexical order is not training order
        _checkpoint(root, "run", name)
    _checkpoint(root, "run", "step-20", weights=b"not a safetensors file")
    s = settings(tmp, root)
    db = Database(s.resolved_database_url())
    db.migrate()
    _, secret = create_token(db, "tests")
    server = BackgroundServer(build_app(s, dispatcher=True, db=db)).start()
    client = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {secret}"}, timeout=60)
    yield client, db, root
    client.close()
    server.stop()


@pytest.fixture(scope="module")
def scanned(api):
    client, db, root = api
    r = client.post("/v1/watches", json=_watch_body("run"))
    assert r.status_code == 201, r.text
    watch = r.json()
    assert watch["source_kind"] == "dir" and watch["counts"] == {}
    report = client.post(f"/v1/watches/{watch['id']}/run").json()
    assert [x["checkpoint"] for x in report["submitted"]] == ["step-3", "step-20", "step-100", "step-1000"]
    for x in report["submitted"]:
        wait_for(client, x["job_id"])
    return watch["id"]


def test_failed_checkpoint_recorded_others_run(api, scanned):
    client, db, root = api
    watch = client.get(f"/v1/watches/{scanned}").json()
    status = {c["checkpoint"]: (c["status"], c["error"]) for c in watch["checkpoints"]}
    assert [c["checkpoint"] for c in watch["checkpoints"]] == ["step-3", "step-20", "step-100", "step-1000"]
    assert status["step-20"][0] == "failed" and status["step-20"][1]
    assert all(status[n] == ("succeeded", None) for n in ("step-3", "step-100", "step-1000"))
    assert watch["counts"] == {"failed": 1, "succeeded": 3}
    again = client.post(f"/v1/watches/{scanned}/run").json()  # a failed checkpoint is not retried by itself
    assert again["ready"] == 4 and again["submitted"] == []


def test_timeline_in_training_order(api, scanned):
    client, db, root = api
    r = client.get(f"/v1/watches/{scanned}/timeline")
    assert r.status_code == 200, r.text
    (task,) = r.json()["tasks"]
    assert task["task"] == "toks"
    assert [c["step"] for c in task["checkpoints"]] == [3, 20, 100, 1000]
    points = task["points"]
    assert [p["step"] for p in points] == [3, 100, 1000]  # the failed checkpoint has no point
    assert [p["revision"] for p in points] == ["step-3", "step-100", "step-1000"]
    assert points[0]["entered"] == points[0]["components"] and points[0]["left"] == []
    for before, after in zip(points, points[1:]):
        assert set(after["entered"]) == set(after["components"]) - set(before["components"])
        assert set(after["left"]) == set(before["components"]) - set(after["components"])
    assert all(p["circuit_id"] and p["n_edges"] > 0 for p in points)


def test_diff_endpoint_is_diff_circuits(api, scanned):
    from discovery.io.diff import diff_circuits
    from service.watches.store import load_circuit

    client, db, root = api
    points = client.get(f"/v1/watches/{scanned}/timeline").json()["tasks"][0]["points"]
    a, b = points[0]["circuit_id"], points[-1]["circuit_id"]
    r = client.get(f"/v1/circuits/{a}/diff/{b}", params={"top": 5})
    assert r.status_code == 200, r.text
    assert r.json() == diff_circuits(load_circuit(db, a), load_circuit(db, b), top=5).model_dump(mode="json")
    same = client.get(f"/v1/circuits/{a}/diff/{a}").json()
    assert same["jaccard"] == 1.0 and same["edges_gained"] == same["edges_lost"] == []


def test_list_and_remove(api, scanned):
    client, db, root = api
    r = client.post("/v1/watches", json=_watch_body("run", cron="0 3 * * *", interval_s=None, name="nightly"))
    assert r.status_code == 201, r.text
    extra = r.json()["id"]
    assert {w["id"] for w in client.get("/v1/watches").json()["items"]} >= {scanned, extra}
    assert client.delete(f"/v1/watches/{extra}").json()["name"] == "nightly"
    assert is_problem(client.get(f"/v1/watches/{extra}"), 404)
    assert extra not in {w["id"] for w in client.get("/v1/watches").json()["items"]}


@pytest.mark.parametrize("change, status", [
    ({"interval_s": None}, 422),  # no schedule
    ({"cron": "*/5 * * * *"}, 422),  # two schedules
    ({"interval_s": None, "cron": "61 * * * *"}, 422),  # a cron field out of range
    ({"source": "../escape"}, 422),
    ({"source": "/etc", "kind": "dir"}, 422),  # not under a model root
    ({"source": "toy:nope"}, 422),
    ({"pattern": "step(", "pattern_kind": "regex"}, 422),
    ({"tasks": []}, 422),
    ({"method": {"name": "acdc"}, "selection": {"top_n": 5}}, 422),  # ACDC selects by tau
    ({"method": {"name": "eap", "tau": 0.1}}, 422),
    ({"quiet_s": -1}, 422),
    ({"surprise": 1}, 422),
])
def test_bad_watch_is_problem(api, change, status):
    client, db, root = api
    body = _watch_body("run")
    body.update(change)
    r = client.post("/v1/watches", json=body)
    assert is_problem(r, status), (r.status_code, r.text)


def test_unknown_ids_are_problems(api):
    client, db, root = api
    for method, path in (("GET", "/v1/watches/nope"), ("DELETE", "/v1/watches/nope"), ("POST", "/v1/watches/nope/run"),
                         ("GET", "/v1/watches/nope/timeline"), ("GET", "/v1/circuits/nope/diff/nada")):
        assert is_problem(client.request(method, path), 404), path
    assert is_problem(client.get("/v1/circuits/a/diff/b", params={"top": -1}), 422)
    assert is_problem(httpx.get(f"{client.base_url}/v1/watches"), 401)


# ----------------------------------------------------------------------------------- serve and CLI
def test_scheduler_runs_inside_the_server(tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUITRY_SCAN_POLL_S", "0.1")
    root = make_model_root(tmp_path)
    _checkpoint(root, "run", "step-1")
    s = settings(tmp_path, root, auth=False)
    server = BackgroundServer(build_app(s, dispatcher=False, scheduler=True)).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            wid = client.post("/v1/watches", json=_watch_body("run")).json()["id"]
            deadline = time.monotonic() + 20
            while not client.get(f"/v1/watches/{wid}").json()["checkpoints"]:
                assert time.monotonic() < deadline, "the scheduler never scanned the new watch"
                time.sleep(0.1)
            (cp,) = client.get(f"/v1/watches/{wid}").json()["checkpoints"]
            assert cp["checkpoint"] == "step-1" and cp["status"] == "queued"  # no dispatcher here
    finally:
        server.stop()


def test_cli(tmp_path, capsys):
    from discovery.cli import main

    root = make_model_root(tmp_path)
    _checkpoint(root, "run", "step-7")
    url = f"sqlite:///{tmp_path}/cli.db"
    base = ["scan", "--database-url", url, "--model-root", root]
    assert main(base + ["add", "--source", "run", "--task", "induction", "--n", "4", "--method", "eap",
                        "--top-n", "5", "--every", "10m"]) == 0
    wid = capsys.readouterr().out.split()[1]
    assert main(base + ["run-now", wid]) == 0
    out = capsys.readouterr().out
    assert "queued 1 jobs" in out and "step-7" in out
    assert main(base + ["list"]) == 0 and "queued 1" in capsys.readouterr().out
    assert main(base + ["timeline", wid]) == 0 and "step-7" in capsys.readouterr().out
    assert main(base + ["add", "--source", "run", "--task", "induction", "--cron", "not a cron"]) == 2
    assert "cron expression" in capsys.readouterr().err
    assert main(base + ["remove", wid]) == 0
    assert main(base + ["remove", wid]) == 2 and "no watch" in capsys.readouterr().err


def test_absolute_source_inside_a_root_is_scanned(store):
    """The documented absolute-path form: its checkpoints are queued, not refused as 'not allowed'."""
    s, db, root = store
    _checkpoint(root, "abs", "step-1")
    watch = create_watch(db, s, WatchRequest.model_validate(_watch_body(os.path.join(root, "abs"))), "-")
    report = tick(db, Queue(db, s), s, watch)
    assert report.skipped == [] and [x.checkpoint for x in report.submitted] == ["step-1"], report
    assert get_watch(db, watch.id).last_error is None


def test_every_checkpoint_refused_sets_last_error(store, monkeypatch):
    import service.watches.scheduler as scheduler
    from discovery.core.errors import UserError

    s, db, root = store
    _checkpoint(root, "refused", "step-1")
    _checkpoint(root, "refused", "step-2")
    watch = create_watch(db, s, WatchRequest.model_validate(_watch_body("refused")), "-")

    def refuse(name, roots):
        raise UserError(f"model '{name}' is not allowed here")

    monkeypatch.setattr(scheduler, "resolve_model", refuse)
    report = tick(db, Queue(db, s), s, watch)
    assert report.submitted == [] and len(report.skipped) == 2
    error = get_watch(db, watch.id).last_error
    assert error and "2 of 2 checkpoints refused" in error and "not allowed here" in error


def test_cli_task_file_rows_are_stored_with_the_watch(tmp_path, capsys):
    from discovery.cli import main

    root = make_model_root(tmp_path)
    _checkpoint(root, "run", "step-7")
    rows = tmp_path / "my-task.jsonl"
    rows.write_text("".join(__import__("json").dumps(r) + "\n" for r in token_rows(n=4)))
    url = f"sqlite:///{tmp_path}/cli.db"
    base = ["scan", "--database-url", url, "--model-root", root]
    assert main(base + ["add", "--source", os.path.join(root, "run"), "--task", str(rows), "--method", "eap",
                        "--every", "10m", "--settle", "30s"]) == 0
    wid = capsys.readouterr().out.split()[1]
    rows.unlink()  # the watch keeps the rows it was given
    db = Database(url)
    watch = get_watch(db, wid)
    assert watch.quiet_s == 30 and watch.tasks[0]["name"] == "my-task" and len(watch.tasks[0]["rows"]) == 4
    assert main(base + ["run-now", wid]) == 0
    assert "queued 1 jobs" in capsys.readouterr().out
    assert main(base + ["add", "--source", "run", "--task", str(tmp_path / "nope.jsonl"), "--every", "1h"]) == 2
    assert "neither a task file nor a built-in task" in capsys.readouterr().err
    assert main(base + ["add", "--source", "run", "--task", "ioi", "--every", "1h", "--quiet", "1m"]) == 2
