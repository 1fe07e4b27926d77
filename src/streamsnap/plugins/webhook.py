"""Webhooks: every saved snapshot is POSTed as signed JSON to each of ``[webhook] urls``.

``on_snapshot_saved`` only builds and signs the body and puts it on each receiver's bounded
queue (full: dropped, counted, logged once per burst); one task per receiver delivers over one
shared aiohttp session, retrying connection errors, time-outs, 5xx, 408 and 429 with
exponential backoff, so a dead receiver holds up only its own queue. The body is signed with
``[webhook] secret``: ``X-Streamsnap-Signature: sha256=<hex HMAC-SHA256 of the body>``;
docs/integrations.md and examples/webhook_receiver.py show a receiver that checks it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from .._version import __version__
from ..core.app import App
from ..core.config import setting
from ..core.errors import ConfigError
from ..core.state import StateKey
from ..core.streams import Stream
from ..core.supervisor import mask_credentials
from ..hooks import hookimpl
from .auto_snapshot import snapshot_url

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Streamsnap-Signature"
# answers worth asking again: the receiver may take it later; any other 4xx never will
RETRY_STATUSES = frozenset({408, 429})


@dataclass
class WebhookSettings:
    urls: list[str] = field(default_factory=list)  # http:// or https://; empty: off
    secret: str = ""  # signs every body (HMAC-SHA256); at least 16 characters
    timeout_s: float = setting(5.0, minimum=0.1, maximum=120.0)  # per attempt
    retries: int = setting(5, minimum=0, maximum=20)  # attempts after the first
    backoff_s: float = setting(0.5, minimum=0.01, maximum=60.0)  # first wait, doubled each time
    backoff_max_s: float = setting(30.0, minimum=0.01, maximum=3600.0)
    max_queue: int = setting(1000, minimum=1, maximum=1_000_000)  # per URL; beyond: dropped
    drain_s: float = setting(5.0, minimum=0.0, maximum=300.0)  # at shutdown, to finish queues
    # where receivers fetch the files (the event's "url"); empty: http://HOST:http_port
    public_url: str = ""

    def check(self) -> None:
        for url in self.urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(
                    f"[webhook] urls: {mask_credentials(url)!r} is not an http:// or https:// URL"
                )
        if len(set(self.urls)) != len(self.urls):
            raise ConfigError("[webhook] urls: a URL is listed twice")
        if self.urls and len(self.secret) < 16:
            raise ConfigError(
                "[webhook] secret: required when [webhook] urls is set, at least 16 characters "
                f"(it signs every delivery: {SIGNATURE_HEADER})"
            )
        if self.public_url and urlsplit(self.public_url).scheme not in ("http", "https"):
            raise ConfigError(
                f"[webhook] public_url = {self.public_url!r}: must be an http:// or https:// URL"
            )


def sign(secret: bytes, body: bytes) -> str:
    """The ``X-Streamsnap-Signature`` value of ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


@dataclass
class Delivery:
    id: str
    body: bytes
    headers: dict[str, str]


class Receiver:
    """One URL: its queue, its counters, its state of health."""

    def __init__(self, url: str, label: str, max_queue: int) -> None:
        self.url = url
        self.label = label  # the URL without its credentials, for logs and /metrics
        self.queue: asyncio.Queue[Delivery] = asyncio.Queue(max_queue)
        self.delivered = self.failed = self.retried = self.dropped = 0
        self.burst = 0  # dropped since the queue was last found full
        self.failing = False  # a failure was logged; log again once it delivers


