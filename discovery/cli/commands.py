"""The `circuitry` command line. User errors: one line on stderr, exit code 2.

Over 500 lines: the parser of every discovery subcommand beside its handler, so that each flag, its
check and its use read together (a subcommand of its own weight has its module: transcoders.py; other
packages' subcommands plug in through EXTENSION_MODULES)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from ..core.errors import UserError

EXIT_USER_ERROR = 2

# Subcommands contributed by the other packages: each module has register(subparsers), which adds its
# parsers with set_defaults(func=handler); handler(args) -> exit code. A module may also have
# plug(hooks), which sets entries of HOOKS (below) for discovery's own commands. discovery imports none
# of these packages itself (docs/architecture.md): they plug in here.
EXTENSION_MODULES = [
    "labeling.cli",
    "service.cli",
    "viewer.cli",  # `circuitry view`
    "service.demo",  # `circuitry demo`
    "discovery.cli.transcoders",  # `circuitry transcoders train|show`
]


# What the discovery commands take from the packages above them, set by their plug(hooks):
# - "read_circuit": path -> circuit, for diff and timeline (labeling's reads plain and labeled files,
#   so that label changes and role tags are compared); default discovery's Circuit.load
# - "label": (circuit, model, task, LabelingOptions, out, progress) -> the line to print, for
#   `discover --label` (labeling's labels the circuit and saves it over `out`)
HOOKS: dict = {}


def _read_circuit(path: str):
    read = HOOKS.get("read_circuit")
    if read is None:
        from ..core.circuit import Circuit

        read = Circuit.load
    return read(path)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's default prints the whole usage; we print one line
        raise UserError(f"{message} (see '{self.prog} --help')")


def _add_model_source(p, model_help: str = "local HF model directory or hub id",
                      dtype_help: str = "float32 (default), bfloat16 or float16"):
    p.add_argument("--model", required=True, help=model_help)
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    p.add_argument("--dtype", default=None, help=dtype_help)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present)")


def _add_model_args(p):
    _add_model_source(p)
    p.add_argument("--task", required=True,
                   help="JSONL task file (text rows or token-id rows), or a built-in task name (see 'circuitry tasks')")
    p.add_argument("--n", type=int, default=None,
                   help="rows of a built-in task (default 200), or the first N rows of a task file; at most "
                        "CIRCUITRY_MAX_ROWS (10,000)")
    p.add_argument("--seed", type=int, default=None, help="seed of a built-in task (default 0)")
    p.add_argument("--batch-size", type=int, default=None, help="examples per forward pass (default 16)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    # light names only (discovery/core/names.py): --help and argument errors answer before torch loads
    from ..io.export import FORMATS as EXPORT_FORMATS
    from ..core.names import ALL_METHODS, INTERVENTIONS, LEVELS
    from ..core.names import METRIC_NAMES as METRICS
    from ..core.registry import DEFAULT_METHOD, method as method_spec  # the method registry: choices in its order; pydantic stays unloaded

    parser = _Parser(prog="circuitry", description="Circuit discovery on Hugging Face causal LMs.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    d = sub.add_parser("discover", help="score every edge, select a circuit, evaluate it, write circuit JSON")
    _add_model_args(d)
    d.add_argument("--method", default=None,
                   choices=list(ALL_METHODS),
                   help="auto (EAP-IG with the QK fix, the smallest circuit meeting --target, exact verification "
                        "when that is over 40%% of the edges), an edge scoring (then --target/--top-n/--threshold/"
                        "--greedy), acdc / eap-ig+acdc (then --tau), or edge-pruning (learned edge masks, then "
                        f"--sparsity or --lam); default {DEFAULT_METHOD}")
    d.add_argument("--qk-fix", action=argparse.BooleanOptionalAction, default=None,
                   help="score q/k edges through the exact attention pattern (AtP*'s QK fix; on by default for eap, "
                        "eap-ig, eap-ig+acdc and auto; on request for clean-corrupted); --no-qk-fix: the plain gradient")
    d.add_argument("--steps", type=int, default=None, help="interpolation steps (eap-ig and eap-ig-activations only; default 5)")
    d.add_argument("--level", default=None, choices=list(LEVELS),
                   help="what is scored and selected: edges (default), nodes (each head and MLP as one unit: eap, "
                        "eap-ig, clean-corrupted, exact) or neurons (each output dimension of each node); "
                        "--top-n/--threshold then count nodes or neurons (default: the fewest meeting --target)")
    d.add_argument("--metric", default=None, metavar="|".join(METRICS) + "|FILE.py:NAME",
                   help="default: kl for ACDC; else the built-in task's own metric, else logit_diff; FILE.py:NAME "
                        "is your own fn(logits, batch, clean_logits=None) -> one value per example")
    d.add_argument("--lower-is-better", action="store_true",
                   help="your own metric measures distance from the behaviour (like kl), not the behaviour")
    d.add_argument("--tau", type=_taus, default=None,
                   help="ACDC threshold(s): remove an edge if the metric moves by at most tau (default "
                        f"{method_spec('acdc').defaults['tau_fraction']:g} x the behaviour |clean - corrupted| in the metric used); "
                        "a comma-separated list gives one circuit per tau from one run (files NAME.tau=T.json)")
    d.add_argument("--candidates", type=int, default=None,
                   help="eap-ig+acdc: ACDC decides only over the top-K edges by |EAP-IG score| (default 1000)")
    d.add_argument("--intervention", default=None, choices=list(INTERVENTIONS),
                   help="what an edge out of the circuit carries (default: the corrupted activation)")
    d.add_argument("--sparsity", type=float, default=None,
                   help="edge-pruning: the fraction of edges to remove (default 0.95)")
    d.add_argument("--lam", type=float, default=None,
                   help="edge-pruning: an L0 penalty weight instead of a target sparsity")
    d.add_argument("--train-steps", type=int, default=None, help="edge-pruning: optimisation steps (default 200)")
    d.add_argument("--max-verify", type=int, default=None,
                   help="auto: verify at most N edges by exact patching (default: at most 2000, within the time "
                        "EAP-IG's scoring took; 0: never); the time it "
                        "will take is estimated on stderr before it starts")
    sel = d.add_mutually_exclusive_group()
    sel.add_argument("--target", type=float, default=None,
                     help="keep the smallest top-k circuit whose faithfulness is within 1-T of 1 (the default "
                          "selection of edges, nodes, neurons and positional edges, T = 0.9)")
    sel.add_argument("--top-n", type=int, default=None, help="keep the N most important edges")
    sel.add_argument("--threshold", type=float, default=None, help="keep edges with importance >= T")
    sel.add_argument("--greedy", type=int, default=None, help="grow N edges from the logits")
    d.add_argument("--signed", action="store_true", help="rank by signed importance instead of |score|")
    d.add_argument("--no-prune", action="store_true", help="keep edges with no path from input to logits")
    d.add_argument("--no-curve", action="store_true", help="skip the faithfulness curve (CPR/CMD)")
    d.add_argument("--label", action="store_true",
                   help="also label the circuit's heads and MLPs (see 'circuitry label'); the labels go into "
                        "the same file (the circuit's schema_version)")
    d.add_argument("--label-backend", default="heuristic",
                   help="with --label: heuristic (offline, default) or openai (CIRCUITRY_LLM_BASE_URL, _MODEL)")
    d.add_argument("--workers", type=int, default=None,
                   help="shard the examples over N Ray workers (RAY_ADDRESS's cluster, else a local Ray)")
    d.add_argument("--worker-cpus", type=float, default=None, help="Ray CPUs per worker (default: an even share)")
    d.add_argument("--worker-gpus", type=float, default=None,
                   help="Ray GPUs per worker (default: an even share of the cluster's, at most 1)")
    d.add_argument("--kv-edges", default=None, choices=["head", "grouped"],
                   help="grouped-query models: k/v edges per query head (default, MIB names a0.h2->a1.h3<k>) or "
                        "per key/value head (grouped: a0.h2->a1.kv1<k>)")
    d.add_argument("--position-names", default=None, metavar="NAME,NAME,...",
                   help="with --positions: a name for each token position of the template (e.g. BOS,S1,IO,...,END)")
    d.add_argument("--positions", action="store_true",
                   help="position-aware edges: each edge once per (source position -> destination position); "
                        "rows must have equal lengths")
    d.add_argument("--out", required=True, help="where to write the circuit JSON")

    e = sub.add_parser("evaluate", help="evaluate exactly the edges marked in_circuit in a circuit file")
    _add_model_args(e)
    e.add_argument("--circuit", required=True)
    e.add_argument("--metric", default=None, metavar="|".join(METRICS) + "|FILE.py:NAME",
                   help="default: the circuit's (a circuit found with your own metric needs FILE.py:NAME again)")
    e.add_argument("--lower-is-better", action="store_true",
                   help="your own metric is lower-is-better (default: as recorded in the circuit)")
    e.add_argument("--intervention", default=None, choices=list(INTERVENTIONS), help="default: the circuit's")
    e.add_argument("--json", action="store_true", help="print the metrics as one JSON object")

    df = sub.add_parser("diff", help="compare two circuit files: edges gained/lost, score changes, Jaccard, labels")
    df.add_argument("a", help="circuit JSON (e.g. the earlier checkpoint)")
    df.add_argument("b", help="circuit JSON to compare against A")
    df.add_argument("--top", type=int, default=20, help="score changes to list (default 20)")
    df.add_argument("--json", action="store_true", help="print the whole diff as one JSON object")

    tl = sub.add_parser("timeline", help="circuits of one model's checkpoints in training order; PNG chart")
    tl.add_argument("circuits", nargs="+", help="circuit JSON files, one per checkpoint (model.revision gives the step)")
    tl.add_argument("--chart", default=None, help="write a PNG chart (circuit size and faithfulness per step) here")
    tl.add_argument("--json", action="store_true", help="print the points as JSON lines")

    x = sub.add_parser("export", help="write a circuit for another tool: MIB / EAP-IG (json, pt), Neuronpedia, "
                                      "networkx node-link, GraphML; or MIB's submission layout")
    x.add_argument("circuit", help="circuit JSON (plain or labeled), or a MIB / EAP-IG graph (.json, .pt)")
    x.add_argument("--format", default=None, choices=list(EXPORT_FORMATS),
                   help="mib (EAP-IG Graph.to_json), mib-pt (Graph.to_pt), neuronpedia, node-link, graphml, json; "
                        "with --mib-submission: mib (default) or mib-pt")
    x.add_argument("--out", default=None, help="file to write (with --format); for neuronpedia a folder (ending in /) "
                                               "becomes a circuit-tracer frontend data folder with graph-metadata.json")
    x.add_argument("--scan", default=None, help="neuronpedia: the model id Neuronpedia files the graph under "
                                                "(default: the model name's last part, lower-cased)")
    x.add_argument("--slug", default=None, help="neuronpedia: the graph's slug (default: model-task-method)")
    x.add_argument("--d-model", type=int, default=None,
                   help="mib, mib-pt: the model's residual width, for circuit files that do not record it")
    x.add_argument("--all-edges", action="store_true",
                   help="node-link, graphml: every edge of the graph (with in_circuit), not only the circuit's")
    x.add_argument("--mib-submission", default=None, metavar="DIR",
                   help="write MIB's circuit-localization submission folder DIR/TASK_MODEL/ (with --task, --model)")
    x.add_argument("--task", default=None, help="with --mib-submission: the MIB task (ioi, mcqa, arc-easy, ...)")
    x.add_argument("--model", default=None, help="with --mib-submission: the MIB model (gpt2, qwen2.5, gemma2, llama3)")
    x.add_argument("--circuits", action="store_true",
                   help="with --mib-submission: nine thresholded circuits (0.1%%..50%% of edges) instead of one "
                        "importance-score file")

    at = sub.add_parser("attribute", help="attribution graph of one prompt over transcoder features (graph JSON)")
    _add_model_source(at, model_help="local HF model directory, hub id or toy:NAME",
                      dtype_help="float32 (default), bfloat16 or float16 (sums stay float32)")
    at.add_argument("--transcoders", required=True,
                    help="transcoder folder (circuit-tracer's formats or sparsify's), toy:NAME or a hub id")
    src = at.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", default=None, help="the prompt text (BOS prepended as circuit-tracer does)")
    src.add_argument("--prompt-ids", default=None, help="the prompt as token ids: '1,2,3' or '[1, 2, 3]'")
    at.add_argument("--out", required=True, help="graph JSON file to write (docs/graph-format.md)")
    at.add_argument("--no-prune", action="store_true", help="keep every node and every nonzero edge")
    at.add_argument("--node-threshold", type=float, default=0.8, help="keep nodes holding this share of influence")
    at.add_argument("--edge-threshold", type=float, default=0.98, help="keep edges holding this share of influence")
    at.add_argument("--max-feature-nodes", type=int, default=None, help="attribute at most this many features")
    at.add_argument("--desired-logit-prob", type=float, default=0.95,
                    help="logit nodes: the top logits until their cumulative probability reaches this")
    at.add_argument("--max-logits", type=int, default=10, help="at most this many logit nodes")
    at.add_argument("--batch-size", type=int, default=256, help="targets per backward pass (cut to the budget)")
    at.add_argument("--memory-budget", type=float, default=2.0, help="GiB for one backward batch's working set")
    at.add_argument("--check", type=int, default=10, metavar="N",
                    help="intervention check on the N most influential features (0: none)")
    at.add_argument("--quiet", action="store_true", help="no progress bar")

    t = sub.add_parser("tasks", help="list the built-in tasks; 'tasks show NAME' prints sample rows")
    tsub = t.add_subparsers(dest="tasks_command", parser_class=_Parser)
    s = tsub.add_parser("show", help="print rows of a built-in task as JSONL (a valid task file)")
    s.add_argument("name", help="built-in task name")
    s.add_argument("--n", type=int, default=3, help="rows to print (default 3)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--model", default=None, help="build for this model's tokenizer (single-token checks)")

    import importlib
    for name in EXTENSION_MODULES:
        module = importlib.import_module(name)
        module.register(sub)
        if hasattr(module, "plug"):
            module.plug(HOOKS)
    return parser


DEFAULT_MAX_ROWS = 10_000  # as the service's CIRCUITRY_MAX_ROWS (service/config.py)


def max_rows() -> int:
    """Rows a task may have: $CIRCUITRY_MAX_ROWS, default 10,000 (the API's cap)."""
    text = os.environ.get("CIRCUITRY_MAX_ROWS", "").strip()
    if not text:
        return DEFAULT_MAX_ROWS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"CIRCUITRY_MAX_ROWS must be a positive whole number (got '{text[:40]}')")
    return value


