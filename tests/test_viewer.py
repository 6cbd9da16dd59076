"""The circuit viewer in a real headless Chromium (the distribution's package, via Playwright):
`circuitry view` files (circuit, diff, timeline), the /ui pages of a running service (submit a job in
the form, follow it, open its circuit), and the demo's pieces."""

from __future__ import annotations

import copy
import json
import re
import time
from pathlib import Path

import httpx
import pytest

from discovery.cli import main
from viewer_browser import Page, chromium_path, launch, wait_for_text

HOSTILE = '</script><script>alert("x")</script><b>bold</b>'


# ------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def circuits(tmp_path_factory):
    """A labeled circuit of toy:induction (with its faithfulness curve), and a copy B of it with one
    edge taken out and one put in (a diff with exactly one gained and one lost edge)."""
    from discovery.pipeline.discover import discover
    from discovery.model.adapters import load_model
    from discovery.task_library import build_task
    from labeling import label_circuit

    model = load_model("toy:induction", device="cpu")
    task = build_task("induction", tokenizer=model.tokenizer, vocab_size=model.vocab_size, n=16, seed=1)
    circuit = discover(model, task, "eap", metric="kl", top_n=14, progress=False)  # eap: the cheapest scorer
    labeled = json.loads(label_circuit(circuit, model, task).model_dump_json())
    # a label no page may interpret as markup (LLM labels are free text)
    a10 = next(r for r in labeled["labels"] if r["component"] == "a1.h0")
    a10["description"] = a10["description"] + " " + HOSTILE
    d = tmp_path_factory.mktemp("circuits")
    a_path = d / "a.json"
    a_path.write_text(json.dumps(labeled))
    b = copy.deepcopy(labeled)
    inside = [e for e in b["edges"] if e["in_circuit"]]
    outside = [e for e in b["edges"] if not e["in_circuit"] and e["score"] is not None]
    lost = min(inside, key=lambda e: abs(e["score"]))
    gained = max(outside, key=lambda e: abs(e["score"]))
    lost["in_circuit"], gained["in_circuit"] = False, True
    b_path = d / "b.json"
    b_path.write_text(json.dumps(b))
    return {"a": labeled, "a_path": a_path, "b_path": b_path, "lost": lost["name"], "gained": gained["name"]}


@pytest.fixture(scope="module")
def browser():
    pw = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed "
                                                           "(pip install -e '.[test]')")
    if chromium_path() is None:
        pytest.skip("no chromium binary (apt-get install chromium; `make install` tries this)")
    with pw.sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


def _view(tmp_path, *args) -> Path:
    out = tmp_path / "view.html"
    assert main(["view", *map(str, args), "--out", str(out)]) == 0
    return out


def _in_circuit(c):
    return sum(e["in_circuit"] for e in c["edges"]), sum(n["in_circuit"] for n in c["nodes"])


# ------------------------------------------------------------------------------------- files
def test_view_file_is_self_contained(circuits, tmp_path):
    text = _view(tmp_path, circuits["a_path"]).read_text()
    # nothing fetched at view time: no external script, stylesheet, image or frame
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)\s*=\s*[\"']?(https?:)?//", text, re.I)
    assert not re.search(r"<script[^>]+src=", text, re.I)
    assert "<style>" in text and "function renderCircuit" in text
    # the data block parses back to the circuit, and the hostile label cannot close it
    assert HOSTILE not in text and "</script><script>alert" not in text
    block = re.search(r'<script type="application/json" id="circuitry-config">(.*?)</script>', text, re.S).group(1)
    assert json.loads(block)["data"]["circuit"]["edges"] == circuits["a"]["edges"]


