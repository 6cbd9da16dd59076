"""The discovery pipeline: score edges, select a circuit, evaluate it, package it as a Circuit."""

from __future__ import annotations

import contextlib
import math
import resource
import sys
import time

import numpy as np
import torch

from ..core.circuit import (Circuit, CurvePoint, MethodInfo, Metrics, ModelInfo, SelectionInfo, TaskInfo, build_edges,
                      build_nodes, code_version, positions_info)
from ..core.errors import UserError
from .evaluation import evaluate_circuit, faithfulness_curves
from ..model.example_row import representative_row
from ..methods import Setup, score_edges
from ..model.metrics import METRICS, resolve_metric
from ..model.adapters import LoadedModel
from .options import ACDC_DEFAULT_METRIC, ACDC_METHODS  # noqa: F401 (re-exported)
from ..core import registry
from ..model.config import context_length
from .options import (DEFAULT_CANDIDATES, DEFAULT_TARGET, DEFAULT_TAU_FRACTION, DEFAULT_TOP_N, DiscoveryOptions, WorkerOptions,
                      validated)
from .selection import greedy, nodes_in_circuit, threshold, top_n
from .selection import prune as prune_edges  # `prune` is discover()'s flag
from ..task_library import as_task
from ..model.tasks import Task


def _clean(x):
    return None if isinstance(x, float) and (math.isnan(x) or math.isinf(x)) else x


def peak_memory_bytes(device) -> int:
    if torch.device(device).type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return int(rss_kb * (1 if sys.platform == "darwin" else 1024))


def model_info(model: LoadedModel) -> ModelInfo:
    a = model.adapter
    return ModelInfo(name=model.name, revision=model.revision, architecture=model.architecture,
                     model_type=model.config.model_type, config_hash=model.config_hash(), n_layers=a.n_layers,
                     n_heads=a.n_heads, n_kv_heads=a.n_kv_heads, parallel_residual=a.parallel,
                     dtype=str(a.dtype).replace("torch.", ""), d_model=a.d_model)


def select(setup: Setup, scores, *, top: int | None = None, thresh: float | None = None,
           grow: int | None = None, absolute: bool = True, do_prune: bool = True, target: float | None = None):
    """The circuit by top-n / threshold / greedy, or (by default, or given `target`) the smallest top-k
    meeting a faithfulness target (discovery/pipeline/auto.py; position-aware graphs too).
    Returns (in_circuit, SelectionInfo, the target search's info or None)."""
    chosen = [x is not None for x in (top, thresh, grow, target)]
    if sum(chosen) > 1:
        raise UserError("give only one of --top-n, --threshold, --greedy, --target")
    graph, hib = setup.graph, setup.metric.higher_is_better
    if target is not None or not any(chosen):
        from .auto import smallest_faithful
        t = DEFAULT_TARGET if target is None else target
        keep, search = smallest_faithful(setup, scores, t, absolute=absolute, prune=do_prune)
        return keep, SelectionInfo(kind="faithfulness", value=t, absolute=absolute, pruned=do_prune), search
    if thresh is not None:
        keep, info = threshold(graph, scores, thresh, higher_is_better=hib, absolute=absolute), ("threshold", thresh)
    elif grow is not None:
        keep, info = greedy(graph, scores, grow, higher_is_better=hib, absolute=absolute), ("greedy", grow)
    else:
        n = DEFAULT_TOP_N if top is None else top
        keep, info = top_n(graph, scores, n, higher_is_better=hib, absolute=absolute), ("top-n", n)
    if do_prune:
        keep = prune_edges(graph, keep)
    return keep, SelectionInfo(kind=info[0], value=info[1], absolute=absolute, pruned=do_prune), None


