"""Many nodes, one streamsnap: a registry on Redis shared by every node, and any node answers
for any stream (``[cluster] redis_url``; off while it is empty).

Each node claims the names of the streams it holds (:mod:`.node`), so a second publisher of a
live name is refused on every node, in its protocol's terms. A snapshot (REST, image GETs,
WebSocket), ``find`` or ``terminate`` of a stream held by another node is forwarded to that
node over pooled HTTP connections, signed with ``[cluster] secret`` (:mod:`.forward`,
:mod:`.signing`), and answered as if local; ``find_all`` merges every node's streams, each
with its ``node``. The cameras and sources every node lists are shared out among the live
nodes (:mod:`.placement`, hook ``assign_sources``). Saved snapshots are appended to the Redis
stream ``streamsnap:events``. docs/cluster.md tells the whole of it.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from aiohttp import web

from ...core.app import App
from ...core.errors import NotAllowed, StreamNameInUse, Unavailable
from ...core.http import CLIENT, client_address, error_response, read_body
from ...core.snapshot import Snapshot, SnapshotRequest
from ...core.state import StateKey
from ...core.streams import MemoryRegistry, Stream
from ...hooks import hookimpl
from ..rest import stream_json  # the REST plugin's stream object: its public interface
from .forward import CLIENT_PARAM, Forwarder, merge_streams
from .node import UNKNOWN, Node, Peer, RegistryUnavailable
from .placement import owner as placed_on
from .settings import ClusterSettings
from .signing import NODE, BadSignature, Verifier

log = logging.getLogger(__name__)

# set while a request forwarded by another node is served: it is answered from here only
FORWARDED: contextvars.ContextVar[str] = contextvars.ContextVar("streamsnap_forwarded", default="")


class Cluster:
    def __init__(self, app: App, settings: ClusterSettings) -> None:
        self.app = app
        self.node = Node(app, settings)
        secret = settings.secret.encode()
        self.verifier = Verifier(secret)
        answer_s = app.config.snapshot.snapshot_taking_interval_ms / 1000 + 1.0
        self.forwarder = Forwarder(self.node, secret, answer_s)

    async def owner(self, name: str) -> Peer | None:
        try:
            return await self.node.owner_of(name)
        except RegistryUnavailable:
            raise Unavailable(
                "the cluster registry (Redis) does not answer: streams held by other nodes "
                "cannot be reached from this node now"
            ) from None


class ClusterRegistry(MemoryRegistry):
    """This node's streams in memory, their names claimed in Redis."""

    def __init__(self, node: Node) -> None:
        super().__init__()
        self.node = node

    async def claim(self, stream: Stream) -> None:
        if self.lookup(stream.name) is not None:
            self.add(stream)  # raises StreamNameInUse naming the publisher here
        ready = stream.frames.decodable  # a source on standby, with pictures: a takeover
        owner = await self.node.claim(stream.name, ready=ready)
        if owner == UNKNOWN and ready:
            raise StreamNameInUse(
                f"stream {stream.name!r}: the registry does not answer: not taken over now",
                stream.name,
            )
        if owner is not None and owner != UNKNOWN:  # UNKNOWN: this node's until Redis is back
            raise StreamNameInUse(
                f"stream {stream.name!r} is already published on node {owner}", stream.name
            )
        self.add(stream)  # raises if a publisher here took the name meanwhile: it holds it

    async def release(self, stream: Stream) -> bool:
        held = self.remove(stream)
        if held and self.lookup(stream.name) is None:
            await self.node.release(stream.name)
        return held


CLUSTER: StateKey[Cluster] = StateKey("cluster", Cluster)


def _cluster(app: App) -> Cluster | None:
    return app.state.get(CLUSTER)


@hookimpl
def settings_sections() -> dict[str, type]:
    return {"cluster": ClusterSettings}


@hookimpl
def make_stream_registry(app: App) -> ClusterRegistry | None:
    settings = app.config.of(ClusterSettings)
    if not settings.enabled:
        return None
    cluster = Cluster(app, settings)
    app.state[CLUSTER] = cluster
    return ClusterRegistry(cluster.node)


