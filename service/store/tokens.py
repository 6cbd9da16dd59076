"""API tokens: random secrets shown once at creation; only their SHA-256 is stored (a fast hash is
enough for 256-bit random secrets, and keeps per-request checks cheap)."""

from __future__ import annotations

import hashlib
import secrets
import time

from sqlalchemy import select

from discovery.core.errors import UserError

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


def owner_key(db: Database, *, secret: str | None = None, name: str | None = None) -> tuple[str, str]:
    """(owner key, who) of the live token a command acts for: by its secret (`--token`), or by its id or
    name (`--owner`, as `circuitry tokens list` shows them). The owner key is what the API scopes rows
    by (the token id), so what a command makes with it is that token's. UserError: no such live token,
    or a name that several live tokens share."""
    if secret is not None:
        found = find_token(db, secret)
        if found is None:
            raise UserError("--token is not a live token of this store (unknown or revoked); see 'circuitry tokens "
                            "list', or pass --owner NAME")
        with db.read() as s:
            row = s.get(ApiToken, found.id)
        return str(row.id), f"token {row.id} ({row.name})"
    text = (name or "").strip()
    q = select(ApiToken).where(ApiToken.revoked_at.is_(None))
    q = q.where(ApiToken.id == int(text)) if text.isdigit() else q.where(ApiToken.name == text)
    with db.read() as s:
        rows = list(s.scalars(q.order_by(ApiToken.id)))
    if not rows:
        raise UserError(f"--owner '{text}' is no live token's id or name; see 'circuitry tokens list' (or create one: "
                        f"'circuitry tokens create --name {text or 'NAME'}')")
    if len(rows) > 1:
        raise UserError(f"--owner '{text}' names {len(rows)} live tokens (ids {', '.join(str(r.id) for r in rows)}); "
                        "pass one id")
    return str(rows[0].id), f"token {rows[0].id} ({rows[0].name})"
