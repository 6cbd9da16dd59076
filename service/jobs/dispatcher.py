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
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from discovery.core.errors import UserError

from ..background import BackgroundLoop
from ..store.results import store_circuit
from .pipeline import JobResult, LeaseLost, RetryableError
from .queue import Lease, Queue
from .spec import JobRequest

log = logging.getLogger("circuitry.dispatcher")
# the store's errors that a retry can outlast: locked or full database, dropped connection, pool exhausted
TRANSIENT = (OperationalError, InterfaceError, DisconnectionError, PoolTimeout, OSError)


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
        self._failing: dict[str, tuple[float, str, int]] = {}  # store call -> (failing since, last error, tries)

    # ------------------------------------------------------------------------------- health
    def _store_ok(self, what: str) -> None:
        self._failing.pop(what, None)

    def _store_failed(self, what: str, exc: Exception) -> float:
        """Record a failed store call; the backoff before the next try (doubling, at most lease_s / 2)."""
        since, _, count = self._failing.get(what, (time.monotonic(), None, 0))
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        self._failing[what] = (since, error, count + 1)
        return min(self.settings.poll_s * 2 ** min(count + 1, 16),
                   max(self.settings.poll_s, self.settings.lease_s / 2))

    def health(self) -> tuple[bool, str | None]:
        """(False, why) once a store call (claiming, heartbeats, storing results) has failed for longer
        than a lease without succeeding: this dispatcher's jobs are then re-queued by others (or wait)."""
        now = time.monotonic()
        for what, (since, error, count) in sorted(self._failing.items()):
            if now - since > self.settings.lease_s:
                return False, (f"the dispatcher's {what} has failed for {now - since:.0f}s ({count} tries, longer "
                               f"than the {self.settings.lease_s:g}s lease); last error: {error}")
        return True, None

    # ------------------------------------------------------------------------------- loop
    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        for t in list(self._running):
            t.join(timeout)
        close = getattr(self.on_finished, "close", None)  # callbacks still being delivered finish first
        if close is not None:
            close()

    def _loop(self) -> None:
        """Claim and start jobs while slots are free. Any exception of the store (disk full, a lock
        wait past the busy timeout, a dropped PostgreSQL connection) gives the slot back and is
        retried with backoff; nothing here can stop the loop."""
        last_reap = 0.0
        while not self._stop.is_set():
            if time.monotonic() - last_reap >= min(self.settings.heartbeat_s, self.settings.lease_s / 2):
                try:
                    self.queue.reap()
                    self._store_ok("reap")
                except Exception as exc:
                    log.warning("reaping expired leases failed: %s", exc)
                    self._store_failed("reap", exc)
                last_reap = time.monotonic()
            if not self._slots.acquire(timeout=self.settings.poll_s):
                continue
            started = False
            try:
                lease = self.queue.claim(self.worker_id)
                self._store_ok("claim")
                if lease is not None:
                    t = threading.Thread(target=self._handle, args=(lease,), name=f"job-{lease.job_id[:8]}",
                                         daemon=True)
                    self._running.add(t)
                    t.start()
                    started = True
                    continue
                wait = self.settings.poll_s
            except Exception as exc:
                wait = self._store_failed("claim", exc)
                log.warning("claiming a job failed (retrying in %.1fs): %s", wait, exc)
            finally:
                if not started:
                    self._slots.release()
            self._stop.wait(wait)

    def _retrying(self, what: str, fn, lease: Lease):
        """fn() until it returns (a fenced write answers False once the lease is lost: then nothing
        more is tried), retrying the store's transient errors with backoff; gives up after 10 leases
        or at stop. Other errors (a bug) propagate: the job fails."""
        deadline = time.monotonic() + 10 * self.settings.lease_s
        while True:
            try:
                out = fn()
                self._store_ok(what)
                return out
            except TRANSIENT as exc:
                wait = self._store_failed(what, exc)
                if self._stop.is_set() or time.monotonic() + wait > deadline:
                    log.error("job %s: %s failed for good: %s", lease.job_id, what, exc)
                    return False
                log.warning("job %s: %s failed (retrying in %.1fs): %s", lease.job_id, what, wait, exc)
                self._stop.wait(wait)

    # ------------------------------------------------------------------------------- one job
    def _handle(self, lease: Lease) -> None:
        lost = threading.Event()
        done = threading.Event()
        beat = threading.Thread(target=self._heartbeats, args=(lease, lost, done), daemon=True)
        beat.start()

        def report(progress: float, message: str, status: str | None = None) -> None:
            if lost.is_set():
                raise LeaseLost(lease.job_id)
            try:
                alive = self.queue.heartbeat(lease, progress=progress, message=message, status=status)
            except Exception as exc:  # a progress write that fails is skipped; the heartbeats keep the lease
                log.warning("job %s: progress not recorded: %s", lease.job_id, exc)
                return
            if not alive:
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
            stored = self._retrying("storing the result",
                                    lambda: self.queue.complete(lease, lambda s, job_id: self._store(s, job_id, result),
                                                                _result_warnings(result)),
                                    lease)
            if not stored:
                log.info("job %s attempt %d: lease lost before the result was stored; discarded",
                         lease.job_id, lease.attempt)
        except LeaseLost:
            log.info("job %s attempt %d: lease lost (cancelled or expired); stopped", lease.job_id, lease.attempt)
        except UserError as exc:
            error = str(exc)
            self._retrying("recording the failure", lambda: self.queue.fail(lease, error), lease)
        except RetryableError as exc:
            error = str(exc)
            self._retrying("recording the retry", lambda: self.queue.fail(lease, error, retry=True), lease)
        except Exception as exc:  # a bug or resource problem: the job fails with a one-line reason
            log.exception("job %s failed", lease.job_id)
            reason = f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            self._retrying("recording the failure", lambda: self.queue.fail(lease, reason), lease)
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
                alive = self.queue.heartbeat(lease)
                self._store_ok("heartbeat")
            except Exception as exc:  # a missed beat is retried; the lease outlasts several
                self._store_failed("heartbeat", exc)
                log.warning("job %s: heartbeat failed: %s", lease.job_id, exc)
                continue
            if not alive:
                lost.set()
                cancel = getattr(self.executor, "cancel", None)
                if cancel:
                    cancel(lease.job_id)
                return

    @staticmethod
    def _store(session, job_id: str, result: JobResult) -> str:
        circuit = json.loads(result.circuit_json)
        return store_circuit(session, job_id, circuit, result.circuit_json.encode(), result.labels)


def _result_warnings(result: JobResult) -> list[str]:
    """The warnings the circuit records (discovery/pipeline/sanity.py): shown with the job and as its events."""
    return [str(w) for w in (json.loads(result.circuit_json).get("warnings") or [])]
