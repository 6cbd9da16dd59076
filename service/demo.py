"""`circuitry demo`: the whole path a user takes, on the two shipped toy models. It starts the service
in this process (inline executor, a loopback port, a store under OUT/service), creates a token, submits
one job per model through the HTTP API, follows their progress, fetches the labeled circuits, prints a
summary, and writes the viewer pages and a plot of the stored faithfulness curves. It lives with the
service (it starts one) and is registered in the CLI after `circuitry view` (discovery/cli/commands.py
EXTENSION_MODULES)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

TERMINAL = ("succeeded", "failed", "cancelled")


def register(subparsers) -> None:
    d = subparsers.add_parser("demo", help="end-to-end demo on the shipped toy models: service, jobs, labels, viewer")
    d.add_argument("--out", default="out/demo", help="where the viewer pages and the plot go (default out/demo)")
    d.add_argument("--home", default=None,
                   help="the demo service's $CIRCUITRY_HOME (its database); default OUT/service")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from discovery.core.errors import check_output_path

    check_output_path(args.out, "--out", folder=True, make_parents=True)  # before the service starts
    if args.home is not None:
        check_output_path(args.home, "--home", folder=True, make_parents=True)
    return run_demo(out=args.out, home=args.home, progress=not args.quiet)

# The jobs: the default method (`auto`: EAP-IG with the QK fix, the smallest top-k circuit that reaches
# the faithfulness target) on each model's own task metric. The toy models were trained on their tasks'
# seed-0 rows, so the demo uses seed 1. Both keep the faithfulness curve (for the plot) and label with
# the offline labeler.
JOBS = {
    "induction": {"model": {"name": "toy:induction"}, "task": {"builtin": "induction", "n": 32, "seed": 1},
                  "method": {"name": "auto", "curve": True}, "labeling": {"backend": "heuristic"}},
    "ioi": {"model": {"name": "toy:ioi"}, "task": {"builtin": "ioi", "n": 64, "seed": 1},
            "method": {"name": "auto", "curve": True}, "labeling": {"backend": "heuristic"}},
}


def start_service(home: Path):
    """The service on a free loopback port with its own SQLite store, and a fresh token's secret."""
    from .config import Settings
    from .server import BackgroundServer, build_app
    from .store.db import Database
    from .store.tokens import create_token

    home.mkdir(parents=True, exist_ok=True)
    settings = Settings(database_url=f"sqlite:///{home.resolve() / 'circuitry.db'}", executor="inline",
                        concurrency=1, poll_s=0.1)
    db = Database(settings.resolved_database_url())
    db.migrate()
    _, secret = create_token(db, "demo")
    return BackgroundServer(build_app(settings, db=db)).start(), secret


def follow(client, job_ids: dict[str, str], progress: bool = True, timeout: float = 600.0) -> dict[str, dict]:
    """Poll the jobs until all have ended, with one progress bar per job on stderr."""
    from discovery.core.progress import Plain, progress as progress_bar

    bars = {name: progress_bar(total=100, desc="queued", position=i, leave=True, disable=not progress, file=sys.stderr,
                       bar_format=f"{name:<10}" + " {bar:20} {n:3.0f}%  {desc}")
            for i, name in enumerate(job_ids)}
    done: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(done) < len(job_ids):
            for name, jid in job_ids.items():
                if name in done:
                    continue
                r = client.get(f"/v1/jobs/{jid}")
                r.raise_for_status()
                job = r.json()
                pct = 100.0 if job["status"] == "succeeded" else round(100 * (job["progress"] or 0.0))
                bars[name].n = pct
                note = job.get("error") or job.get("message") or ""
                where = f"{name} " if isinstance(bars[name], Plain) else ""  # a plain line names its job
                bars[name].set_description_str(f"{where}{job['status']}" + (f": {note}"[:70] if note else ""))
                if job["status"] in TERMINAL:
                    done[name] = job
            if time.monotonic() > deadline:
                raise TimeoutError(f"the demo jobs did not finish in {timeout:.0f}s")
            time.sleep(0.2)
    finally:
        for b in bars.values():
            b.close()
    return done


