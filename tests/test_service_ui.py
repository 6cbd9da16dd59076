"""The service's browser pages in a real headless Chromium (the distribution's package, via Playwright):
/docs (Swagger UI, offline) and the /ui job form and job page. Every request the page makes to
anything but the service itself is refused, so a page that needs the internet fails here.

Screenshots go to a temporary folder, or to $CIRCUITRY_SCREENSHOTS when set (docs/ keeps the ones
taken that way: `CIRCUITRY_SCREENSHOTS=docs pytest tests/test_service_ui.py`)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import httpx
import pytest

from service_helpers import start_service, wait_for
from viewer_browser import Page, chromium_path, launch, wait_for_text

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


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


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """The service with its dispatcher (inline executor) over a fresh store and a tiny model root:
    (url, token secret, client)."""
    server, client, db, _ = start_service(tmp_path_factory.mktemp("ui"), lease_s=30, heartbeat_s=1)
    yield server.url, client.headers["Authorization"].split(" ", 1)[1], client
    client.close()
    server.stop()


@pytest.fixture
def shots(tmp_path) -> Path:
    d = Path(os.environ.get("CIRCUITRY_SCREENSHOTS") or tmp_path)
    d.mkdir(parents=True, exist_ok=True)
    return d


def offline_page(browser, url: str) -> tuple[Page, list[str]]:
    """A page whose requests outside `url` are aborted (and recorded)."""
    page = Page(browser)
    outside: list[str] = []

    def guard(route):
        if route.request.url.startswith(url + "/") or route.request.url.startswith("data:"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()
    page.route("**/*", guard)
    return page, outside


# ------------------------------------------------------------------------------------- /docs
def test_docs_page_shows_every_operation(browser, service, shots):
    """/docs renders the server's OpenAPI 3.1 spec with nothing from the internet: one operation block
    per (method, path) of /openapi.json, and no "Unable to render this definition"."""
    url, _, _ = service
    spec = httpx.get(url + "/openapi.json").json()
    assert spec["openapi"].startswith("3.1")
    expected = sorted((m.upper(), p) for p, item in spec["paths"].items() for m in item if m in HTTP_METHODS)
    assert len(expected) > 10
    page, outside = offline_page(browser, url)
    page.goto(url + "/docs")
    page.wait_for_selector(".opblock", timeout=30_000)
    body = page.locator("body").inner_text()
    assert "Unable to render" not in body and "not a valid" not in body.lower(), body[:500]
    shown = page.eval_on_selector_all(
        ".opblock", "bs => bs.map(b => [b.querySelector('.opblock-summary-method').textContent.trim(),"
                    " b.querySelector('.opblock-summary-path').getAttribute('data-path')])")
    assert sorted(map(tuple, shown)) == expected
    page.screenshot(path=str(shots / "service-docs.png"), full_page=True,
                    clip={"x": 0, "y": 0, "width": 1400, "height": 1400})  # the operations
    # one operation opens with its parameters and the problem responses, as a user would look at it
    block = page.locator('.opblock-get:has(.opblock-summary-path[data-path="/v1/jobs"])')
    block.locator(".opblock-summary").click()
    block.locator(".parameters").wait_for()
    assert "cursor" in block.inner_text() and "422" in block.inner_text()
    assert outside == [] and page.errors == [], (outside, page.errors)


# ------------------------------------------------------------------------------------- a watch's timeline
def test_watch_page_marks_points_with_warnings(browser, service, shots):
    """/ui/watches/{id} draws a point whose circuit has warnings hollow in red with the warning's name,
    and lists the warnings and the signed behaviour per checkpoint (the body as the API answers it:
    service.watches.schemas.WatchTimeline)."""
    from discovery.io.timeline import TimelinePoint
    from service.watches.schemas import WatchTimeline

    url, _, _ = service

    def point(step, n_edges, faithfulness, behaviour, warnings):
        return TimelinePoint(revision=f"step-{step}", step=step, n_edges=n_edges, n_nodes=3, faithfulness=faithfulness,
                             clean_metric=1.0, behaviour=behaviour, metric="logit_diff", components=["a0.h1"],
                             entered=[], left=[], circuit_id=f"c{step}", warnings=warnings)
    points = [point(100, 9, 1.196, -0.7, ["no behaviour: the full model's logit_diff is not better"]),
              point(200, 12, 1.370, 0.05, ["behaviour within noise: by 0.05 +- 0.1"]),
              point(300, 14, 0.93, 7.0, [])]
    body = json.loads(WatchTimeline(watch_id="w1", source="run", tasks=[
        {"task": "toks", "checkpoints": [], "points": [json.loads(p.model_dump_json()) for p in points]}]).model_dump_json())
    page, outside = offline_page(browser, url)
    page.route("**/v1/watches/w1/timeline", lambda route: route.fulfill(json=body))
    page.goto(url + "/ui/watches/w1")
    page.wait_for_selector("#timeline")
    assert page.locator("#timeline circle.point").count() == 3
    assert page.locator("#timeline rect.fpoint.flagged").count() == 2 and page.locator("#timeline rect.fpoint").count() == 3
    assert page.locator("#timeline text.flag").all_text_contents() == ["no behaviour", "behaviour within noise"]
    rows = page.locator("table tbody tr").all_inner_texts()
    assert "no behaviour" in rows[0] and "-0.700" in rows[0] and "behaviour within noise" in rows[1]
    assert "no behaviour" not in rows[2] and "within noise" not in rows[2]
    page.screenshot(path=str(shots / "service-timeline-warnings.png"), full_page=True)
    assert outside == [] and page.errors == [], (outside, page.errors)


# ------------------------------------------------------------------------------------- the submit form
def _leaves(schema: dict, node: dict | None = None, prefix: str = "") -> list[str]:
    """Every leaf field of a JSON schema (an independent walk of JobRequest's, for the form's check)."""
    node = schema if node is None else node
    if "$ref" in node:
        node = schema["$defs"][node["$ref"].rsplit("/", 1)[1]]
    out = []
    for key, prop in node.get("properties", {}).items():
        target = schema["$defs"][prop["$ref"].rsplit("/", 1)[1]] if "$ref" in prop else prop
        out += _leaves(schema, target, f"{prefix}{key}.") if "properties" in target else [prefix + key]
    return out


def _open_form(page, url, secret):
    page.goto(url + "/ui")
    page.fill("#token", secret)
    page.click("header.top button")
    page.goto(url + "/ui/jobs/new")
    page.wait_for_selector("#job-form")


def test_form_offers_every_option_of_the_job(browser, service, shots):
    """Every leaf of the job body (JobRequest's JSON schema) has a control in the form, inline rows
    through the JSONL file input; each option a user sets is posted at its place in the body, and the
    body is a valid job request."""
    from service.jobs.spec import JobRequest

    url, secret, _ = service
    page, outside = offline_page(browser, url)
    posted = []

    def answer(route):
        posted.append(json.loads(route.request.post_data))
        route.fulfill(status=201, content_type="application/json", body=json.dumps({"id": "0" * 36}))
    page.route("**/v1/jobs", answer)
    _open_form(page, url, secret)
    leaves = _leaves(JobRequest.model_json_schema())
    assert {"method.steps", "method.intervention", "selection.target", "labeling.options.scorer"} <= set(leaves)
    shown = page.eval_on_selector_all("#job-form [name][data-path]", "es => es.map(e => e.dataset.path)")
    assert sorted(shown + ["task.rows"]) == sorted(leaves)  # task.rows: the file
    assert page.locator("#job-form input[type=file]#task-file").count() == 1
    page.click("#more-options summary")
    page.fill("input[name=model]", "toy:induction")
    page.fill("input[name=revision]", "step-002000")
    page.select_option("select[name=dtype]", "float32")
    page.select_option("select[name=method]", "eap-ig")
    page.select_option("select[name=metric]", "kl")
    page.select_option("select[name=intervention]", "mean")
    page.fill("input[name=steps]", "7")
    page.fill("input[name=batch_size]", "8")
    page.select_option("select[name=kv_edges]", "grouped")
    page.select_option("select[name=qk_fix]", "false")
    page.uncheck("input[name=curve]")
    assert not page.is_visible("#row-tau") and not page.is_visible("#row-sparsity") and page.is_visible("#row-top_n")
    page.fill("input[name=target]", "0.8")
    page.uncheck("input[name=absolute]")
    page.uncheck("input[name=prune]")
    page.select_option("select[name=labeling]", "heuristic")
    page.fill("input[name=components]", "a0.h3, a1.h0")
    page.fill("input[name=label_seed]", "3")
    page.select_option("select[name=scorer]", "evidence_agreement")
    page.fill("input[name=callback_url]", "https://example.org/hook")
    page.screenshot(path=str(shots / "service-ui-form.png"), full_page=True)
    page.click("#job-form button[type=submit]")
    page.wait_for_url(re.compile(r".*/ui/jobs/0{36}$"))
    body = posted[0]
    assert body == {
        "model": {"name": "toy:induction", "revision": "step-002000", "dtype": "float32"},
        "task": {"builtin": "induction", "n": 32, "seed": 1},
        "method": {"name": "eap-ig", "metric": "kl", "intervention": "mean", "steps": 7, "batch_size": 8, "curve": False,
                   "kv_edges": "grouped", "level": "edge", "qk_fix": False},
        "selection": {"target": 0.8, "absolute": False, "prune": False},
        "labeling": {"backend": "heuristic", "options": {"components": ["a0.h3", "a1.h0"], "seed": 3,
                                                         "scorer": "evidence_agreement"}},
        "callback_url": "https://example.org/hook"}, body
    JobRequest.model_validate(body)
    # edge-pruning's own options, and ACDC's
    page.goto(url + "/ui/jobs/new")
    page.wait_for_selector("#job-form")
    page.click("#more-options summary")
    page.select_option("select[name=method]", "edge-pruning")
    page.fill("input[name=sparsity]", "0.9")
    page.fill("input[name=train_steps]", "50")
    page.click("#job-form button[type=submit]")
    page.wait_for_url(re.compile(r".*/ui/jobs/0{36}$"))
    assert posted[1]["method"]["sparsity"] == 0.9 and posted[1]["method"]["train_steps"] == 50
    JobRequest.model_validate(posted[1])
    # the pages of the job id answered above load and find no such job (404); nothing else went wrong
    assert outside == [] and [e for e in page.errors if "404" not in e] == [], (outside, page.errors)


def test_jsonl_upload_checked_like_the_api_and_job_page_summary(browser, service, shots, tmp_path):
    """A JSONL task file: a line that is not JSON is named before anything is sent; a row the API
    refuses is shown as the API words it (row and field), and nothing is queued; a good file runs, and
    the finished job's page shows the circuit's summary (edges, faithfulness, labels) and links the viewer."""
    from conftest import token_rows

    url, secret, client = service
    page, outside = offline_page(browser, url)
    _open_form(page, url, secret)
    page.fill("input[name=model]", "tiny-gpt2")
    before = len(client.get("/v1/jobs").json()["items"])

    bad_json = tmp_path / "broken.jsonl"
    bad_json.write_text(json.dumps(token_rows(n=1)[0]) + "\n{not json\n")
    page.set_input_files("#task-file", str(bad_json))
    page.wait_for_selector("#task-file-note.error")
    assert "line 2 is not JSON" in page.inner_text("#task-file-note")
    assert page.is_visible("#row-task_name") and not page.is_visible("#row-n")
    page.click("#job-form button[type=submit]")
    page.wait_for_selector("#submit-result .error")
    assert "line 2 is not JSON" in page.inner_text("#submit-result")

    rows = token_rows(n=4)
    del rows[1]["wrong_id"]
    missing = tmp_path / "missing.jsonl"
    missing.write_text("".join(json.dumps(r) + "\n" for r in rows))
    page.set_input_files("#task-file", str(missing))
    wait_for_text(page, "#task-file-note", "4 rows")
    page.click("#job-form button[type=submit]")
    page.wait_for_selector("#submit-result .error")
    assert "422" in page.inner_text("#submit-result") and "row 2: field 'wrong_id' is missing" in page.inner_text("#submit-result")
    assert page.url.endswith("/ui/jobs/new") and len(client.get("/v1/jobs").json()["items"]) == before
    page.errors.clear()  # the 422 is logged by the browser as a failed resource load

    good = tmp_path / "my rows.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in token_rows(n=6)))
    page.set_input_files("#task-file", str(good))
    wait_for_text(page, "#task-file-note", "6 rows")
    assert page.input_value("input[name=task_name]") == "my_rows"
    page.select_option("select[name=method]", "eap")
    page.fill("input[name=top_n]", "12")
    page.select_option("select[name=labeling]", "heuristic")
    page.click("#job-form button[type=submit]")
    page.wait_for_url(re.compile(r".*/ui/jobs/[0-9a-f-]{36}$"))
    job_id = page.url.rsplit("/", 1)[1]
    page.wait_for_selector("#job-summary", timeout=120_000)
    job = wait_for(client, job_id)
    assert job["status"] == "succeeded" and job["request"]["task"]["name"] == "my_rows"
    assert len(job["request"]["task"]["rows"]) == 6
    c = client.get(f"/v1/circuits/{job['circuit_id']}").json()
    assert page.inner_text("#sum-edges") == f"{c['metrics']['n_edges']} of {len(c['edges'])}"
    assert page.inner_text("#sum-nodes") == str(c["metrics"]["n_nodes"])
    f = c["metrics"]["faithfulness"]
    assert page.inner_text("#sum-faithfulness") == ("n/a" if f is None else f"{f:.3f}")
    labels = page.locator("#job-labels tbody tr")
    assert labels.count() == len(c["labels"]) > 0
    first = c["labels"][0]
    assert first["component"] in labels.nth(0).inner_text() and first["label"] in labels.nth(0).inner_text()
    assert page.locator(".job-warning").count() == len(c["warnings"])
    assert page.get_attribute("#circuit-link", "href") == f"/ui/circuits/{job['circuit_id']}"
    page.screenshot(path=str(shots / "service-ui-job.png"), full_page=True)
    page.click("#circuit-link")
    page.wait_for_selector("#nodes .node")
    assert outside == [] and page.errors == [], (outside, page.errors)
