"""Console sessions: the bearer token is exchanged once for a session cookie.

- ``POST /login`` with the API token (compared in constant time) creates a session: a random
  256-bit id in an ``HttpOnly``, ``SameSite=Strict`` cookie (``Secure`` over HTTPS), scoped to
  ``/``. Redis keeps only a hash of the id, with the actor and an expiry
  (``console.session_ttl_s``), so every replica accepts it and ``POST /logout`` ends it
  everywhere.
- Every state-changing request (``POST``) must carry the session's CSRF token (a form field or
  the ``X-CSRF-Token`` header), an HMAC of the session id that only a page of the console can
  know, and must not come from another origin (``Origin`` / ``Sec-Fetch-Site``).
- Without a session, pages answer 401 with the login form, data answers 401; without a
  configured token the console answers 503 (it cannot be logged into).

Redis keys (``p`` is the key prefix)::

    p:console:session:{sha256 of the session id}   actor, expiring with the session
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import Request

from recognizer_service.gallery import RedisClient

COOKIE = "rllfpr_session"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"


class ConsoleError(Exception):
    """A console request is refused: ``status`` says why (401 no session, 403 cross-site or no
    CSRF token, 503 no token configured or Redis away, 4xx bad input)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Session:
    token: str
    actor: str

    @property
    def csrf(self) -> str:
        return hmac.new(self.token.encode(), b"rllfpr-console-csrf", hashlib.sha256).hexdigest()


class Sessions:
    def __init__(self, client: RedisClient, prefix: str, ttl_s: int) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_s = ttl_s

    def _key(self, token: str) -> str:
        return f"{self.prefix}:console:session:{hashlib.sha256(token.encode()).hexdigest()}"

    def create(self, actor: str) -> Session:
        token = secrets.token_urlsafe(32)
        self.client.set(self._key(token), actor, ex=self.ttl_s)
        return Session(token, actor)

    def find(self, token: str) -> Session | None:
        if not token or len(token) > 128:
            return None
        actor = self.client.get(self._key(token))
        if actor is None:
            return None
        text = actor.decode() if isinstance(actor, bytes) else str(actor)
        return Session(token, text)

    def end(self, token: str) -> None:
        self.client.delete(self._key(token))


def token_matches(given: str, expected: str) -> bool:
    return secrets.compare_digest(given.encode(), expected.encode())


def token_id(token: str) -> str:
    """The audit name of the API token: a short hash, never the token."""
    return hashlib.sha256(token.encode()).hexdigest()[:8]


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another site or origin."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in {"same-origin", "none"}:
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True  # not a browser, or an old one: the CSRF token still has to match
    return urlsplit(origin).netloc == request.headers.get("host", "")


def check_csrf(request: Request, session: Session, submitted: str | None) -> None:
    """Refuse (403) a state-changing request from another origin or without the token."""
    if not same_origin(request):
        raise ConsoleError(403, "cross-origin request refused")
    given = submitted or request.headers.get(CSRF_HEADER, "")
    if not given or not token_matches(given, session.csrf):
        raise ConsoleError(403, "missing or wrong CSRF token")
