"""Before/after check for a restructuring: the same CLI runs on two trees give the same circuit files.

    python benchmarks/same_circuits.py --before REV [--after DIR] [--n 8] [--keep DIR]

`--before REV` is checked out (detached) in a temporary `git worktree`; `--after` is a source tree
(default: the tree this script is in). For each tree, one subprocess with PYTHONPATH set to that tree
runs `discovery.cli:main` in-process for every case below (every method, the node and neuron levels,
positions, the interventions, grouped k/v edges, `evaluate --json` and every export format) on the three
shipped toys (`toy:induction`, `toy:ioi`, `toy:llama-induction`) with a small fixed `--n`. It then
compares, case by case (position-aware runs on a fixed token-id task of one layout): the exit code, stdout with the wall time masked, the last stderr line, and the
written files. Circuit JSON is compared apart from the fields that record when, how long, how much
memory and which commit (`created_at`, `create_time_ms`, `wall_time_s`, `peak_memory_bytes`, `code_version`,
any numeric `*_s` timing, and the `+gSHA` of a version string); everything else (schema, edge order, names, scores, metrics) must
be equal exactly. Other exported files must be byte-identical apart from the same fields where JSON.
Exit 0 when every case is equal, 1 otherwise (each difference listed).

Runs sequentially (a few minutes for both trees on 2 busy cores at --n 8).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
TOYS = ("toy:induction", "toy:ioi", "toy:llama-induction")
VOLATILE = {"created_at", "wall_time_s", "peak_memory_bytes", "code_version", "create_time_ms"}

# (case name, discover arguments); each writes OUT/<toy>/<case>.json
CASES = [
    ("auto", []),
    ("eap-target", ["--method", "eap"]),
    ("eap-ig-top", ["--method", "eap-ig", "--steps", "3", "--top-n", "20"]),
    ("eap-ig-act", ["--method", "eap-ig-activations", "--steps", "3", "--top-n", "20", "--no-curve"]),
    ("clean-corrupted-qk", ["--method", "clean-corrupted", "--qk-fix", "--threshold", "0.01", "--no-curve"]),
    ("exact", ["--method", "exact", "--greedy", "15", "--no-curve"]),
    ("acdc", ["--method", "acdc", "--tau", "0.05", "--no-curve"]),
    ("eap-ig-acdc", ["--method", "eap-ig+acdc", "--candidates", "30", "--tau", "0.02,0.1", "--no-curve"]),
    ("edge-pruning", ["--method", "edge-pruning", "--train-steps", "10", "--no-curve"]),
    ("node", ["--method", "eap", "--level", "node", "--top-n", "5", "--no-curve"]),
    ("neuron", ["--method", "eap-ig", "--steps", "2", "--level", "neuron", "--top-n", "40", "--no-curve"]),
    ("positions", ["--method", "eap", "--positions", "--top-n", "30", "--no-curve", "TEMPLATE"]),
    ("zero", ["--method", "eap", "--intervention", "zero", "--top-n", "20", "--signed", "--no-curve"]),
    ("mean", ["--method", "eap-ig", "--steps", "2", "--intervention", "mean", "--top-n", "20", "--no-prune",
              "--no-curve"]),
    ("kv-grouped", ["--method", "eap", "--kv-edges", "grouped", "--top-n", "20", "--no-curve"]),
]
EXPORTS = ("json", "mib", "mib-pt", "neuronpedia", "node-link", "graphml")

RUNNER = r'''
import contextlib, io, json, os, sys, traceback, warnings
warnings.simplefilter("ignore")
from discovery.cli import main
out, n, cases, exports = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
toys = json.loads(sys.argv[5])
log = {}

def call(key, argv):
    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code
        except Exception:
            rc, _ = "exception", e.write(traceback.format_exc())
    log[key] = {"rc": rc, "stdout": o.getvalue(), "stderr": e.getvalue()}
    print(key, rc, file=sys.__stderr__, flush=True)

for toy in toys:
    d = os.path.join(out, toy.replace(":", "_"))
    os.makedirs(d, exist_ok=True)
    common = ["--model", toy, "--task", "induction" if "induction" in toy else "ioi", "--n", n, "--quiet"]
    for name, args in cases:
        if "TEMPLATE" in args:  # position-aware runs need rows of one token layout: a token-id task
            args = [a for a in args if a != "TEMPLATE"]
            path = os.path.join(os.path.dirname(out), "template.jsonl")  # one path for both trees
            with open(path, "w") as f:
                for i in range(int(n)):
                    s = [10 + (7 * i + 3 * j) % 40 for j in range(6)]
                    c = [10 + (5 * i + 11 * j + 1) % 40 for j in range(6)]
                    f.write(json.dumps({"clean_ids": s + s[:3], "corrupted_ids": c + s[:3], "answer_id": s[3],
                                        "wrong_id": c[3] if c[3] != s[3] else c[4]}) + "\n")
            argv = ["discover", "--model", toy, "--task", path, "--quiet", *args, "--out", os.path.join(d, name + ".json")]
            call(f"{toy}/{name}", argv)
            continue
        call(f"{toy}/{name}", ["discover", *common, *args, "--out", os.path.join(d, name + ".json")])
    first = os.path.join(d, "eap-ig-top.json")
    call(f"{toy}/evaluate", ["evaluate", *common, "--circuit", first, "--json"])
    for fmt in exports:
        target = os.path.join(d, "export-" + fmt + ("/" if fmt == "neuronpedia" else ""))
        call(f"{toy}/export-{fmt}", ["export", first, "--format", fmt, "--out", target])
with open(os.path.join(out, "log.json"), "w") as f:
    json.dump(log, f, indent=1)
'''


def run_tree(tree: Path, out: Path, n: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-c", RUNNER, str(out), str(n), json.dumps(CASES), json.dumps(EXPORTS), json.dumps(TOYS)]
    print(f"running {tree} -> {out}", file=sys.stderr, flush=True)
    subprocess.run(cmd, env=env, cwd=out, check=True)


def _scrub(x):
    if isinstance(x, dict):
        return {k: _scrub(v) for k, v in x.items()
                if k not in VOLATILE and not (k.endswith("_s") and isinstance(v, (int, float)))}
    if isinstance(x, list):
        return [_scrub(v) for v in x]
    if isinstance(x, str):  # a version string carries the commit: 0.1.0+gba6fc0f
        return re.sub(r"\+g[0-9a-f]{7,}", "+gCOMMIT", x)
    return x


def _mask(text: str) -> str:
    text = re.sub(r"\d+\.\d+s ->", "#s ->", text)
    return re.sub(r"/tmp/[^\s'\"]+/(before|after)/", "OUT/", text)


def _first_difference(a, b, path="$"):
    if type(a) is not type(b):
        return f"{path}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return f"{path}.{k}: only in {'after' if k not in a else 'before'}"
            d = _first_difference(a[k], b[k], f"{path}.{k}")
            if d:
                return d
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{path}: length {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            d = _first_difference(x, y, f"{path}[{i}]")
            if d:
                return d
        return None
    return None if a == b else f"{path}: {a!r} vs {b!r}"


def _read_json(p: Path):
    try:
        return json.loads(p.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def compare(before: Path, after: Path) -> list[str]:
    problems = []
    lb, la = (json.loads((d / "log.json").read_text()) for d in (before, after))
    for key in sorted(set(lb) | set(la)):
        if key not in lb or key not in la:
            problems.append(f"{key}: run only {'after' if key not in lb else 'before'}")
            continue
        b, a = lb[key], la[key]
        if b["rc"] != a["rc"]:
            problems.append(f"{key}: exit {b['rc']} before, {a['rc']} after ({a['stderr'].strip()[-300:]})")
        if _mask(b["stdout"]) != _mask(a["stdout"]):
            problems.append(f"{key}: stdout differs:\n  before: {_mask(b['stdout'])[:400]}\n  after:  "
                            f"{_mask(a['stdout'])[:400]}")
        eb, ea = (x["stderr"].strip().splitlines()[-1:] for x in (b, a))
        if [_mask(s) for s in eb] != [_mask(s) for s in ea]:
            problems.append(f"{key}: last stderr line differs: {eb} vs {ea}")
    files_b = {p.relative_to(before) for p in before.rglob("*") if p.is_file() and p.name != "log.json"}
    files_a = {p.relative_to(after) for p in after.rglob("*") if p.is_file() and p.name != "log.json"}
    for rel in sorted(files_b ^ files_a):
        problems.append(f"{rel}: written only {'after' if rel in files_a else 'before'}")
    for rel in sorted(files_b & files_a):
        jb, ja = _read_json(before / rel), _read_json(after / rel)
        if jb is not None and ja is not None:
            d = _first_difference(_scrub(jb), _scrub(ja))
            if d:
                problems.append(f"{rel}: {d}")
        elif rel.suffix == ".pt":
            import torch
            tb, ta = (torch.load(d / rel, weights_only=False) for d in (before, after))
            if repr(tb) != repr(ta):
                problems.append(f"{rel}: torch contents differ")
        elif _mask((before / rel).read_text(errors="replace")) != _mask((after / rel).read_text(errors="replace")):
            problems.append(f"{rel}: contents differ")
    return problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True, help="git revision of the tree before the change")
    p.add_argument("--after", default=str(HERE), help="source tree after the change (default: this one)")
    p.add_argument("--n", type=int, default=8, help="task rows per run (default 8)")
    p.add_argument("--keep", default=None, help="write the runs here (default: a temporary folder)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(HERE), "worktree", "add", "--detach", "-q", str(tree), args.before], check=True)
        try:
            run_tree(tree, root / "before", args.n)
            run_tree(Path(args.after).resolve(), root / "after", args.n)
        finally:
            subprocess.run(["git", "-C", str(HERE), "worktree", "remove", "--force", str(tree)], check=False)
        problems = compare(root / "before", root / "after")
        log = json.loads((root / "after" / "log.json").read_text())
    for line in problems:
        print(line)
    print(f"{len(log)} runs on {', '.join(TOYS)} at --n {args.n}: "
          + ("all equal apart from timestamps" if not problems else f"{len(problems)} differences"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
