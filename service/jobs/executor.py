"""The inline executor: jobs run in the dispatcher's own process, sharing one model cache."""

from __future__ import annotations

from ..config import Settings
from .pipeline import JobResult, ModelCache, Report, run_job
from .spec import JobRequest


class InlineExecutor:
    name = "inline"

    def __init__(self, settings: Settings):
        self.settings = settings
        self.cache = ModelCache(settings.max_actors)

    def run(self, job: JobRequest, report: Report, job_id: str = "") -> JobResult:
        return run_job(job, report, self.cache, self.settings.model_roots, self.settings.device)

    def close(self) -> None:
        pass


def make_executor(settings: Settings):
    if settings.executor == "inline":
        return InlineExecutor(settings)
    if settings.executor == "ray":
        from .ray_executor import RayExecutor
        return RayExecutor(settings)
    from discovery.core.errors import UserError
    raise UserError(f"unknown executor '{settings.executor}'; use 'ray' or 'inline'")