def test_circuit_page(browser, circuits, tmp_path):
    c = circuits["a"]
    n_edges, n_nodes = _in_circuit(c)
    page = Page(browser)
    page.goto(_view(tmp_path, circuits["a_path"]).as_uri())
    page.wait_for_selector("#nodes .node")
    assert page.locator("#edges path").count() == n_edges
    assert page.locator("#nodes .node").count() == n_nodes
    assert page.locator("#nodes .ghost").count() == len(c["nodes"]) - n_nodes  # the rest of the graph, greyed

    # hovering an edge names its slot
    first = page.locator("#edges path").first
    first.dispatch_event("mouseenter")  # a curve's box centre may miss it
    assert f"slot {first.get_attribute('data-slot')}" in page.locator("#hover").inner_text()

    # label text is shown as text, never run or parsed as markup
    page.locator('#nodes [data-id="a1.h0"]').click()
    assert HOSTILE in page.locator("#node-description").inner_text()
    assert "bold" not in page.locator("#panel b").all_inner_texts()

    # clicking the previous-token head shows its label, evidence and score
    label = next(r for r in c["labels"] if r["component"] == "a0.h3")
    page.locator('#nodes [data-id="a0.h3"]').click()
    assert page.locator("#node-label").inner_text() == label["label"]
    assert page.locator("#top-pairs tbody tr").count() == len(label["evidence"]["top_pairs"])
    assert label["evidence"]["logits"]["promoted"][0]["token"] in page.locator("#promoted").inner_text()
    assert "random label" in page.locator("#panel").inner_text()
    page.screenshot(path=str(tmp_path / "viewer.png"), full_page=True)

    # the slider changes the drawn edges and moves the mark on the stored curve
    marker_before = page.locator("#curve-marker line").get_attribute("x1")
    page.locator("#edge-slider").fill("40")
    assert page.locator("#edges path").count() == 40
    assert page.locator("#edges path.outside").count() == 40 - n_edges
    assert page.locator("#curve-marker line").get_attribute("x1") != marker_before
    page.locator("#edge-slider").fill("3")
    assert page.locator("#edges path").count() == 3
    assert page.locator("#curve polyline").count() == 2  # the stored curves, by |score| and signed
    assert page.errors == []


def test_diff_page(browser, circuits, tmp_path):
    page = Page(browser)
    page.goto(_view(tmp_path, circuits["a_path"], "--diff", circuits["b_path"]).as_uri())
    page.wait_for_selector("#edges path")
    gained, lost = page.locator("#edges path.gained"), page.locator("#edges path.lost")
    assert gained.count() == 1 and lost.count() == 1
    assert gained.get_attribute("data-name") == circuits["gained"]
    assert lost.get_attribute("data-name") == circuits["lost"]
    n_edges, _ = _in_circuit(circuits["a"])
    assert page.locator("#edges path.kept").count() == n_edges - 1

    def stroke(loc):
        return loc.evaluate("e => getComputedStyle(e).stroke")

    colours = {stroke(gained), stroke(lost), stroke(page.locator("#edges path.kept").first)}
    assert len(colours) == 3  # gained, lost and kept each in their own colour
    assert page.locator("#n-gained").inner_text() == "1" and page.locator("#n-lost").inner_text() == "1"
    page.locator('#nodes [data-id="a1.h0"]').click()
    assert "Induction" in page.locator("#panel").inner_text()
    assert page.errors == []


def test_timeline_page(browser, circuits, tmp_path):
    page = Page(browser)
    page.goto(_view(tmp_path, circuits["a_path"], circuits["b_path"], "--timeline").as_uri())
    page.wait_for_selector("#timeline")
    assert page.locator("#timeline circle.point").count() == 2
    assert page.locator("table tbody tr").count() == 2
    assert page.errors == []


def test_view_cli_errors(circuits, tmp_path, capsys):
    assert main(["view", str(tmp_path / "missing.json"), "--out", str(tmp_path / "x.html")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["view", str(circuits["a_path"]), str(circuits["b_path"]), "--out", str(tmp_path / "x.html")]) == 2
    assert "one circuit file" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()


# ------------------------------------------------------------------------------------- the service's pages
@pytest.fixture(scope="module")
def service(tmp_path_factory):
    from service.config import Settings
    from service.store.db import Database
    from service.server import BackgroundServer, build_app
    from service.store.tokens import create_token

    d = tmp_path_factory.mktemp("ui")
    settings = Settings(database_url=f"sqlite:///{d}/circuitry.db", executor="inline", lease_s=30, heartbeat_s=1,
                        poll_s=0.05)
    db = Database(settings.resolved_database_url())
    db.migrate()
    _, secret = create_token(db, "ui-test")
    server = BackgroundServer(build_app(settings, db=db)).start()
    yield server.url, secret
    server.stop()


def test_ui_shells(service):
    url, _ = service
    with httpx.Client(base_url=url) as client:
        for path in ("/ui", "/ui/jobs", "/ui/jobs/new", "/ui/jobs/abc", "/ui/circuits", "/ui/circuits/abc",
                     "/ui/diff/a/b", "/ui/watches/w"):
            r = client.get(path)  # public shells: no token needed, and no data in them
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), path
            assert "script-src 'self'" in r.headers["content-security-policy"]
            assert '<script src="/ui/static/viewer.js"></script>' in r.text
        assert client.get("/ui/static/viewer.js").headers["content-type"].startswith("text/javascript")
        assert client.get("/ui/static/viewer.css").status_code == 200
        assert client.get("/ui/static/../api.py").status_code == 404
        assert client.get("/ui/static/secret.txt").status_code == 404
        assert "/ui" not in json.dumps(client.get("/openapi.json").json()["paths"])  # not part of the API


