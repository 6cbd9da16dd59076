"""The Ray executor: model actors that keep one model loaded each (keyed by model, revision, dtype
and device), so a stream of jobs on one model loads it once. At most `max_actors` live; the least
recently used idle actor is killed to make room. Labeling runs as a separate Ray task, outside the
model actors, so a slow labeler (an LLM endpoint) never holds a model actor."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

import ray

from discovery.pipeline.distributed import connect_ray
from discovery.core.errors import Cancelled, UserError

from ..config import Settings
from .pipeline import (BatchProgress, JobResult, LeaseLost, ModelCache, Report, RetryableError, build_task,
                       discover_circuit, label, load_for, model_key)
from .spec import JobRequest


@ray.remote(concurrency_groups={"control": 1})
class ModelActor:
    """One loaded model. `discover` runs one job at a time; `progress` and `cancel_job` answer on a
    thread of their own while it runs: the driver follows the job's batches and can stop it within
    one batch (Setup.on_batch raises Cancelled)."""

    def __init__(self, job: JobRequest, roots: list[str], device: str | None):
        self.job, self.roots, self.device, self.model = job, roots, device, None
        self._progress: dict[str, tuple] = {}
        self._cancelled: set[str] = set()

    def discover(self, job: JobRequest, job_id: str = "") -> str:
        def on_batch(done: int, total: int, desc: str | None) -> None:
            if job_id in self._cancelled:
                raise Cancelled(job_id)
            self._progress[job_id] = (done, total, desc)

        try:
            if self.model is None:  # loaded here, not in __init__: a load error is the job's error, not a dead actor
                self.model = load_for(self.job, self.roots, self.device)
            return discover_circuit(job, self.model, build_task(job, self.model), on_batch=on_batch)
        finally:
            self._progress.pop(job_id, None)
            self._cancelled.discard(job_id)

    @ray.method(concurrency_group="control")
    def progress(self, job_id: str):
        return self._progress.get(job_id)

    @ray.method(concurrency_group="control")
    def cancel_job(self, job_id: str) -> None:
        self._cancelled.add(job_id)

    def ping(self) -> bool:
        return True


_label_cache = ModelCache(1)  # per Ray worker process: consecutive labeling tasks on one model load it once


@ray.remote
def label_task(job: JobRequest, circuit_json: str, roots: list[str], device: str | None) -> JobResult:
    model = _label_cache.get(model_key(job, device), lambda: load_for(job, roots, device))
    return label(job, circuit_json, model, build_task(job, model))


def _unwrap(exc: BaseException) -> BaseException:
    """The exception a task raised, out of Ray's wrapper."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