def _check_model_and_task(args) -> bool:
    """Task and model names checked before torch and transformers load; True for a built-in task. The
    rows are capped like the API's (CIRCUITRY_MAX_ROWS): --n over the cap, or a file with more rows and
    no --n, is refused; --n takes a file's first N rows."""
    from ..core.names import TASK_NAMES, check_model_ref

    builtin = not os.path.isfile(args.task) and args.task in TASK_NAMES  # a file of that name wins
    if not builtin and not os.path.isfile(args.task):
        if os.path.exists(args.task):
            raise UserError(f"task file '{args.task}' is not a regular file; give the path of a .jsonl file")
        if os.sep in args.task or args.task.endswith(".jsonl"):
            raise UserError(f"task file '{args.task}' not found")
        raise UserError(f"task '{args.task}' is neither a file nor a built-in task; "
                        f"built-in tasks: {', '.join(TASK_NAMES)}")
    cap = max_rows()
    n = getattr(args, "n", None)
    if n is not None and not 1 <= n <= cap:
        raise UserError(f"--n must be between 1 and {cap} (CIRCUITRY_MAX_ROWS) (got {n})")
    if not builtin and n is None:
        with open(args.task, "rb") as fh:  # counted without parsing, before torch loads
            rows = sum(1 for line in fh if line.strip())
        if rows > cap:
            raise UserError(f"task file '{args.task}' has {rows} rows, more than CIRCUITRY_MAX_ROWS={cap}; give --n N "
                            "to use its first N rows, or raise CIRCUITRY_MAX_ROWS")
    check_model_ref(args.model, args.revision)
    return builtin


