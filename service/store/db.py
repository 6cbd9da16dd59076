"""The database: one engine for SQLite (WAL, the default) or PostgreSQL (DATABASE_URL), versioned
migrations run at startup, and sessions for reading and for writing."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DatabaseError, DataError, DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from discovery.core.errors import UserError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class Database:
    def __init__(self, url: str):
        self.url = url
        self.sqlite = url.startswith("sqlite")
        if self.sqlite:
            _check_sqlite_path(url)
            self.engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                                        pool_size=20, max_overflow=20)
            _sqlite_setup(self.engine)
        elif url.startswith("postgresql"):
            self.engine = create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)
        else:
            raise UserError(f"unsupported DATABASE_URL '{url.split(':')[0]}:...'; use sqlite:///PATH or "
                            "postgresql+psycopg://USER@HOST/DB")
        # Writers take SQLite's write lock when they begin, not when they first write: a deferred
        # transaction that reads and then writes fails at once (busy snapshot) if another writer got in first.
        writer = self.engine.execution_options(circuitry_write=True) if self.sqlite else self.engine
        # SQLite has one writer at a time; threads of this process queue on a lock (prompt hand-over)
        # rather than on SQLite's busy handler, which sleeps up to 100 ms between retries.
        self._write_lock = threading.Lock() if self.sqlite else nullcontext()
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(writer, expire_on_commit=False)

        self.health = StoreHealth()

    @contextmanager
    def read(self) -> Iterator[Session]:
        try:
            with self._read() as s:
                yield s
        except Exception as exc:
            if is_outage(exc):
                self.health.failed("read", exc)
            raise

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A transaction committed at the end of the block (rolled back on an exception)."""
        try:
            with self._write_lock, self._write() as s, s.begin():
                yield s
        except Exception as exc:
            if is_outage(exc):
                self.health.failed("write", exc)
            raise
        self.health.succeeded("write")

    def probe(self, timeout_s: float = 2.0) -> dict[str, str | None]:
        """Ask the store now: {"read": None or why it failed, "write": ...}. The read runs a query on the
        jobs table; the write runs an UPDATE that changes no row, in a transaction rolled back (a read-only
        or unreachable database, a dropped schema or a lock held past `timeout_s` fail it). A write that
        failed for want of space (disk full) since the last successful one also counts (StoreHealth)."""
        out: dict[str, str | None] = {"read": None, "write": None}
        try:
            with self._read() as s:
                if not self.sqlite:
                    s.execute(text(f"SET LOCAL statement_timeout = {int(timeout_s * 1000)}"))
                s.execute(text("SELECT 1 FROM jobs LIMIT 1")).all()
            self.health.succeeded("read")
        except Exception as exc:  # noqa: BLE001 (any failure of the store is what this reports)
            out["read"] = outage_reason(exc)
        locked = self._write_lock.acquire(timeout=timeout_s) if self.sqlite else True
        if not locked:
            return out  # this process has been writing all along: the store takes writes
        ms = int(timeout_s * 1000)
        try:
            with self.engine.connect() as conn:
                if self.sqlite:  # wait at most timeout_s for another process's write lock
                    conn.exec_driver_sql(f"PRAGMA busy_timeout = {ms}")
                    conn.commit()
                    conn = conn.execution_options(circuitry_write=True)  # BEGIN IMMEDIATE: take the write lock
                trans = conn.begin()
                try:
                    if not self.sqlite:
                        conn.execute(text(f"SET LOCAL statement_timeout = {ms}"))
                    conn.execute(text("UPDATE jobs SET attempt = attempt WHERE 1 = 0"))
                finally:
                    trans.rollback()
                    if self.sqlite:
                        conn.exec_driver_sql("PRAGMA busy_timeout = 30000")
                        conn.commit()
        except Exception as exc:  # noqa: BLE001
            out["write"] = outage_reason(exc)
        finally:
            if self.sqlite:
                self._write_lock.release()
        if out["write"] is None:
            out["write"] = self.health.recent_failure("write")
        return out

    def migrate(self) -> None:
        """Bring the schema to the newest migration (idempotent; safe with several processes starting).
        A file that is no database, or a server that cannot be reached, is a UserError."""
        try:
            self._migrate()
        except DatabaseError as exc:
            where = self.url.split("///", 1)[-1] if self.sqlite else self.url.split("@")[-1]
            first = str(exc.orig if getattr(exc, "orig", None) is not None else exc).splitlines()[0]
            hint = ("it is not a SQLite database (corrupt, or another kind of file): move it away or point "
                    "DATABASE_URL elsewhere") if "not a database" in first or "malformed" in first else \
                "check DATABASE_URL and that the database is reachable"
            raise UserError(f"database '{where}' cannot be used: {first}; {hint}") from None

    def _migrate(self) -> None:
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.execution_options(circuitry_write=True).begin() as conn:
            if not self.sqlite:  # one migrator at a time; SQLite's BEGIN IMMEDIATE already serializes
                conn.execute(text("SELECT pg_advisory_xact_lock(7336130)"))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def dispose(self) -> None:
        self.engine.dispose()


def is_outage(exc: BaseException) -> bool:
    """An error of the store itself (unreachable, locked, full, read-only, schema gone), which a retry can
    outlast: not a constraint the request broke (IntegrityError) nor a value the store refused (DataError)."""
    if isinstance(exc, (IntegrityError, DataError)):
        return False
    return isinstance(exc, (DBAPIError, PoolTimeout, DatabaseError))


def outage_reason(exc: BaseException) -> str:
    """One line about a store error, without credentials: the driver's first line."""
    orig = getattr(exc, "orig", None)
    text_ = str(orig if orig is not None else exc).strip()
    first = text_.splitlines()[0] if text_ else type(exc).__name__
    return first[:300]


class StoreHealth:
    """The last failure of each kind of store call ("read", "write") until one succeeds again; what
    /healthz reports next to its own probe (a full disk shows only when a write needs space)."""

    def __init__(self):
        self._failed: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()

    def failed(self, kind: str, exc: BaseException) -> None:
        with self._lock:
            self._failed[kind] = (time.monotonic(), outage_reason(exc))

    def succeeded(self, kind: str) -> None:
        if kind in self._failed:
            with self._lock:
                self._failed.pop(kind, None)

    def recent_failure(self, kind: str) -> str | None:
        with self._lock:
            entry = self._failed.get(kind)
        if entry is None:
            return None
        return f"{entry[1]} ({time.monotonic() - entry[0]:.0f}s ago, no {kind} has succeeded since)"


def _check_sqlite_path(url: str) -> None:
    path = url.split(":///", 1)[-1].split("?", 1)[0]
    if url.startswith("sqlite:///") and path and path != ":memory:":
        parent = Path(path).expanduser().resolve().parent
        if not parent.is_dir():
            raise UserError(f"the SQLite database's directory '{parent}' does not exist; create it, or give another "
                            "path (DATABASE_URL=sqlite:///PATH, --database-url)")


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # pysqlite's own BEGIN handling off: we emit BEGIN below
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        immediate = conn.get_execution_options().get("circuitry_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
