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
from viewer_browser import Page, chromium_path, launch

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