@hookimpl
async def lifespan(app: App) -> AsyncIterator[None]:
    cluster = _cluster(app)
    if cluster is not None:
        await cluster.node.start()
    try:
        yield
    finally:
        if cluster is not None:
            await cluster.node.stop()
            await cluster.forwarder.close()


@hookimpl
async def authenticate_request(app: App, request: web.Request) -> str | None:
    """A request another node forwarded: its signature proves it (and it is served from here
    only); one that claims to be forwarded but is not signed right is refused."""
    cluster = _cluster(app)
    if NODE not in request.headers:
        return None
    if cluster is None:
        raise NotAllowed("a forwarded request, but this server is not in a cluster ([cluster])")
    body = await read_body(request)
    try:
        node = cluster.verifier.verify(
            request.headers, request.method, request.raw_path, body, cluster.node.id
        )
    except BadSignature as exc:
        cluster.node.stats["forwards_refused_in"] += 1
        log.warning(
            "cluster: request %s %s from %s refused: %s",
            request.method,
            request.path,
            request.remote,
            exc,
        )
        raise NotAllowed(f"forwarded request refused: {exc}") from None
    FORWARDED.set(node)
    client = request.query.get(CLIENT_PARAM)  # in the signed target: the node vouches for it
    if client:
        request[CLIENT] = client
    return f"node {node}"


@hookimpl
async def assign_sources(app: App, names: list[str]) -> dict[str, str] | None:
    """Each configured source is pulled by one live node, the one rendezvous hashing gives;
    a node keeps a source that moved until its new owner waits for it (is pulling it)."""
    cluster = _cluster(app)
    if cluster is None:
        return None
    node = cluster.node
    live = node.live or {node.id}
    plan = {}
    for name in names:
        held = app.streams.lookup(name) is not None
        if not node.reachable:  # no view of the others: change nothing
            plan[name] = "keep" if held else "drop"
            continue
        owner = placed_on(name, live)
        if owner == node.id:
            plan[name] = "pull"
        elif held:
            plan[name] = "drop" if await node.waits_for(name, owner) else "keep"
        else:
            plan[name] = "drop"
    return plan


@hookimpl
async def snapshot_elsewhere(
    app: App, name: str, held_as: str, request: SnapshotRequest
) -> Snapshot | None:
    cluster = _cluster(app)
    if cluster is None or FORWARDED.get():
        return None
    peer = await cluster.owner(held_as)
    if peer is None:
        return None
    started = time.perf_counter()
    snap = await cluster.forwarder.snapshot(peer, name, request)
    log.debug(
        "stream %s: snapshot from node %s in %.1f ms",
        name,
        peer.id,
        (time.perf_counter() - started) * 1000,
    )
    return snap


@hookimpl
async def forward_request(
    app: App, request: web.Request, body: dict[str, Any]
) -> web.StreamResponse | None:
    """``find``/``terminate``/``snapshot/save`` of a stream held elsewhere: the owner's
    answer; ``find_all``: every node's streams; ``stream.mjpeg``: the owner's, as it comes."""
    cluster = _cluster(app)
    if cluster is None or FORWARDED.get():
        return None
    if request.path.endswith("/stream.mjpeg"):  # a live answer: passed on as it comes
        peer = await cluster.owner(body["streamName"])
        if peer is None:
            return None
        return await cluster.forwarder.stream(peer, request, client_address(request))
    raw = await read_body(request)
    if request.path.endswith("/find_all"):
        return await _find_all(app, cluster, request, raw)
    name = body.get("name") or body.get("streamName")
    if isinstance(name, str) and name:
        peer = await cluster.owner(name)
        peers = [peer] if peer is not None else []
    else:  # by mediaSessionId: ask every node at once
        peers = await _peers(cluster)
    answers = await asyncio.gather(
        *(cluster.forwarder.request(p, request.method, request.raw_path, raw) for p in peers),
        return_exceptions=True,
    )
    failed = [a for a in answers if isinstance(a, BaseException)]
    for answer in answers:
        if not isinstance(answer, BaseException) and answer[0] != 404:
            status, headers, data = answer
            return web.Response(
                status=status,
                body=data,
                content_type=headers.get("Content-Type", "application/json").split(";")[0],
            )
    if failed and len(failed) == len(answers):
        raise failed[0]  # nobody could be asked: Unavailable (503)
    return None