def _load(args):
    builtin = _check_model_and_task(args)
    if builtin:  # bounded before anything is built (--n 1000000000 would build rows until memory runs out)
        from ..pipeline.options import BuiltinTaskOptions, validated

        size = validated(BuiltinTaskOptions, {k: v for k, v in (("n", args.n), ("seed", args.seed)) if v is not None},
                         flag)
    from ..model.adapters import load_model
    from ..task_library import build_task
    from ..model.tasks import load_task

    model = load_model(args.model, revision=args.revision, dtype=args.dtype, device=args.device)
    if builtin:
        task = build_task(args.task, tokenizer=model.tokenizer, vocab_size=model.vocab_size, n=size.n, seed=size.seed)
    else:
        task = load_task(args.task, tokenizer=model.tokenizer, vocab_size=model.vocab_size, limit=args.n)
    return model, task


def _taus(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--tau takes numbers separated by commas, e.g. 1e-3,1e-2 (got '{text}')")
    if not values:
        raise argparse.ArgumentTypeError("--tau needs at least one number")
    return values


def _tau_path(out: str, tau: float) -> str:
    root, ext = os.path.splitext(out)
    return f"{root}.tau={tau:g}{ext or '.json'}"


def _fmt(x, spec=".3f"):
    return "n/a" if x is None else format(x, spec)


def _metric_args(args):
    """--metric (a built-in name or FILE.py:NAME, loaded before the model) and its direction."""
    from ..core.names import METRIC_NAMES

    if args.metric is None or args.metric in METRIC_NAMES:  # a built-in name: nothing to load
        metric = args.metric
    else:
        path, sep, name = args.metric.rpartition(":")
        if not sep or not path or not name:  # before torch loads
            raise UserError(f"unknown metric '{args.metric}'; choose one of {', '.join(METRIC_NAMES)}, or FILE.py:NAME "
                            "for a function of your own")
        if not os.path.isfile(path):
            raise UserError(f"metric file '{path}' not found")
        from ..model.metrics import parse_metric

        metric = parse_metric(args.metric)
    if args.lower_is_better:
        if metric is None or isinstance(metric, str):
            raise UserError("--lower-is-better applies to your own metric (--metric FILE.py:NAME); the built-in "
                            "metrics have a fixed direction")
        return metric, False
    return metric, None


def flag(key: str) -> str:
    """The `circuitry discover` flag of a discovery option (discovery/pipeline/options.py's flat names)."""
    return {"absolute": "--signed", "prune": "--no-prune", "curve": "--no-curve"}.get(key, "--" + key.replace("_", "-"))


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [x.strip() for x in text.split(",")]


def discovery_options(args):
    """The options of `circuitry discover` as the one DiscoveryOptions model (its bounds, its defaults);
    a rejected value is one line naming the flag. A --metric FILE.py:NAME is loaded by _metric_args."""
    from ..core.names import METRIC_NAMES
    from ..pipeline.options import DiscoveryOptions, WorkerOptions, validated

    flat = dict(method=args.method, metric=args.metric if args.metric in METRIC_NAMES else None,
                intervention=args.intervention, steps=args.steps, batch_size=args.batch_size, top_n=args.top_n,
                threshold=args.threshold, greedy=args.greedy, absolute=False if args.signed else None,
                prune=False if args.no_prune else None, curve=False if args.no_curve else None, tau=args.tau,
                candidates=args.candidates, kv_edges=args.kv_edges, level=args.level,
                positions=True if args.positions else None, position_names=_names(args.position_names),
                qk_fix=args.qk_fix, target=args.target, sparsity=args.sparsity, lam=args.lam,
                train_steps=args.train_steps, max_verify=args.max_verify, label_backend=args.label_backend if args.label else None)
    options = DiscoveryOptions.from_flat(spell=flag, **flat)
    validated(WorkerOptions, {"workers": args.workers, "worker_cpus": args.worker_cpus,
                              "worker_gpus": args.worker_gpus}, flag)
    return options


def _check_out(path: str, flag: str = "--out", **kw) -> None:
    """An output path can be written, checked before the work starts (discovery/core/errors.py's rules: never a
    FIFO, device, directory, read-only file or a symlink to one; the file is then written atomically)."""
    from ..core.errors import check_output_path

    check_output_path(path, flag, **kw)


def cmd_discover(args) -> int:
    _check_model_and_task(args)  # paths and names first: they need neither pydantic nor torch
    _check_out(args.out)
    options = discovery_options(args)
    many = len(options.method.tau or []) > 1
    metric, higher_is_better = _metric_args(args)
    model, task = _load(args)
    from ..pipeline.discover import discover

    result = discover(model, task, options=options, metric=metric if not isinstance(metric, str) else None,
                      higher_is_better=higher_is_better, progress=not args.quiet, workers=args.workers,
                      worker_cpus=args.worker_cpus, worker_gpus=args.worker_gpus)
    for circuit in result if many else [result]:
        out = _tau_path(args.out, circuit.selection.value) if many else args.out
        circuit.save(out)  # saved before labeling: the circuit is kept whatever labeling does
        m, p = circuit.metrics, circuit.method.params
        acdc = f"tau {p['tau']:g}, {p['n_forward_passes']} forward passes; " if "tau" in p else ""
        size = f"{m.n_edges} of {circuit.n_graph_edges} edges, {m.n_nodes} nodes"
        if circuit.level == "node":
            scored = [n for n in circuit.nodes if n.score is not None]
            size = f"{sum(n.in_circuit for n in scored)} of {len(scored)} nodes, {m.n_edges} edges"
        elif circuit.level == "neuron":
            size = f"{m.n_neurons} neurons in {m.n_nodes - 1} nodes, {m.n_edges} edges"
        print(f"{circuit.method.name}: {acdc}{size}; "
              f"{m.metric} clean {_fmt(m.clean)}, corrupted {_fmt(m.corrupted)}, circuit {_fmt(m.circuit)}, "
              f"faithfulness {_fmt(m.faithfulness)}; CPR {_fmt(m.cpr)}, CMD {_fmt(m.cmd)}; "
              f"{circuit.wall_time_s:.1f}s -> {out}")
        if args.label:
            if "label" not in HOOKS:
                raise UserError("--label needs the labeling package (circuitry's labeling/), which is not installed")
            print(HOOKS["label"](circuit, model, task, options.labeling, out, not args.quiet))
    return 0


def cmd_evaluate(args) -> int:
    if not os.path.isfile(args.circuit):  # before pydantic and torch load
        raise UserError(f"circuit file '{args.circuit}' not found")
    from ..core.circuit import Circuit
    from ..io.export.mib_import import read_mib

    mib_graph = read_mib(args.circuit)  # a MIB / EAP-IG graph (json or pt), mapped onto the model's graph below
    circuit = None if mib_graph is not None else Circuit.load(args.circuit)
    _check_model_and_task(args)
    metric, higher_is_better = _metric_args(args)
    model, task = _load(args)
    from ..pipeline.discover import evaluate, model_info
    from ..core.graph import Graph
    from ..pipeline.options import MethodOptions, validated

    batch_size = validated(MethodOptions, {"batch_size": args.batch_size} if args.batch_size else {}, flag).batch_size
    if mib_graph is not None:
        circuit = mib_graph.to_circuit(Graph.from_adapter(model.adapter), model_info(model))
    result = evaluate(model, task, circuit, metric=metric, higher_is_better=higher_is_better,
                      intervention=args.intervention, batch_size=batch_size, progress=not args.quiet)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['n_edges']} edges; {result['metric']} clean {_fmt(result['clean'])}, corrupted "
              f"{_fmt(result['corrupted'])}, circuit {_fmt(result['circuit'])}, faithfulness "
              f"{_fmt(result['faithfulness'])}")
    return 0


