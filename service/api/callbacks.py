"""Callbacks: a finished job is POSTed to its callback_url."""

from __future__ import annotations

import logging

from ..jobs.queue import Queue
from ..store.tables import TERMINAL
from .views import job_view

log = logging.getLogger("circuitry.callbacks")


class Callbacks:
    def __init__(self, queue: Queue):
        self.queue = queue

    def __call__(self, job_id: str) -> None:
        """POST the finished job to its callback_url (best effort, a few seconds at most)."""
        try:
            job = self.queue.get(job_id)
            if not job.callback_url or job.status not in TERMINAL:
                return
            import httpx

            httpx.post(job.callback_url, content=job_view(job).model_dump_json(), timeout=5.0,
                       headers={"Content-Type": "application/json"}, follow_redirects=False)
        except Exception as exc:
            log.warning("callback for job %s failed: %s", job_id, exc)