async def _peers(cluster: Cluster) -> list[Peer]:
    try:
        return await cluster.node.peers()
    except RegistryUnavailable:
        raise Unavailable("the cluster registry (Redis) does not answer") from None


async def _others(cluster: Cluster, target: str, raw: bytes) -> dict[str, bytes]:
    """Every other live node's answer to ``POST target`` (``find_all``), by node, asked at
    once; a node that does not answer has no streams to show."""
    peers = await _peers(cluster)
    answers = await asyncio.gather(
        *(cluster.forwarder.request(p, "POST", target, raw) for p in peers),
        return_exceptions=True,
    )
    return {
        peer.id: answer[2]
        for peer, answer in zip(peers, answers, strict=True)
        if not isinstance(answer, BaseException) and answer[0] == 200
    }


async def _find_all(app: App, cluster: Cluster, request: web.Request, raw: bytes) -> web.Response:
    answers = await _others(cluster, request.raw_path, raw)
    streams = merge_streams([stream_json(s) for s in app.streams], cluster.node.id, answers)
    if not streams:
        return error_response(request, 404, "Stream not found")
    return web.json_response(streams)


@hookimpl
async def streams_elsewhere(app: App) -> list[dict[str, Any]] | None:
    cluster = _cluster(app)
    if cluster is None or FORWARDED.get():
        return None
    answers = await _others(cluster, "/rest-api/stream/find_all", b"{}")
    return merge_streams([], cluster.node.id, answers)


def _file_url(app: App, node_url: str, path: str) -> str:
    """Where another node or a consumer fetches the file: this node's ``/snapshots/`` URL of a
    file under ``snapshot_auto_dir`` (empty for a file elsewhere)."""
    root = os.path.realpath(app.config.snapshot.snapshot_auto_dir)
    real = os.path.realpath(path)
    if os.path.commonpath((real, root)) != root:
        return ""
    return node_url + "/snapshots/" + quote(os.path.relpath(real, root).replace(os.sep, "/"))


@hookimpl
def collect_metrics(app: App) -> list[Any]:
    cluster = _cluster(app)
    if cluster is None:
        return []
    stats = cluster.node.stats
    return [
        (
            "streamsnap_cluster_registry_up",
            "gauge",
            "1 while the cluster's Redis answers this node.",
            [(int(cluster.node.reachable), {"node": cluster.node.id})],
        ),
        (
            "streamsnap_cluster_forwards_total",
            "counter",
            "Requests forwarded to the node holding the stream, by outcome.",
            [
                (stats[f"forwards_{outcome}"], {"outcome": outcome})
                for outcome in ("ok", "refused", "unreachable")
            ],
        ),
        (
            "streamsnap_cluster_forwards_refused_in_total",
            "counter",
            "Requests claiming to be forwarded by a node, refused (forged, stale or replayed).",
            [(stats["forwards_refused_in"], None)],
        ),
        (
            "streamsnap_cluster_claims_total",
            "counter",
            "Stream names claimed in Redis, by result.",
            [(stats["claims"], {"result": "taken"}), (stats["claims_refused"], {"result": "held"})],
        ),
        (
            "streamsnap_cluster_conflicts_total",
            "counter",
            "Streams ended here because another node took the name while Redis was away.",
            [(stats["conflicts"], None)],
        ),
        (
            "streamsnap_cluster_redis_errors_total",
            "counter",
            "Calls to Redis that failed.",
            [(stats["redis_errors"], None)],
        ),
    ]


@hookimpl
async def on_snapshot_saved(stream: Stream | None, path: str, app: App) -> None:
    cluster = _cluster(app)
    if cluster is None:
        return
    await cluster.node.add_event(
        {
            "event": "snapshot",
            "stream": stream.name if stream is not None else "",
            "mediaSessionId": stream.media_session_id if stream is not None else "",
            "node": cluster.node.id,
            "file": os.path.abspath(path),
            "url": _file_url(app, cluster.node.url, path),
            "timestamp": str(int(time.time() * 1000)),
        }
    )