def test_ui_submit_follow_and_view(browser, service, tmp_path):
    url, secret = service
    page = Page(browser)
    page.goto(url + "/ui/circuits")
    page.wait_for_selector(".error")  # no token yet: the API's 401, said on the page
    assert "token" in page.locator(".error").inner_text()
    page.errors.clear()  # that 401 is logged by the browser as a failed resource load
    page.fill("#token", secret)
    page.click("header.top button")
    page.goto(url + "/ui/jobs/new")
    page.wait_for_selector("#job-form")
    page.fill("input[name=model]", "toy:induction")
    page.select_option("select[name=task]", "induction")
    page.fill("input[name=n]", "8")
    page.select_option("select[name=method]", "eap")
    page.fill("input[name=top_n]", "10")
    page.select_option("select[name=labeling]", "heuristic")
    page.click("#job-form button[type=submit]")
    page.wait_for_url(re.compile(r".*/ui/jobs/[0-9a-f-]{36}$"))
    page.wait_for_selector("#circuit-link", timeout=60_000)  # the circuit is stored before labeling ends
    wait_for_text(page, "#job-status", "succeeded")  # live status until it succeeded
    assert "labeling" in page.locator("#events").inner_text()  # the event stream was followed
    page.click("#circuit-link")
    page.wait_for_selector("#nodes .node")
    cid = page.url.rsplit("/", 1)[1]
    c = httpx.get(f"{url}/v1/circuits/{cid}", headers={"Authorization": f"Bearer {secret}"}).json()
    n_edges, n_nodes = _in_circuit(c)
    assert page.locator("#edges path").count() == n_edges
    assert page.locator("#nodes .node").count() == n_nodes
    first = next(r for r in c["labels"])
    page.locator(f'#nodes [data-id="{first["component"]}"]').click()
    assert page.locator("#node-label").inner_text() == first["label"]

    page.goto(url + "/ui/jobs")
    page.wait_for_selector("#jobs table")
    assert "succeeded" in page.locator("#jobs").inner_text()
    page.goto(f"{url}/ui/diff/{cid}/{cid}")
    page.wait_for_selector("#edges path")
    assert page.locator("#edges path.kept").count() == n_edges and page.locator("#n-gained").inner_text() == "0"
    assert page.errors == []


