"""Errors the API reports as application/problem+json (RFC 9457), each with a detail that says what to fix."""

from __future__ import annotations


class ApiError(Exception):
    status = 400
    title = "Bad request"

    def __init__(self, detail: str, *, status: int | None = None, title: str | None = None, headers=None):
        super().__init__(detail)
        self.detail = detail
        self.status = status or self.status
        self.title = title or self.title
        self.headers = headers or {}


class NotFound(ApiError):
    status, title = 404, "Not found"


class Conflict(ApiError):
    status, title = 409, "Conflict"


class Unauthorized(ApiError):
    status, title = 401, "Unauthorized"

    def __init__(self, detail: str):
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="circuitry"'})


class TooManyActiveJobs(ApiError):
    status, title = 429, "Too many active jobs"


class Unprocessable(ApiError):
    status, title = 422, "Invalid request"


RETRY_AFTER_S = 5  # what a 503 of a store outage asks the client to wait before retrying


class StoreUnavailable(ApiError):
    """The store (database) failed: unreachable, locked, full or read-only. Nothing this request would have
    written was committed; the client retries after Retry-After (a submission with the same
    Idempotency-Key, so that a retry never makes two jobs)."""

    status, title = 503, "Store unavailable"

    def __init__(self, reason: str):
        super().__init__(f"the job store is unavailable ({reason}); nothing was changed by this request: retry "
                         f"after {RETRY_AFTER_S}s (submissions with the same Idempotency-Key are safe to repeat)",
                         headers={"Retry-After": str(RETRY_AFTER_S)})
