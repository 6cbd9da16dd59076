"""Quality of discovered circuits on models whose mechanism is known.

For each method on each known-mechanism model: ROC AUC of the edge scores against the ground-truth
edge set, the faithfulness curve with CPR/CMD and bootstrap confidence intervals over examples, and
wall time. Also a noise sweep on planted circuits (AUC as the non-circuit components get louder).
Writes a PNG (faithfulness vs fraction of edges, all methods on one chart per model) and prints a
markdown table; --write-docs puts both into docs/benchmarks.md between the quality markers.

    python benchmarks/quality.py                 # full run (a few minutes on 2 CPU cores)
    python benchmarks/quality.py --quick         # small sizes, for a smoke test
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from discovery import Graph, Setup, get_metric, load_model, score_edges  # noqa: E402
from discovery.pipeline.evaluation import edge_auc, evaluate_circuit, faithfulness_curves  # noqa: E402
from discovery.methods.acdc import acdc  # noqa: E402
from discovery.methods.edge_pruning import edge_pruning  # noqa: E402
from discovery.model.adapters import toy_model_dir  # noqa: E402
from discovery.task_library import build_task  # noqa: E402
from discovery.toy.planted import plant  # noqa: E402

# "+qk": with the QK fix (discovery/methods/qk.py); "auto": the default pipeline (discovery/pipeline/auto.py)
METHODS = ["eap", "eap+qk", "eap-ig", "eap-ig+qk", "clean-corrupted", "clean-corrupted+qk", "exact", "acdc",
           "edge-pruning", "auto"]
EP_SPARSITY, EP_STEPS = 0.8, 200  # edge-pruning: keep 20% of the edges, 200 steps (lr 0.3)
ACDC_TAU = 0.01  # in the task metric's units (logit difference): a small fraction of the clean value
NOISES = [0.0, 0.01, 0.1, 0.3, 1.0]
DOCS_BEGIN, DOCS_END = "<!-- quality:begin -->", "<!-- quality:end -->"


def truth_from_names(graph: Graph, names: list[str]) -> np.ndarray:
    truth = np.zeros(graph.n_edges, bool)
    truth[[graph.edge_index[n] for n in names]] = True
    return truth


def induction_case(n: int, seed: int):
    model = load_model("toy:induction", device="cpu")
    gt = json.loads((Path(toy_model_dir("toy:induction")) / "ground_truth.json").read_text())
    task = build_task("induction", model.tokenizer, model.vocab_size, n=n, seed=seed)
    graph = Graph.from_adapter(model.adapter)
    return {"name": "induction (toy:induction)", "model": model, "task": task,
            "truth": truth_from_names(graph, gt["edges"])}


def planted_case(noise: float, n: int, seed: int):
    p = plant("gpt2", noise=noise, seed=seed, n_layers=3, n_rows=n)
    return {"name": f"planted gpt2 3L, noise {noise:g}", "model": p.model, "task": p.task,
            "truth": p.true_edges(p.graph), "circuit": list(p.circuit)}


def llama_induction_case(n: int, seed: int):
    from discovery.toy.ground_truth import graph_edge_name
    model = load_model("toy:llama-induction", device="cpu")
    gt = json.loads((Path(toy_model_dir("toy:llama-induction")) / "ground_truth.json").read_text())
    task = build_task("induction", model.tokenizer, model.vocab_size, n=n, seed=seed)
    graph = Graph.from_adapter(model.adapter)
    return {"name": "induction (toy:llama-induction, GQA + MLPs)", "model": model, "task": task,
            "truth": truth_from_names(graph, [graph_edge_name(graph, e) for e in gt["edges"]])}


def ioi_case(n: int, seed: int):
    model = load_model("toy:ioi", device="cpu")
    return {"name": "ioi (toy:ioi, no ground truth)", "model": model,
            "task": build_task("ioi", model.tokenizer, model.vocab_size, n=n, seed=seed), "truth": None}


def measure(case: dict, method: str, steps: int, bootstrap: int, curve: bool = True) -> dict:
    metric = get_metric(case["task"].metric or "logit_diff")
    setup = Setup(case["model"], case["task"], metric, batch_size=32)
    warm = Setup(case["model"], case["task"].subset([0]), metric)  # warm-up, untimed
    base, qk = method.removesuffix("+qk"), method.endswith("+qk")
    if method == "acdc":
        acdc(warm)
    elif method == "edge-pruning":
        edge_pruning(warm, steps=1)
    elif method != "auto":
        score_edges(warm, base, steps=1, qk_fix=qk)
    started = time.perf_counter()
    if method == "acdc":  # scores: the effect ACDC measured when deciding each edge (0 if never reached)
        result = acdc(setup, tau=ACDC_TAU)
        scores = result.scores
    elif method == "edge-pruning":  # scores: the learned gates' open probabilities
        result = edge_pruning(setup, sparsity=EP_SPARSITY, steps=EP_STEPS, lr=0.3)
        scores = result.scores
    elif method == "auto":  # scores: EAP-IG's with the fix (exact effects where it verified)
        from discovery.pipeline.auto import auto
        scores, kept, params = auto(setup)
    else:
        scores = score_edges(setup, base, steps=steps, qk_fix=qk).numpy()
    wall = time.perf_counter() - started
    row = {"case": case["name"], "method": method, "wall_s": wall, "n_edges": setup.graph.n_edges,
           "auc": edge_auc(scores, case["truth"]) if case["truth"] is not None else None}
    if method == "auto":  # its circuit itself (evaluated with the curve's rows)
        from discovery.pipeline.evaluation import evaluate_circuit
        row["auto"] = {"kept": int(kept.sum()), "fraction": float(kept.sum() / setup.graph.n_edges),
                       "faithfulness": evaluate_circuit(setup, kept)["faithfulness"], "verified": params["verified"]}
    elif method != "acdc" and curve:  # the top 40% of the ranking alone (pruned)
        from discovery.pipeline.evaluation import evaluate_circuit
        from discovery.pipeline.selection import prune, top_n
        top = prune(setup.graph, top_n(setup.graph, scores, int(0.4 * setup.graph.n_edges)))
        row["f40"] = evaluate_circuit(setup, top)["faithfulness"]
    if method == "acdc" and case["truth"] is not None:  # its circuit itself, against the truth
        kept, truth = result.in_circuit, case["truth"]
        row["acdc"] = {"kept": int(kept.sum()), "precision": float((kept & truth).sum() / max(kept.sum(), 1)),
                       "recall": float((kept & truth).sum() / truth.sum())}
    if method == "edge-pruning" and curve:  # its learned circuit itself: size, faithfulness, against the truth
        kept = result.in_circuit
        row["learned"] = {"kept": int(kept.sum()), "sparsity": result.sparsity,
                          "faithfulness": evaluate_circuit(setup, kept)["faithfulness"]}
        if case["truth"] is not None:
            truth = case["truth"]
            row["learned"].update(precision=float((kept & truth).sum() / max(kept.sum(), 1)),
                                  recall=float((kept & truth).sum() / truth.sum()))
    if curve:
        c = faithfulness_curves(setup, scores, bootstrap=bootstrap, seed=0)
        row.update(cpr=c["cpr"], cpr_ci=c["cpr_ci"], cmd=c["cmd"], cmd_ci=c["cmd_ci"], curve=c["curve_absolute"])
    return row


def fmt_ci(value, ci) -> str:
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def table(rows: list[dict]) -> str:
    lines = ["| model | method | ROC AUC | CPR [95% CI] | CMD [95% CI] | f, top 40% | wall s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        auc = "n/a" if r["auc"] is None else f"{r['auc']:.3f}"
        f40 = f"{r['f40']:.3f}" if "f40" in r else "n/a"
        lines.append(f"| {r['case']} | {r['method']} | {auc} | {fmt_ci(r['cpr'], r['cpr_ci'])} | "
                     f"{fmt_ci(r['cmd'], r['cmd_ci'])} | {f40} | {r['wall_s']:.2f} |")
    auto_rows = [r for r in rows if "auto" in r]
    if auto_rows:
        lines.append("")
        lines.append("The default pipeline's own circuit (`auto`: EAP-IG + QK fix, smallest top-k with faithfulness "
                     "within 0.1 of 1, exact verification if that is over 40% of the edges): " + "; ".join(
                         f"{r['case']}: {r['auto']['kept']} of {r['n_edges']} edges ({r['auto']['fraction']:.0%}), "
                         f"faithfulness {r['auto']['faithfulness']:.3f}, verified {r['auto']['verified']}"
                         for r in auto_rows) + ".")
    acdc_rows = [r for r in rows if "acdc" in r]
    if acdc_rows:
        lines.append("")
        lines.append(f"ACDC's own circuit (tau {ACDC_TAU:g}, task metric) against the ground truth: " + "; ".join(
            f"{r['case']}: {r['acdc']['kept']} edges kept, precision {r['acdc']['precision']:.2f}, "
            f"recall {r['acdc']['recall']:.2f}" for r in acdc_rows) + ".")
    learned = [r for r in rows if "learned" in r]
    if learned:
        lines.append("")
        lines.append(f"Edge pruning's learned circuit (target sparsity {EP_SPARSITY:g}, {EP_STEPS} steps, KL loss): "
                     + "; ".join(
            f"{r['case']}: {r['learned']['kept']} of {r['n_edges']} edges (sparsity {r['learned']['sparsity']:.2f}), "
            f"faithfulness {r['learned']['faithfulness']:.3f}"
            + (f", precision {r['learned']['precision']:.2f}, recall {r['learned']['recall']:.2f}"
               if "precision" in r["learned"] else "") for r in learned) + ".")
    return "\n".join(lines)


def sweep_table(sweep: dict) -> str:
    methods = list(next(iter(sweep.values())))
    lines = ["| noise | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for noise, aucs in sweep.items():
        lines.append(f"| {noise:g} | " + " | ".join(f"{aucs[m]:.3f}" for m in methods) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(r["case"] for r in rows))
    fig, axes = plt.subplots(1, len(cases), figsize=(5 * len(cases), 4), squeeze=False)
    for ax, case in zip(axes[0], cases):
        for r in (r for r in rows if r["case"] == case):
            xs = [p["n_edges"] / r["n_edges"] for p in r["curve"]]
            ys = [p["faithfulness"] for p in r["curve"]]
            lo = [p["faithfulness_ci"][0] for p in r["curve"]]
            hi = [p["faithfulness_ci"][1] for p in r["curve"]]
            line, = ax.plot(xs, ys, marker="o", ms=3, label=f"{r['method']} (CMD {r['cmd']:.2f})")
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15)
        ax.set_xscale("log")
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_title(case, fontsize=10)
        ax.set_xlabel("fraction of edges kept (top by |score|, pruned)")
        ax.set_ylabel("faithfulness")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_docs(text: str, docs: Path) -> None:
    body = docs.read_text() if docs.exists() else ""
    block = f"{DOCS_BEGIN}\n{text}\n{DOCS_END}"
    if DOCS_BEGIN in body:
        body = re.sub(re.escape(DOCS_BEGIN) + ".*?" + re.escape(DOCS_END), lambda _: block, body, flags=re.S)
    else:
        body = body.rstrip() + "\n\n## Quality on known mechanisms\n\n" + block + "\n"
    docs.write_text(body)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100, help="examples per task")
    ap.add_argument("--steps", type=int, default=5, help="EAP-IG steps")
    ap.add_argument("--bootstrap", type=int, default=500, help="bootstrap resamples for the CIs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--cases", default="induction,llama-induction,planted,ioi", help="which models (comma-separated)")
    ap.add_argument("--sweep-methods", default="eap,eap+qk,eap-ig,eap-ig+qk,exact",
                    help="methods of the planted noise sweep")
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--plot", default=str(ROOT / "docs" / "quality.png"))
    ap.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    ap.add_argument("--json", default=None, help="also write all numbers here")
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.bootstrap = 8, 20
    methods = args.methods.split(",")
    torch.manual_seed(args.seed)
    started = time.perf_counter()

    builders = {"induction": lambda: induction_case(args.rows, args.seed + 1000),
                "llama-induction": lambda: llama_induction_case(args.rows, args.seed + 1000),
                "planted": lambda: planted_case(0.1, args.rows, args.seed),
                "ioi": lambda: ioi_case(args.rows, args.seed + 1000)}
    unknown = set(args.cases.split(",")) - set(builders)
    if unknown:
        ap.error(f"unknown case(s) {', '.join(sorted(unknown))}; choose from {', '.join(builders)}")
    cases = [builders[name]() for name in args.cases.split(",")]
    rows = []
    for case in cases:
        for method in methods:
            rows.append(measure(case, method, args.steps, args.bootstrap))
            r = rows[-1]
            print(f"{case['name']:<36} {method:<16} AUC {r['auc'] if r['auc'] is None else round(r['auc'], 3)!s:<6} "
                  f"CPR {r['cpr']:.3f} CMD {r['cmd']:.3f} {r['wall_s']:.2f}s", file=sys.stderr)

    sweep = {}
    for noise in NOISES:
        case = planted_case(noise, args.rows, args.seed)
        sweep[noise] = {m: measure(case, m, args.steps, 0, curve=False)["auc"] for m in args.sweep_methods.split(",")}
        print(f"noise {noise:g}: " + ", ".join(f"{m} {a:.3f}" for m, a in sweep[noise].items()), file=sys.stderr)

    plot(rows, Path(args.plot))
    text = (f"`python benchmarks/quality.py --rows {args.rows} --steps {args.steps} --bootstrap {args.bootstrap}` "
            f"({time.perf_counter() - started:.0f} s on {torch.get_num_threads()} CPU threads; rows of the trained "
            f"models' tasks from seed {args.seed + 1000}, held out from training).\n\n" + table(rows) +
            "\n\nROC AUC against the planted truth as every non-circuit component's write grows "
            "(planted GPT-2, 3 layers, same seed):\n\n" + sweep_table(sweep) +
            f"\n\n![faithfulness vs fraction of edges]({Path(args.plot).name})")
    print(text)
    if args.write_docs:
        write_docs(text, ROOT / "docs" / "benchmarks.md")
    result = {"rows": [{k: v for k, v in r.items()} for r in rows], "sweep": {str(k): v for k, v in sweep.items()}}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
