"""A receiver of streamsnap's webhooks: checks each delivery's signature, refuses stale and
replayed ones, and may fetch the snapshot file the event names.

    python examples/webhook_receiver.py --secret "$SECRET" [--port 8090] [--fetch-dir DIR]
        [--token API_TOKEN]

Point streamsnap at it with ``[webhook] urls = ["http://HOST:8090/streamsnap"]`` and the same
``secret``. It needs only aiohttp (which streamsnap installs); ``make_app`` is the part to copy
into your own service.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import inspect
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import ClientSession, ClientTimeout, web

log = logging.getLogger("webhook_receiver")

SIGNATURE_HEADER = "X-Streamsnap-Signature"
# Longer than streamsnap takes to give up on a delivery (retries with backoff): a late retry
# of a real event is still taken.
MAX_AGE_S = 600.0

EventHandler = Callable[[dict[str, Any]], Awaitable[None] | None]


def signature_ok(secret: bytes, body: bytes, header: str) -> bool:
    """Is ``header`` (``sha256=<hex>``) the HMAC-SHA256 of the exact ``body`` bytes?"""
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), header.encode())


class ReplayGuard:
    """Refuses events older than ``max_age_s`` (by their signed ``timestamp``) and events whose
    signed ``id`` was already taken within that time."""

    def __init__(self, max_age_s: float = MAX_AGE_S) -> None:
        self.max_age_ms = max_age_s * 1000
        self.seen: OrderedDict[str, float] = OrderedDict()  # id -> its timestamp

    def problem(self, event: dict[str, Any]) -> str | None:
        """Why ``event`` must not be taken ("stale", "replayed"), or None."""
        now = time.time() * 1000
        while self.seen and next(iter(self.seen.values())) < now - self.max_age_ms:
            self.seen.popitem(last=False)
        stamp = event.get("timestamp")
        if not isinstance(stamp, int) or abs(now - stamp) > self.max_age_ms:
            return "stale"
        if event.get("id") in self.seen:
            return "replayed"
        return None

    def taken(self, event: dict[str, Any]) -> None:
        self.seen[str(event.get("id"))] = float(event["timestamp"])


def make_app(
    secret: bytes,
    on_event: EventHandler,
    *,
    path: str = "/streamsnap",
    max_age_s: float = MAX_AGE_S,
    middlewares: Iterable[Any] = (),
) -> web.Application:
    """An aiohttp app taking streamsnap's deliveries at ``path``: 204 once ``on_event`` took
    one; 401 for a bad signature, 400 for a stale event (streamsnap does not retry those); a
    replay is answered 200 and not passed on (it may be a retry of one already taken)."""
    guard = ReplayGuard(max_age_s)

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        if not signature_ok(secret, body, request.headers.get(SIGNATURE_HEADER, "")):
            log.warning("refused a delivery from %s: bad signature", request.remote)
            return web.json_response({"error": "bad signature"}, status=401)
        event = json.loads(body)
        problem = guard.problem(event)
        if problem == "replayed":
            return web.json_response({"status": "already taken"})
        if problem:
            return web.json_response({"error": problem}, status=400)
        result = on_event(event)  # an exception answers 500: streamsnap tries again
        if inspect.isawaitable(result):
            await result
        guard.taken(event)
        return web.Response(status=204)

    app = web.Application(middlewares=list(middlewares))
    app.router.add_post(path, receive)
    return app


async def fetch(url: str, token: str = "") -> bytes:
    """The snapshot file at the event's ``url`` (with ``[auth] token`` when the server has one)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        ClientSession(timeout=ClientTimeout(total=30)) as session,
        session.get(url, headers=headers) as resp,
    ):
        resp.raise_for_status()
        return await resp.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--secret", default=os.environ.get("STREAMSNAP_WEBHOOK_SECRET", ""))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--path", default="/streamsnap")
    parser.add_argument("--fetch-dir", type=Path, help="download every snapshot into DIR")
    parser.add_argument("--token", default="", help="streamsnap's [auth] token, for the download")
    args = parser.parse_args()
    if len(args.secret) < 16:
        parser.error("--secret (or STREAMSNAP_WEBHOOK_SECRET): the [webhook] secret, 16+ chars")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    async def on_event(event: dict[str, Any]) -> None:
        log.info("snapshot of %s: %s", event["stream"] or "-", event["url"] or event["file"])
        if args.fetch_dir and event["url"]:
            data = await fetch(event["url"], args.token)
            target = args.fetch_dir / os.path.basename(urlsplit(event["url"]).path)
            args.fetch_dir.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(target.write_bytes, data)

    web.run_app(
        make_app(args.secret.encode(), on_event, path=args.path), host=args.host, port=args.port
    )


if __name__ == "__main__":
    main()
