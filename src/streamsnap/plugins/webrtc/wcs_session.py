"""One socket of the WCS-compatible WebSocket API: what the Flashphoner WebSDK speaks.

Every message is ``{"message": name, "data": [...]}`` both ways. Implemented: ``connection`` →
``getUserData``; ``publishStream`` → ``setRemoteSDP`` + PUBLISHING; ``playStream`` →
``setRemoteSDP`` + PLAYING; ``snapshot`` → ``notifyStreamEvent`` snapshotCompleted (and the
legacy SNAPSHOT_COMPLETE status) or snapshotFailed; ``unPublishStream`` → UNPUBLISHED;
``stopStream`` → STOPPED; ``availableStream``; ``sendStreamEvent`` relayed to the stream's
players; ``ping``. Unknown or malformed messages are logged and ignored; the socket stays open.
Closing the socket ends everything the session owned; players of a stream that ends get STOPPED.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiortc import RTCPeerConnection

from ...core.auth import LoginThrottled
from ...core.errors import (
    InvalidStreamName,
    NotAllowed,
    Refused,
    SnapshotError,
    StreamNameInUse,
    StreamNotFound,
    Unavailable,
)
from ...core.snapshot import SnapshotRequest
from ...core.streams import Stream
from ...core.supervisor import mask_credentials

if TYPE_CHECKING:
    from .wcs_websocket import WcsApi

log = logging.getLogger(__name__)

# STREAM_STATUS_INFO strings of the WebSDK
NAME_IN_USE = "Stream name is already in use"
NOT_FOUND = "Stream not found"
STOPPED_BY_PUBLISHER = "Stopped by publisher stop"
STOPPED_BY_DISCONNECT = "Stopped by session disconnect"


@dataclass(eq=False)
class Publication:
    session: WcsSession
    media_session_id: str
    stream: Stream
    pc: RTCPeerConnection | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(eq=False)
class Player:
    session: WcsSession
    media_session_id: str
    name: str
    pc: RTCPeerConnection | None = None
    info: dict[str, Any] = field(default_factory=dict)


class WcsSession:
    """One WebSocket connection of a WebSDK client."""

    def __init__(self, api: WcsApi, ws: web.WebSocketResponse, peer: str, path: str) -> None:
        self.api = api
        self.app = api.app
        self.ws = ws
        self.peer = peer
        self.path = path
        self.id = str(uuid.uuid4())
        self.app_key = "defaultApp"
        self.established = False
        self.user = ""  # who the authToken proved, when [auth] is on
        self.publications: dict[str, Publication] = {}
        self.players: dict[str, Player] = {}
        self._send_lock = asyncio.Lock()

    async def send(self, message: str, *data: Any) -> None:
        if self.ws.closed:
            return
        text = json.dumps({"message": message, "data": list(data)})
        async with self._send_lock:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.ws.send_str(text)

    async def status(
        self,
        media_session_id: str,
        status: str,
        *,
        name: str = "",
        published: bool = False,
        info: str = "",
        **extra: Any,
    ) -> None:
        event = {
            "mediaSessionId": media_session_id,
            "name": name,
            "published": published,
            "hasVideo": True,
            "hasAudio": False,
            "record": False,
            "mediaProvider": "WebRTC",
            "status": status,
            **extra,
        }
        if info:
            event["info"] = info
        await self.send("notifyStreamStatusEvent", event)

    # ---------------------------------------------------------------- dispatch
    async def handle(self, text: str) -> None:
        try:
            envelope = json.loads(text)
        except ValueError:
            log.warning(
                "websocket %s: ignored a message that is not JSON (%d bytes)", self.peer, len(text)
            )
            return
        if not isinstance(envelope, dict) or not isinstance(envelope.get("message"), str):
            log.warning('websocket %s: ignored a message without a "message" name', self.peer)
            return
        name = envelope["message"]
        data = envelope.get("data")
        payload = data[0] if isinstance(data, list) and data else None
        handler = getattr(self, f"on_{name}", None)
        if handler is None:
            log.debug("websocket %s: ignored unknown message %r", self.peer, name)
            return
        if name != "connection" and not self.established:
            log.warning("websocket %s: %r before connection: ignored", self.peer, name)
            return
        if name not in ("ping", "pong", "connection") and not isinstance(payload, dict):
            log.warning("websocket %s: %r without an object in data: ignored", self.peer, name)
            return
        try:
            await handler(payload)
        except Exception:
            log.exception("websocket %s: %r failed", self.peer, name)

    # ---------------------------------------------------------------- session
    async def on_connection(self, payload: Any) -> None:
        payload = payload if isinstance(payload, dict) else {}
        auth = self.app.auth
        if auth.enabled:
            token = str(payload.get("authToken") or "")
            try:
                self.user = await auth.check_ws_token(token, self.peer) or ""
            except LoginThrottled as exc:
                await self._refuse_connection("failed_logins", str(exc), 4029, str(exc))
                return
        if auth.enabled and not self.user:
            reason = "wrong or missing authToken"
            await self._refuse_connection("unauthorized", "Authentication failed", 4001, reason)
            return
        self.app_key = str(payload.get("appKey") or "defaultApp")
        self.established = True
        reply = {
            k: v
            for k, v in payload.items()
            if k not in ("authToken", "webRTCMetricsServerDescription", "sipPassword")
        }
        reply.update(sessionId=self.id, authToken=self.id)
        await self.send("getUserData", reply)

    async def _refuse_connection(self, kind: str, info: str, code: int, reason: str) -> None:
        log.warning("websocket %s: connection refused: %s", self.peer, reason)
        self.app.refused[kind] += 1
        await self.send("fail", {"apiMethod": "ConnectionStatusEvent", "info": info})
        await self.ws.close(code=code, message=info.encode())

    async def _refuse_taken_id(self, msid: str, name: str, published: bool) -> bool:
        """Refuse a mediaSessionId already used by a live stream or a session: clients choose
        it, and a reused one would pass the client off as another one."""
        if not self.api.media_session_in_use(msid):
            return False
        what = "publish" if published else "play"
        log.warning(
            "websocket %s: %s of %r refused: mediaSessionId %r is already in use",
            self.peer,
            what,
            name,
            msid,
        )
        info = f"mediaSessionId {msid} is already in use"
        await self.status(msid, "FAILED", name=name, published=published, info=info)
        return True

    async def on_ping(self, payload: Any) -> None:
        await self.send("pong", None)

    async def on_pong(self, payload: Any) -> None:
        return None

    # ---------------------------------------------------------------- publish
    async def on_publishStream(self, p: dict[str, Any]) -> None:
        msid, name, sdp = p.get("mediaSessionId"), p.get("name"), p.get("sdp")
        if not isinstance(msid, str) or not msid:
            log.warning("websocket %s: publishStream without mediaSessionId", self.peer)
            return
        if not isinstance(name, str) or not name or not isinstance(sdp, str):
            await self.status(
                msid,
                "FAILED",
                name=str(name or ""),
                published=True,
                info="Stream name and SDP are required",
            )
            return
        if await self._refuse_taken_id(msid, name, published=True):
            return
        stream = self.app.new_stream(
            name,
            "webrtc",
            media_session_id=msid,
            remote=self.peer,
            remote_ip="" if self.peer == "?" else self.peer,
            app_name=self.app_key,
        )
        pub = Publication(self, msid, stream)
        stream.terminator = lambda reason: self._end_publication(
            pub, "UNPUBLISHED", reason, unpublish=False
        )
        custom = p.get("custom")
        params = {
            str(k): v
            for k, v in (custom.items() if isinstance(custom, dict) else ())
            if isinstance(v, str)
        }
        try:
            await self.app.admission.admit(stream, params, user=self.user)
        except StreamNameInUse:
            log.warning("websocket %s: publish of %r refused: name in use", self.peer, name)
            await self.status(msid, "FAILED", name=name, published=True, info=NAME_IN_USE)
            return
        except Refused as exc:
            await self.status(msid, "FAILED", name=name, published=True, info=str(exc))
            return
        self.publications[msid] = pub
        try:
            pub.pc, answer = await self.api.engine.publish(
                stream, sdp, on_closed=lambda state: self._publisher_gone(pub, state)
            )
        except Exception as exc:
            log.warning("stream %s: WebRTC publish failed: %s", name, exc)
            self.publications.pop(msid, None)
            await self.app.unpublish(stream, "SDP negotiation failed")
            await self.status(msid, "FAILED", name=name, published=True, info="Failed by SDP error")
            return
        await self.send("setRemoteSDP", msid, answer)
        await self.app.announce(stream)
        await self.status(msid, "PUBLISHING", name=name, published=True)

    async def _publisher_gone(self, pub: Publication, state: str) -> None:
        if self.publications.get(pub.media_session_id) is pub:
            await self._end_publication(pub, "FAILED", f"Failed by ICE/DTLS ({state})")

    async def _end_publication(
        self, pub: Publication, status: str, info: str = "", unpublish: bool = True
    ) -> None:
        self.publications.pop(pub.media_session_id, None)
        if pub.pc is not None:
            await self.api.engine.close(pub.pc)
        if unpublish:
            await self.app.unpublish(pub.stream, info or status.lower())
        await self.status(
            pub.media_session_id, status, name=pub.stream.name, published=True, info=info
        )

    async def on_unPublishStream(self, p: dict[str, Any]) -> None:
        pub = self.publications.get(str(p.get("mediaSessionId")))
        if pub is None:
            log.debug("websocket %s: unPublishStream for an unknown mediaSessionId", self.peer)
            return
        await self._end_publication(pub, "UNPUBLISHED")

    # ---------------------------------------------------------------- play
    async def on_playStream(self, p: dict[str, Any]) -> None:
        msid, name, sdp = p.get("mediaSessionId"), p.get("name"), p.get("sdp")
        if not isinstance(msid, str) or not msid:
            return
        if not isinstance(name, str) or not name or not isinstance(sdp, str):
            await self.status(msid, "FAILED", name=str(name or ""), info=NOT_FOUND)
            return
        try:
            stream = await self.app.resolve(name, self.peer)
        except (
            StreamNotFound,
            InvalidStreamName,
            NotAllowed,
            Refused,
            SnapshotError,
            StreamNameInUse,
            Unavailable,
        ) as exc:
            info = NOT_FOUND if isinstance(exc, StreamNotFound) else str(exc)
            await self.status(msid, "FAILED", name=name, info=info)
            return
        if await self._refuse_taken_id(msid, name, published=False):
            return
        player = Player(self, msid, stream.name)
        self.players[msid] = player
        self.api.add_player(player)
        try:
            player.pc, answer = await self.api.engine.play(
                stream, sdp, on_closed=lambda state: self._player_gone(player, state)
            )
        except Exception as exc:
            log.warning("stream %s: WebRTC play failed: %s", mask_credentials(name), exc)
            await self._end_player(player, "FAILED", "Failed by SDP error")
            return
        await self.send("setRemoteSDP", msid, answer)
        await self.status(msid, "PLAYING", name=name)

    async def _player_gone(self, player: Player, state: str) -> None:
        if self.players.get(player.media_session_id) is player:
            await self._end_player(player, "FAILED", f"Failed by ICE/DTLS ({state})")

    async def _end_player(self, player: Player, status: str, info: str = "") -> None:
        self.players.pop(player.media_session_id, None)
        self.api.remove_player(player)
        if player.pc is not None:
            await self.api.engine.close(player.pc)
        await self.status(player.media_session_id, status, name=player.name, info=info)

    async def on_stopStream(self, p: dict[str, Any]) -> None:
        player = self.players.get(str(p.get("mediaSessionId")))
        if player is not None:
            await self._end_player(player, "STOPPED")

    # ---------------------------------------------------------------- snapshot & co
    async def on_snapshot(self, p: dict[str, Any]) -> None:
        msid, name = p.get("mediaSessionId"), p.get("name")
        if not isinstance(msid, str) or not isinstance(name, str) or not name:
            log.warning("websocket %s: snapshot without name or mediaSessionId", self.peer)
            return
        try:
            with self.app.admission.snapshot_slot(name, self.peer):
                snap = await self.app.snapshot(
                    name, SnapshotRequest(source="websocket", client=self.id, pull_for=self.peer)
                )
        except (
            StreamNotFound,
            InvalidStreamName,
            NotAllowed,
            SnapshotError,
            Refused,
            Unavailable,
        ) as exc:
            info = NOT_FOUND if isinstance(exc, StreamNotFound) else str(exc)
            log.info(
                "websocket %s: snapshot of %s failed: %s", self.peer, mask_credentials(name), info
            )
            await self.send(
                "notifyStreamEvent",
                {"mediaSessionId": msid, "type": "snapshotFailed", "payload": {"info": info}},
            )
            await self.status(msid, "FAILED", name=name, info=info)
            return
        data = snap.base64()
        await self.send(
            "notifyStreamEvent",
            {"mediaSessionId": msid, "type": "snapshotCompleted", "payload": {"snapshot": data}},
        )
        await self.status(msid, "SNAPSHOT_COMPLETE", name=name, info=data)

    async def on_availableStream(self, p: dict[str, Any]) -> None:
        msid, name = p.get("mediaSessionId"), p.get("name")
        available = isinstance(name, str) and self.app.streams.lookup(name) is not None
        await self.send(
            "availableStream",
            {
                "id": msid,
                "status": "true" if available else "false",
                "info": "" if available else NOT_FOUND,
            },
        )

    async def on_sendStreamEvent(self, p: dict[str, Any]) -> None:
        pub = self.publications.get(str(p.get("mediaSessionId")))
        if pub is None:
            return
        for player in self.api.players_of(pub.stream.name):
            await player.session.send(
                "notifyStreamEvent",
                {
                    "mediaSessionId": player.media_session_id,
                    "type": p.get("type"),
                    "payload": p.get("payload"),
                },
            )

    # ---------------------------------------------------------------- end
    async def close(self) -> None:
        """The socket closed: end every stream this session published or played."""
        for pub in list(self.publications.values()):
            await self._end_publication(pub, "FAILED", STOPPED_BY_DISCONNECT)
        for player in list(self.players.values()):
            self.players.pop(player.media_session_id, None)
            self.api.remove_player(player)
            if player.pc is not None:
                await self.api.engine.close(player.pc)
