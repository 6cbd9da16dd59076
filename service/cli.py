"""`circuitry serve` (API + dispatcher + executor + scan scheduler), `circuitry tokens` (create, revoke, list)
and `circuitry scan` (service/watches/cli.py)."""

from __future__ import annotations

import os
import sys
from datetime import datetime, timezone

from discovery.core.errors import UserError

from .config import settings_from_args


def register(subparsers) -> None:
    s = subparsers.add_parser("serve", help="run the job service: HTTP API, dispatcher and executor")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--executor", choices=["ray", "inline"], default="ray",
                   help="ray: model actors on a local Ray (or RAY_ADDRESS); inline: jobs run in this process")
    s.add_argument("--concurrency", type=int, default=None, help="jobs this dispatcher runs at once (default 1)")
    s.add_argument("--no-dispatcher", action="store_true", help="API only: queue jobs, run none here")
    s.add_argument("--no-scheduler", action="store_true", help="do not scan watches here (see 'circuitry scan')")
    s.add_argument("--no-auth", action="store_true", help="accept requests without a token (local use only)")
    s.add_argument("--database-url", default=None, help="default: $DATABASE_URL, else SQLite under $CIRCUITRY_HOME")
    s.add_argument("--model-root", action="append", default=None,
                   help="directory whose model directories jobs may load (repeatable; adds to CIRCUITRY_MODEL_ROOTS)")
    s.add_argument("--device", default=None, help="device for models (default: CUDA when present)")
    s.add_argument("--lease-s", type=float, default=None, help="job lease in seconds (default 30)")
    s.add_argument("--heartbeat-s", type=float, default=None, help="heartbeat interval (default 5)")
    s.add_argument("--max-attempts", type=int, default=None, help="lease expiries before a job fails (default 3)")
    s.add_argument("--backoff-s", type=float, default=None, help="first retry delay, doubled per attempt (default 2)")
    s.add_argument("--actor-cpus", type=float, default=None, help="CPUs per Ray model actor (default 1)")
    s.add_argument("--actor-gpus", type=float, default=None, help="GPUs per Ray model actor (default 0)")
    s.add_argument("--max-actors", type=int, default=None, help="models kept loaded (LRU; default 2)")
    s.set_defaults(func=cmd_serve)

    t = subparsers.add_parser("tokens", help="API tokens: create, revoke, list")
    t.add_argument("--database-url", default=None)
    tsub = t.add_subparsers(dest="tokens_command", required=True, parser_class=type(t))
    c = tsub.add_parser("create", help="create a token and print its secret (shown only once)")
    c.add_argument("--name", required=True)
    c.add_argument("--max-active-jobs", type=int, default=None)
    c.add_argument("--admin", action="store_true",
                   help="an admin token: sees and changes every owner's jobs, circuits and watches")
    r = tsub.add_parser("revoke", help="revoke a token by id")
    r.add_argument("id", type=int)
    tsub.add_parser("list", help="list tokens (ids, names, prefixes; never secrets)")
    t.set_defaults(func=cmd_tokens)

    from .watches.cli import register as register_scan  # `circuitry scan`: watches of training checkpoints
    register_scan(subparsers)


def cmd_serve(args) -> int:
    import logging

    from .server import serve

    if args.concurrency is not None and args.concurrency < 1:
        raise UserError("--concurrency must be at least 1")
    if not 1 <= args.port <= 65535:
        raise UserError(f"--port must be between 1 and 65535 (got {args.port})")
    settings = settings_from_args(args, executor=args.executor, concurrency=args.concurrency, auth=not args.no_auth,
                         device=args.device, lease_s=args.lease_s, heartbeat_s=args.heartbeat_s,
                         max_attempts=args.max_attempts, backoff_s=args.backoff_s, actor_cpus=args.actor_cpus,
                         actor_gpus=args.actor_gpus, max_actors=args.max_actors)
    _check_serve_numbers(args)
    for root in args.model_root or []:
        if not os.path.isdir(root):
            raise UserError(f"--model-root '{root}' is not a directory; give a directory that holds model directories")
    for root in settings.model_roots:
        if not os.path.isdir(root):
            raise UserError(f"CIRCUITRY_MODEL_ROOTS names '{root}', which is not a directory; fix or unset it")
    if settings.heartbeat_s >= settings.lease_s:
        raise UserError(f"--heartbeat-s ({settings.heartbeat_s}) must be shorter than --lease-s ({settings.lease_s})")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # migrations say nothing unless something is wrong
    serve(settings, args.host, args.port, dispatcher=not args.no_dispatcher, scheduler=not args.no_scheduler,
          announce=lambda line: print(line, flush=True))
    return 0


def _check_serve_numbers(args) -> None:
    """Every number flag of `serve` finite and in range (`--lease-s nan` would make every lease expire)."""
    import math

    positive = {"lease_s": "--lease-s", "heartbeat_s": "--heartbeat-s"}
    non_negative = {"backoff_s": "--backoff-s", "actor_cpus": "--actor-cpus", "actor_gpus": "--actor-gpus"}
    for key, flag in {**positive, **non_negative}.items():
        value = getattr(args, key)
        if value is None:
            continue
        low_ok = value > 0 if key in positive else value >= 0
        if not math.isfinite(value) or not low_ok:
            bound = "a positive" if key in positive else "a non-negative"
            unit = " of seconds" if key.endswith("_s") else ""
            raise UserError(f"{flag} must be {bound} finite number{unit} (got {value})")
    for key, flag in {"max_attempts": "--max-attempts", "max_actors": "--max-actors"}.items():
        if getattr(args, key) is not None and getattr(args, key) < 1:
            raise UserError(f"{flag} must be at least 1 (got {getattr(args, key)})")


def cmd_tokens(args) -> int:
    from .store.db import Database
    from .store.tokens import create_token, list_tokens, revoke_token

    db = Database(settings_from_args(args).resolved_database_url())
    db.migrate()
    if args.tokens_command == "create":
        if args.max_active_jobs is not None and args.max_active_jobs < 1:
            raise UserError("--max-active-jobs must be at least 1")
        row, secret = create_token(db, args.name, args.max_active_jobs, admin=args.admin)
        # one line with both secrets (`tokens create | head -1` keeps them); the explanation goes to stderr
        line = (f"token {row.id} ({row.name}{', admin' if row.admin else ''}): {secret}  "
                f"callback signing secret: {row.callback_secret}\n")
        try:
            sys.stdout.write(line)
            sys.stdout.flush()
        except OSError:  # stdout closed (a pipe whose reader left): nobody saw the secret, so it must not stay valid
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (the interpreter's final flush must not fail again)
            revoke_token(db, row.id)
            raise UserError(f"standard output was closed before the secret was written; token {row.id} was "
                            "revoked: create another") from None
        print("keep them: the token is not stored and cannot be shown again (send it as 'Authorization: Bearer "
              "<token>'); callbacks of this token's jobs carry X-Circuitry-Signature, an HMAC-SHA256 with the "
              "signing secret (docs/service.md)", file=sys.stderr)
    elif args.tokens_command == "revoke":
        row = revoke_token(db, args.id)
        print(f"token {row.id} ({row.name}) revoked")
    else:
        for row in list_tokens(db):
            state = ("revoked" if row.revoked_at else "active") + (", admin" if row.admin else "")
            made = datetime.fromtimestamp(row.created_at, timezone.utc).isoformat(timespec="seconds")
            print(f"{row.id}\t{row.name}\t{row.prefix}...\t{state}\tcreated {made}")
    return 0
