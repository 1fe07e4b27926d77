"""Asking the node that holds a stream: kept-alive pooled HTTP connections to the other
nodes, every request signed (:mod:`.signing`), every failure a clear answer within bounds."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import time
from typing import Any
from urllib.parse import quote, unquote, urlencode

import aiohttp
from aiohttp import web
from PIL import Image
from yarl import URL

from ...core.errors import (
    NotInHistory,
    SnapshotError,
    StreamNotFound,
    StreamStale,
    Unavailable,
)
from ...core.imaging import FORMATS
from ...core.snapshot import Snapshot, SnapshotRequest
from ...core.supervisor import mask_credentials
from .node import Node, Peer
from .signing import sign

log = logging.getLogger(__name__)

EXTENSIONS = {fmt: ext for ext, fmt in FORMATS.items()}
CONNECT_TIMEOUT_S = 1.0
# a live answer passed on from its holder ends when nothing came, or nothing was taken by the
# viewer, for this long
STREAM_READ_TIMEOUT_S = 60.0
# the query parameter of a passed-on live answer that names its client (signed with the target)
CLIENT_PARAM = "streamsnap_client"
# the holder's headers a passed-on live answer keeps
PASSED_HEADERS = frozenset({"Content-Type", "Cache-Control", "X-Stream-Name", "Retry-After"})
STALE_HEADER = "X-Stream-Stale"  # on a stale stream's 503: seconds without video


class Forwarder:
    def __init__(self, node: Node, secret: bytes, answer_timeout_s: float) -> None:
        self.node = node
        self.secret = secret
        self.timeout = aiohttp.ClientTimeout(
            total=answer_timeout_s + CONNECT_TIMEOUT_S, sock_connect=CONNECT_TIMEOUT_S
        )
        self._session: aiohttp.ClientSession | None = None
        self._stream_session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=64, keepalive_timeout=60)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self.timeout, auto_decompress=False
            )
        return self._session

    @property
    def stream_session(self) -> aiohttp.ClientSession:
        if self._stream_session is None:  # as many as the viewers ([mjpeg] limits them)
            self._stream_session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0), auto_decompress=False
            )
        return self._stream_session

    async def close(self) -> None:
        for session in (self._session, self._stream_session):
            if session is not None:
                await session.close()

    async def request(
        self, peer: Peer, method: str, target: str, body: bytes = b""
    ) -> tuple[int, dict[str, str], bytes]:
        """``method target`` on ``peer``, signed; raises Unavailable when it does not answer."""
        headers = sign(self.secret, self.node.id, peer.id, method, target, body)
        if body:
            headers["Content-Type"] = "application/json"
        try:
            url = URL(peer.url + target, encoded=True)  # sent as signed, not re-quoted
            async with self.session.request(
                method, url, data=body or None, headers=headers
            ) as resp:
                data = await resp.read()
                status, answer_headers = resp.status, dict(resp.headers)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise self._unreachable(peer, method, target, exc) from None
        self.node.stats["forwards_ok" if status < 400 else "forwards_refused"] += 1
        return status, answer_headers, data

    def _unreachable(self, peer: Peer, method: str, target: str, exc: BaseException) -> Exception:
        """The holder did not answer: counted, logged, and the 503 to give."""
        self.node.stats["forwards_unreachable"] += 1
        log.warning(
            "cluster: node %s (%s) did not answer %s %s: %r",
            peer.id,
            peer.url,
            method,
            mask_credentials(unquote(target)),
            exc,
        )
        return Unavailable(f"node {peer.id} ({peer.url}), which holds this stream, does not answer")

    async def stream(self, peer: Peer, request: web.Request, client: str) -> web.StreamResponse:
        """A live answer (MJPEG) of the node that holds the stream, passed on as it comes, for
        ``client`` (named in the signed target: the holder counts its limits per client).

        The viewer's pace reaches the holder through the two connections' flow control, so a
        slow viewer skips frames there as it would if it were connected there. Either side
        leaving ends both. Long-lived: over connections of their own, never holding up the
        pool that snapshots and finds are forwarded over."""
        query = [(k, v) for k, v in request.query.items() if k != CLIENT_PARAM]
        target = quote(request.path) + "?" + urlencode([*query, (CLIENT_PARAM, client)])
        headers = sign(self.secret, self.node.id, peer.id, "GET", target, b"")
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=CONNECT_TIMEOUT_S, sock_read=STREAM_READ_TIMEOUT_S
        )
        try:
            upstream = await self.stream_session.get(
                URL(peer.url + target, encoded=True), headers=headers, timeout=timeout
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise self._unreachable(peer, "GET", target, exc) from None
        async with upstream:
            kept = {k: v for k, v in upstream.headers.items() if k in PASSED_HEADERS}
            if upstream.status != 200:  # refused before any part: the holder's answer as is
                self.node.stats["forwards_refused"] += 1
                return web.Response(
                    status=upstream.status, body=await upstream.read(), headers=kept
                )
            self.node.stats["forwards_ok"] += 1
            answer = web.StreamResponse(headers=kept)
            await answer.prepare(request)
            with contextlib.suppress(ConnectionError, aiohttp.ClientError, TimeoutError):
                async for chunk in upstream.content.iter_any():
                    # a viewer that takes nothing would hold this for ever
                    await asyncio.wait_for(answer.write(chunk), STREAM_READ_TIMEOUT_S)
            return answer

    async def snapshot(self, peer: Peer, name: str, request: SnapshotRequest) -> Snapshot:
        """The picture of ``name`` from the node that holds it, as the image GET serves it."""
        query = {
            k: str(v)
            for k, v in (("width", request.width), ("height", request.height))
            if v is not None
        }
        if request.format != "png":
            query["quality"] = str(request.quality)
        if request.fit != "fill":
            query["fit"] = request.fit
        if request.crop is not None:
            query["crop"] = ",".join(map(str, request.crop))
        if request.at is not None:
            query["at"] = str(request.at)
        if request.stale_ok:
            query["stale"] = "ok"
        target = f"/streams/{quote(name, safe='')}/snapshot.{EXTENSIONS[request.format]}"
        if query:
            target += "?" + urlencode(query)
        t0 = time.perf_counter()
        status, headers, data = await self.request(peer, "GET", target)
        asked_ms = (time.perf_counter() - t0) * 1000
        if status != 200:
            raise _failure(status, data, peer, headers)
        try:
            with Image.open(io.BytesIO(data)) as img:  # the header only: width and height
                width, height = img.size
        except OSError:
            raise Unavailable(
                f"node {peer.id} ({peer.url}) answered something that is not a picture "
                "(is [cluster] advertise_url right?)"
            ) from None
        return Snapshot(
            data=data,
            format=request.format,
            width=width,
            height=height,
            stream_name=name,
            media_session_id=headers.get("X-Media-Session-Id", ""),
            frame_index=_int(headers.get("X-Frame-Index"), -1),
            frames_behind=_int(headers.get("X-Frames-Behind"), 0),
            taken_ms=_int(headers.get("X-Snapshot-Timestamp"), 0),
            frame_ms=_int(headers.get("X-Frame-Timestamp"), -1),
            timing=(("forward", asked_ms),),
        )


def _int(text: str | None, default: int) -> int:
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default


def _failure(status: int, body: bytes, peer: Peer, headers: dict[str, str]) -> Exception:
    """The error a node answered, as the same error here."""
    try:
        message = str(json.loads(body).get("message", ""))
    except (ValueError, AttributeError):
        message = ""
    if status == 404:
        return StreamNotFound(message or "stream not found")
    if status == 410:
        return NotInHistory(message, -1)
    if status == 503 and STALE_HEADER in headers:  # the stream, not the node, is the trouble
        return StreamStale(message, float(_int(headers[STALE_HEADER], 0)))
    if status in (429, 503):
        return Unavailable(message or f"node {peer.id} is busy")
    if status == 500:
        return SnapshotError(message)
    return Unavailable(f"node {peer.id} answered {status}: {message}".rstrip(": "))


def merge_streams(own: list[dict[str, Any]], node_id: str, others: dict[str, bytes]) -> list:
    """``find_all`` of every node: this node's streams and each other node's, each marked with
    its node."""
    out = [{**s, "node": node_id} for s in own]
    for peer_id, body in others.items():
        try:
            streams = json.loads(body)
        except ValueError:
            log.warning("cluster: node %s answered find_all with something not JSON", peer_id)
            continue
        if isinstance(streams, list):
            out.extend({**s, "node": peer_id} for s in streams if isinstance(s, dict))
    return out
