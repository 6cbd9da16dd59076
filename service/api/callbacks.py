"""Callbacks: a finished job is POSTed to its callback_url, signed, to public addresses only.

- The address guard runs at send time on the resolved address, and the request goes to exactly that
  address (Host header and TLS server name keep the URL's host), so a DNS answer that changes between
  the check and the connection (rebinding) cannot reach anything else. Refused: every address that is
  not globally routable (loopback, private, link-local, shared, reserved, multicast, unspecified) and
  the cloud metadata addresses, unless CIRCUITRY_CALLBACK_ALLOW names the address, its network (CIDR)
  or the URL's host name. Redirects are not followed.
- Signature: X-Circuitry-Timestamp (Unix seconds) and X-Circuitry-Signature: `sha256=` + hex
  HMAC-SHA256 over `{timestamp}.{body}` with the job's token's callback secret (printed by `circuitry
  tokens create`). A receiver recomputes it and rejects old timestamps.
- Delivery is retried with a doubling backoff on connection errors, 429 and 5xx; each outcome
  (delivered, refused, given up) is recorded as a `callback` event of the job."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from sqlalchemy import select

from discovery.core.errors import UserError

from ..config import Settings
from ..jobs.queue import Queue
from ..store.tables import TERMINAL, ApiToken
from .views import job_view

log = logging.getLogger("circuitry.callbacks")
METADATA = {ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200",
                                              "fd00:ec2::254")}


class Refused(UserError):
    """The callback URL's address is not one a job may be delivered to."""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def _allowed(ip, host: str, allow: list[str]) -> bool:
    for entry in allow:
        try:
            if ip in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            if entry.lower() == host.lower():
                return True
    return False


def check_address(host: str, ip, allow: list[str]) -> None:
    """Raise Refused unless `ip` (what `host` resolved to) is public or allow-listed."""
    if _allowed(ip, host, allow):
        return
    if ip in METADATA or not ip.is_global or ip.is_multicast or getattr(ip, "ipv4_mapped", None) is not None:
        kind = ("a cloud metadata address" if ip in METADATA else "loopback" if ip.is_loopback else
                "link-local" if ip.is_link_local else "private" if ip.is_private else "not a public address")
        raise Refused(f"callback host '{host}' resolves to {ip} ({kind}); only public addresses are called back "
                      "(an operator can allow it with CIRCUITRY_CALLBACK_ALLOW)")


def resolve(host: str, port: int, allow: list[str]):
    """The first address of `host` that passes the guard (all must: one refused address refuses all)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConnectionError(f"callback host '{host}' does not resolve: {exc}") from None
    ips = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    for ip in ips:
        check_address(host, ip, allow)
    return ips[0]


def check_url(url: str, allow: list[str]) -> None:
    """At submission: a callback URL whose host is a literal address (or localhost) that the guard
    refuses is refused at once (a host name is checked again, resolved, at send time)."""
    host = urlsplit(url).hostname or ""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
            ip = ipaddress.ip_address("127.0.0.1")
        else:
            return
    check_address(host, ip, allow)


class Callbacks:
    """Delivers finished jobs' callbacks on a few threads of its own (a slow receiver never holds a
    dispatcher slot)."""

    def __init__(self, queue: Queue, settings: Settings | None = None, *, attempts: int = 4,
                 backoff_s: float = 1.0, timeout_s: float = 5.0):
        self.queue = queue
        self.settings = settings or queue.settings
        self.attempts, self.backoff_s, self.timeout_s = attempts, backoff_s, timeout_s
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="circuitry-callback")

    def __call__(self, job_id: str) -> None:
        self._pool.submit(self.deliver, job_id)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def _secret(self, owner: str) -> str | None:
        if not owner.isdigit():
            return self.settings.callback_secret
        with self.queue.db.read() as s:
            return s.scalar(select(ApiToken.callback_secret).where(ApiToken.id == int(owner)))

    def deliver(self, job_id: str) -> str | None:
        """Deliver one job's callback; returns the outcome recorded in its events (None: no callback)."""
        try:
            job = self.queue.get(job_id)
            if not job.callback_url or job.status not in TERMINAL:
                return None
            body = job_view(job).model_dump_json().encode()
            outcome = self._send(job.callback_url, body, self._secret(job.owner))
        except Exception as exc:  # never let a callback take the dispatcher down
            log.warning("callback for job %s failed: %s", job_id, exc)
            outcome = f"callback failed: {type(exc).__name__}: {exc}"
        try:
            self.queue.note(job_id, "callback", outcome[:2000])
        except Exception as exc:
            log.warning("could not record the callback of job %s: %s", job_id, exc)
        return outcome

    def _send(self, url: str, body: bytes, secret: str | None) -> str:
        import httpx

        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
        last = "no attempt"
        for attempt in range(1, self.attempts + 1):
            try:
                ip = resolve(host, port, self.settings.callback_allow)  # every attempt: DNS may have changed
            except Refused as exc:
                return f"callback refused: {exc}"
            except ConnectionError as exc:
                last = str(exc)
            else:
                netloc = f"[{ip}]" if ip.version == 6 else str(ip)
                target = parts._replace(netloc=f"{netloc}:{port}").geturl()
                stamp = int(time.time())
                headers = {"Content-Type": "application/json", "Host": parts.netloc.rsplit("@", 1)[-1],
                           "User-Agent": "circuitry-callback", "X-Circuitry-Timestamp": str(stamp)}
                if secret:
                    headers["X-Circuitry-Signature"] = sign(secret, stamp, body)
                try:
                    with httpx.Client(timeout=self.timeout_s, follow_redirects=False, trust_env=False) as c:
                        r = c.send(c.build_request("POST", target, content=body, headers=headers,
                                                   extensions={"sni_hostname": host}))  # TLS names the URL's host
                    if r.status_code < 300:
                        return f"callback delivered to {host} (HTTP {r.status_code}, attempt {attempt})"
                    last = f"HTTP {r.status_code}"
                    if r.status_code < 500 and r.status_code != 429:  # the receiver refused it: no retry
                        return f"callback rejected by {host}: HTTP {r.status_code} (attempt {attempt})"
                except httpx.HTTPError as exc:
                    last = f"{type(exc).__name__}: {exc}"
            if attempt < self.attempts:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
        return f"callback to {host} gave up after {self.attempts} attempts: {last}"
