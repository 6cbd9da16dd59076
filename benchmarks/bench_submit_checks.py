"""CPU a job submission's checks take, in one process (no HTTP): JobRequest validation (the options
model), the task and model checks, the canonical dump the request hash is taken over.

    python benchmarks/bench_submit_checks.py [--n 3000]
"""

from __future__ import annotations

import argparse
import time

from service.api.schemas import JobRequest
from service.config import Settings
from service.jobs.checks import validate_model, validate_task

BODY = {"model": {"name": "toy:ioi"}, "method": {"name": "eap"},
        "task": {"rows": [{"clean_ids": [1, 2, 3, 4], "corrupted_ids": [1, 2, 5, 4], "answer_id": 3, "wrong_id": 5}] * 8}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3000)
    args = ap.parse_args()
    settings = Settings()

    def one():
        job = JobRequest.model_validate(BODY)
        validate_task(job.task, settings)
        validate_model(job, settings)
        job.model_dump(mode="json")

    for _ in range(200):
        one()
    t0 = time.perf_counter()
    for _ in range(args.n):
        one()
    print(f"{(time.perf_counter() - t0) / args.n * 1e6:.0f} us per submission's checks ({args.n} submissions)")


if __name__ == "__main__":
    main()
