"""The HTTP API (FastAPI): jobs, their events (list and server-sent events), and circuits.
Every error is application/problem+json with a detail that says what to fix."""

# no `from __future__ import annotations`: FastAPI resolves the local dependency aliases at runtime

import asyncio
import base64
import functools
import hashlib
import importlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Annotated, Literal, NamedTuple

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from discovery.core.errors import UserError

from ..config import Settings
from ..jobs.checks import validate_model, validate_task
from ..jobs.queue import Queue
from ..problems import RETRY_AFTER_S, ApiError, NotFound, StoreUnavailable, Unauthorized, Unprocessable
from ..store.db import Database, is_outage, outage_reason
from ..store.results import get_artifact
from ..store.tables import TERMINAL, CircuitNode, CircuitRow, Job, owned_circuit
from ..store.tokens import find_token
from . import schemas
from .callbacks import check_url
from .formats import FORMATS, render
from .limits import BodyLimit
from .views import circuit_view, event_view, job_view

log = logging.getLogger("circuitry.api")
PROBLEM = "application/problem+json"
_bearer = HTTPBearer(auto_error=False, description="an API token from `circuitry tokens create`")

_PROBLEM_RESPONSES = {code: {"model": schemas.Problem, "content": {PROBLEM: {}}, "description": text}
                      for code, text in ((400, "Bad request"), (401, "Missing or wrong token"), (404, "Not found"),
                                         (409, "Conflict"), (413, "Body too large"), (422, "Invalid request"),
                                         (429, "Too many active jobs"),
                                         (503, "The store is unavailable: retry after Retry-After seconds"))}


class Caller(NamedTuple):
    """Who is calling: the owner key of its token (a token id, or "-" without auth), its active-job
    limit, and whether it is an admin token (it sees and changes every owner's data)."""
    owner: str
    limit: int | None
    admin: bool = False

    @property
    def scope(self) -> str | None:
        """The owner whose data the caller may see (None: every owner's)."""
        return None if self.admin else self.owner


def problem(status: int, title: str, detail: str, *, errors=None, headers=None, instance=None) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if instance:
        body["instance"] = instance
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def _where(loc) -> str:
    return ".".join(str(x) for x in loc if x not in ("body",)) or "body"


CURSOR_PATTERN = r"^s[0-9]{1,18}$"  # what next_cursor holds ("s" and a row's sequence number); the spec says it


def _cursor(seq: int) -> str:
    return f"s{seq}"


def _parse_cursor(cursor: str | None) -> int | None:
    """The sequence number of a cursor the query's pattern (CURSOR_PATTERN) has let through; "s0" is an
    empty page."""
    return None if cursor is None else int(cursor[1:])


def _local_docs(app: FastAPI) -> None:
    """/docs: Swagger UI 5 (it reads the OpenAPI 3.1 this app serves; Swagger UI 4 refuses it) from the
    fastapi-offline package's files, served here (FastAPI's default loads it from a CDN, which leaves
    the page blank offline)."""
    from pathlib import Path

    import fastapi_offline
    from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
    from starlette.staticfiles import StaticFiles

    app.mount("/docs/static", StaticFiles(directory=Path(fastapi_offline.__file__).parent / "static"),
              name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title="circuitry API",
                                   swagger_js_url="/docs/static/swagger-ui-bundle.js",
                                   swagger_css_url="/docs/static/swagger-ui.css",
                                   swagger_favicon_url="/docs/static/favicon.png",
                                   oauth2_redirect_url="/docs/oauth2-redirect")

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    def oauth2_redirect():
        return get_swagger_ui_oauth2_redirect_html()


