"""Ray workers: edge scores and ACDC mask evaluations sharded over a task's examples.

Every method's edge score is a mean over examples, so N workers that each hold the model once can
each score a contiguous shard of the rows; the driver adds the shard means weighted by their row
counts, in float64. ACDC keeps its decisions on the driver: each round's candidate masks go to every
shard, whose metric sums are added (float64) and divided by the task's row count, so the decisions
are the single-process ones (up to summation order, ~1e-7; see discovery/methods/acdc.py on ties).

    with Workers(2) as w:                  # RAY_ADDRESS if set, else a local Ray sized to the machine
        scores = score_edges(setup, "eap-ig", workers=w)
        result = acdc(setup, 0.01, workers=w)

Workers rebuild the model themselves: one loaded with `load_model` by name (revision, dtype), on their
own device (CUDA if Ray gave them a GPU, else CPU); one built in memory from its config and weights,
shipped once through Ray's object store. A sampled checksum of the weights guards the first against
a model changed after loading. On a multi-node cluster, circuitry (and a model given by a local
path) must be present on every node.

Fault tolerance: calls are idempotent (the task rows stay on the driver; each call names its rows),
so a shard whose worker dies is handed to another live worker (or to the same one once Ray has
restarted it). A shard whose worker dies `shard_retries` times, or whose code raises, fails the run
with a WorkerError carrying the worker's message; no live worker for `restart_timeout` seconds
fails it too, rather than hanging.

Over 500 lines: the driver's pool (Workers), the worker actor and the shard protocol between them (row
ranges, retries, the weights' checksum) change together; split, each half would restate the other's.
"""

from __future__ import annotations

import math
import os
import socket
import sys
import time
import uuid
from urllib.parse import urlparse

import numpy as np
import torch
from ..core.progress import progress as progress_bar

from ..core.errors import UserError
from ..methods.common import Setup

# Sampled weights per parameter for the checksum: cheap for large models, and any load of other
# weights (a different revision, dtype or checkpoint) changes nearly every element.
_FINGERPRINT_SAMPLES = 4096


class WorkerError(UserError):
    """A Ray worker failed the run: its own exception, or it kept dying. The message carries the
    worker's error (one line)."""


def _ray():
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a dependency, but a slim install may lack it
        raise UserError("--workers needs Ray; install it with: pip install 'ray>=2.60'") from None
    return ray


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


# ------------------------------------------------------------------------------------ the model


def fingerprint(hf_model) -> list[float]:
    """A float64 sum of an evenly strided sample of every parameter (on the CPU, so the same on any
    device)."""
    out = []
    for _, p in hf_model.named_parameters():
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // _FINGERPRINT_SAMPLES)
        out.append(float(flat[::step][:_FINGERPRINT_SAMPLES].to("cpu", torch.float64).sum()))
    return out


def _loadable(name: str) -> bool:
    """Whether load_model(name) can rebuild the model on a worker: a toy model, a local directory
    or a hub id (not wrap_model's '<in-memory>')."""
    if name.startswith("toy:") or os.path.isdir(name):
        return True
    return not name.startswith(("<", ".", "/", "~")) and 0 < len(name) and name.count("/") <= 1 and " " not in name


def model_spec(model, ray) -> dict:
    """What a worker rebuilds the model from; the weights of an in-memory model go to the object
    store once (nested in a list so that Ray hands the worker the reference, not a copy per call)."""
    dtype = str(model.adapter.dtype).replace("torch.", "")
    spec = {"key": uuid.uuid4().hex, "dtype": dtype, "fingerprint": fingerprint(model.hf_model)}
    if _loadable(model.name):
        # a local directory by its absolute path: a worker's working directory is not the driver's
        name = os.path.abspath(model.name) if os.path.isdir(model.name) else model.name
        spec["load"] = (name, model.revision)
    else:
        state = {k: v.detach().to("cpu") for k, v in model.hf_model.state_dict().items()}
        spec["weights"] = [ray.put((model.hf_model.config, state))]
    return spec


