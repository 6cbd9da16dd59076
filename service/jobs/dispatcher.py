"""The dispatcher: claims jobs from the queue, runs them on the executor, keeps their leases alive
with heartbeats, stores results through the fenced queue writes, and re-queues expired leases."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid

from pydantic import ValidationError

from discovery.errors import UserError

from ..background import BackgroundLoop
from .pipeline import JobResult, LeaseLost, RetryableError
from .queue import Lease, Queue
from ..store.results import store_circuit
from .spec import JobRequest

log = logging.getLogger("circuitry.dispatcher")


class Dispatcher(BackgroundLoop):
    thread_name = "circuitry-dispatcher"

    def __init__(self, queue: Queue, executor, *, concurrency: int = 1, on_finished=None):
        """on_finished(job_id): called after each job attempt ends (the API's callback delivery)."""
        super().__init__()
        self.on_finished = on_finished
        self.queue, self.executor = queue, executor
        self.settings = queue.settings
        self.concurrency = max(1, concurrency)
        self.worker_id = f"{socket.gethostname()[:24]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._slots = threading.Semaphore(self.concurrency)
        self._running: set[threading.Thread] = set()

    # ------------------------------------------------------------------------------- loop
    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        for t in list(self._running):
            t.join(timeout)

    def _loop(self) -> None:
        last_reap = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() - last_reap >= min(self.settings.heartbeat_s, self.settings.lease_s / 2):
                    self.queue.reap()
                    last_reap = time.monotonic()
                if not self._slots.acquire(timeout=self.settings.poll_s):
                    continue
                lease = self.queue.claim(self.worker_id)
                if lease is None:
                    self._slots.release()
                    self._stop.wait(self.settings.poll_s)
                    continue
                t = threading.Thread(target=self._handle, args=(lease,), name=f"job-{lease.job_id[:8]}", daemon=True)
                self._running.add(t)
                t.start()
            except Exception:  # the database was briefly unavailable: keep going
                log.exception("dispatcher loop error")
                self._stop.wait(self.settings.poll_s)

    # ------------------------------------------------------------------------------- one job
    def _handle(self, lease: Lease) -> None:
        lost = threading.Event()
        done = threading.Event()
        beat = threading.Thread(target=self._heartbeats, args=(lease, lost, done), daemon=True)
        beat.start()

        def report(progress: float, message: str, status: str | None = None) -> None:
            if lost.is_set() or not self.queue.heartbeat(lease, progress=progress, message=message, status=status):
                lost.set()
                raise LeaseLost(lease.job_id)

        try:
            try:
                job = JobRequest.model_validate(lease.spec)
            except ValidationError as exc:  # stored by an older version whose options this one refuses
                raise UserError(f"the stored job request is no longer valid: {exc.errors()[0].get('msg')}") from None
            result = self.executor.run(job, report, job_id=lease.job_id)
            if lost.is_set():
                raise LeaseLost(lease.job_id)
            stored = self.queue.complete(lease, lambda s, job_id: self._store(s, job_id, result))
            if not stored:
                log.info("job %s attempt %d: lease lost before the result was stored; discarded",
                         lease.job_id, lease.attempt)
        except LeaseLost:
            log.info("job %s attempt %d: lease lost (cancelled or expired); stopped", lease.job_id, lease.attempt)
        except UserError as exc:
            self.queue.fail(lease, str(exc))
        except RetryableError as exc:
            self.queue.fail(lease, str(exc), retry=True)
        except Exception as exc:  # a bug or resource problem: the job fails with a one-line reason
            log.exception("job %s failed", lease.job_id)
            self.queue.fail(lease, f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        finally:
            done.set()
            self._running.discard(threading.current_thread())
            self._slots.release()
            if self.on_finished is not None:
                try:
                    self.on_finished(lease.job_id)
                except Exception:
                    log.exception("on_finished for job %s failed", lease.job_id)

    def _heartbeats(self, lease: Lease, lost: threading.Event, done: threading.Event) -> None:
        while not done.wait(self.settings.heartbeat_s):
            try:
                if not self.queue.heartbeat(lease):
                    lost.set()
                    cancel = getattr(self.executor, "cancel", None)
                    if cancel:
                        cancel(lease.job_id)
                    return
            except Exception:  # a missed beat is retried; the lease outlasts several
                log.exception("heartbeat failed")

    @staticmethod
    def _store(session, job_id: str, result: JobResult) -> str:
        circuit = json.loads(result.circuit_json)
        return store_circuit(session, job_id, circuit, result.circuit_json.encode(), result.labels)