def create_app(settings: Settings, db: Database | None = None, *, dispatcher_factory=None) -> FastAPI:
    """The API app. `dispatcher_factory(queue) -> Dispatcher` (started with the app) when this process
    also runs jobs; the schema is migrated at startup."""
    db = db or Database(settings.resolved_database_url())
    queue = Queue(db, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await run_in_threadpool(db.migrate)
        # what a submission's checks import (task rows use discovery.model.tasks, hence torch): loaded now, so
        # the first request is not the one that waits seconds for it
        await run_in_threadpool(importlib.import_module, "discovery.model.tasks")
        dispatcher = dispatcher_factory(queue).start() if dispatcher_factory else None
        app.state.dispatcher = dispatcher
        try:
            yield
        finally:
            app.state.submit_writer.shutdown(wait=True)
            if dispatcher:
                await run_in_threadpool(dispatcher.stop)
            await run_in_threadpool(app.state.cancel_callbacks.close)

    app = FastAPI(title="circuitry", version="1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Circuit discovery as a service: submit a job, poll it, fetch its circuit.")
    _local_docs(app)
    app.state.db, app.state.queue, app.state.settings = db, queue, settings
    app.state.submit_writer = ThreadPoolExecutor(1, thread_name_prefix="circuitry-submit")
    from .callbacks import Callbacks

    # a job cancelled while queued never reaches a dispatcher: its callback is sent from here
    app.state.cancel_callbacks = Callbacks(queue, settings)

    # ------------------------------------------------------------------------------- errors
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return problem(exc.status, exc.title, exc.detail, headers=exc.headers, instance=request.url.path)

    @app.exception_handler(UserError)
    async def _user_error(request: Request, exc: UserError):
        return problem(422, "Invalid request", str(exc), instance=request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = [{"loc": _where(e.get("loc", ())), "msg": e.get("msg", "invalid")} for e in exc.errors()]
        first = errors[0] if errors else {"loc": "body", "msg": "invalid"}
        if first["loc"] == "body" and len(errors) == 1:  # not a JSON object at all
            first = {"loc": "body", "msg": "must be a JSON object with 'model' and 'task' (send Content-Type: "
                                           f"application/json); {first['msg']}"}
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        return problem(422, "Invalid request", f"{first['loc']}: {first['msg']}{more}", errors=errors,
                       instance=request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such endpoint: {request.method} {request.url.path}; see /docs or /openapi.json"
        if exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}; see /openapi.json"
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:  # every method of the path (Starlette names only the first route's)
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
        return problem(exc.status_code, str(exc.status_code), detail, headers=headers)

    def allowed_methods(request: Request) -> list[str]:
        """The methods the OpenAPI spec documents on the request's path (its templates matched in turn)."""
        import re

        methods: set[str] = set()
        for template, ops in app.openapi()["paths"].items():
            if re.fullmatch(re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template)), request.url.path):
                methods |= {m.upper() for m in ops}
        return sorted(methods)

    @app.exception_handler(SQLAlchemyError)
    async def _store_error(request: Request, exc: SQLAlchemyError):
        if not is_outage(exc):
            return await _unexpected(request, exc)
        log.warning("store unavailable on %s %s: %s", request.method, request.url.path, outage_reason(exc))
        err = StoreUnavailable(outage_reason(exc))
        return problem(err.status, err.title, err.detail, headers=err.headers, instance=request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(500, "Internal server error", "the server failed on this request; this is a bug, please "
                                                     "report it with the time of the request")

    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)

    # ------------------------------------------------------------------------------- auth
    async def owner(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Caller:
        """The caller: its owner key, active-job limit and scope (without auth, one local admin)."""
        if not settings.auth:
            return Caller("-", settings.max_active_jobs, True)
        if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
            raise Unauthorized("missing API token: send 'Authorization: Bearer <token>' (create one with "
                               "'circuitry tokens create --name NAME')")
        token = await run_in_threadpool(find_token, db, creds.credentials)  # a slow store must not block the loop
        if token is None:
            raise Unauthorized("the API token is unknown or revoked; check it, or create a new one with "
                               "'circuitry tokens create --name NAME'")
        return Caller(str(token.id), token.max_active_jobs or settings.max_active_jobs, bool(token.admin))

    Owner = Annotated[Caller, Depends(owner)]

    # ------------------------------------------------------------------------------- jobs
    # Submissions are validated on the event loop and written by one thread of their own: SQLite takes
    # one writer at a time anyway, and a hand-off to a single thread is cheaper than to a pool of many
    # contending for the write lock (measured: benchmarks/bench_service.py, docs/benchmarks.md).
    submit_writer = app.state.submit_writer

    @app.post("/v1/jobs", status_code=202, response_model=schemas.Job, tags=["jobs"],
              responses={200: {"model": schemas.Job, "description": "the job an earlier request with the same "
                                                                  "Idempotency-Key created"}, **_PROBLEM_RESPONSES})
    async def submit_job(body: schemas.JobRequest, who: Owner, response: Response,
                   idempotency_key: Annotated[str | None, Header(min_length=1, max_length=255,
                                                                 pattern=r"^[\x21-\x7e]+$")] = None):
        """Queue a circuit-discovery job. The job is stored before the 202 is sent."""
        validate_task(body.task, settings)
        validate_model(body, settings)
        if body.callback_url is not None:
            try:
                check_url(str(body.callback_url), settings.callback_allow)
            except UserError as exc:
                raise Unprocessable(f"callback_url: {exc}") from None
        spec = body.model_dump(mode="json")
        request_hash = hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        enqueue = functools.partial(
            queue.enqueue, who[0], spec, model=body.model.name, revision=body.model.revision, task=body.task.label,
            method=body.method.name, request_hash=request_hash, idempotency_key=idempotency_key,
            active_limit=who[1], callback_url=str(body.callback_url) if body.callback_url else None)
        job, created = await asyncio.get_running_loop().run_in_executor(submit_writer, enqueue)
        response.headers["Location"] = f"/v1/jobs/{job.id}"
        if not created:
            response.status_code = 200
        return job_view(job, request=body if created else None)

    @app.get("/v1/jobs", response_model=schemas.JobList, tags=["jobs"], responses=_PROBLEM_RESPONSES)
    def list_jobs(who: Owner, status: schemas.JobStatus | None = None,
                  model: Annotated[str | None, Query(max_length=512)] = None,
                  task: Annotated[str | None, Query(max_length=255)] = None,
                  cursor: Annotated[str | None, Query(max_length=19, pattern=CURSOR_PATTERN,
                                                      description="next_cursor of the previous page")] = None,
                  limit: Annotated[int, Query(ge=1, le=200)] = 50):
        """Jobs, newest first, one page at a time (follow next_cursor)."""
        rows = queue.list(owner=who.scope, status=status, model=model, task=task, before_seq=_parse_cursor(cursor),
                          limit=limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return schemas.JobList(items=[job_view(j) for j in rows], next_cursor=_cursor(rows[-1].seq) if more else None)

    @app.get("/v1/jobs/{job_id}", response_model=schemas.Job, tags=["jobs"], responses=_PROBLEM_RESPONSES)
    def get_job(job_id: str, who: Owner):
        return job_view(queue.get(job_id, who.scope))

    @app.post("/v1/jobs/{job_id}/cancel", response_model=schemas.Job, tags=["jobs"], responses=_PROBLEM_RESPONSES)
    def cancel_job(job_id: str, who: Owner):
        """Cancel a queued or running job (a running job's result, if it still arrives, is discarded). A job
        cancelled in the queue has its callback sent now (a running one's is sent when its attempt ends)."""
        job = queue.cancel(job_id, who.scope)
        if job.callback_url and job.cancelled_while_queued:
            app.state.cancel_callbacks(job.id)
        return job_view(job)

    @app.get("/v1/jobs/{job_id}/events", tags=["jobs"],
             responses={200: {"model": schemas.JobEventList, "description": "the job's events; with "
                              "'Accept: text/event-stream', a live server-sent event stream until the job ends",
                              "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                        **_PROBLEM_RESPONSES})
    async def job_events(job_id: str, who: Owner, request: Request,
                         after: Annotated[int, Query(ge=0, le=2**62)] = 0,
                         last_event_id: Annotated[str | None, Header(max_length=32)] = None):
        await run_in_threadpool(queue.get, job_id, who.scope)  # 404 for an unknown job, or another owner's
        if "text/event-stream" not in request.headers.get("accept", ""):
            events = await run_in_threadpool(queue.events, job_id, after)
            return schemas.JobEventList(items=[event_view(e) for e in events])
        if last_event_id:
            if not (last_event_id.isascii() and last_event_id.isdigit()) or len(last_event_id) > 18:
                raise ApiError(f"Last-Event-ID '{last_event_id[:32]}' is not an event id; send the id of the last "
                               "event received (digits), or no header to start from the beginning",
                               status=400, title="Invalid Last-Event-ID")
            after = int(last_event_id)
        return StreamingResponse(_sse(job_id, after, request), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _sse(job_id: str, after: int, request: Request):
        idle = 0.0
        while True:
            events = await run_in_threadpool(queue.events, job_id, after)
            for e in events:
                after = e.id
                yield f"id: {e.id}\nevent: {e.kind}\ndata: {event_view(e).model_dump_json()}\n\n"
            if events:
                idle = 0.0
            job = await run_in_threadpool(queue.get, job_id)
            if job.status in TERMINAL and not events:
                yield f"event: end\ndata: {json.dumps({'status': job.status})}\n\n"
                return
            if await request.is_disconnected():
                return
            await asyncio.sleep(0.25)
            idle += 0.25
            if idle >= 15:  # keep proxies from closing a quiet stream
                idle = 0.0
                yield ": keep-alive\n\n"

    # ------------------------------------------------------------------------------- circuits
    @app.get("/v1/circuits", response_model=schemas.CircuitList, tags=["circuits"], responses=_PROBLEM_RESPONSES)
    def list_circuits(who: Owner, model: Annotated[str | None, Query(max_length=512)] = None,
                      revision: Annotated[str | None, Query(max_length=255)] = None,
                      task: Annotated[str | None, Query(max_length=255)] = None,
                      method: Annotated[str | None, Query(max_length=64)] = None,
                      node: Annotated[str | None, Query(max_length=32, description="only circuits with this node "
                                                                                  "in the circuit, e.g. a5.h1")] = None,
                      cursor: Annotated[str | None, Query(max_length=19, pattern=CURSOR_PATTERN,
                                                      description="next_cursor of the previous page")] = None,
                      limit: Annotated[int, Query(ge=1, le=200)] = 50):
        q = select(CircuitRow).order_by(CircuitRow.seq.desc()).limit(limit + 1)
        if who.scope is not None:
            q = q.join(Job, Job.id == CircuitRow.job_id).where(Job.owner == who.scope)
        for column, value in ((CircuitRow.model, model), (CircuitRow.revision, revision), (CircuitRow.task, task),
                              (CircuitRow.method, method)):
            if value is not None:
                q = q.where(column == value)
        if node is not None:
            q = q.where(CircuitRow.id.in_(select(CircuitNode.circuit_id).where(
                CircuitNode.node == node, CircuitNode.in_circuit.is_(True))))
        before = _parse_cursor(cursor)
        if before is not None:
            q = q.where(CircuitRow.seq < before)
        with db.read() as s:
            rows = list(s.scalars(q))
        more = len(rows) > limit
        rows = rows[:limit]
        return schemas.CircuitList(items=[circuit_view(c) for c in rows],
                                   next_cursor=_cursor(rows[-1].seq) if more else None)

    @app.get("/v1/circuits/{circuit_id}", tags=["circuits"],
             responses={200: {"description": "the circuit JSON (docs/circuit-format.md, with labels when the job "
                                             "labeled it), or the requested format",
                              "content": {"application/json": {"schema": {"type": "object"}}}},
                        **_PROBLEM_RESPONSES})
    def get_circuit(circuit_id: str, who: Owner,
                    format: Annotated[Literal[tuple(FORMATS)], Query(description="an export format")] = "json"):
        with db.read() as s:
            row = s.scalar(owned_circuit(circuit_id, who.scope))
            if row is None:
                raise NotFound(f"no circuit with id '{circuit_id}'")
            content = get_artifact(s, row.artifact_sha256)
        headers = {"ETag": f'"{row.artifact_sha256}"'}
        try:
            body, media_type = render(content, format)
        except UserError as exc:  # e.g. a circuit stored before it carried the representative row
            raise Unprocessable(str(exc)) from None
        if format == "mib-pt":
            headers["Content-Disposition"] = f'attachment; filename="{circuit_id}.pt"'
        return Response(body, media_type=media_type, headers=headers)

    @app.get("/healthz", tags=["service"], response_model=schemas.Health,
             responses={503: {"model": schemas.Health, "description": "a part is failing: `reason` says which"}})
    def health():
        """Health, without a token and without any owner's data. The store is probed now (a read, and a
        write that changes nothing; a write that failed since the last good one counts too), with or
        without a dispatcher in this process; the dispatcher's own store calls when it has one. 503 with
        `checks` (each part: "ok" or why it fails), `reason` (the first failing part) and Retry-After."""
        probe = db.probe()
        checks = {f"store_{k}": v or "ok" for k, v in probe.items()}
        dispatcher = getattr(app.state, "dispatcher", None)
        if dispatcher is not None and hasattr(dispatcher, "health"):
            ok, why = dispatcher.health()
            checks["dispatcher"] = "ok" if ok else why
        failing = [f"{part}: {why}" for part, why in checks.items() if why != "ok"]
        if failing:
            return JSONResponse({"status": "unavailable", "reason": failing[0], "checks": checks}, status_code=503,
                                headers={"Retry-After": str(RETRY_AFTER_S)})
        return {"status": "ok", "checks": checks}

    from .watches import watch_router
    app.include_router(watch_router(db, queue, settings, Owner, _PROBLEM_RESPONSES))
    from ..ui import router as ui_router  # the browser pages (/ui): HTML shells that call this API
    app.include_router(ui_router)
    return app