def _build_model(spec: dict, device: torch.device):
    from transformers import AutoModelForCausalLM

    from ..model.adapters import parse_dtype, load_model, wrap_model

    if "load" in spec:
        name, revision = spec["load"]
        model = load_model(name, revision=revision, dtype=spec["dtype"], device=device)
    else:
        config, state = _ray().get(spec["weights"][0])
        hf = AutoModelForCausalLM.from_config(config).to(parse_dtype(spec["dtype"]))
        hf.load_state_dict(state)
        model = wrap_model(hf.to(device))
    if fingerprint(model.hf_model) != spec["fingerprint"]:
        raise UserError("the model a worker loaded differs from the driver's (its weights were changed after "
                        "loading, or the files differ on the worker's node); pass the model built in memory "
                        "(wrap_model) so that its weights are shipped to the workers")
    return model


# ---------------------------------------------------------------------------------- the worker


class _Worker:
    """A Ray actor: holds one model (the last one asked for) and ACDC evaluators by job; every call
    names its job (a reference, fetched once) and its rows, so a restarted actor can redo any call."""

    def __init__(self, threads: int):
        import transformers  # noqa: F401 - the slow imports while starting, not in the first call

        from .. import methods  # noqa: F401
        from ..methods import acdc  # noqa: F401

        torch.set_num_threads(threads)
        self._model_key, self._model = None, None
        self._jobs: dict = {}
        self._evaluators: dict = {}

    def ready(self) -> dict:
        ray = _ray()
        return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "device": str(self._device()), "threads": torch.get_num_threads()}

    def _device(self) -> torch.device:
        # Ray sets CUDA_VISIBLE_DEVICES to the GPUs it gave this actor; none given: CPU
        return torch.device("cuda") if _ray().get_gpu_ids() and torch.cuda.is_available() else torch.device("cpu")

    def _job(self, holder: list) -> dict:
        job_key = holder[0]
        if job_key not in self._jobs:
            self._jobs = {job_key: _ray().get(holder[1])}  # one job at a time: a new one drops the old
        return self._jobs[job_key]

    def _setup(self, job: dict, rows: list[int]) -> Setup:
        spec = job["spec"]
        if self._model_key != spec["key"]:
            self._model, self._model_key = None, None  # free the old model before loading the next
            self._model = _build_model(spec, self._device())
            self._model_key = spec["key"]
        setup = Setup(self._model, job["task"].subset(rows), job["metric"], batch_size=job["batch_size"],
                      intervention=job["intervention"], write_cache_bytes=job["write_cache_bytes"],
                      kv_edges=job.get("kv_edges", "head"))
        if job["mean"] is not None:  # the mean over the whole task, not over this shard
            a = self._model.adapter
            setup.runs.mean = job["mean"].map(lambda t: t.to(a.device, a.dtype))
        return setup

    @staticmethod
    def _fault(fault):
        """Test-only: misbehave as the driver asked for this attempt (see Workers._fault)."""
        if fault:
            time.sleep(fault.get("sleep", 0))
            if fault.get("exit"):
                os._exit(1)

    def score(self, holder: list, rows: list[int], method: str, steps: int, fault=None):
        from ..methods import score_edges

        self._fault(fault)
        job = self._job(holder)
        scores = score_edges(self._setup(job, rows), method, steps=steps, qk_fix=job.get("qk_fix", False))
        return scores.numpy().astype(np.float32), len(rows)

    def _evaluator(self, holder: list, shard: int, rows: list[int]):
        """The shard's MaskEvaluator, built here if this actor does not hold it yet (first call,
        a restart, or a shard moved from a lost worker) and whether it was."""
        from ..methods.acdc import MaskEvaluator

        job = self._job(holder)
        key = (holder[0], shard)
        built = key not in self._evaluators
        if built:
            self._evaluators[key] = MaskEvaluator(self._setup(job, rows), job["candidates"])
        return self._evaluators[key], built

    def acdc_open(self, holder: list, shard: int, rows: list[int], fault=None) -> dict:
        self._fault(fault)
        return self._evaluator(holder, shard, rows)[0].stats()

    def acdc_sums(self, holder: list, shard: int, rows: list[int], groups, cap: int, fault=None):
        """Metric sums of the round's masks over this shard, and the forwards run for them
        (including rebuilding the shard's caches, if this actor did not hold them)."""
        self._fault(fault)
        ev, built = self._evaluator(holder, shard, rows)
        before = 0 if built else ev.n_forwards
        return ev.sums(groups, cap), ev.n_forwards - before

    def acdc_close(self, job_key: str) -> None:
        self._evaluators = {k: v for k, v in self._evaluators.items() if k[0] != job_key}
        self._jobs.pop(job_key, None)


