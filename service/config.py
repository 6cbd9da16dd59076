"""Service settings: embedded defaults, overridden by environment variables and `circuitry serve` flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from discovery.core.errors import UserError


def _env_float(name: str, default: float, minimum: float = 0.0) -> float:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value >= minimum or value == float("inf"):
        raise UserError(f"{name}={raw!r} is not a number >= {minimum:g}; set it to one (e.g. {name}={default:g}) or "
                        "unset it")
    return value


def _env_int(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise UserError(f"{name}={raw!r} is not a whole number >= {minimum}; set it to one (e.g. {name}={default}) "
                        "or unset it")
    return value


def home() -> Path:
    return Path(os.environ.get("CIRCUITRY_HOME") or Path.home() / ".circuitry")


@dataclass
class Settings:
    database_url: str = ""  # empty: SQLite (WAL) under $CIRCUITRY_HOME
    model_roots: list[str] = field(default_factory=list)
    auth: bool = True
    # queue
    lease_s: float = 30.0  # a worker that misses heartbeats for this long loses its job
    heartbeat_s: float = 5.0
    max_attempts: int = 3  # lease expiries before the job fails
    backoff_s: float = 2.0  # retry n waits backoff_s * 2**(n-1), capped at backoff_max_s
    backoff_max_s: float = 300.0
    poll_s: float = 0.5  # how often an idle dispatcher looks for work
    # limits
    max_active_jobs: int = 100  # per token: queued + running + labeling
    max_body_bytes: int = 8 * 1024 * 1024
    max_rows: int = 10_000  # inline rows or built-in size n
    max_tokens_per_row: int = 2048
    # executor
    executor: str = "ray"  # "ray" or "inline"
    concurrency: int = 1  # jobs run at once by this dispatcher
    ray_address: str | None = None
    actor_cpus: float = 1.0
    actor_gpus: float = 0.0
    max_actors: int = 2  # model actors kept alive; least recently used is evicted
    device: str | None = None  # None: the executor's default (CUDA when present)
    # callbacks: addresses (IPs, CIDRs or host names) a callback may reach although not public
    callback_allow: list[str] = field(default_factory=list)
    callback_secret: str | None = None  # signs the callbacks of jobs without a token (--no-auth)

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        roots = [r for r in os.environ.get("CIRCUITRY_MODEL_ROOTS", "").split(":") if r]
        s = cls(
            database_url=os.environ.get("DATABASE_URL", ""),
            model_roots=roots,
            lease_s=_env_float("CIRCUITRY_LEASE_S", cls.lease_s),
            heartbeat_s=_env_float("CIRCUITRY_HEARTBEAT_S", cls.heartbeat_s),
            max_attempts=_env_int("CIRCUITRY_MAX_ATTEMPTS", cls.max_attempts),
            backoff_s=_env_float("CIRCUITRY_BACKOFF_S", cls.backoff_s),
            poll_s=_env_float("CIRCUITRY_POLL_S", cls.poll_s),
            max_active_jobs=_env_int("CIRCUITRY_MAX_ACTIVE_JOBS", cls.max_active_jobs),
            max_body_bytes=_env_int("CIRCUITRY_MAX_BODY_BYTES", cls.max_body_bytes),
            max_rows=_env_int("CIRCUITRY_MAX_ROWS", cls.max_rows),
            ray_address=os.environ.get("RAY_ADDRESS") or None,
            callback_allow=[x.strip() for x in os.environ.get("CIRCUITRY_CALLBACK_ALLOW", "").split(",") if x.strip()],
            callback_secret=os.environ.get("CIRCUITRY_CALLBACK_SECRET") or None,
        )
        for k, v in overrides.items():
            if v is not None:
                setattr(s, k, v)
        return s

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        h = home()
        try:
            h.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the service's home directory '{h}' ({exc.strerror}); set CIRCUITRY_HOME "
                            "to a writable directory, or DATABASE_URL") from None
        return f"sqlite:///{h / 'circuitry.db'}"

    def backoff(self, attempt: int) -> float:
        return min(self.backoff_max_s, self.backoff_s * 2 ** max(0, attempt - 1))


def settings_from_args(args, **overrides) -> Settings:
    """Settings from the environment, overridden by a command's --database-url, --model-root and `overrides`."""
    settings = Settings.from_env(database_url=args.database_url, **overrides)
    if getattr(args, "model_root", None):
        settings.model_roots = settings.model_roots + [os.path.abspath(r) for r in args.model_root]
    return settings
