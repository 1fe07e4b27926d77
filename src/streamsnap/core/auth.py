"""Credentials: the bearer token, basic users with scrypt-hashed passwords, per-stream publish keys.

Password hashes are self-describing strings, ``scrypt$N$r$p$SALT$HASH`` (salt and hash in
unpadded base64), made by ``streamsnap hash-password``. Successful verifications are cached for
a short while so that the slow hash is not paid on every request. Failed logins are counted per
client address: beyond a few a minute, the address is refused without hashing.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import math
import os
import secrets
import time
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .errors import ConfigError

SCHEME = "scrypt"
# about 128 MiB and 0.5 s per hash (OWASP's scrypt floor is N=2^17, r=8); the hashing runs in
# its own threads, never on the event loop
DEFAULT_N, DEFAULT_R, DEFAULT_P = 1 << 17, 8, 1
MIN_N = 1 << 14  # configured hashes weaker than this stop the start
_PUBLISH_SETTINGS = "([auth] publish_keys, or [auth] open_publish = true)"  # what would allow it
CACHE_SIZE = 256
CACHE_TTL_S = 60.0
# An address whose logins failed this often within the window gets 429 until the oldest failure
# leaves it: enough for a user's typos, too few for guessing.
MAX_FAILED_LOGINS = 10
FAILED_LOGINS_WINDOW_S = 60.0
MAX_TRACKED_ADDRESSES = 10_000  # failures of the least recent addresses beyond are forgotten
# Each address hashes one login at a time, so another address always finds a free thread.
HASHING_THREADS = 2


class LoginThrottled(Exception):
    """An address failed to log in too often lately; ``retry_after`` is in whole seconds."""

    def __init__(self, remote: str, retry_after: int) -> None:
        super().__init__(
            f"too many failed logins from {remote or 'this address'}: try again in {retry_after} s"
        )
        self.retry_after = retry_after


class FailedLogins:
    """Failed logins per client address within a sliding window, and one login check at a time
    per address (a burst of guesses from one address queues behind itself, not the others)."""

    def __init__(
        self, limit: int = MAX_FAILED_LOGINS, window_s: float = FAILED_LOGINS_WINDOW_S
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}
        self._waiting: Counter[str] = Counter()

    def check(self, remote: str) -> None:
        """Raises LoginThrottled while ``remote`` has used up its failures."""
        times = self._failures.get(remote)
        if times is None:
            return
        now = time.monotonic()
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[remote]
        elif len(times) >= self.limit:
            raise LoginThrottled(remote, math.ceil(times[0] + self.window_s - now))

    def failed(self, remote: str) -> None:
        self._failures.setdefault(remote, deque()).append(time.monotonic())
        self._failures.move_to_end(remote)
        while len(self._failures) > MAX_TRACKED_ADDRESSES:
            self._failures.popitem(last=False)

    @contextlib.asynccontextmanager
    async def turn(self, remote: str) -> AsyncIterator[None]:
        """Wait for ``remote``'s previous login checks; raises LoginThrottled before and after
        waiting (those checks may have used up the last failures)."""
        self.check(remote)
        lock = self._locks.setdefault(remote, asyncio.Lock())
        self._waiting[remote] += 1
        try:
            async with lock:
                self.check(remote)
                yield
        finally:
            self._waiting[remote] -= 1
            if not self._waiting[remote]:
                del self._waiting[remote], self._locks[remote]


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, size: int) -> bytes:
    maxmem = 128 * r * (n + p + 2) + (1 << 20)
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=size)


def hash_password(password: str, n: int = DEFAULT_N, r: int = DEFAULT_R, p: int = DEFAULT_P) -> str:
    """A salted scrypt hash of ``password`` as ``scrypt$N$r$p$SALT$HASH``."""
    salt = os.urandom(16)
    return f"{SCHEME}${n}${r}${p}${_b64(salt)}${_b64(_scrypt(password, salt, n, r, p, 32))}"


def parse_hash(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    """``(N, r, p, salt, hash)`` of a password hash; ValueError saying what is wrong."""
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != SCHEME:
        raise ValueError("not a 'scrypt$N$r$p$salt$hash' password hash")
    try:
        n, r, p = (int(x) for x in parts[1:4])
        salt, digest = _unb64(parts[4]), _unb64(parts[5])
    except (ValueError, binascii.Error):
        raise ValueError("a malformed scrypt password hash") from None
    # bounds keep a typo in the config from asking for gigabytes or minutes per check
    if not (1 << 10 <= n <= 1 << 20 and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16):
        raise ValueError(f"scrypt parameters N={n} r={r} p={p} out of range")
    if len(salt) < 8 or len(digest) < 16:
        raise ValueError("scrypt salt or hash too short")
    return n, r, p, salt, digest


def verify_password(password: str, encoded: str) -> bool:
    """Does ``password`` match ``encoded`` (constant-time comparison of the hashes)?"""
    n, r, p, salt, digest = parse_hash(encoded)
    return hmac.compare_digest(_scrypt(password, salt, n, r, p, len(digest)), digest)


def _table(value: Any, where: str, keys: tuple[str, ...]) -> tuple[str, ...]:
    out = []
    for key in keys:
        item = value.get(key)
        if not isinstance(item, str) or not item:
            raise ConfigError(f"{where}: {key!r} must be a non-empty string")
        out.append(item)
    return tuple(out)


class Authenticator:
    """Checks the credentials of HTTP requests, WebSocket sessions and publishers."""

    def __init__(
        self,
        token: str,
        users: list[Mapping[str, Any]],
        keys: list[Mapping[str, Any]],
        open_publish: bool = False,
    ):
        self.token = token
        self.open_publish = open_publish
        self.users: dict[str, str] = {}
        for i, entry in enumerate(users):
            name, password = _table(entry, f"[auth] users #{i + 1}", ("name", "password"))
            where = f"[auth] users {name!r}"
            if name in self.users:
                raise ConfigError(f"{where}: listed twice")
            if ":" in name:
                raise ConfigError(f"{where}: a user name cannot contain ':'")
            try:
                n = parse_hash(password)[0]
            except ValueError as exc:
                raise ConfigError(
                    f"{where}: password is {exc}; plain-text passwords are refused, make a hash "
                    "with `streamsnap hash-password`"
                ) from None
            if n < MIN_N:
                raise ConfigError(
                    f"{where}: password hash uses scrypt N={n}, weaker than the minimum "
                    f"N={MIN_N}; re-hash it with `streamsnap hash-password`"
                )
            self.users[name] = password
        self.publish_keys: dict[str, str] = {}
        for i, entry in enumerate(keys):
            stream, key = _table(entry, f"[auth] publish_keys #{i + 1}", ("stream", "key"))
            if stream in self.publish_keys:
                raise ConfigError(f"[auth] publish_keys: stream {stream!r} listed twice")
            self.publish_keys[stream] = key
        self._cache: OrderedDict[bytes, float] = OrderedDict()
        self._cache_key = secrets.token_bytes(32)
        self._dummy = ""  # what unknown user names are checked against (made on first use)
        self._hasher: ThreadPoolExecutor | None = None
        self.logins = FailedLogins()

    @property
    def enabled(self) -> bool:
        """Does the API need credentials (a token or users)?"""
        return bool(self.token or self.users)

    # ---------------------------------------------------------------- API credentials
    async def _login(self, remote: str, check: Callable[[], Awaitable[str | None]]) -> str | None:
        """``check()``'s user, counting a None as a failed login of ``remote``; raises
        LoginThrottled (without checking) while ``remote`` has failed too often."""
        async with self.logins.turn(remote):
            user = await check()
            if user is None:
                self.logins.failed(remote)
            return user

    async def check_header(self, authorization: str, remote: str = "") -> str | None:
        """The user an ``Authorization`` header proves (``"token"`` for the bearer), or None.
        Raises LoginThrottled while ``remote`` (the client's address) has failed too often."""
        if not authorization:
            return None
        return await self._login(remote, lambda: self._header_user(authorization))

    async def _header_user(self, authorization: str) -> str | None:
        scheme, _, value = authorization.partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if scheme == "bearer" and self.token and value:
            return "token" if hmac.compare_digest(value.encode(), self.token.encode()) else None
        if scheme == "basic" and self.users:
            try:
                name, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
            return name if sep and await self.check_user(name, password) else None
        return None

    async def check_ws_token(self, auth_token: str, remote: str = "") -> str | None:
        """The WCS ``authToken``: the bearer token, or ``name:password`` of a basic user.
        Raises LoginThrottled while ``remote`` has failed too often."""
        if not auth_token:
            return None
        return await self._login(remote, lambda: self._ws_token_user(auth_token))

    async def _ws_token_user(self, auth_token: str) -> str | None:
        if self.token and hmac.compare_digest(auth_token.encode(), self.token.encode()):
            return "token"
        name, sep, password = auth_token.partition(":")
        if sep and self.users and await self.check_user(name, password):
            return name
        return None

    async def check_user(self, name: str, password: str) -> bool:
        if not self.users:
            return False
        encoded = self.users.get(name)
        fingerprint = hmac.new(
            self._cache_key, f"{name}\0{password}".encode(), hashlib.sha256
        ).digest()
        now = time.monotonic()
        expires = self._cache.get(fingerprint)
        if encoded is not None and expires is not None and expires > now:
            return True
        if self._hasher is None:
            self._hasher = ThreadPoolExecutor(HASHING_THREADS, thread_name_prefix="auth")
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(self._hasher, self._verify, password, encoded)
        if not (ok and encoded is not None):
            return False
        self._cache[fingerprint] = now + CACHE_TTL_S
        self._cache.move_to_end(fingerprint)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return True

    def _verify(self, password: str, encoded: str | None) -> bool:
        """In the hashing thread. Unknown users cost a hash of the same strength too, so that
        timing does not tell which names exist."""
        if encoded is not None:
            return verify_password(password, encoded)
        if not self._dummy:
            n, r, p, _, _ = parse_hash(next(iter(self.users.values())))
            self._dummy = hash_password(secrets.token_hex(16), n, r, p)
        verify_password(password, self._dummy)
        return False

    def close(self) -> None:
        if self._hasher is not None:
            self._hasher.shutdown(wait=False, cancel_futures=True)

    # ---------------------------------------------------------------- publish keys
    def key_for(self, stream_name: str) -> str | None:
        """The publish key stream ``stream_name`` needs (its own, else ``"*"``), or None."""
        return self.publish_keys.get(stream_name, self.publish_keys.get("*"))

    def check_publish_key(self, stream_name: str, given: str) -> str | None:
        """None when ``given`` (the stream's publish key, or the API token) may publish
        ``stream_name``, else why not. With a token or users set, a stream without its own key
        needs the token, unless ``[auth] open_publish``."""
        if given and self.token and hmac.compare_digest(given.encode(), self.token.encode()):
            return None
        key = self.key_for(stream_name)
        if key is None:
            if not self.enabled or self.open_publish:
                return None
            if given:
                return f"wrong publish key or API token {_PUBLISH_SETTINGS}"
            return f"publish key or API token required {_PUBLISH_SETTINGS}"
        if not given:
            return "publish key required"
        if not hmac.compare_digest(given.encode(), key.encode()):
            return "wrong publish key"
        return None