class Webhooks:
    """The receivers of an app and the tasks that deliver to them."""

    def __init__(self, app: App, settings: WebhookSettings) -> None:
        self.app = app
        self.settings = settings
        self.secret = settings.secret.encode()
        labels: list[str] = []
        for url in settings.urls:
            label = mask_credentials(url)
            labels.append(label if label not in labels else f"{label}#{len(labels) + 1}")
        self.receivers = [
            Receiver(url, label, settings.max_queue)
            for url, label in zip(settings.urls, labels, strict=True)
        ]
        self.base_url = settings.public_url.rstrip("/")
        self.session: aiohttp.ClientSession | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.closing = False

    async def start(self) -> None:
        if not self.base_url:
            srv = self.app.config.server
            scheme = "http" if "http" in self.app.ports else "https"
            port = self.app.ports.get(scheme, srv.http_port)
            # the host name as it is: no DNS lookup at start (set public_url for others)
            host = srv.host if srv.host not in ("0.0.0.0", "::", "") else socket.gethostname()
            host = f"[{host}]" if ":" in host else host
            self.base_url = f"{scheme}://{host}:{port}"
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout_s),
            headers={"User-Agent": f"streamsnap/{__version__}"},
        )
        for receiver in self.receivers:
            task = self.app.spawn(self._run(receiver), name=f"webhook:{receiver.label}")
            self.tasks.append(task)
        log.info(
            "webhook: every saved snapshot is posted to %s",
            ", ".join(r.label for r in self.receivers),
        )

    def saved(self, stream: Stream | None, path: str) -> None:
        """Event loop: sign the event once, queue it for every receiver; never waits."""
        event_id = uuid.uuid4().hex
        ms = int(time.time() * 1000)
        url = snapshot_url(self.app, path)
        body = json.dumps(
            {
                "event": "snapshot",
                "id": event_id,
                # a pulled camera's name is its URL: no credentials or secret query values
                "stream": mask_credentials(stream.name) if stream is not None else "",
                "mediaSessionId": stream.media_session_id if stream is not None else "",
                "file": os.path.abspath(path),
                "url": self.base_url + url if url else "",
                "timestamp": ms,
            },
            separators=(",", ":"),
        ).encode()
        delivery = Delivery(
            event_id,
            body,
            {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: sign(self.secret, body),
                "X-Streamsnap-Event": "snapshot",
                "X-Streamsnap-Delivery": event_id,
                "X-Streamsnap-Timestamp": str(ms),
            },
        )
        for receiver in self.receivers:
            self._queue(receiver, delivery)

    def _queue(self, receiver: Receiver, delivery: Delivery) -> None:
        if self.closing:
            receiver.dropped += 1
            return
        try:
            receiver.queue.put_nowait(delivery)
        except asyncio.QueueFull:
            receiver.dropped += 1
            receiver.burst += 1
            if receiver.burst == 1:
                log.warning(
                    "webhook %s: queue full ([webhook] max_queue = %d), dropping deliveries "
                    "until it drains (counted in streamsnap_webhook_dropped_total)",
                    receiver.label,
                    self.settings.max_queue,
                )
            return
        if receiver.burst:
            log.warning(
                "webhook %s: queueing again; %d deliveries were dropped",
                receiver.label,
                receiver.burst,
            )
            receiver.burst = 0

    async def _run(self, receiver: Receiver) -> None:
        while True:
            delivery = await receiver.queue.get()
            try:
                await self._deliver(receiver, delivery)
            except Exception:  # never lose the receiver's worker to one delivery
                receiver.failed += 1
                log.exception("webhook %s: delivery %s failed", receiver.label, delivery.id)
            finally:
                receiver.queue.task_done()

    async def _deliver(self, receiver: Receiver, delivery: Delivery) -> None:
        """POST ``delivery`` to ``receiver``, retrying what may succeed later."""
        assert self.session is not None
        s = self.settings
        why = ""
        for attempt in range(s.retries + 1):
            if attempt:
                receiver.retried += 1
                # jittered: receivers that come back are not hit by every server at once
                delay = min(s.backoff_s * 2 ** (attempt - 1), s.backoff_max_s)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            try:
                async with self.session.post(
                    receiver.url,
                    data=delivery.body,
                    headers=delivery.headers,
                    allow_redirects=False,
                ) as resp:
                    status = resp.status
                    await resp.content.read(64 * 1024)  # a short answer keeps the connection
            except TimeoutError:
                why = f"no answer within [webhook] timeout_s = {s.timeout_s} s"
                continue
            except aiohttp.ClientError as exc:
                why = str(exc) or type(exc).__name__
                continue
            if 200 <= status < 300:
                receiver.delivered += 1
                if receiver.failing:
                    receiver.failing = False
                    log.info("webhook %s: delivering again", receiver.label)
                return
            why = f"answered {status}"
            if status < 500 and status not in RETRY_STATUSES:
                break  # the receiver refuses this body: asking again changes nothing
        receiver.failed += 1
        if not receiver.failing:
            receiver.failing = True
            log.warning(
                "webhook %s: delivery %s failed (attempts: %d): %s (further failures are "
                "counted, not logged, until one succeeds)",
                receiver.label,
                delivery.id,
                attempt + 1,
                why,
            )

    async def close(self) -> None:
        """Stop queueing, give the queues ``[webhook] drain_s`` to empty, then stop."""
        self.closing = True
        pending = [r.queue.join() for r in self.receivers]
        try:
            await asyncio.wait_for(asyncio.gather(*pending), self.settings.drain_s)
        except TimeoutError:
            left = sum(r.queue.qsize() for r in self.receivers)
            log.warning(
                "webhook: shutting down with deliveries left undelivered after [webhook] "
                "drain_s = %s s (%d still queued)",
                self.settings.drain_s,
                left,
            )
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.session is not None:
            await self.session.close()


WEBHOOKS: StateKey[Webhooks] = StateKey("webhooks", Webhooks)


@hookimpl
def settings_sections() -> dict[str, type]:
    return {"webhook": WebhookSettings}


@hookimpl
async def lifespan(app: App) -> AsyncIterator[None]:
    settings = app.config.of(WebhookSettings)
    if not settings.urls:
        yield
        return
    webhooks = Webhooks(app, settings)
    await webhooks.start()
    app.state[WEBHOOKS] = webhooks
    try:
        yield
    finally:
        app.state.pop(WEBHOOKS)
        await webhooks.close()


@hookimpl
def on_snapshot_saved(stream: Stream | None, path: str, app: App) -> None:
    webhooks = app.state.get(WEBHOOKS)
    if webhooks is not None:
        webhooks.saved(stream, path)


@hookimpl
def collect_metrics(app: App) -> list[Any]:
    webhooks = app.state.get(WEBHOOKS)
    if webhooks is None:
        return []
    receivers = webhooks.receivers
    return [
        (
            "streamsnap_webhook_deliveries_total",
            "counter",
            "Snapshot events posted to a webhook URL, by outcome (failed: after the retries).",
            [
                (getattr(r, outcome), {"url": r.label, "outcome": outcome})
                for r in receivers
                for outcome in ("delivered", "failed")
            ],
        ),
        (
            "streamsnap_webhook_retries_total",
            "counter",
            "Webhook attempts made again after a connection error, a time-out, 5xx, 408 or 429.",
            [(r.retried, {"url": r.label}) for r in receivers],
        ),
        (
            "streamsnap_webhook_dropped_total",
            "counter",
            "Snapshot events not queued for a webhook URL: its queue was full ([webhook] "
            "max_queue), or the server was stopping.",
            [(r.dropped, {"url": r.label}) for r in receivers],
        ),
        (
            "streamsnap_webhook_queue_length",
            "gauge",
            "Snapshot events waiting for a webhook URL.",
            [(r.queue.qsize(), {"url": r.label}) for r in receivers],
        ),
    ]
