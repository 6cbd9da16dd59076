"""The browser pages under /ui: circuits (view, list, diff), jobs (list, live status, submit form) and
a watch's timeline. Each page is a public HTML shell that carries no data: its script calls the /v1
API with the token the user pasted (kept in the browser's localStorage), so the API's auth is the
only auth."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from discovery.core.names import AUTO_METHOD

from .problems import NotFound
from .ui_form import form_fields
from viewer.render import ASSETS, asset, page

# Scripts and styles only from this server; no inline script runs (the page configuration is a JSON
# data block); the API is same-origin. Inline style attributes are allowed for progress bars.
_HEADERS = {"Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                                       "connect-src 'self'; img-src 'self' data:; form-action 'self'; "
                                       "frame-ancestors 'none'; base-uri 'none'",
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}

router = APIRouter(prefix="/ui", include_in_schema=False)

# The submit form's starting values per shipped model, the settings the demo uses (service/demo.py): a
# model with the task it was trained on, the default method (auto) and selection (the faithfulness
# target: top-n left empty), so the first job a user submits finds a meaningful circuit.
FORM_PRESETS = {
    "toy:induction": {"task": "induction", "n": 32, "seed": 1, "metric": "", "top_n": ""},
    "toy:ioi": {"task": "ioi", "n": 64, "seed": 1, "metric": "", "top_n": ""},
}


def _page(config: dict, title: str) -> HTMLResponse:
    return HTMLResponse(page(config, title=f"circuitry · {title}", standalone=False), headers=_HEADERS)


@router.get("")
@router.get("/")
def index():
    return _page({"mode": "index"}, "home")


@router.get("/static/{name}")
def static(name: str):
    if name not in ASSETS:
        raise NotFound(f"no such viewer asset '{name[:40]}'")
    return Response(asset(name), media_type=ASSETS[name],
                    headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})


@router.get("/circuits")
def circuits():
    return _page({"mode": "circuits"}, "circuits")


@router.get("/circuits/{circuit_id}")
def circuit(circuit_id: str):
    return _page({"mode": "circuit", "id": circuit_id}, f"circuit {circuit_id[:8]}")


@router.get("/diff/{a}/{b}")
def diff(a: str, b: str):
    return _page({"mode": "diff", "a": a, "b": b}, f"diff {a[:8]} -> {b[:8]}")


@router.get("/jobs")
def jobs():
    return _page({"mode": "jobs"}, "jobs")


@router.get("/jobs/new")
def submit():
    return _page({"mode": "submit", "fields": form_fields(), "default_method": AUTO_METHOD, "presets": FORM_PRESETS},
                 "submit a job")


@router.get("/jobs/{job_id}")
def job(job_id: str):
    return _page({"mode": "job", "id": job_id}, f"job {job_id[:8]}")


@router.get("/watches/{watch_id}")
def watch(watch_id: str):
    """Draws GET /v1/watches/{id}/timeline (a list of discovery.io.timeline points, or {points: [...]})."""
    return _page({"mode": "timeline", "watch": watch_id}, f"watch {watch_id[:8]}")
