"""This node's place in the cluster: its heartbeat, the claims of the streams it holds, and
what Redis says about the others.

Keys (prefix ``streamsnap:``): ``stream:{name}`` holds the id of the node that holds the
stream, with a TTL of ``[cluster] claim_ttl_s``, renewed every third of it while the node holds
the stream; ``node:{id}`` is a node's heartbeat (its URL and load, same TTL); ``events`` is the
stream of saved snapshots. A node that dies is forgotten when its keys expire. While Redis is
unreachable the node keeps serving its own streams; when Redis is back, the renewal puts its
claims back, and a name another node took meanwhile is ended here (one owner, logged).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .settings import ClusterSettings

if TYPE_CHECKING:
    from ...core.app import App

log = logging.getLogger(__name__)

PREFIX = "streamsnap:"
EVENTS = PREFIX + "events"
EVENTS_MAXLEN = 100_000

# Renew a claim held by this node, or put it back when it expired (Redis was away); else
# answer the node that holds it now.
_RENEW = """
local owner = redis.call('GET', KEYS[1])
if owner == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return owner
"""
# Take a name: free, ours already (a claim from before a restart), or held by a node whose
# heartbeat is gone (it died: its claim would expire within the TTL anyway). Refused while
# this node is ready to take over (ARGV[4] = "1": it has the pictures already): say that it
# waits, and the holder hands the source over.
_CLAIM = """
local owner = redis.call('GET', KEYS[1])
if owner == false or owner == ARGV[1] or redis.call('EXISTS', ARGV[3] .. owner) == 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
if ARGV[4] == '1' then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
end
return owner
"""
# Who holds a name, and that node's heartbeat, in one round trip.
_OWNER = """
local owner = redis.call('GET', KEYS[1])
if owner == false then
  return false
