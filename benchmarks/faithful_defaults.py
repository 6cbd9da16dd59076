"""What the defaults of `--level node`, `--level neuron`, `--positions` and `--method acdc` give on the
trained toys: circuit size and faithfulness (issue 26, item 4).

Each run is `discover(model, task, ...)` with nothing but that option set (every other option its
default: auto, which runs exact at node level and EAP-IG at neuron level; positions-eap-ig names
eap-ig), on the built-in task (200 rows, seed 0); `--positions` needs one token layout, so it runs
on the rows of the task's most common length. The faithfulness is the circuit's own (in the metric
the run used: logit_diff, ACDC's KL) and, for ACDC, also re-evaluated in logit_diff.

Run it on the code before and after a change to compare (the script uses only the public API):

    PYTHONPATH=. python benchmarks/faithful_defaults.py            # all three toys
    PYTHONPATH=. python benchmarks/faithful_defaults.py --only toy:ioi --modes node acdc
"""

from __future__ import annotations

import argparse
import time
import warnings

TOYS = (("toy:ioi", "ioi"), ("toy:induction", "induction"), ("toy:llama-induction", "induction"))
MODES = {"node": {"level": "node"}, "neuron": {"level": "neuron"}, "positions": {"positions": True},
         "positions-eap-ig": {"positions": True, "method": "eap-ig"}, "acdc": {"method": "acdc"}}


def one_layout(task):
    lengths = [len(ids) for ids in task.clean_ids]
    common = max(sorted(set(lengths)), key=lengths.count)
    return task.subset([r for r, n in enumerate(lengths) if n == common and len(task.corrupted_ids[r]) == n])


def size(c) -> str:
    m = c.metrics
    if c.level == "node":
        scored = [n for n in c.nodes if n.score is not None]
        return f"{sum(n.in_circuit for n in scored)} of {len(scored)} nodes"
    if c.level == "neuron":
        return f"{m.n_neurons} neurons in {m.n_nodes - 1} nodes"
    return f"{m.n_edges} of {c.n_graph_edges} edges"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", default=None, help="toy model names (default: all three)")
    ap.add_argument("--modes", nargs="*", default=list(MODES), choices=list(MODES))
    args = ap.parse_args()
    from discovery import discover, evaluate, load_model
    from discovery.task_library import build_task

    for name, task_name in TOYS:
        if args.only and name not in args.only:
            continue
        lm = load_model(name, device="cpu")
        task = build_task(task_name, lm.tokenizer, lm.vocab_size, n=200, seed=0)
        for mode in args.modes:
            t = one_layout(task) if mode.startswith("positions") else task
            started = time.perf_counter()
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                c = discover(lm, t, **MODES[mode], curve=False)
            sel = c.selection
            line = (f"{name} {mode} ({len(t)} rows): {sel.kind} {sel.value:g}: {size(c)}, "
                    f"{c.metrics.metric} faithfulness {c.metrics.faithfulness:.3f}")
            if mode == "acdc":
                ld = evaluate(lm, t, c, metric="logit_diff")["faithfulness"]
                line += f" (logit_diff {ld:.3f}; tau {c.method.params['tau']:.4g})"
            notes = sorted({str(w.message).split(":")[0] for w in seen if type(w.message).__name__ == "ResultWarning"})
            print(line + f"; {time.perf_counter() - started:.1f}s" + (f"; warns: {', '.join(notes)}" if notes else ""),
                  flush=True)


if __name__ == "__main__":
    main()