def summary(name: str, c: dict) -> str:
    m = c["metrics"]
    labels = {r["component"]: r for r in c.get("labels") or []}
    comps = [n["id"] for n in c["nodes"] if n["in_circuit"] and n["kind"] in ("attention", "mlp")]
    f, sel = m.get("faithfulness"), c["selection"]
    how = f"target {sel['value']:g}" if sel["kind"] == "faithfulness" else f"{sel['kind']} {sel['value']}"
    lines = [f"{name}: {c['model']['name']} on {c['task']['name']} ({c['task']['rows']} rows), {c['method']['name']} "
             f"({how}): {m['n_edges']} of {len(c['edges'])} edges kept, {m['n_nodes']} nodes, "
             f"faithfulness {'n/a' if f is None else f'{f:.3f}'} ({m['metric']})"]
    for comp in comps:
        r = labels.get(comp)
        text = f"{r['label']} [{', '.join(r['role_tags'])}] {r['status']}" if r else "(no label)"
        lines.append(f"  {comp:<7} {text}")
    return "\n".join(lines)


def plot_curves(circuits: dict[str, dict], path: Path) -> Path | None:
    """The stored faithfulness curves (by |score| and by signed score), one panel per circuit, with the
    circuit itself marked."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(circuits), figsize=(5.2 * len(circuits), 3.8), squeeze=False)
    for ax, (name, c) in zip(axes[0], circuits.items()):
        m = c["metrics"]
        for key, style, text in (("curve_absolute", "-o", "by |score|"), ("curve_signed", "--s", "by signed score")):
            pts = [p for p in m.get(key) or [] if p["faithfulness"] is not None]
            if pts:
                ax.plot([p["percent"] for p in pts], [p["faithfulness"] for p in pts], style, ms=3, label=text)
        if m.get("faithfulness") is not None:
            ax.plot([100 * m["n_edges"] / len(c["edges"])], [m["faithfulness"]], "*", ms=12, color="tab:green",
                    label=f"circuit ({m['n_edges']} edges)")
        ax.axhline(1.0, color="grey", lw=0.6, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("edges kept (% of the graph)")
        ax.set_ylabel("faithfulness")
        ax.set_title(f"{name}: {c['model']['name']}, {c['method']['name']}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_demo(out: str = "out/demo", home: str | None = None, progress: bool = True, jobs: dict | None = None) -> int:
    """`jobs`: name -> job body (default JOBS)."""
    import httpx

    from viewer.render import render_circuit, write_html

    t0 = time.monotonic()
    out_dir = Path(out)
    home_dir = Path(home) if home else out_dir / "service"
    server, secret = start_service(home_dir)
    jobs = jobs or JOBS
    print(f"service on {server.url} (store {home_dir}/circuitry.db); submitting {len(jobs)} jobs", file=sys.stderr)
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {secret}"}, timeout=60) as client:
            ids = {}
            for name, body in jobs.items():
                r = client.post("/v1/jobs", json=body)
                r.raise_for_status()
                ids[name] = r.json()["id"]
            ended = follow(client, ids, progress=progress)
            failed = {n: j for n, j in ended.items() if j["status"] != "succeeded"}
            if failed:
                for n, j in failed.items():
                    print(f"demo job {n} {j['status']}: {j.get('error')}", file=sys.stderr)
                return 1
            circuits = {}
            for name, job in ended.items():
                r = client.get(f"/v1/circuits/{job['circuit_id']}")
                r.raise_for_status()
                circuits[name] = r.json()
    finally:
        server.stop()

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, c in circuits.items():
        (out_dir / f"{name}.json").write_text(json.dumps(c, indent=1))
        written.append(write_html(out_dir / f"{name}.html", render_circuit(c, name=f"{name}.json")))
    plot = plot_curves(circuits, out_dir / "faithfulness.png")
    print()
    for name, c in circuits.items():
        print(summary(name, c))
    print()
    for p in written:
        print(f"viewer: {p}")
    print(f"faithfulness plot: {plot}" if plot else "faithfulness plot: skipped (matplotlib is not installed)")
    print(f"circuits: {', '.join(str(out_dir / f'{n}.json') for n in circuits)}; also stored in {home_dir}/circuitry.db "
          f"(to browse it: export CIRCUITRY_HOME={home_dir}; circuitry tokens create --name me; "
          f"circuitry serve --executor inline; open http://127.0.0.1:8000/ui)")
    print(f"demo took {time.monotonic() - t0:.1f}s")
    return 0