def _check_files(paths) -> None:
    for path in paths:  # before pydantic, numpy and torch load
        if not os.path.isfile(path):
            raise UserError(f"circuit file '{path}' not found")


def cmd_diff(args) -> int:
    if args.top < 0:
        raise UserError(f"--top must be non-negative (got {args.top})")
    _check_files([args.a, args.b])
    from ..io.diff import diff_circuits

    d = diff_circuits(_read_circuit(args.a), _read_circuit(args.b), top=args.top)  # labels too (HOOKS)
    if args.json:
        print(d.model_dump_json())
        return 0
    print(d.summary())
    for title, edges in (("gained", d.edges_gained), ("lost", d.edges_lost)):
        if edges:
            print(f"{title}: " + ", ".join(e.name for e in edges))
    for c in d.score_changes:
        if c.delta is not None:
            print(f"  {c.name:<28} {c.score_a:+.4f} -> {c.score_b:+.4f} ({c.delta:+.4f})")
    for n in d.label_changes:
        print(f"  {n.component}: {n.label_a!r} {n.tags_a} -> {n.label_b!r} {n.tags_b}")
    return 0


def cmd_timeline(args) -> int:
    _check_files(args.circuits)
    if args.chart is not None:
        _check_out(args.chart, "--chart")
    from ..io.timeline import plot_timeline, point_line, timeline

    circuits = [(path, _read_circuit(path)) for path in args.circuits]  # labels give the roles (HOOKS)
    tasks = {c.task.content_hash for _, c in circuits}
    if len(tasks) > 1:
        raise UserError("the circuits were found on different tasks; a timeline compares one task across checkpoints")
    points = timeline(circuits)
    for p in points:
        if args.json:
            print(p.model_dump_json())
        else:
            print(f"{p.revision or '-':<14} {point_line(p)}")
    if args.chart:
        print(f"chart -> {plot_timeline(points, args.chart, title=circuits[0][1].model.name)}", file=sys.stderr)
    return 0


