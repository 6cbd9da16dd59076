"""API tokens: random secrets shown once at creation; only their SHA-256 is stored (a fast hash is
enough for 256-bit random secrets, and keeps per-request checks cheap)."""

from __future__ import annotations

import hashlib
import secrets
import time

from sqlalchemy import select

from discovery.errors import UserError

from .db import Database
from .tables import ApiToken

PREFIX = "cty_"


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(db: Database, name: str, max_active_jobs: int | None = None, *,
                 admin: bool = False) -> tuple[ApiToken, str]:
    """A new token and its secret (the only time the secret is available). An admin token sees and
    changes every owner's jobs, circuits and watches; any other token only its own. The row's
    callback_secret signs the callbacks of the token's jobs."""
    if not name.strip():
        raise UserError("a token needs a name (--name), e.g. the program or person using it")
    secret = PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(name=name, token_hash=hash_token(secret), prefix=secret[:10], max_active_jobs=max_active_jobs,
                   created_at=time.time(), admin=bool(admin), callback_secret=secrets.token_hex(32))
    with db.write() as s:
        s.add(row)
    return row, secret


def revoke_token(db: Database, token_id: int) -> ApiToken:
    with db.write() as s:
        row = s.get(ApiToken, token_id)
        if row is None:
            raise UserError(f"no token with id {token_id}; see 'circuitry tokens list'")
        if row.revoked_at is None:
            row.revoked_at = time.time()
    return row


def list_tokens(db: Database) -> list[ApiToken]:
    with db.read() as s:
        return list(s.scalars(select(ApiToken).order_by(ApiToken.id)))


def find_token(db: Database, secret: str):
    """(id, max_active_jobs, admin) of the live token with this secret, or None (unknown or revoked). Every
    request asks this, so it is one indexed Core query rather than an ORM load (measured: a fifth of a
    submission's CPU went to the ORM path)."""
    with db.engine.connect() as conn:
        row = conn.execute(select(ApiToken.id, ApiToken.max_active_jobs, ApiToken.admin).where(
            ApiToken.token_hash == hash_token(secret), ApiToken.revoked_at.is_(None))).first()
    return row