end
return {owner, redis.call('GET', ARGV[1] .. owner)}
"""
# Give a claim back only if this node holds it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


UNKNOWN = "?"  # the holder of a name while Redis does not answer


class RegistryUnavailable(Exception):
    """Redis did not answer."""


@dataclass(frozen=True)
class Peer:
    id: str
    url: str
    streams: int = 0
    load: float = 0.0


def connect(url: str) -> aioredis.Redis:
    """A client for ``[cluster] redis_url`` (plain, TLS, unix socket, or through Sentinel)."""
    options: dict[str, Any] = {
        "socket_timeout": 1.0,
        "socket_connect_timeout": 1.0,
        "health_check_interval": 10,
        "decode_responses": True,
    }
    parts = urlsplit(url)
    if parts.scheme.endswith("+sentinel"):
        from redis.asyncio.sentinel import Sentinel

        hosts = []
        for item in parts.netloc.rpartition("@")[2].split(","):
            host, _, port = item.rpartition(":")
            hosts.append((host or item, int(port) if host else 26379))
        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise ValueError("a Sentinel URL names the master: redis+sentinel://HOST:PORT/NAME")
        sentinel = Sentinel(
            hosts,
            ssl=parts.scheme.startswith("rediss"),
            password=unquote(parts.password) if parts.password else None,
            **options,
        )
        return sentinel.master_for(path[0], db=int(path[1]) if len(path) > 1 else 0)
    return aioredis.from_url(url, **options)


class Node:
    """This node in the cluster."""

    def __init__(self, app: App, settings: ClusterSettings) -> None:
        self.app = app
        self.settings = settings
        self.ttl_ms = int(settings.claim_ttl_s * 1000)
        self.redis = connect(settings.redis_url)
        # sent once, then called by their digest (EVALSHA)
        self._claim = self.redis.register_script(_CLAIM)
        self._owner = self.redis.register_script(_OWNER)
        self._release = self.redis.register_script(_RELEASE)
        self.id = settings.node_id
        self.url = settings.advertise_url.rstrip("/")
        self.stats: Counter[str] = Counter()  # claims, refusals, failovers, redis errors, ...
        self.reachable = True  # Redis answered the last call
        self.live: set[str] = set()  # the live nodes' ids, as of the last heartbeat
        self._task: asyncio.Task[None] | None = None
        self._cpu = (time.monotonic(), time.process_time())

    async def start(self) -> None:
        """Know who this node is (the HTTP port is bound by now), beat once (the others know
        it, and it knows them before it shares out the cameras), then keep beating."""
        srv = self.app.config.server
        port = self.app.ports.get("http") or self.app.ports.get("https", srv.http_port)
        self.id = self.id or f"{socket.gethostname()}:{port}"
        if not self.url:
            scheme = "http" if "http" in self.app.ports else "https"
            host = srv.host if srv.host not in ("0.0.0.0", "::", "") else socket.getfqdn()
            host = f"[{host}]" if ":" in host else host
            self.url = f"{scheme}://{host}:{port}"
        try:
            await self._renew()
        except (RedisError, OSError) as exc:
            self._failed("heartbeat", exc)
        self._task = self.app.spawn(self._beat(), name="cluster-heartbeat")
        log.info("cluster: node %s at %s, registry %s", self.id, self.url, self._where())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        try:
            names = [s.name for s in self.app.streams]
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.eval(_RELEASE, 1, PREFIX + "stream:" + name, self.id)
                pipe.delete(PREFIX + "node:" + self.id)
                pipe.zrem(PREFIX + "nodes", self.id)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("cluster: could not give the claims back at shutdown: %s", exc)
        await self.redis.aclose()

    def _where(self) -> str:
        parts = urlsplit(self.settings.redis_url)
        return f"{parts.scheme}://{parts.hostname or parts.path}" + (
            f":{parts.port}" if parts.port else ""
        )

    # ---------------------------------------------------------------- claims
    async def claim(self, name: str, ready: bool = False) -> str | None:
        """Take ``name`` for this node: None when it is ours, else the id of the node that
        holds it, or UNKNOWN when Redis does not answer. ``ready``: this node already has the
        stream's pictures (a source on standby): a refusal says it waits to take over."""
        key = PREFIX + "stream:" + name
        try:
            owner = await self._claim(
                [key, PREFIX + "waiting:" + name],
                [self.id, self.ttl_ms, PREFIX + "node:", "1" if ready else "0"],
            )
        except (RedisError, OSError) as exc:
            self._failed("claim", exc)
            return UNKNOWN
        self._ok()
        if owner == self.id:
            self.stats["claims"] += 1
            return None
        self.stats["claims_refused"] += 1
        return owner

    async def release(self, name: str) -> None:
        try:
            await self._release([PREFIX + "stream:" + name], [self.id])
            self._ok()
        except (RedisError, OSError) as exc:
            self._failed("release", exc)  # the claim expires by itself

    async def owner_of(self, name: str) -> Peer | None:
        """The other node holding ``name`` (None: no live node does, or this one); raises
        RegistryUnavailable when Redis does not answer."""
        try:
            answer = await self._owner([PREFIX + "stream:" + name], [PREFIX + "node:"])
            self._ok()
        except (RedisError, OSError) as exc:
            self._failed("lookup", exc)
            raise RegistryUnavailable(str(exc)) from None
        if not answer or answer[0] == self.id:
            return None
        return _peer(answer[1] if len(answer) > 1 else None)

    async def waits_for(self, name: str, node: str) -> bool:
        """Is ``node`` waiting to take ``name`` over (its claim was refused lately)?"""
        try:
            waiting = await self.redis.get(PREFIX + "waiting:" + name)
            self._ok()
        except (RedisError, OSError) as exc:
            self._failed("lookup", exc)
            return False
        return waiting == node

    async def peers(self) -> list[Peer]:
        """Every other live node."""
        try:
            now = int(time.time() * 1000)
            ids = await self.redis.zrangebyscore(PREFIX + "nodes", now, "+inf")
            infos = await self.redis.mget([PREFIX + "node:" + i for i in ids]) if ids else []
            self._ok()
        except (RedisError, OSError) as exc:
            self._failed("nodes", exc)
            raise RegistryUnavailable(str(exc)) from None
        return [p for p in map(_peer, infos) if p is not None and p.id != self.id]

    async def add_event(self, fields: dict[str, str]) -> None:
        try:
            await self.redis.xadd(EVENTS, fields, maxlen=EVENTS_MAXLEN, approximate=True)
            self._ok()
        except (RedisError, OSError) as exc:
            self._failed("event", exc)

    # ---------------------------------------------------------------- heartbeat
    async def _beat(self) -> None:
        period = max(0.3, self.settings.claim_ttl_s / 3)
        while True:
            await asyncio.sleep(period)
            try:
                await self._renew()
            except (RedisError, OSError) as exc:
                self._failed("heartbeat", exc)
            except Exception:  # never the end of the heartbeat: the claims would expire
                log.exception("cluster: heartbeat failed")

    async def _renew(self) -> None:
        streams = list(self.app.streams)
        now = int(time.time() * 1000)
        info = json.dumps(
            {"id": self.id, "url": self.url, "streams": len(streams), "load": self._load()}
        )
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(PREFIX + "node:" + self.id, info, px=self.ttl_ms)
            pipe.zadd(PREFIX + "nodes", {self.id: now + self.ttl_ms})
            pipe.zremrangebyscore(PREFIX + "nodes", "-inf", now - 60_000)
            pipe.zrangebyscore(PREFIX + "nodes", now, "+inf")
            for stream in streams:
                pipe.eval(_RENEW, 1, PREFIX + "stream:" + stream.name, self.id, self.ttl_ms)
            answers = await pipe.execute()
        self._ok()
        self.live = {*answers[3], self.id}
        for stream, owner in zip(streams, answers[4:], strict=True):
            if owner == self.id and self.app.streams.lookup(stream.name) is None:
                await self.release(stream.name)  # it ended while the renewal was on its way
            elif owner != self.id and self.app.is_live(stream):
                self.stats["conflicts"] += 1
                log.warning(
                    "stream %s: node %s took the name while the registry was unreachable: "
                    "ended here, so that it has one owner",
                    stream.name,
                    owner,
                )
                await self.app.terminate(stream, f"name taken by node {owner}")

    def _load(self) -> float:
        """This process's share of one core since the last heartbeat."""
        wall, cpu = time.monotonic(), time.process_time()
        then_wall, then_cpu = self._cpu
        self._cpu = (wall, cpu)
        return round((cpu - then_cpu) / max(1e-3, wall - then_wall), 3)

    def _ok(self) -> None:
        if not self.reachable:
            log.warning("cluster: the registry answers again (%s)", self._where())
        self.reachable = True

    def _failed(self, what: str, exc: Exception) -> None:
        self.stats["redis_errors"] += 1
        if self.reachable:
            log.error(
                "cluster: the registry (%s) does not answer (%s: %s): serving this node's own "
                "streams only until it is back",
                self._where(),
                what,
                exc,
            )
        self.reachable = False