def _is_feature_graph(path: str) -> bool:
    """An attribution-graph file (circuitry attribute) rather than a circuit file: its kind says so, near
    its start (graph_file.py writes schema_version and kind first)."""
    import re

    try:
        with open(path, encoding="utf-8") as f:
            head = f.read(4096)
    except (OSError, UnicodeDecodeError):
        return False
    return re.search(r'"kind"\s*:\s*"feature_graph"', head) is not None


def _export_feature_graph(args) -> int:
    if args.format != "neuronpedia":
        raise UserError(f"an attribution graph exports as --format neuronpedia (not {args.format})")
    from ..features.graph_file import load_graph
    from ..io.export.feature_neuronpedia import feature_graph_to_neuronpedia

    graph = feature_graph_to_neuronpedia(load_graph(args.circuit), scan=args.scan, slug=args.slug)
    if args.out == "-":  # the graph on stdout
        print(json.dumps(graph))
        return 0
    out = Path(args.out)
    if out.is_dir() or args.out.endswith(("/", os.sep)):
        from ..io.export.neuronpedia import write_graph_dir

        out = write_graph_dir(graph, out)
        print(f"neuronpedia graph -> {out} (listed in {out.parent / 'graph-metadata.json'})")
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(graph))
    print(f"neuronpedia: attribution graph of {len(graph['nodes'])} nodes, {len(graph['links'])} links -> {out}")
    return 0


