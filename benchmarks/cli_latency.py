"""How fast the `circuitry` command answers --help and argument/path errors (targets: --help <= 1 s,
errors <= 1.5 s), against the bare interpreter start and `import torch` measured in the same run.

    python benchmarks/cli_latency.py [--repeat 5]

Each command runs as a fresh process (`python -m discovery.cli ...`) in an empty directory; the median
wall time of --repeat runs is printed, with its ratio to the interpreter's own start-up."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

COMMANDS = {
    "--help": ["--help"],
    "discover --help": ["discover", "--help"],
    "missing model dir": ["discover", "--model", "./no-such-model", "--task", "ioi", "--out", "x.json"],
    "unknown toy model": ["discover", "--model", "toy:nope", "--task", "ioi", "--out", "x.json"],
    "missing task file": ["discover", "--model", "toy:ioi", "--task", "no-such.jsonl", "--out", "x.json"],
    "bad --method": ["discover", "--model", "toy:ioi", "--task", "ioi", "--method", "bogus", "--out", "x.json"],
    "missing args": ["discover"],
    "label: missing file": ["label", "no-such.json", "--out", "x.json"],
    "view: missing file": ["view", "no-such.json", "--out", "x.html"],
    "diff: missing file": ["diff", "a.json", "b.json"],
    "tasks show: unknown": ["tasks", "show", "nope"],
    "serve: bad --port": ["serve", "--port", "x"],
}


def wall(argv: list[str], cwd: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, cwd=cwd, capture_output=True)
    return time.perf_counter() - t0


def median(argv, cwd, repeat):
    return statistics.median(wall(argv, cwd) for _ in range(repeat))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as cwd:
        base = median([py, "-c", "pass"], cwd, args.repeat)
        torch = median([py, "-c", "import torch"], cwd, args.repeat)
        print(f"{'command':<22} {'median s':>9} {'x python start':>15}")
        print(f"{'python -c pass':<22} {base:9.3f} {1.0:15.1f}")
        print(f"{'python -c import torch':<22} {torch:9.3f} {torch / base:15.1f}")
        worst = {"help": 0.0, "error": 0.0}
        for name, argv in COMMANDS.items():
            t = median([py, "-m", "discovery.cli", *argv], cwd, args.repeat)
            worst["help" if argv[-1] == "--help" else "error"] = max(worst["help" if argv[-1] == "--help" else "error"], t)
            print(f"{name:<22} {t:9.3f} {t / base:15.1f}")
        print(f"slowest --help {worst['help']:.3f} s (target 1.0), slowest error {worst['error']:.3f} s (target 1.5)")


if __name__ == "__main__":
    main()
