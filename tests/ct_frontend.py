"""circuit-tracer's own local graph frontend (its package's `frontend/assets`, served by its
`CircuitGraphHandler`) in headless Chromium, for checking circuitry's Neuronpedia export against it.

circuit-tracer is never a project dependency: it runs from a peer venv (CIRCUITRY_CT_PYTHON, default
/work/peers/ct/venv/bin/python; /work/shared/peers/README.md makes one), served on 127.0.0.1 only.
Its index.html loads five libraries from the web (transformer-circuits.pub's d3 and d3-jetpack
builds, unpkg's dagre and pako, and a dev reload script); offline, the browser is given the same
libraries from npm packages in CIRCUITRY_CT_JS (default /work/peers/ct/js: `npm pack d3@7.9.0
d3-jetpack@2.3.0 d3-collection@1.0.7 dagre@0.8.5 pako@2.1.0` unpacked there, each in NAME-VERSION/)
and every other outside request is refused. d3-jetpack 2.3.0 predates the 2024 build the page names
in two ways the page uses, bridged here: its nestBy needs d3-collection's nest, and its
`conventions()` object lacks the `drawAxis(svg)` method (2.3.0 has `d3.drawAxis(c)`)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

PYTHON = os.environ.get("CIRCUITRY_CT_PYTHON", "/work/peers/ct/venv/bin/python")
JS = Path(os.environ.get("CIRCUITRY_CT_JS", "/work/peers/ct/js"))
LIBS = {"d3": "d3-7.9.0/package/dist/d3.js", "collection": "d3-collection-1.0.7/package/dist/d3-collection.js",
        "jetpack": "d3-jetpack-2.3.0/package/build/d3-jetpack.cjs", "dagre": "dagre-0.8.5/package/dist/dagre.min.js",
        "pako": "pako-2.1.0/package/dist/pako.min.js"}

SERVE = """
import functools, socketserver, sys
from circuit_tracer.frontend.local_server import CircuitGraphHandler, DEFAULT_FRONTEND_DIR
class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
handler = functools.partial(CircuitGraphHandler, frontend_dir=DEFAULT_FRONTEND_DIR, data_dir=sys.argv[1])
httpd = Server(("127.0.0.1", int(sys.argv[2])), handler)
print("serving", flush=True)
httpd.serve_forever()
"""


def available() -> str | None:
    """None when the peer venv and the libraries are here, else why not."""
    if not os.access(PYTHON, os.X_OK):
        return f"no circuit-tracer peer venv at {PYTHON} (CIRCUITRY_CT_PYTHON; see /work/shared/peers/README.md)"
    missing = [name for name, rel in LIBS.items() if not (JS / rel).is_file()]
    if missing:
        return f"the frontend's libraries are not in {JS} (CIRCUITRY_CT_JS): {', '.join(missing)}"
    r = subprocess.run([PYTHON, "-c", "import circuit_tracer.frontend.local_server"], capture_output=True, timeout=120)
    if r.returncode:
        return "the peer venv has no circuit_tracer.frontend"
    return None


def _jetpack() -> str:
    cjs = (JS / LIBS["jetpack"]).read_text()
    return ((JS / LIBS["collection"]).read_text() + "\n(function(){var d3g = window.d3, exports = {}, "
            "module = {exports: exports}; function require() { return d3g; }\n" + cjs +
            "\nObject.keys(module.exports).forEach(function (k) { d3g[k] = module.exports[k]; });"
            "var conventions = d3g.conventions; d3g.conventions = function (o) { var c = conventions(o);"
            "c.drawAxis = function (svg) { return d3g.drawAxis(svg ? Object.assign({}, c, {svg: svg}) : c); };"
            "return c; };})();")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Frontend:
    """`with Frontend(data_dir) as url:` circuit-tracer's server for that data folder."""

    def __init__(self, data_dir):
        self.data_dir, self.port, self.proc = str(data_dir), _free_port(), None

    def __enter__(self) -> str:
        self.proc = subprocess.Popen([PYTHON, "-c", SERVE, self.data_dir, str(self.port)], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        line = self.proc.stdout.readline()
        if b"serving" not in line:
            self.proc.kill()
            pytest.fail("circuit-tracer's frontend server did not start")
        return f"http://127.0.0.1:{self.port}/index.html"

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def route_offline(page, port_url: str, blocked: list[str]) -> None:
    """Serve the page's web libraries from JS, pass its own server's requests, refuse the rest."""
    bodies = {"static_js/lib/d3.js": (JS / LIBS["d3"]).read_text(), "jetpack_2024-07-20.js": _jetpack(),
              "dagre.min.js": (JS / LIBS["dagre"]).read_text(), "pako.min.js": (JS / LIBS["pako"]).read_text(),
              "hotserver-client-ws.js": "", "npy_v0.js": ""}  # dev reload; .npy reader (feature examples only)
    origin = port_url.split("/index.html")[0] + "/"

    def handle(route):
        url = route.request.url
        for tail, body in bodies.items():
            if url.endswith(tail):
                return route.fulfill(status=200, content_type="text/javascript", body=body)
        if url.startswith(origin):
            return route.continue_()
        blocked.append(url)
        return route.abort()

    page.route("**/*", handle)


def wait_drawn(page, n_nodes: int, timeout: float = 20.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if page.evaluate("() => document.querySelectorAll('.link-graph text.node').length") >= n_nodes:
            return
        time.sleep(0.2)