# --------------------------------------------------------------------------------- the workers


def _check_address(address: str, timeout: float) -> None:
    """Fail fast, in one line, when a Ray address cannot be reached (ray.init would wait long)."""
    if address in ("auto", "local"):
        return
    url = urlparse(address if "://" in address else f"ray://{address}")
    try:
        host, port = url.hostname, url.port
    except ValueError:
        host, port = None, None
    if not host or not port:
        raise UserError(f"RAY_ADDRESS '{address}' is not host:port (e.g. 10.0.0.5:6379 or ray://10.0.0.5:10001)")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise UserError(f"cannot reach the Ray cluster at '{address}' ({exc.strerror or exc}); start it "
                        f"('ray start --head') or unset RAY_ADDRESS to run a local one") from None


def connect_ray(address: str | None = None) -> bool:
    """Initialise Ray unless it already is: the cluster at `address` (default RAY_ADDRESS; checked
    first, so a wrong address is one line, not a long wait), else a local Ray sized to the machine.
    True when this call started it (the caller then shuts it down)."""
    ray = _ray()
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        _check_address(address, timeout=5.0)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except Exception as exc:  # noqa: BLE001 - Ray raises many kinds; the user needs one line
        where = f"the Ray cluster at '{address}'" if address else "a local Ray"
        raise UserError(f"could not start {where}: {_one_line(exc)}") from None
    return True