def test_ui_form_defaults_and_methods(browser, service):
    """The form starts on a model with its own task (toy:induction with induction, as the demo), offers
    every method, and for ACDC asks for tau instead of top-n (the body it posts says so)."""
    from discovery.pipeline.options import ALL_METHODS, DEFAULT_METHOD

    url, secret = service
    page = Page(browser)
    posted = []

    def answer(route):
        posted.append(json.loads(route.request.post_data))
        route.fulfill(status=201, content_type="application/json", body=json.dumps({"id": "0" * 36}))

    page.route("**/v1/jobs", answer)
    page.goto(url + "/ui/jobs/new")
    page.wait_for_selector("#job-form")
    assert page.input_value("input[name=model]") == "toy:induction"
    assert page.input_value("select[name=task]") == "induction" and page.input_value("select[name=metric]") == ""
    methods = page.eval_on_selector_all("select[name=method] option", "os => os.map(o => o.value)")
    assert methods == list(ALL_METHODS) and page.input_value("select[name=method]") == DEFAULT_METHOD
    assert page.input_value("input[name=top_n]") == ""  # the faithfulness target
    page.click("#job-form button[type=submit]")  # as it starts: the demo's induction job
    page.wait_for_url(re.compile(r".*/ui/jobs/0{36}$"))
    assert posted[0]["method"]["name"] == DEFAULT_METHOD and posted[0]["selection"] == {}
    assert posted[0]["method"]["metric"] is None and posted[0]["task"]["builtin"] == "induction"
    page.goto(url + "/ui/jobs/new")
    page.wait_for_selector("#job-form")
    assert page.is_visible("#row-target") and not page.is_visible("#row-top_n") and not page.is_visible("#row-tau")
    page.fill("input[name=model]", "toy:ioi")
    page.dispatch_event("input[name=model]", "change")
    assert page.input_value("select[name=task]") == "ioi" and page.input_value("input[name=top_n]") == ""
    page.select_option("select[name=method]", "acdc")
    assert page.is_visible("#row-tau") and not page.is_visible("#row-top_n")
    page.fill("input[name=tau]", "0.02")
    page.click("#job-form button[type=submit]")
    page.wait_for_url(re.compile(r".*/ui/jobs/0{36}$"))
    body = posted[1]
    assert body["method"]["name"] == "acdc" and body["method"]["tau"] == 0.02 and body["selection"] == {}
    assert body["model"]["name"] == "toy:ioi" and body["task"]["builtin"] == "ioi"


def test_ui_watch_timeline(browser, service, circuits):
    """The watch page draws GET /v1/watches/{id}/timeline (answered here by the test, in the shape of
    service.watches.schemas.WatchTimeline)."""
    from discovery.core.circuit import Circuit
    from discovery.io.timeline import timeline

    url, _ = service
    c = Circuit.model_validate(circuits["a"])
    points = [json.loads(p.model_dump_json()) for p in timeline([("c1", c), ("c2", c)])]
    body = {"watch_id": "w1", "source": "/ckpts", "tasks": [{"task": "induction", "points": points, "checkpoints": [
        {"checkpoint": "step-1", "step": 1, "fingerprint": "f", "task": "induction", "job_id": "j" * 36,
         "status": "succeeded", "error": None, "circuit_id": "c1", "submitted_at": "2026-01-01T00:00:00"}]}]}
    page = Page(browser)
    page.route("**/v1/watches/w1/timeline", lambda route: route.fulfill(json=body))
    page.goto(url + "/ui/watches/w1")
    page.wait_for_selector("#timeline")
    assert page.locator("#timeline circle.point").count() == 2
    assert page.locator('a[href="/ui/diff/c1/c2"]').count() == 1
    assert page.errors == []


# ------------------------------------------------------------------------------------- the demo
def test_demo_pieces(tmp_path, capsys):
    """`circuitry demo`'s whole path (service, token, submit over HTTP, follow, fetch, summary, viewer,
    plot) with one small job; the full demo is timed by hand (docs/viewer.md)."""
    from service.demo import JOBS, run_demo

    assert set(JOBS) == {"induction", "ioi"} and all(j["labeling"]["backend"] == "heuristic" for j in JOBS.values())
    small = {"induction": {**JOBS["induction"], "task": {"builtin": "induction", "n": 8, "seed": 1},
                           "method": {"name": "eap", "metric": "kl", "curve": True}}}
    started = time.monotonic()
    assert run_demo(out=str(tmp_path / "demo"), progress=True, jobs=small) == 0
    out, err = capsys.readouterr()
    # stderr is not a terminal here (as `make run > log`): a few plain lines naming the job, no redrawn bar
    assert "\r" not in err and 1 <= err.count("\n") <= 12, err
    assert re.search(r"^induction (succeeded|labeling)\b.*: 100/100 \(100%\)", err, re.M), err
    assert (tmp_path / "demo" / "induction.html").stat().st_size > 10_000
    assert (tmp_path / "demo" / "faithfulness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "demo" / "service" / "circuitry.db").exists()
    assert "edges kept" in out and "faithfulness" in out
    assert re.search(r"^  a\d\.h\d +\S", out, re.M)  # a head found, with its label
    assert f"viewer: {tmp_path / 'demo' / 'induction.html'}" in out
    assert time.monotonic() - started < 60