class RayExecutor:
    name = "ray"

    def __init__(self, settings: Settings):
        self.settings = settings
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # Ray 2.60 turns token auth on for new local clusters
        connect_ray(settings.ray_address)
        self._actors: OrderedDict[tuple, object] = OrderedDict()
        self._busy: dict[tuple, int] = {}
        self._running: dict[str, object] = {}  # job id -> ObjectRef, for cancellation
        self._actor_of: dict[str, object] = {}  # job id -> the model actor running its discovery
        self.poll_s = 0.5  # how often a running job's progress is read from its actor
        self._lock = threading.Lock()
        self.created = 0

    def _acquire(self, job: JobRequest) -> tuple[tuple, object]:
        key = model_key(job, self.settings.device)
        with self._lock:
            actor = self._actors.get(key)
            if actor is None:
                self._evict(room_for=1)
                actor = ModelActor.options(num_cpus=self.settings.actor_cpus, num_gpus=self.settings.actor_gpus) \
                    .remote(job, self.settings.model_roots, self.settings.device)
                self._actors[key] = actor
                self.created += 1
            self._actors.move_to_end(key)
            self._busy[key] = self._busy.get(key, 0) + 1
            return key, actor

    def _release(self, key: tuple) -> None:
        with self._lock:
            self._busy[key] = self._busy.get(key, 1) - 1

    def _evict(self, room_for: int) -> None:
        """Kill least recently used idle actors until `room_for` more fit (busy ones are never killed)."""
        for key in list(self._actors):
            if len(self._actors) + room_for <= self.settings.max_actors:
                return
            if self._busy.get(key, 0) == 0:
                ray.kill(self._actors.pop(key))
                self._busy.pop(key, None)

    def _drop(self, key: tuple) -> None:
        with self._lock:
            actor = self._actors.pop(key, None)
            self._busy.pop(key, None)
        if actor is not None:
            ray.kill(actor)

    def actor_keys(self) -> list[tuple]:
        with self._lock:
            return list(self._actors)

    def _get(self, job_id: str, ref):
        self._running[job_id] = ref
        try:
            return ray.get(ref)
        finally:
            self._running.pop(job_id, None)

    def run(self, job: JobRequest, report: Report, job_id: str = "") -> JobResult:
        report(0.05, "waiting for a model actor")
        key, actor = self._acquire(job)
        try:
            report(0.2, f"discovering on a model actor ({job.method.name})")
            circuit_json = self._follow(job_id, actor, actor.discover.remote(job, job_id), BatchProgress(report, 0.2, 0.8))
        except (ray.exceptions.ActorDiedError, ray.exceptions.ActorUnavailableError) as exc:
            self._drop(key)  # a dead actor (e.g. out of memory) is replaced on the next job
            raise RetryableError(f"the model actor died: {str(exc).splitlines()[0]}") from None
        except ray.exceptions.TaskCancelledError:
            raise RetryableError("the job's task was cancelled") from None
        except ray.exceptions.RayTaskError as exc:
            cause = _unwrap(exc)
            if isinstance(cause, Cancelled):
                raise LeaseLost(job_id) from None
            if isinstance(cause, UserError):
                if "could not load model" in str(cause):
                    self._drop(key)
                raise UserError(str(cause)) from None
            raise RuntimeError(f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}") \
                from None
        finally:
            self._release(key)
        if not job.labeling.wanted:
            return JobResult(circuit_json)
        report(0.8, f"labeling ({job.labeling.backend})", status="labeling")
        try:
            return self._get(job_id, label_task.options(num_cpus=min(1.0, self.settings.actor_cpus))
                             .remote(job, circuit_json, self.settings.model_roots, self.settings.device))
        except ray.exceptions.RayTaskError as exc:
            cause = _unwrap(exc)
            raise (UserError(str(cause)) if isinstance(cause, UserError) else RuntimeError(str(cause))) from None

    def _follow(self, job_id: str, actor, ref, progress: BatchProgress):
        """The actor's answer; meanwhile its batches become the job's progress, and a lost lease (the
        job was cancelled) stops the actor's run within one batch."""
        self._running[job_id], self._actor_of[job_id] = ref, actor
        try:
            while True:
                ready, _ = ray.wait([ref], timeout=self.poll_s)
                if ready:
                    return ray.get(ref)
                try:
                    state = ray.get(actor.progress.remote(job_id), timeout=10)
                except Exception:  # a busy or dying actor: the answer (or its error) comes from ref
                    state = None
                if state is not None:
                    try:
                        progress(*state)
                    except LeaseLost:
                        actor.cancel_job.remote(job_id)
                        raise
        finally:
            self._running.pop(job_id, None)
            self._actor_of.pop(job_id, None)

    def cancel(self, job_id: str) -> None:
        """The job was cancelled (or its lease lost): stop its discovery run, or its labeling task."""
        actor = self._actor_of.get(job_id)
        if actor is not None:
            actor.cancel_job.remote(job_id)
            return
        ref = self._running.get(job_id)
        if ref is not None:
            ray.cancel(ref)

    def close(self) -> None:
        with self._lock:
            for actor in self._actors.values():
                ray.kill(actor)
            self._actors.clear()
