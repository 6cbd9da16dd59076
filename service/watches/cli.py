"""`circuitry scan`: watches of checkpoint sources (add, list, remove, run-now), a watch's timeline
(text, JSON, PNG chart) and the scheduler on its own. Like `circuitry tokens`, it works on the store
directly (DATABASE_URL, else SQLite under $CIRCUITRY_HOME): the jobs it queues run wherever a
dispatcher (`circuitry serve`) runs on that store."""

from __future__ import annotations

import re
import sys
import time

from discovery.core.errors import UserError
from discovery.core.names import ALL_METHODS
from discovery.core.registry import DEFAULT_METHOD

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """Seconds from 90, 90s, 10m, 6h, 1d."""
    m = _DURATION.match(text)
    if not m:
        raise UserError(f"'{text}' is not a duration; write seconds or a number with s, m, h or d (e.g. 10m)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def register(subparsers) -> None:
    p = subparsers.add_parser("scan", help="watch checkpoints on a schedule: add, list, remove, run-now, timeline")
    p.add_argument("--database-url", default=None, help="default: $DATABASE_URL, else SQLite under $CIRCUITRY_HOME")
    p.add_argument("--model-root", action="append", default=None,
                   help="directory whose subdirectories may be watched (repeatable; adds to CIRCUITRY_MODEL_ROOTS)")
    sub = p.add_subparsers(dest="scan_command", required=True, parser_class=type(p))

    a = sub.add_parser("add", help="watch a checkpoint source")
    whose = a.add_mutually_exclusive_group()
    whose.add_argument("--token", default=None,
                       help="the API token (its secret) whose watch this is: the watch and its jobs belong to that "
                            "token's tenant, as if made with POST /v1/watches")
    whose.add_argument("--owner", default=None,
                       help="... or that token's id or name (see 'circuitry tokens list'); without either, the "
                            "watch belongs to no token (seen by 'serve --no-auth' and admin tokens only)")
    a.add_argument("--source", required=True, help="toy:NAME, a directory under a model root, or a hub repo id")
    a.add_argument("--kind", choices=["auto", "toy", "dir", "hub"], default="auto")
    a.add_argument("--name", default=None)
    a.add_argument("--pattern", default=None, help="checkpoint names to take (glob, e.g. 'step*')")
    a.add_argument("--regex", action="store_true", help="--pattern is a regular expression (full match)")
    a.add_argument("--task", action="append", required=True,
                   help="a built-in task, or a JSONL task file whose rows are stored with the watch (repeatable)")
    a.add_argument("--n", type=int, default=None, help="rows per built-in task (default 200)")
    a.add_argument("--seed", type=int, default=None)
    a.add_argument("--method", default=None,
                   help=f"as 'circuitry discover --method': {DEFAULT_METHOD} (default: EAP-IG with the QK fix, the "
                        f"smallest circuit meeting --target), {', '.join(m for m in ALL_METHODS if m != DEFAULT_METHOD)}")
    a.add_argument("--target", type=float, default=None,
                   help="keep the smallest top-k circuit whose faithfulness is within 1-T of 1 (default 0.9)")
    a.add_argument("--metric", default=None)
    a.add_argument("--tau", type=float, default=None, help="ACDC threshold")
    a.add_argument("--candidates", type=int, default=None, help="eap-ig+acdc: edges EAP-IG hands to ACDC")
    a.add_argument("--steps", type=int, default=None)
    a.add_argument("--batch-size", type=int, default=None)
    a.add_argument("--top-n", type=int, default=None)
    a.add_argument("--threshold", type=float, default=None)
    a.add_argument("--label", default="none", help="labeling backend for each circuit (e.g. heuristic)")
    a.add_argument("--dtype", default=None)
    when = a.add_mutually_exclusive_group(required=True)
    when.add_argument("--every", type=duration, default=None, help="scan interval: 30s, 10m, 6h, 1d")
    when.add_argument("--cron", default=None, help="cron expression, UTC (e.g. '*/30 * * * *')")
    a.add_argument("--settle", type=duration, default=60.0,
                   help="a directory checkpoint is complete once unchanged this long (default 60s)")
    a.add_argument("--marker", default=None, help="... or at once when this file exists in it (e.g. COMPLETE)")
    a.add_argument("--disabled", action="store_true", help="add it paused (run-now still scans it)")

    sub.add_parser("list", help="list watches")
    r = sub.add_parser("remove", help="stop watching (its jobs and circuits stay)")
    r.add_argument("id")
    n = sub.add_parser("run-now", help="scan a watch now and queue its new checkpoints")
    n.add_argument("id")
    n.add_argument("--wait", action="store_true", help="then wait until the watch's jobs have finished")
    n.add_argument("--timeout", type=duration, default=3600.0, help="with --wait: give up after this long")
    t = sub.add_parser("timeline", help="a watch's circuits per checkpoint, in training order")
    t.add_argument("id")
    t.add_argument("--task", default=None, help="only this task")
    t.add_argument("--json", action="store_true")
    t.add_argument("--chart", default=None, help="write a PNG chart (circuit size, faithfulness, behaviour)")
    s = sub.add_parser("scheduler", help="run the scheduler alone (no API, no dispatcher)")
    s.add_argument("--poll-s", type=float, default=None, help="how often to look for due watches (default 5)")
    for each in (a, sub.choices["list"], r, n, t, s):  # the store options also after the subcommand
        each.add_argument("--database-url", dest="sub_database_url", default=None, metavar="URL",
                          help="as before the subcommand")
        each.add_argument("--model-root", dest="sub_model_root", action="append", default=None, metavar="DIR",
                          help="as before the subcommand (repeatable)")
    p.set_defaults(func=cmd_scan)


def cmd_scan(args) -> int:
    from ..config import settings_from_args as _settings
    from ..problems import ApiError
    from ..store.db import Database

    if args.sub_database_url:
        args.database_url = args.sub_database_url
    args.model_root = (args.model_root or []) + (args.sub_model_root or [])
    settings = _settings(args)
    db = Database(settings.resolved_database_url())
    db.migrate()
    try:
        return {"add": _add, "list": _list, "remove": _remove, "run-now": _run_now, "timeline": _timeline,
                "scheduler": _scheduler}[args.scan_command](args, db, settings)
    except ApiError as exc:  # NotFound and the like, from the store the API shares
        raise UserError(exc.detail) from None


def _request(args):
    from pydantic import ValidationError

    from .schemas import WatchRequest

    method = {k: v for k, v in dict(name=args.method, metric=args.metric, tau=args.tau, candidates=args.candidates,
                                    steps=args.steps, batch_size=args.batch_size).items() if v is not None}
    selection = {k: v for k, v in dict(top_n=args.top_n, threshold=args.threshold, target=args.target).items()
                 if v is not None}
    body = dict(source=args.source, kind=args.kind, name=args.name, pattern=args.pattern,
                pattern_kind="regex" if args.regex else "glob",
                tasks=[_task(t, args) for t in args.task], method=method,
                selection=selection, labeling={"backend": args.label}, dtype=args.dtype, interval_s=args.every,
                cron=args.cron, quiet_s=args.settle, marker=args.marker, enabled=not args.disabled)
    try:
        return WatchRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "watch"
        raise UserError(f"{where}: {first['msg']}") from None


def _task(text: str, args) -> dict:
    """--task: a built-in task name, or a JSONL file whose rows the watch stores (the file may change
    or go later; the watch keeps scanning with the rows it was given)."""
    import json
    import os

    from discovery.core.names import TASK_NAMES

    if not os.path.isfile(text) and text in TASK_NAMES:
        size = {k: v for k, v in (("n", args.n), ("seed", args.seed)) if v is not None}
        return {"builtin": text, **size}
    if not os.path.isfile(text):
        raise UserError(f"--task '{text}' is neither a task file nor a built-in task ({', '.join(TASK_NAMES)})")
    rows = []
    with open(text) as fh:
        for i, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as exc:
                    raise UserError(f"task file '{text}' line {i} is not JSON: {exc.msg}") from None
    if not rows:
        raise UserError(f"task file '{text}' has no rows")
    name = re.sub(r"[^A-Za-z0-9_.:-]", "_", os.path.splitext(os.path.basename(text))[0])[:128] or "file"
    return {"rows": rows, "name": name}


def _add(args, db, settings) -> int:
    from ..store.tokens import owner_key
    from .store import create_watch

    owner, who = ("-", "no token") if args.token is None and args.owner is None else \
        owner_key(db, secret=args.token, name=args.owner)
    row = create_watch(db, settings, _request(args), owner=owner)
    print(f"watch {row.id} ({row.source_kind} {row.source}): {_schedule(row)}; first scan due now; owner {who}")
    return 0


def _schedule(row) -> str:
    return f"cron '{row.cron}' (UTC)" if row.cron else f"every {row.interval_s:g}s"


def _list(args, db, settings) -> int:
    from ..store.tokens import list_tokens
    from .store import list_watches, watch_view

    names = {str(tok.id): f"{tok.name} (token {tok.id})" for tok in list_tokens(db)}
    for row in list_watches(db):
        v = watch_view(db, row)
        counts = ", ".join(f"{k} {n}" for k, n in sorted(v.counts.items())) or "no jobs yet"
        state = "" if row.enabled else " [disabled]"
        print(f"{row.id}\t{row.name}\t{row.source} ({row.source_kind})\t{_schedule(row)}{state}\tnext {v.next_run_at}\t"
              f"{counts}\towner {names.get(row.owner, 'no token')}" +
              (f"\tlast error: {row.last_error}" if row.last_error else ""))
    return 0


def _remove(args, db, settings) -> int:
    from .store import remove_watch

    row = remove_watch(db, args.id)
    print(f"watch {row.id} ({row.name}) removed; its jobs and circuits stay")
    return 0


def _run_now(args, db, settings) -> int:
    from ..jobs.queue import Queue
    from ..store.tables import TERMINAL
    from .scheduler import tick
    from .store import checkpoints, get_watch

    report = tick(db, Queue(db, settings), settings, get_watch(db, args.id))
    if report.error:
        raise UserError(f"could not list the watch's checkpoints: {report.error}")
    fresh = [s for s in report.submitted if s.created]
    print(f"{report.ready} complete checkpoints; queued {len(fresh)} jobs" +
          (f" ({len(report.submitted) - len(fresh)} were already queued)" if len(fresh) < len(report.submitted) else ""))
    for s in report.submitted:
        print(f"  {s.checkpoint:<20} {s.task:<16} job {s.job_id}")
    for w in report.waiting + report.skipped:
        print(f"  {w['checkpoint']:<20} not taken: {w['reason']}")
    if report.deferred:
        print("  (the active-job limit cut this scan short; the rest is queued at the next scan)")
    if not args.wait:
        return 0
    deadline = time.monotonic() + args.timeout
    while True:
        rows = checkpoints(db, args.id)
        if all(r.status in TERMINAL for r in rows):
            break
        if time.monotonic() > deadline:
            raise UserError(f"the watch's jobs are still running after {args.timeout:g}s (is a dispatcher running? "
                            "start one with 'circuitry serve')")
        time.sleep(1.0)
    for r in rows:
        print(f"  {r.checkpoint:<20} {r.task:<16} {r.status}" + (f": {r.error}" if r.error else ""))
    return 0 if all(r.status == "succeeded" for r in rows) else 1


def _timeline(args, db, settings) -> int:
    from discovery.core.errors import check_output_path
    from discovery.io.timeline import plot_timeline, point_line

    if args.chart:
        check_output_path(args.chart, "--chart")  # before the store is read

    from .store import watch_timeline

    tl = watch_timeline(db, args.id)
    tasks = [t for t in tl.tasks if args.task in (None, t.task)]
    if not tasks:
        raise UserError(f"the watch has no task '{args.task}'; its tasks: {', '.join(t.task for t in tl.tasks)}")
    if args.json:
        print(tl.model_copy(update={"tasks": tasks}).model_dump_json(indent=1))
    for t in tasks:
        if not args.json:
            print(f"task {t.task}:")
            points = {p.revision: p for p in t.points}
            for c in t.checkpoints:
                p = points.get(c.checkpoint)
                if p is None or c.status != "succeeded":
                    print(f"  {c.checkpoint:<14} {c.status}" + (f": {c.error}" if c.error else ""))
                    continue
                print(f"  {c.checkpoint:<14} {point_line(p)}")
        if args.chart:
            if not t.points:
                raise UserError(f"task {t.task} has no finished circuits yet; nothing to chart")
            path = args.chart if len(tasks) == 1 else _per_task(args.chart, t.task)
            print(f"chart -> {plot_timeline(t.points, path, title=f'{tl.source}: {t.task}')}", file=sys.stderr)
    return 0


def _per_task(path: str, task: str) -> str:
    stem, dot, ext = path.rpartition(".")
    return f"{stem}.{task}.{ext}" if dot else f"{path}.{task}.png"


def _scheduler(args, db, settings) -> int:
    import logging

    from .scheduler import Scheduler

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    scheduler = Scheduler(db, settings, poll_s=args.poll_s).start()
    print("scheduler running; Ctrl-C to stop", file=sys.stderr)
    try:
        while True:
            time.sleep(3600)
    finally:
        scheduler.stop()