class Workers:
    """N Ray actors that each hold the model once (a context manager).

    n: number of workers. cpus / gpus: Ray resources per worker (default: CPUs split evenly over the
    workers, and a share of the cluster's GPUs, at most one each, when it has any). threads: torch
    threads per worker (default: its CPU share rounded up). address: a Ray cluster (default:
    RAY_ADDRESS; else a local Ray sized to the machine; an already initialised Ray is used as is).
    max_restarts: Ray restarts of a dead actor. shard_retries: how many times a shard whose worker
    died is run again before the run fails. restart_timeout: seconds without any live worker before
    the run fails. start_timeout: seconds for the workers to start."""

    def __init__(self, n: int, *, cpus: float | None = None, gpus: float | None = None, threads: int | None = None,
                 address: str | None = None, max_restarts: int = 3, shard_retries: int = 3,
                 restart_timeout: float = 120.0, start_timeout: float = 120.0, progress: bool = False):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise UserError(f"--workers must be a whole number of at least 1 (got {n!r})")
        for flag, value in (("--worker-cpus", cpus), ("--worker-gpus", gpus)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or value < 0):
                raise UserError(f"{flag} must be a non-negative number (got {value!r})")
        if cpus == 0 and not gpus:
            raise UserError("--worker-cpus 0 needs --worker-gpus > 0 (a worker must ask Ray for something)")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise UserError(f"worker threads must be a whole number of at least 1 (got {threads!r})")
        self.n, self.cpus, self.gpus, self.threads, self.address = n, cpus, gpus, threads, address
        self.max_restarts, self.shard_retries = max_restarts, shard_retries
        self.restart_timeout, self.start_timeout = restart_timeout, start_timeout
        self.progress = progress
        self.actors: list = []
        self.info: list[dict] = []
        self.calls_done: list[int] = []  # per worker, completed calls (tests watch this)
        self.n_retried = 0  # shard attempts lost to a dead worker and run again
        self._owns_ray = False
        self._up: list[bool] = []
        self._dead: list[bool] = []
        self._pings: dict = {}
        self._next_ping: list[float] = []
        self._none_up_since: float | None = None
        self._specs: dict = {}
        self._fault = None  # test-only: fn(method, shard, attempt) -> {"sleep": s, "exit": bool} or None

    # --- lifetime ---------------------------------------------------------------------------------
    def __enter__(self) -> "Workers":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> "Workers":
        if self.actors:
            return self
        ray = _ray()
        self._owns_ray = connect_ray(self.address)
        total = ray.cluster_resources()
        n_cpu, n_gpu = float(total.get("CPU", 0)), float(total.get("GPU", 0))
        cpus = self.cpus if self.cpus is not None else max(0.01, math.floor(n_cpu / self.n * 100) / 100)
        gpus = self.gpus if self.gpus is not None else (min(1.0, math.floor(n_gpu / self.n * 100) / 100) if n_gpu else 0)
        if cpus * self.n > n_cpu + 1e-9 or gpus * self.n > n_gpu + 1e-9:
            self.close()
            raise UserError(f"{self.n} workers x ({cpus:g} CPU, {gpus:g} GPU) do not fit the Ray cluster "
                            f"({n_cpu:g} CPUs, {n_gpu:g} GPUs); use fewer workers or lower --worker-cpus/--worker-gpus")
        threads = self.threads or max(1, math.ceil(cpus))
        remote = ray.remote(_Worker).options(num_cpus=cpus, num_gpus=gpus, max_restarts=self.max_restarts,
                                             max_task_retries=0)  # retries are ours: to any live worker
        self.actors = [remote.remote(threads) for _ in range(self.n)]
        self._up, self._dead = [False] * self.n, [False] * self.n
        self._next_ping, self.calls_done, self.info = [0.0] * self.n, [0] * self.n, [{}] * self.n
        pending = {a.ready.remote(): i for i, a in enumerate(self.actors)}
        ready, not_ready = ray.wait(list(pending), num_returns=len(pending), timeout=self.start_timeout)
        if not_ready:
            self.close()
            raise UserError(f"only {len(ready)} of {self.n} workers started within {self.start_timeout:g} s; the "
                            f"cluster may lack the resources ({cpus:g} CPU, {gpus:g} GPU each): use fewer workers "
                            f"or lower --worker-cpus/--worker-gpus")
        for ref in ready:
            i = pending[ref]
            try:
                self.info[i] = ray.get(ref)
                self._up[i] = True
            except Exception as exc:  # noqa: BLE001
                self.close()
                raise WorkerError(f"worker {i + 1} failed to start: {_one_line(exc)}") from None
        self.cpus_each, self.gpus_each, self.threads_each = cpus, gpus, threads
        return self

    def close(self) -> None:
        ray = _ray()
        if ray.is_initialized():
            for a in self.actors:
                try:
                    ray.kill(a)
                except Exception:  # noqa: BLE001 - already gone
                    pass
            if self._owns_ray:
                ray.shutdown()
        self.actors, self._pings, self._specs, self._owns_ray = [], {}, {}, False

    # --- jobs ---------------------------------------------------------------------------------------
    def job(self, setup: Setup, **extra) -> list:
        """Put what every call of one run needs into the object store: [key, reference]."""
        ray = _ray()
        model = setup.model
        # keyed by the weights' checksum too: a model changed since the last run is shipped (or
        # checked against its files) again, not served from the workers' copies
        key = (id(model), tuple(fingerprint(model.hf_model)))
        if key not in self._specs:
            self._specs = {key: (model, model_spec(model, ray))}  # keeps the model (and its id) alive
        mean = None
        if setup.intervention == "mean":  # over every row of the task, as in the single-process run
            mean = setup.runs.mean_activations().map(lambda t: t.detach().to("cpu"))
        job = {"spec": self._specs[key][1], "task": setup.task, "metric": setup.metric,
               "batch_size": setup.batch_size, "intervention": setup.intervention,
               "write_cache_bytes": setup.write_cache_bytes, "kv_edges": setup.kv_edges, "mean": mean, **extra}
        return [uuid.uuid4().hex, ray.put(job)]

    # What the methods call on the workers they are given (discovery/methods never imports this module).
    def score_edges(self, setup: Setup, method: str, steps: int, qk_fix: bool = False) -> torch.Tensor:
        return score_edges_sharded(setup, method, steps, self, qk_fix=qk_fix)

    def acdc_shards(self, setup: Setup, candidates: np.ndarray) -> "RemoteShards":
        return RemoteShards(self, setup, candidates)

    def shards(self, n_rows: int, batch_size: int) -> list[list[int]]:
        """Contiguous row shards, one per worker, of whole data batches where there are enough."""
        if n_rows < self.n:
            raise UserError(f"{self.n} workers for a task of {n_rows} examples; use at most {n_rows} workers")
        n_batches = -(-n_rows // batch_size)
        if n_batches >= self.n:
            return [list(range(int(b[0]) * batch_size, min(n_rows, (int(b[-1]) + 1) * batch_size)))
                    for b in np.array_split(np.arange(n_batches), self.n)]
        return [part.tolist() for part in np.array_split(np.arange(n_rows), self.n)]

    # --- dispatch -----------------------------------------------------------------------------------
    def map(self, method: str, items: list[tuple], home: dict | None = None, on_done=None) -> list:
        """Call actor.method(*items[i]) for every i, each on some live worker; results in item order.

        home (ACDC: item -> the worker holding its caches) is kept to while that worker is alive and
        not holding more than its share of the items; otherwise any idle live worker. A call whose
        worker dies is run again elsewhere (at most shard_retries times); one that raises fails the
        run at once (the same rows would raise again)."""
        ray = _ray()
        from ray.exceptions import RayActorError, RayTaskError

        lost = tuple(getattr(ray.exceptions, name) for name in (
            "RayActorError", "WorkerCrashedError", "NodeDiedError", "ObjectLostError", "OwnerDiedError",
            "ActorUnavailableError") if hasattr(ray.exceptions, name))
        if not self.actors:
            raise UserError("the workers are not started; use them as a context manager ('with Workers(2) as w')")
        results: list = [None] * len(items)
        pending = list(range(len(items)))
        attempts = [0] * len(items)
        inflight: dict = {}  # ref -> (item, worker)
        busy: set = set()
        while pending or inflight:
            self._check_alive()
            for i in list(pending):
                a = self._choose(i, busy, home, pending, inflight)
                if a is None:
                    continue
                fault = self._fault(method, i, attempts[i]) if self._fault else None
                ref = getattr(self.actors[a], method).remote(*items[i], fault=fault)
                inflight[ref] = (i, a)
                busy.add(a)
                pending.remove(i)
            waitables = list(inflight) + list(self._pings)
            if not waitables:  # every worker down, the next pings not due yet
                time.sleep(0.1)
                continue
            ready, _ = ray.wait(waitables, num_returns=1, timeout=0.2)
            for ref in ready:
                if ref in self._pings:
                    self._pinged(ref, lost)
                    continue
                i, a = inflight.pop(ref)
                busy.discard(a)
                try:
                    results[i] = ray.get(ref)
                except RayTaskError as exc:
                    cause = getattr(exc, "cause", None) or exc
                    raise WorkerError(f"worker {a + 1} failed on shard {i + 1} of {len(items)}: "
                                      f"{_one_line(cause)}") from None
                except (RayActorError, *lost) as exc:
                    attempts[i] += 1
                    self.n_retried += 1
                    self._down(a)
                    if attempts[i] > self.shard_retries:
                        raise WorkerError(f"shard {i + 1} of {len(items)} lost its worker {attempts[i]} times; "
                                          f"last: {_one_line(exc)}") from None
                    pending.append(i)
                else:
                    self.calls_done[a] += 1
                    if home is not None:
                        home[i] = a
                    if on_done is not None:
                        on_done(i, results[i])
        return results

    def _choose(self, i: int, busy: set, home: dict | None, pending: list, inflight: dict) -> int | None:
        up = [a for a in range(self.n) if self._up[a]]
        if not up:
            return None
        idle = [a for a in up if a not in busy]
        if home is not None and home.get(i) is not None and self._up[home[i]]:
            h = home[i]
            if h not in busy:
                return h
            waiting = set(pending) | {j for j, _ in inflight.values()}
            homed = lambda a: sum(1 for j in waiting if home.get(j) == a)  # noqa: E731
            if homed(h) <= -(-len(home) // len(up)) or not idle:
                return None  # wait for the worker that holds this shard's caches
            return min(idle, key=homed)
        if home is not None and idle:
            return min(idle, key=lambda a: sum(1 for h in home.values() if h == a))
        return idle[0] if idle else None

    def _down(self, a: int) -> None:
        self._up[a] = False
        self._next_ping[a] = time.monotonic()

    def _check_alive(self) -> None:
        """Ping the workers that are down (a restarted one comes back); fail when none has been live
        for restart_timeout seconds, or when every one is gone for good."""
        now = time.monotonic()
        pinging = set(self._pings.values())
        for a in range(self.n):
            if not self._up[a] and not self._dead[a] and a not in pinging and now >= self._next_ping[a]:
                self._pings[self.actors[a].ready.remote()] = a
        if any(self._up):
            self._none_up_since = None
            return
        if all(self._dead):
            raise WorkerError(f"all {self.n} workers died and Ray could not restart them")
        if self._none_up_since is None:
            self._none_up_since = now
        elif now - self._none_up_since > self.restart_timeout:
            raise WorkerError(f"no worker has been alive for {self.restart_timeout:g} s (Ray could not restart "
                              f"them; the cluster may have lost the nodes or resources they need)")

    def _pinged(self, ref, lost) -> None:
        ray = _ray()
        from ray.exceptions import ActorDiedError

        a = self._pings.pop(ref)
        try:
            self.info[a] = ray.get(ref)
            self._up[a] = True
        except ActorDiedError:  # restarts used up: gone for good
            self._dead[a] = True
        except lost:  # still restarting
            self._next_ping[a] = time.monotonic() + 0.5


# ------------------------------------------------------------------------------------ the methods


def score_edges_sharded(setup: Setup, method: str, steps: int, workers: Workers, qk_fix: bool = False) -> torch.Tensor:
    """score_edges over the workers: each scores a shard of the rows; the shards' per-edge means are
    combined weighted by their row counts (float64). Returns float32 [n_edges], as score_edges."""
    workers.start()
    shards = workers.shards(len(setup.task), setup.batch_size)
    holder = workers.job(setup, qk_fix=qk_fix)
    bar = progress_bar(total=len(setup.task), desc=f"{method} x{workers.n}", file=sys.stderr, disable=not setup.progress,
               leave=False)
    try:
        parts = workers.map("score", [(holder, rows, method, steps) for rows in shards],
                            on_done=lambda i, r: bar.update(r[1]))
    finally:
        bar.close()
    total = np.zeros(setup.graph.n_edges, dtype=np.float64)
    for scores, n in parts:
        total += scores.astype(np.float64) * n
    return torch.from_numpy(total / sum(n for _, n in parts)).float()


class RemoteShards:
    """ACDC's mask evaluation over Ray workers (the interface of methods.acdc.LocalShards): one
    MaskEvaluator per shard of the rows, each held by a worker; each round's masks go to every shard."""

    def __init__(self, workers: Workers, setup: Setup, candidates: np.ndarray):
        self.workers, self.setup, self.candidates = workers, setup, candidates
        self.n_forwards = 0
        self.holder = None

    def open(self) -> list[dict]:
        w = self.workers.start()
        self.rows = w.shards(len(self.setup.task), self.setup.batch_size)
        self.holder = w.job(self.setup, candidates=self.candidates)
        self.home = {i: i % w.n for i in range(len(self.rows))}
        stats = w.map("acdc_open", [(self.holder, i, rows) for i, rows in enumerate(self.rows)], home=self.home)
        self.n_forwards = sum(s["n_forwards"] for s in stats)
        return stats

    def sums(self, groups, cap: int) -> list[np.ndarray]:
        parts = self.workers.map("acdc_sums", [(self.holder, i, rows, groups, cap) for i, rows in enumerate(self.rows)],
                                 home=self.home)
        totals = [np.zeros(len(masks)) for _, masks in groups]
        for sums, n_forwards in parts:  # in shard order, whatever finished first
            for t, s in zip(totals, sums):
                t += s
            self.n_forwards += n_forwards
        return totals

    def close(self) -> None:
        ray = _ray()
        if self.holder is None or not ray.is_initialized():
            return
        for a, up in zip(self.workers.actors, self.workers._up):
            if up:
                a.acdc_close.remote(self.holder[0])  # fire and forget: frees the caches
        self.holder = None
