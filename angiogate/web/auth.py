"""Who is reviewing: local accounts, sessions, CSRF tokens, a trusted proxy header.

Passwords are hashed with Argon2id (argon2-cffi); only the hash is stored.
A login puts the user's name and a random CSRF token in the session, a
cookie signed with the key in `web.secret_key_file` (Starlette's
SessionMiddleware, itsdangerous underneath). Every state-changing request
must carry that token (form field `csrf_token` or header `X-CSRF-Token`).

With `web.trusted_user_header` set, a request coming from an address in
`web.trusted_proxies` is the user that header names (the proxy logged them
in); from any other address the header is ignored.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import threading
import time
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from starlette.requests import Request

from angiogate.config import Web

_hasher = PasswordHasher()
# A hash to verify against when the user does not exist, so a wrong name costs
# as long as a wrong password (no user enumeration by timing).
_DUMMY_HASH = _hasher.hash("not a password " + secrets.token_hex(8))
MIN_PASSWORD = 8


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"a password has at least {MIN_PASSWORD} characters")
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)


def secret_key(path: Path) -> str:
    """The session-signing key, created (mode 0600) on first use."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
    key = path.read_text().strip()
    if len(key) < 32:
        raise ValueError(f"{path}: the session key is too short; delete the file to make a new one")
    return key


def from_trusted_proxy(request: Request, web: Web) -> bool:
    if not request.client:
        return False
    try:
        address = ipaddress.ip_address(request.client.host)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(network) for network in web.trusted_proxies)


def current_user(request: Request, web: Web) -> str | None:
    """The reviewer making this request, or None (anonymous)."""
    if web.trusted_user_header and from_trusted_proxy(request, web):
        name = request.headers.get(web.trusted_user_header, "").strip()
        if name:
            return name[:64]
    return request.session.get("user")


def csrf_token(request: Request) -> str:
    """This session's CSRF token (made on first need)."""
    token = request.session.get("csrf")
    if not token:
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


def csrf_ok(request: Request, submitted: str | None) -> bool:
    expected = request.session.get("csrf")
    return bool(expected and submitted) and hmac.compare_digest(str(expected), str(submitted))


class LoginThrottle:
    """At most `failures` failed logins per client address within `window_s`; then
    refused until the oldest failure leaves the window (slows password guessing)."""

    def __init__(self, failures: int = 5, window_s: float = 900.0):
        self.failures, self.window_s = failures, window_s
        self._seen: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, address: str, now: float) -> list[float]:
        recent = [t for t in self._seen.get(address, []) if now - t < self.window_s]
        if recent:
            self._seen[address] = recent
        else:
            self._seen.pop(address, None)
        return recent

    def blocked(self, address: str) -> bool:
        with self._lock:
            return len(self._recent(address, time.monotonic())) >= self.failures

    def failed(self, address: str) -> None:
        with self._lock:
            now = time.monotonic()
            self._seen[address] = self._recent(address, now) + [now]

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._seen.pop(address, None)