def _peer(info: str | None) -> Peer | None:
    if not info:
        return None
    try:
        data = json.loads(info)
        return Peer(str(data["id"]), str(data["url"]), int(data["streams"]), float(data["load"]))
    except (ValueError, KeyError, TypeError):
        log.warning("cluster: a node's heartbeat is not readable: %r", info[:200])
        return None


async def overview(url: str) -> dict[str, Any]:
    """What the registry at ``url`` holds: the live nodes and the streams each holds (for
    ``streamsnap cluster``)."""
    client = connect(url)
    try:
        now = int(time.time() * 1000)
        ids = await client.zrangebyscore(PREFIX + "nodes", now, "+inf")
        infos = await client.mget([PREFIX + "node:" + i for i in ids]) if ids else []
        nodes = {p.id: {**p.__dict__, "names": []} for p in map(_peer, infos) if p is not None}
        held: dict[str, str] = {}
        async for key in client.scan_iter(match=PREFIX + "stream:*", count=1000):
            owner = await client.get(key)
            if owner is not None:
                held[key[len(PREFIX + "stream:") :]] = owner
        for name, owner in sorted(held.items()):
            nodes.setdefault(
                owner, {"id": owner, "url": "", "streams": 0, "load": 0.0, "names": []}
            )
            nodes[owner]["names"].append(name)
        events = await client.xlen(EVENTS)
    finally:
        await client.aclose()
    return {"nodes": sorted(nodes.values(), key=lambda n: n["id"]), "events": events}
