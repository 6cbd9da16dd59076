"""Running the service: the API app with its dispatcher under uvicorn, in the foreground
(`circuitry serve`) or in a background thread on a loopback port (tests, benchmarks)."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from .api.app import create_app
from .config import Settings
from .store.db import Database


def build_app(settings: Settings, *, dispatcher: bool = True, db: Database | None = None, scheduler: bool = False):
    """The app; with `dispatcher` it runs jobs, with `scheduler` it scans watches (both start and stop
    with the app, after the schema is migrated)."""
    if not dispatcher and not scheduler:
        return create_app(settings, db)

    def factory(queue):
        parts = []
        if dispatcher:
            from .api.callbacks import Callbacks
            from .jobs.dispatcher import Dispatcher
            from .jobs.executor import make_executor
            parts.append(Dispatcher(queue, make_executor(settings), concurrency=settings.concurrency,
                                    on_finished=Callbacks(queue, settings)))
        if scheduler:
            from .watches.scheduler import Scheduler
            parts.append(Scheduler(queue.db, settings, queue))
        return parts[0] if len(parts) == 1 else _Together(parts)
    return create_app(settings, db, dispatcher_factory=factory)


class _Together:
    """Background services started and stopped as one (the app's lifespan knows one)."""

    def __init__(self, parts):
        self.parts = parts
        self.executor = getattr(parts[0], "executor", None)  # the dispatcher's, as app.state.dispatcher has it

    def start(self) -> "_Together":
        for p in self.parts:
            p.start()
        return self

    def stop(self) -> None:
        for p in reversed(self.parts):
            p.stop()

    def health(self) -> tuple[bool, str | None]:
        for p in self.parts:
            ok, why = p.health() if hasattr(p, "health") else (True, None)
            if not ok:
                return ok, why
        return True, None


def _config(app, **kw) -> uvicorn.Config:
    # no access log: one line per request costs more than the request itself at benchmark rates
    return uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", **kw)


def serve(settings: Settings, host: str, port: int, *, dispatcher: bool = True, scheduler: bool = True,
          announce=print) -> None:
    """`circuitry serve`: the store migrated and the port bound first (a problem with either is one
    UserError line), then the URL and how to get a token, then uvicorn until interrupted."""
    from discovery.core.errors import UserError

    db = Database(settings.resolved_database_url())
    db.migrate()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port or --host") \
            from None
    server = uvicorn.Server(_config(build_app(settings, dispatcher=dispatcher, scheduler=scheduler, db=db)))
    shown = f"[{host}]" if ":" in host else host
    announce(f"circuitry service on http://{shown}:{port}  (API docs: http://{shown}:{port}/docs, "
             f"browser UI: http://{shown}:{port}/ui)")
    if settings.auth:
        announce("requests need a token: create one with 'circuitry tokens create --name NAME' (same "
                 "--database-url), then send 'Authorization: Bearer <token>'")
    else:
        announce("--no-auth: no token needed; anyone who can reach this port can use the service")
    server.run(sockets=[sock])


class BackgroundServer:
    """The service on 127.0.0.1:<free port> in a thread; `url` once started, `stop()` to end it."""

    def __init__(self, app):
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(_config(app))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self, timeout: float = 30.0) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the service did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()