def discover(model: LoadedModel, task: Task | str, method: str | None = None, *, options: DiscoveryOptions | None = None,
             metric=None, higher_is_better: bool | None = None, intervention: str | None = None,
             steps: int | None = None, batch_size: int | None = None, top_n: int | None = None,
             threshold: float | None = None, greedy: int | None = None, absolute: bool | None = None,
             prune: bool | None = None, curve: bool | None = None, progress: bool = False, tau: float | None = None,
             taus: list[float] | None = None, candidates: int | None = None, workers=None,
             worker_cpus: float | None = None, worker_gpus: float | None = None, kv_edges: str | None = None,
             on_batch=None, level: str | None = None, positions: bool | None = None,
             position_names: list[str] | None = None, qk_fix: bool | None = None, target: float | None = None,
             sparsity: float | None = None, lam: float | None = None, train_steps: int | None = None,
             max_verify: int | None = None):
    """Find a circuit: scores for every edge, the selected circuit, its faithfulness (and curve).

    task: a Task, a JSONL file's path, or a built-in task's name (built for the model's tokenizer with
    200 rows from seed 0; `discovery.load_task(name, ..., n=, seed=)` for another size).

    method "auto" (the default; discovery/pipeline/auto.py): EAP-IG with the QK fix, the smallest top-k that
    meets the faithfulness target (default 0.9), and exact verification of the top candidates when
    that takes more than 40% of the edges; the circuit's method.params record what it did.
    qk_fix: score q/k edges through the exact attention pattern (methods/qk.py); on by default for
    eap, eap-ig, eap-ig+acdc's ranking and auto (edge level, no positions); on request for clean-corrupted.
    target: the faithfulness target of the default edge selection, which every scoring method uses
    unless top_n / threshold / greedy is given. The circuit's `warnings` say when the result means
    little (discovery/pipeline/sanity.py); each is also issued as a sanity.ResultWarning.

    The options are one DiscoveryOptions (discovery/pipeline/options.py: its defaults and bounds), given as
    `options`, as keywords (None: the default), or both (keywords win).
    The metric defaults to the task's own (built-in tasks), else logit_diff; for ACDC to KL. It is a
    built-in name, a `Metric`, or your own function fn(logits, batch, clean_logits=None) ->
    Tensor[batch] (the contract is in discovery.model.metrics), whose direction higher_is_better gives
    (default True); its name is recorded in the circuit.
    Scoring methods select by top_n / threshold / greedy. ACDC methods (ACDC_METHODS) decide the
    circuit themselves: `acdc` over every edge, `eap-ig+acdc` over the `candidates` edges EAP-IG
    ranks highest (|score|); tau is the threshold (default: DEFAULT_TAU_FRACTION of the behaviour
    |m(full) - m(empty)| in the metric ACDC uses, recorded as params tau_fraction and behaviour), and
    `taus` (or an options tau list of several) gives one circuit per threshold from one run (a list of
    Circuits, in the order given). A tau at least the behaviour warns (sanity.tau_warning).

    workers: shard the scoring (and ACDC's mask evaluations) over that many Ray workers, each with
    worker_cpus / worker_gpus (default: an even share), started for the call (Ray: RAY_ADDRESS's
    cluster, else a local one); or a started discovery.pipeline.distributed.Workers, kept for the next call.
    Evaluating the circuit stays in this process.

    kv_edges: a grouped-query model's k/v edges per query head ("head", as MIB names them) or per
    key/value head ("grouped", `a1.kv0<k>`); see discovery/core/graph.py for how the two relate.

    positions: position-aware edges (discovery/engine/positions.py): every edge once per (source position ->
    destination position) pair that causal attention allows; the task's rows must share one token
    layout (equal lengths); position_names names the template's positions (one per token; recorded in
    the circuit). Scoring methods with top_n / threshold selection, one process.

    on_batch(done, total, desc): called around each batch of discovery work (Setup.on_batch); it may
    raise (e.g. discovery.core.errors.Cancelled) to stop the run within one batch.

    level: "edge" (default), "node" (each head and MLP one unit, scored by switching its whole output
    to the reference; methods eap, eap-ig, eap-ig-activations, clean-corrupted, exact; the default
    method there is exact (measured: one patched forward per node), and the QK fix applies to the
    gradient methods as the sum of a node's fixed edge scores) or "neuron" (each output dimension of
    each node; the same methods but exact, default eap-ig, no QK fix); then top_n /
    threshold count nodes or neurons (default: as edges, the fewest meeting the faithfulness target),
    see discovery/pipeline/levels.py.

    edge-pruning (discovery/methods/edge_pruning.py): learned hard-concrete edge masks trained on the
    patching core; sparsity (fraction of edges removed, default 0.95) or lam (L0 penalty weight),
    train_steps (default 200). max_verify (auto): at most this many edges verified by exact patching
    (default: at most 2000 and within the time EAP-IG's scoring took; 0: none); an estimate of the verification's time is written first (with progress)
    and kept in params["verify_estimate_s"]. progress: True for bars on stderr, or a callable
    progress(done, total, desc) called before each batch, training step or mask evaluation of every
    pass (as on_batch; desc names the pass). The circuit is the learned mask unless top_n / threshold / greedy /
    target select by its scores (the gates' open probabilities); params record the final sparsity."""
    started = time.perf_counter()
    if tau is not None and taus is not None:
        raise UserError("give tau or taus, not both")
    task = as_task(task, model)
    check_context(model, task)
    own_metric = metric if metric is not None and not isinstance(metric, str) else None  # a Metric or a function
    opts = DiscoveryOptions.from_flat(options, method=method, metric=None if own_metric is not None else metric,
                                      intervention=intervention, steps=steps, batch_size=batch_size, top_n=top_n,
                                      threshold=threshold, greedy=greedy, absolute=absolute, prune=prune,
                                      curve=curve, tau=taus if taus is not None else tau, candidates=candidates,
                                      kv_edges=kv_edges, level=level, positions=positions,
                                      position_names=position_names, qk_fix=qk_fix, target=target,
                                      sparsity=sparsity, lam=lam, train_steps=train_steps,
                                      max_verify=max_verify)
    if workers is None or isinstance(workers, int):
        validated(WorkerOptions, {"workers": workers, "worker_cpus": worker_cpus, "worker_gpus": worker_gpus})
    m, sel = opts.method, opts.selection
    metric = resolve_metric(own_metric if own_metric is not None else opts.resolved_metric(task.metric),
                            higher_is_better)
    if torch.device(model.adapter.device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(model.adapter.device)
    if m.positions and workers is not None:
        raise UserError("--positions runs in one process; drop --workers")
    if callable(progress):  # progress(done, total, desc): the caller's own progress, instead of bars
        if on_batch is not None:
            raise UserError("give progress as a callback or on_batch, not both")
        progress, on_batch = False, progress
    setup = Setup(model, task, metric, batch_size=m.batch_size, intervention=m.intervention, progress=progress,
                  kv_edges=m.kv_edges, positions=m.positions, position_names=m.position_names)
    setup.on_batch = on_batch
    params = {"metric": metric.name, **_metric_params(metric), "intervention": m.intervention,
              "batch_size": m.batch_size}
    if setup.graph.gqa:
        params["kv_edges"] = setup.graph.kv_edges
    if m.positions:
        params["positions"] = True
    spec = registry.method(m.name)
    if spec.stepped:
        params["steps"] = m.steps
    if m.qk_fixable:
        params["qk_fix"] = m.use_qk_fix
    if m.level != "edge":
        if workers is not None:
            raise UserError(f"workers shard edge-level scoring; drop them for level {m.level}")
        return _discover_units(setup, model, task, m.name, params, m.level, steps=m.steps, top=sel.top_n,
                               thresh=sel.threshold, grow=sel.greedy, absolute=sel.absolute, curve=m.curve,
                               started=started, qk_fix=m.use_qk_fix, target=sel.target)
    with _worker_pool(workers, worker_cpus, worker_gpus) as pool:
        if pool is not None:
            params["workers"] = pool.n
        if spec.kind == "acdc":
            circuits = _discover_acdc(setup, model, task, m.name, params, taus=m.tau,
                                      candidates=m.candidates, steps=m.steps, prune=sel.prune, curve=m.curve,
                                      started=started, workers=pool, qk_fix=m.use_qk_fix)
            return circuits if taus is not None or len(circuits) > 1 else circuits[0]
        if spec.kind == "learned":
            if pool is not None:
                raise UserError(f"{m.name} trains in one process; drop --workers")
            return _discover_edge_pruning(setup, model, task, params, m, sel, started=started)
        if spec.kind == "pipeline":
            from .auto import auto
            t = DEFAULT_TARGET if sel.target is None else sel.target
            scores, keep, auto_params = auto(setup, target=t, qk_fix=m.use_qk_fix, prune=sel.prune, workers=pool,
                                             max_verify=m.max_verify)
            params.update(auto_params)
            selection = SelectionInfo(kind="faithfulness", value=t, absolute=True, pruned=sel.prune)
            return _package(setup, model, task, m.name, params, scores, keep, selection, curve=m.curve,
                            prune=sel.prune, started=started, search=params["search"])
        scores = score_edges(setup, m.name, steps=m.steps, workers=pool, qk_fix=m.use_qk_fix).numpy()
    keep, selection, search = select(setup, scores, top=sel.top_n, thresh=sel.threshold, grow=sel.greedy,
                                     absolute=sel.absolute, do_prune=sel.prune, target=sel.target)
    if search is not None:
        params["search"] = search
    return _package(setup, model, task, m.name, params, scores, keep, selection, curve=m.curve, prune=sel.prune,
                    started=started, search=search)


def _discover_edge_pruning(setup: Setup, model, task, params, m, sel, *, started) -> Circuit:
    from ..methods.edge_pruning import DEFAULT_SPARSITY, edge_pruning
    from .options import DEFAULT_TRAIN_STEPS

    sparsity = None if m.lam is not None else (DEFAULT_SPARSITY if m.sparsity is None else m.sparsity)
    r = edge_pruning(setup, sparsity=sparsity, lam=m.lam,
                     steps=DEFAULT_TRAIN_STEPS if m.train_steps is None else m.train_steps)
    params.update(r.params, learned_sparsity=r.sparsity, expected_density=r.expected_density, final_kl=r.final_kl,
                  train_time_s=round(r.wall_time_s, 3))
    if sel.chosen:  # select by the learned scores
        keep, selection, search = select(setup, r.scores, top=sel.top_n, thresh=sel.threshold, grow=sel.greedy,
                                         absolute=sel.absolute, do_prune=sel.prune, target=sel.target)
    else:
        keep = prune_edges(setup.graph, r.in_circuit) if sel.prune else r.in_circuit
        value = sparsity if sparsity is not None else m.lam
        selection, search = SelectionInfo(kind="edge-pruning", value=value, absolute=True, pruned=sel.prune), None
    params["final_sparsity"] = float(1 - keep.mean())  # of the circuit as saved (after pruning)
    return _package(setup, model, task, "edge-pruning", params, r.scores, keep, selection, curve=m.curve,
                    prune=sel.prune, started=started, search=search)


def _discover_units(setup: Setup, model, task, method, params, level, *, steps, top, thresh, grow, absolute, curve,
                    started, qk_fix=False, target=None) -> Circuit:
    """discover() at the node or neuron level (discovery/pipeline/levels.py)."""
    from .levels import evaluate_units, neuron_edges, node_edges, select_units, unit_curves
    from ..methods.node import neuron_scores, node_scores

    graph = setup.graph
    if level == "node":
        scores = node_scores(setup, method, steps=steps, qk_fix=qk_fix).numpy()
        neuron = None
    else:
        neuron = neuron_scores(setup, method, steps=steps).numpy()
        scores = neuron.sum(1)
    keep, kind, value, search = select_units(setup, level, neuron if level == "neuron" else scores, top=top,
                                             thresh=thresh, grow=grow, absolute=absolute, target=target)
    if search is not None:
        params = dict(params, search=search)
    notes = _result_warnings(setup, search, kept=(int(keep.sum()), int(keep.size), "node" if level == "node"
                                                  else "neuron"))
    edges = node_edges(graph, keep) if level == "node" else neuron_edges(graph, keep)
    result = evaluate_units(setup, level, keep)
    sources = np.flatnonzero(keep if level == "node" else keep.any(1))
    kept_nodes = set(nodes_in_circuit(graph, edges)) | {graph.sources[s] for s in sources} | {"logits"}
    metrics = Metrics(metric=setup.metric.name, clean=_clean(result["clean"]), corrupted=_clean(result["corrupted"]),
                      circuit=_clean(result["circuit"]), faithfulness=_clean(result["faithfulness"]),
                      n_edges=int(edges.sum()), n_nodes=len(kept_nodes),
                      n_neurons=int(keep.sum()) if level == "neuron" else None)
    if curve:
        c = unit_curves(setup, level, neuron if level == "neuron" else scores)
        for key in ("curve_signed", "curve_absolute"):
            setattr(metrics, key, [CurvePoint(**dict(p, faithfulness=_clean(p["faithfulness"]))) for p in c[key]])
        metrics.cpr, metrics.cmd = _clean(c["cpr"]), _clean(c["cmd"])
    nodes = build_nodes(graph, kept_nodes, node_scores=scores, neurons=keep if level == "neuron" else None,
                        neuron_scores=neuron)
    return _circuit(setup, model, task, method, dict(params, level=level),
                    SelectionInfo(kind=kind, value=value, absolute=absolute, pruned=False), nodes=nodes,
                    edges=build_edges(graph, None, edges), metrics=metrics, started=started, warnings=notes,
                    level=level)


def check_context(model: LoadedModel, task: Task) -> None:
    """A UserError (not an IndexError inside the forward) for prompts longer than the model's context."""
    context = context_length(model.config)
    if context is None or not len(task):
        return
    longest = max(max(map(len, task.clean_ids)), max(map(len, task.corrupted_ids)))
    if longest > context:
        row = next(i for i, (c, k) in enumerate(zip(task.clean_ids, task.corrupted_ids)) if max(len(c), len(k)) == longest)
        raise UserError(f"task row {row + 1} has {longest} tokens, longer than the model's context of {context} "
                        "tokens; shorten the prompts")


def _metric_params(metric) -> dict:
    """What the circuit file records beyond the metric's name: a user metric's kind and direction."""
    if metric.name in METRICS and METRICS[metric.name] is metric:
        return {}
    return {"metric_kind": "user", "higher_is_better": metric.higher_is_better}


@contextlib.contextmanager
def _worker_pool(n: int | None, cpus: float | None, gpus: float | None):
    """Ray workers for one discover() call (None: a single-process run; a Workers: the caller's)."""
    if n is not None and not isinstance(n, int):
        yield n.start()
        return
    if n is None:
        if cpus is not None or gpus is not None:
            raise UserError("--worker-cpus/--worker-gpus need --workers N")
        yield None
        return
    from .distributed import Workers

    with Workers(n, cpus=cpus, gpus=gpus) as pool:
        yield pool


def _discover_acdc(setup: Setup, model, task, method, params, *, taus, candidates, steps, prune, curve,
                   started, workers=None, qk_fix: bool = False) -> list[Circuit]:
    from ..methods.acdc import acdc

    cand_mask = None
    if method == "eap-ig+acdc":
        k = DEFAULT_CANDIDATES if candidates is None else candidates
        ranking = score_edges(setup, "eap-ig", steps=steps, workers=workers, qk_fix=qk_fix).numpy()
        cand_mask = top_n(setup.graph, ranking, min(k, setup.graph.n_edges), absolute=True)
        params["candidates"] = int(cand_mask.sum())
    if taus is None:  # the default: a fraction of the behaviour in ACDC's own metric
        from .sanity import behaviour

        scale = abs(float(behaviour(setup).mean()))
        taus = [DEFAULT_TAU_FRACTION * scale]  # 0 without behaviour (warned): keep every edge that hurts
        params.update(tau_fraction=DEFAULT_TAU_FRACTION, behaviour=scale)
    results = acdc(setup, taus=list(taus), candidates=cand_mask, workers=workers)
    circuits = []
    for r in results:
        keep = prune_edges(setup.graph, r.in_circuit) if prune else r.in_circuit
        p = dict(params, tau=r.tau, n_forward_passes=r.n_forward_passes, n_edges_evaluated=r.n_edges_evaluated,
                 n_edges_dead=r.n_edges_dead, n_edges_kept=int(r.in_circuit.sum()))
        selection = SelectionInfo(kind="acdc", value=r.tau, absolute=False, pruned=prune)
        circuits.append(_package(setup, model, task, method, p, r.scores, keep, selection, curve=curve,
                                 prune=prune, started=started))
    return circuits


def _package(setup: Setup, model, task, method, params, scores, keep, selection, *, curve, prune,
             started, search: dict | None = None) -> Circuit:
    """Evaluate the chosen edges (and the faithfulness curve of the scores) into a Circuit."""
    notes = _result_warnings(setup, search, kept=(int(keep.sum()), setup.graph.n_edges, "edge"),
                             tau=params.get("tau") if selection.kind == "acdc" else None)
    result = evaluate_circuit(setup, keep)
    nodes = nodes_in_circuit(setup.graph, keep)
    metric = setup.metric.name
    metrics = Metrics(metric=metric, clean=_clean(result["clean"]), corrupted=_clean(result["corrupted"]),
                      circuit=_clean(result["circuit"]), faithfulness=_clean(result["faithfulness"]),
                      n_edges=int(keep.sum()), n_nodes=len(nodes))
    if curve:  # undecided edges (NaN: outside eap-ig+acdc's candidates) rank last
        c = faithfulness_curves(setup, np.nan_to_num(scores, nan=0.0), prune=prune)
        for key in ("curve_signed", "curve_absolute"):
            setattr(metrics, key, [CurvePoint(**dict(p, faithfulness=_clean(p["faithfulness"]))) for p in c[key]])
        metrics.cpr, metrics.cmd = _clean(c["cpr"]), _clean(c["cmd"])
    edges = build_edges(setup.graph, scores, keep)
    return _circuit(setup, model, task, method, params, selection, nodes=build_nodes(setup.graph, nodes), edges=edges,
                    metrics=metrics, started=started, warnings=notes, positions=positions_info(setup.graph, len(edges)))


def _circuit(setup: Setup, model, task, method, params, selection, *, nodes, edges, metrics, started, warnings,
             level: str | None = None, positions=None) -> Circuit:
    """The one place a discovered circuit becomes a Circuit: what it was found on, how, and what it cost."""
    extra = {} if level is None else {"level": level}
    return Circuit(
        **extra, model=model_info(model),
        task=TaskInfo(name=task.name, source=task.source, rows=len(task), content_hash=task.content_hash,
                      example=representative_row(model, task)),
        method=MethodInfo(name=method, params=params), selection=selection, nodes=nodes, edges=edges,
        metrics=metrics, positions=positions,
        wall_time_s=round(time.perf_counter() - started, 3), peak_memory_bytes=peak_memory_bytes(setup.device),
        device=str(setup.device), code_version=code_version(), warnings=warnings)


def _result_warnings(setup: Setup, search: dict | None = None, *, kept: tuple[int, int, str] | None = None,
                     tau: float | None = None) -> list[str]:
    """discovery/pipeline/sanity.py's warnings for this setup (the target search, the kept count of all
    units, ACDC's tau), each also issued."""
    from .sanity import behaviour_warnings, emit, size_warning, target_warning, tau_warning

    notes = behaviour_warnings(setup) + (target_warning(search) if search is not None else [])
    notes += size_warning(*kept) if kept is not None else []
    notes += tau_warning(setup, tau) if tau is not None else []
    emit(notes)
    return notes


def evaluate(model: LoadedModel, task: Task | str, circuit: Circuit, *, metric=None, higher_is_better: bool | None = None,
             intervention: str | None = None, batch_size: int = 16, progress: bool = False) -> dict:
    """Evaluate exactly the edges marked in_circuit in `circuit` (metric/intervention default to the
    file's; a circuit found with the user's own metric needs that function given again). task: a Task,
    a JSONL file's path or a built-in task's name (as in discover)."""
    task = as_task(task, model)
    params = circuit.method.params
    if metric is None:
        metric = params.get("metric", "logit_diff")
        if params.get("metric_kind") == "user" or metric not in METRICS:
            raise UserError(f"the circuit was found with your own metric '{metric}'; give it again "
                            "(metric=fn, or --metric FILE.py:NAME)")
    if higher_is_better is None and params.get("metric_kind") == "user" and not isinstance(metric, str):
        higher_is_better = params.get("higher_is_better")
    setup = Setup(model, task, resolve_metric(metric, higher_is_better), batch_size=batch_size,
                  intervention=intervention or params.get("intervention", "patching"), progress=progress,
                  kv_edges=circuit.kv_edges, positions=circuit.positions is not None,
                  position_names=circuit.positions.names if circuit.positions is not None else None)
    if circuit.positions is not None and circuit.positions.n != setup.graph.n_positions:
        raise UserError(f"the circuit's edges are at {circuit.positions.n} positions but this task's prompts have "
                        f"{setup.graph.n_positions} tokens; evaluate it on a task with the same layout")
    if circuit.level == "neuron":
        from .levels import evaluate_units

        keep = circuit.neuron_mask(setup.graph, model.adapter.d_model)
        out = dict(evaluate_units(setup, "neuron", keep), n_edges=int(circuit.in_circuit(setup.graph).sum()),
                   n_neurons=int(keep.sum()))
    else:
        out = evaluate_circuit(setup, circuit.in_circuit(setup.graph))
    out["warnings"] = _result_warnings(setup)
    out["metric"] = setup.metric.name
    out["intervention"] = setup.intervention
    out["same_task"] = task.content_hash == circuit.task.content_hash  # held-out tasks are legitimate
    return {k: _clean(v) for k, v in out.items()}
