"""`circuitry label circuit.json --out labeled.json`: add labels to a circuit file."""

from __future__ import annotations

import os
from urllib.parse import parse_qs, urlparse

from discovery.core.errors import UserError, check_output_path


def register(subparsers) -> None:
    p = subparsers.add_parser("label", help="label the heads and MLPs of a circuit file (evidence-based, scored)")
    p.add_argument("circuit", help="circuit JSON written by 'circuitry discover'")
    p.add_argument("--out", required=True, help="where to write the labeled circuit JSON (the circuit's schema_version, with labels)")
    p.add_argument("--backend", default="heuristic", choices=["heuristic", "openai"],
                   help="heuristic (default, offline) or openai (CIRCUITRY_LLM_BASE_URL, CIRCUITRY_LLM_MODEL)")
    p.add_argument("--scorer", default="auto", choices=["auto", "evidence_agreement", "llm"],
                   help="held-out scorer; auto: the LLM when one is configured, else evidence agreement")
    p.add_argument("--model", default=None, help="model (default: the one named in the circuit file)")
    p.add_argument("--revision", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--task", default=None, help="task file or built-in name (default: the circuit file's task)")
    p.add_argument("--n", type=int, default=None, help="rows of a built-in task (default: as in the circuit file)")
    p.add_argument("--task-seed", type=int, default=None, help="seed of a built-in task (default: as in the file)")
    p.add_argument("--seed", type=int, default=0, help="evidence seed: repeated tokens, token samples, decoys")
    p.add_argument("--components", default=None, help="comma-separated heads/MLPs to label (default: the circuit's)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--base-url", default=None, help="overrides CIRCUITRY_LLM_BASE_URL")
    p.add_argument("--llm-model", default=None, help="overrides CIRCUITRY_LLM_MODEL")
    p.add_argument("--concurrency", type=int, default=4, help="LLM requests in flight (default 4)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per LLM request (default 60)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the LLM answer cache")
    p.add_argument("--neuronpedia", default=None, help="also write the Neuronpedia/circuit-tracer graph JSON here")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_label)


def plug(hooks: dict) -> None:
    """What labeling gives discovery's own commands (discovery/cli/commands.py HOOKS)."""
    hooks["read_circuit"] = read_circuit
    hooks["label"] = label_discovered


def read_circuit(path: str):
    """A circuit file, plain or labeled (diff and timeline compare labels and role tags too)."""
    from .schema import LabeledCircuit

    return LabeledCircuit.load(path)


def label_discovered(circuit, model, task, labeling, out: str, progress: bool) -> str:
    """`discover --label`: label the circuit just found (LabelingOptions `labeling`), save it over `out`,
    and return the summary line to print."""
    from .label import label_circuit

    labeled = label_circuit(circuit, model, task, labeling.backend, **labeling.options.model_dump(), progress=progress)
    labeled.save(out)
    return summary_line(labeled, out)


def _builtin_from_source(source: str):
    """('ioi', n, seed) from a built-in task source 'builtin:ioi?n=200&seed=0', else None."""
    if not source.startswith("builtin:"):
        return None
    u = urlparse(source[len("builtin:"):])
    qs = parse_qs(u.query)
    try:
        return u.path, int(qs.get("n", ["200"])[0]), int(qs.get("seed", ["0"])[0])
    except ValueError:
        return None


def _task(args, circuit, model):
    from discovery.task_library import TASKS, build_task
    from discovery.model.tasks import load_task

    source = args.task or circuit.task.source
    if os.path.isfile(source):
        return load_task(source, tokenizer=model.tokenizer, vocab_size=model.vocab_size)
    builtin = _builtin_from_source(source)
    if builtin is None and source in TASKS:
        builtin = (source, 200, 0)
    if builtin is None:
        raise UserError(f"cannot rebuild the task '{source}' of this circuit; give --task (a task file or built-in name)")
    name, n, seed = builtin
    n = args.n if args.n is not None else n
    seed = args.task_seed if args.task_seed is not None else seed
    return build_task(name, tokenizer=model.tokenizer, vocab_size=model.vocab_size, n=n, seed=seed)


def cmd_label(args) -> int:
    from discovery.core.names import TASK_NAMES, check_model_ref

    if not os.path.isfile(args.circuit):  # path and argument errors before torch loads
        raise UserError(f"circuit file '{args.circuit}' not found")
    check_output_path(args.out, "--out")  # before ~a minute of labeling, not after
    if args.neuronpedia:
        check_output_path(args.neuronpedia, "--neuronpedia")
    if args.task is not None and not os.path.isfile(args.task) and args.task not in TASK_NAMES:
        raise UserError(f"task '{args.task}' is neither a file nor a built-in task; "
                        f"built-in tasks: {', '.join(TASK_NAMES)}")
    from .llm import LLMConfig, llm_configured
    from .schema import LabeledCircuit

    circuit = LabeledCircuit.load(args.circuit)
    llm = None
    wants_llm = args.backend == "openai" or args.scorer == "llm" or args.base_url or args.llm_model or \
        (args.scorer == "auto" and llm_configured())
    if wants_llm:  # checked before the (possibly slow) model load
        llm = LLMConfig.from_env(base_url=args.base_url, model=args.llm_model, concurrency=args.concurrency,
                                 timeout_s=args.timeout, use_cache=not args.no_cache)
        from .llm import LLMClient
        LLMClient(llm).check()  # an unreachable endpoint: one line now, not after the model load
    name = args.model or circuit.model.name
    if name.startswith("<"):
        raise UserError(f"the circuit file names no loadable model ({name}); give --model")
    revision = args.revision if args.model else circuit.model.revision
    check_model_ref(name, revision)
    from discovery.model.adapters import load_model

    from .export import save_neuronpedia
    from .label import label_circuit

    model = load_model(name, revision=revision, dtype=args.dtype, device=args.device)
    task = _task(args, circuit, model)
    components = [c.strip() for c in args.components.split(",") if c.strip()] if args.components else None
    from .evidence import EvidenceConfig
    labeled = label_circuit(circuit, model, task, args.backend, components=components, scorer=args.scorer, llm=llm,
                            evidence=EvidenceConfig(seed=args.seed, batch_size=args.batch_size),
                            progress=not args.quiet)
    labeled.save(args.out)
    if args.neuronpedia:
        save_neuronpedia(labeled, args.neuronpedia)
    print(summary_line(labeled, args.out))
    return 0


def summary_line(labeled, out: str) -> str:
    from collections import Counter

    counts = Counter(r.status for r in labeled.labels)
    status = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    parts = []
    for key in ("evidence_agreement", "llm"):
        vals = [(r.scores[key].value, r.scores[key].random_baseline) for r in labeled.labels
                if key in r.scores and r.scores[key].value is not None and r.scores[key].random_baseline is not None]
        if vals:
            parts.append(f"{key} mean {sum(v for v, _ in vals) / len(vals):.3f} vs random label "
                         f"{sum(b for _, b in vals) / len(vals):.3f} ({len(vals)} scored)")
    u = labeled.labeling.usage
    llm = f"; LLM {u.calls} calls, {u.cached} cached, {u.prompt_tokens}+{u.completion_tokens} tokens" \
        if labeled.labeling.llm_model else ""
    return (f"labeled {len(labeled.labels)} components with {labeled.labeling.backend} ({status}); "
            f"{'; '.join(parts) or 'no held-out scores'}{llm}; {labeled.labeling.wall_time_s:.1f}s -> {out}")
