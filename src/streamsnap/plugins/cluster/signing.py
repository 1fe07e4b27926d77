"""Requests the nodes forward to each other are signed with the shared ``[cluster] secret``:
HMAC-SHA256 over the method, the path with its query, the sending and the receiving node, a
timestamp, a one-time nonce and the body's digest. A receiver refuses a request whose
signature does not match (also one signed for another node), whose timestamp is more than
``MAX_SKEW_S`` away from its clock, or whose nonce it has seen (a replay)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping

NODE = "X-Streamsnap-Node"
TIME = "X-Streamsnap-Time"
NONCE = "X-Streamsnap-Nonce"
SIGNATURE = "X-Streamsnap-Signature"
MAX_SKEW_S = 30.0


class BadSignature(Exception):
    """A forwarded request that must be refused; the message says why."""


def _mac(secret: bytes, parts: tuple[str, ...], body: bytes) -> str:
    text = "\n".join((*parts, hashlib.sha256(body).hexdigest())).encode()
    return hmac.new(secret, text, hashlib.sha256).hexdigest()


def sign(
    secret: bytes, node: str, to: str, method: str, target: str, body: bytes = b""
) -> dict[str, str]:
    """The headers that make ``method target`` with ``body`` a request from ``node`` to the
    node ``to`` (and no other: a captured request cannot be replayed to a third node)."""
    ts, nonce = str(int(time.time() * 1000)), secrets.token_hex(16)
    return {
        NODE: node,
        TIME: ts,
        NONCE: nonce,
        SIGNATURE: _mac(secret, (method.upper(), target, node, to, ts, nonce), body),
    }


class Verifier:
    """Checks forwarded requests; remembers the nonces of the last ``MAX_SKEW_S`` seconds."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self._seen: OrderedDict[str, float] = OrderedDict()  # nonce -> when it expires

    def verify(
        self, headers: Mapping[str, str], method: str, target: str, body: bytes, me: str
    ) -> str:
        """The sending node's id, for a request signed for node ``me``; raises BadSignature."""
        node, ts, nonce = headers.get(NODE, ""), headers.get(TIME, ""), headers.get(NONCE, "")
        given = headers.get(SIGNATURE, "")
        if not (node and ts and nonce and given):
            raise BadSignature("a forwarded request must carry every X-Streamsnap-* header")
        try:
            sent = int(ts[:20]) / 1000
        except (ValueError, OverflowError):
            raise BadSignature(f"{TIME} {ts[:32]!r} is not a Unix time in ms") from None
        now = time.time()
        if abs(now - sent) > MAX_SKEW_S:
            raise BadSignature(
                f"{TIME} is {now - sent:+.0f} s off this node's clock (at most {MAX_SKEW_S:g} s)"
            )
        expected = _mac(self.secret, (method.upper(), target, node, me, ts, nonce), body)
        if not hmac.compare_digest(expected, given):
            raise BadSignature("the signature does not match (another [cluster] secret?)")
        self._forget_expired(now)
        if nonce in self._seen:
            raise BadSignature("the nonce was used before: a replayed request")
        # only signed requests get here: the set grows with the nodes' own traffic, and each
        # nonce is kept until its timestamp could no longer pass
        self._seen[nonce] = now + 2 * MAX_SKEW_S
        return node

    def _forget_expired(self, now: float) -> None:
        while self._seen:
            nonce, expires = next(iter(self._seen.items()))
            if expires > now:
                break
            del self._seen[nonce]
