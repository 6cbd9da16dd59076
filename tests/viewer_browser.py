"""Headless Chromium for the viewer tests: the distribution's chromium binary driven by Playwright
(never a browser downloaded by the test tool). `browser_or_skip()` says why when there is none."""

from __future__ import annotations

import os
import shutil
import time

import pytest

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]


def chromium_path() -> str | None:
    for candidate in (os.environ.get("CIRCUITRY_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def launch(playwright):
    path = chromium_path()
    if path is None:
        pytest.skip("no chromium binary (install the distribution's package: apt-get install chromium; "
                    "`make install` tries this)")
    return playwright.chromium.launch(executable_path=path, args=ARGS)


class Page:
    """A page with its console errors and uncaught exceptions collected."""

    def __init__(self, browser, **kw):
        self.page = browser.new_page(viewport={"width": 1400, "height": 1000}, **kw)
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        self.page.on("dialog", lambda d: (self.errors.append(f"dialog: {d.message}"), d.dismiss()))

    def __getattr__(self, name):
        return getattr(self.page, name)


def wait_for_text(page, selector: str, text: str, timeout: float = 60.0) -> None:
    """Poll until `selector`'s text contains `text` (from Python: the served pages' Content-Security-Policy
    has no 'unsafe-eval', which Playwright's wait_for_function needs whenever it has to poll)."""
    deadline = time.monotonic() + timeout
    while True:
        if page.locator(selector).count() and text in page.locator(selector).first.inner_text():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{selector} did not show {text!r} within {timeout:g}s")
        time.sleep(0.1)