def cmd_export(args) -> int:
    if not os.path.isfile(args.circuit):  # before pydantic and torch load
        raise UserError(f"circuit file '{args.circuit}' not found")
    from ..io.export import FORMATS
    from ..io.export.load import load_document

    if args.mib_submission is None and (args.task or args.model or args.circuits):
        raise UserError("--task, --model and --circuits go with --mib-submission DIR")
    if args.mib_submission is not None:
        _check_out(args.mib_submission, "--mib-submission", folder=True, make_parents=True)
        if not (args.task and args.model):
            raise UserError("--mib-submission needs --task (the MIB task) and --model (the MIB model)")
        if args.format not in (None, "mib", "mib-pt"):
            raise UserError("a MIB submission is written as mib (JSON) or mib-pt files; drop --format or use one of them")
        from ..io.export.mib_submission import check_names, write_submission

        check_names(args.task, args.model)  # before reading a (possibly large) file
        data = load_document(args.circuit)
        paths = write_submission(data, args.mib_submission, args.task, args.model, circuits=args.circuits,
                                 pt=args.format == "mib-pt", d_model=args.d_model)
        print(f"MIB submission: {len(paths)} file(s) in {paths[0].parent}")
        return 0
    if args.format is None or args.out is None:
        raise UserError("give --format FORMAT and --out FILE (or --mib-submission DIR --task T --model M)")
    folder = args.format == "neuronpedia" and (os.path.isdir(args.out) or args.out.endswith(("/", os.sep)))
    _check_out(args.out, folder=folder, stdout=not folder, make_parents=folder)
    if args.d_model is not None and args.d_model < 1:
        raise UserError(f"--d-model must be a positive width (got {args.d_model})")
    if _is_feature_graph(args.circuit):
        return _export_feature_graph(args)
    from ..io.export import export

    data = load_document(args.circuit)
    content = export(data, args.format, scan=args.scan, slug=args.slug, d_model=args.d_model,
                     all_edges=args.all_edges)
    out = Path(args.out)
    if folder:
        from ..io.export.neuronpedia import write_graph_dir

        out = write_graph_dir(json.loads(content), out)  # a circuit-tracer frontend data folder
        print(f"neuronpedia graph -> {out} (listed in {out.parent / 'graph-metadata.json'})")
        return 0
    n = sum(1 for e in data.get("edges") or [] if e.get("in_circuit"))
    summary = f"{args.format} ({FORMATS[args.format].help}): circuit of {n} edges -> {out}"
    if args.out == "-":  # the export itself on stdout, the summary on stderr
        if isinstance(content, bytes):
            sys.stdout.flush()
            sys.stdout.buffer.write(content)
        else:
            sys.stdout.write(content if content.endswith("\n") else content + "\n")
        sys.stdout.flush()
        print(summary.replace("-> -", "-> standard output"), file=sys.stderr)
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        out.write_bytes(content)
    else:
        out.write_text(content)
    print(summary)
    return 0


def _prompt_ids(text: str) -> list[int]:
    try:
        ids = json.loads(text if text.strip().startswith("[") else f"[{text}]")
    except json.JSONDecodeError:
        raise UserError(f"--prompt-ids '{text}' is not a list of token ids such as 1,2,3") from None
    if not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise UserError(f"--prompt-ids '{text}' is not a list of token ids such as 1,2,3")
    return ids


def cmd_attribute(args) -> int:
    _check_out(args.out)
    ids = _prompt_ids(args.prompt_ids) if args.prompt_ids is not None else None
    for name in ("node_threshold", "edge_threshold"):
        if not 0 <= getattr(args, name) <= 1:
            raise UserError(f"--{name.replace('_', '-')} must be between 0 and 1")
    if args.memory_budget <= 0 or args.batch_size < 1 or args.check < 0:
        raise UserError("--memory-budget must be positive, --batch-size at least 1 and --check at least 0")
    from ..core.progress import progress as progress_bar

    from ..features.graph_file import graph_document, save_graph
    from ..features.run import run_attribution
    from ..model.adapters import load_model

    model = load_model(args.model, revision=args.revision, dtype=args.dtype, device=args.device)
    bar = progress_bar(total=0, desc="attribution", unit="row", file=sys.stderr, disable=args.quiet)

    def progress(done, total):
        bar.total = total
        bar.update(done - bar.n)

    doc = run_attribution(model, args.transcoders, prompt=args.prompt, prompt_ids=ids,
                          desired_logit_prob=args.desired_logit_prob, max_logits=args.max_logits,
                          max_feature_nodes=args.max_feature_nodes, batch_size=args.batch_size,
                          memory_budget=int(args.memory_budget * (1 << 30)), node_threshold=args.node_threshold,
                          edge_threshold=args.edge_threshold, no_prune=args.no_prune, check=args.check,
                          progress=progress)
    bar.close()
    save_graph(doc, args.out)
    sc = doc["scores"]
    line = (f"graph: {sc['n_nodes_kept']} nodes, {sc['n_edges_kept']} edges ({sc['n_active_features']} active "
            f"features); replacement {sc['replacement']:.3f}, completeness {sc['completeness']:.3f}")
    check = doc.get("intervention")
    if check:
        line += f"; intervention check r = {_fmt(check.get('correlation'))} over {len(check['features'])} features"
    print(f"{line} -> {args.out}")
    return 0


def cmd_tasks(args) -> int:
    from ..core.names import TASK_NAMES

    if args.tasks_command is not None:  # before the task library (and torch) load
        if not 1 <= args.n <= max_rows():
            raise UserError(f"--n must be between 1 and {max_rows()} (CIRCUITRY_MAX_ROWS) (got {args.n})")
        if args.seed < 0:
            raise UserError(f"--seed must be non-negative (got {args.seed})")
        if args.name not in TASK_NAMES:
            raise UserError(f"unknown built-in task '{args.name}'; choose one of {', '.join(TASK_NAMES)}")
        if args.model is not None:
            from ..core.names import check_model_ref
            check_model_ref(args.model)
    from ..task_library import TASKS, build_task, sample_rows

    if args.tasks_command is None:
        width = max(map(len, TASKS))
        for name, spec in TASKS.items():
            print(f"{name:<{width}}  {spec.description} [metric {spec.metric}; {spec.reference}]")
        return 0
    tokenizer = vocab_size = None
    if args.model is not None:
        from ..model.adapters import load_model
        model = load_model(args.model, device="cpu")
        tokenizer, vocab_size = model.tokenizer, model.vocab_size
        build_task(args.name, tokenizer=tokenizer, vocab_size=vocab_size, n=args.n, seed=args.seed)  # all checks
    for row in sample_rows(args.name, n=args.n, seed=args.seed, tokenizer=tokenizer, vocab_size=vocab_size):
        print(json.dumps(row))
    return 0


def _show_result_warnings() -> None:
    """discovery.pipeline.sanity.ResultWarning as one line on stderr: `circuitry: warning: ...`."""
    import warnings

    default = warnings.showwarning
    if getattr(default, "circuitry", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        if category.__name__ == "ResultWarning":
            print(f"circuitry: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    show.circuitry = True
    warnings.showwarning = show


def main(argv: list[str] | None = None) -> int:
    try:
        _show_result_warnings()
        args = build_parser().parse_args(argv)
        if getattr(args, "quiet", False):
            from transformers.utils import logging as hf_logging
            hf_logging.disable_progress_bar()
        commands = {"discover": cmd_discover, "evaluate": cmd_evaluate, "diff": cmd_diff, "timeline": cmd_timeline,
                    "tasks": cmd_tasks, "export": cmd_export, "attribute": cmd_attribute}
        handler = commands.get(args.command) or args.func
        return handler(args)
    except UserError as exc:
        print(f"circuitry: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("circuitry: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `circuitry ... | head`: the reader left; stop quietly as other Unix tools do
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the final flush must not fail again
        return 141  # 128 + SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
