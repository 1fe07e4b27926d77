"""One RTMP connection: handshake, commands, and the publisher's media into its stream.

Written by hand (see the README's architecture section for why): the ingest side of RTMP that
real encoders (FFmpeg, OBS, GStreamer rtmp2sink, librtmp) speak. Playback is not served.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
from collections import deque
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from ...core.errors import Refused, StreamNameInUse
from ...core.flv import audio_codec, ingest_video
from ...core.pacing import ReadPacer
from . import amf0
from .chunks import (
    ACK,
    AUDIO,
    COMMAND_AMF0,
    COMMAND_AMF3,
    DATA_AMF0,
    DATA_AMF3,
    SET_CHUNK_SIZE,
    SET_PEER_BANDWIDTH,
    USER_CONTROL,
    VIDEO,
    WINDOW_ACK_SIZE,
    ChunkReader,
    Message,
    RtmpProtocolError,
    encode_message,
)

if TYPE_CHECKING:
    from ...core.app import App
    from ...core.streams import Stream
    from . import RtmpSettings

log = logging.getLogger(__name__)

HANDSHAKE_SIZE = 1536
RTMP_VERSION = 3
SERVER_WINDOW = 2_500_000
CSID_CONTROL, CSID_COMMAND = 2, 3
STREAM_BEGIN, STREAM_EOF, PING_REQUEST, PING_RESPONSE = 0, 1, 6, 7
# onStatus codes for refused publishers; FFmpeg and OBS show the description
REFUSED_CODES = {
    "publish_key": "NetStream.Publish.Unauthorized",
    "bad_name": "NetStream.Publish.BadName",
    "plugin": "NetStream.Publish.Denied",
}


def _query(text: str) -> dict[str, str]:
    """The ``a=1&key=x`` part after the first ``?`` of ``text`` as a dict."""
    _, sep, query = text.partition("?")
    return dict(parse_qsl(query, keep_blank_values=True)) if sep else {}


class RtmpSession(asyncio.Protocol):
    """Server side of one TCP connection."""

    def __init__(self, app: App, config: RtmpSettings, sessions: set[RtmpSession]) -> None:
        self.app = app
        self.config = config
        self.sessions = sessions
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.reader = ChunkReader(config.max_message_bytes)
        self._hs = bytearray()
        self._state = "c0c1"  # -> "c2" -> "open" -> "closed"
        self.out_chunk_size = config.chunk_size
        self.app_name = ""
        self.ip = ""
        self._connect_params: dict[str, str] = {}  # query of the connect app/tcUrl (?key=)
        self.stream: Stream | None = None
        self.publish_name = ""
        self._publish_stream_id = 0
        self._next_stream_id = 1
        self._peer_window = 0  # the client's Window Acknowledgement Size
        self._received = 0
        self._acked = 0
        self.last_data = self.connected_at = time.monotonic()
        self._backlog: deque[Message] = deque()
        self._busy = False
        self.pacer: ReadPacer | None = None  # reads in paced turns once publishing
        self._closing_reason = ""

    # ---------------------------------------------------------------- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        addr = transport.get_extra_info("peername")
        self.peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
        self.ip = str(addr[0]) if isinstance(addr, tuple) else ""
        self.sessions.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = "closed"
        self.sessions.discard(self)
        self._stop_pacing()
        if self.stream is not None:
            stream, self.stream = self.stream, None
            reason = self._closing_reason or ("connection reset" if exc else "publisher left")
            self.app.spawn(self.app.unpublish(stream, reason), name=f"rtmp-unpublish:{stream.name}")

    def data_received(self, data: bytes) -> None:
        self.last_data = time.monotonic()
        self._received += len(data)
        try:
            messages = self.reader.feed(data) if self._state == "open" else self._handshake(data)
            if self._peer_window and self._received - self._acked >= self._peer_window:
                self._acked = self._received
                self._send(CSID_CONTROL, ACK, 0, struct.pack(">I", self._received & 0xFFFFFFFF))
            if messages:
                self._backlog.extend(messages)
                self._drain_backlog()
            if self.pacer is not None:
                self.pacer.after_read(len(data))
        except (RtmpProtocolError, amf0.AmfError) as exc:
            self.close(f"protocol error: {exc}", level=logging.WARNING)

    def _read_failed(self, exc: OSError) -> None:
        """A read made for a request failed (the peer reset the connection)."""
        self._closing_reason = "connection reset" if isinstance(exc, ConnectionError) else str(exc)
        if self.transport is not None:
            self.transport.abort()

    def _stop_pacing(self) -> None:
        if self.pacer is not None:
            self.pacer.close()
            self.pacer = None

    # ---------------------------------------------------------------- handshake
    def _handshake(self, data: bytes) -> list[Message]:
        self._hs += data
        if self._state == "c0c1":
            if self._hs[0] != RTMP_VERSION:
                raise RtmpProtocolError(
                    f"not an RTMP client (first byte 0x{self._hs[0]:02x}, expected 0x03)"
                )
            if len(self._hs) < 1 + HANDSHAKE_SIZE:
                return []
            c1 = bytes(self._hs[1 : 1 + HANDSHAKE_SIZE])
            del self._hs[: 1 + HANDSHAKE_SIZE]
            s1 = struct.pack(">II", int(time.monotonic() * 1000) & 0xFFFFFFFF, 0) + os.urandom(
                HANDSHAKE_SIZE - 8
            )
            s2 = c1[:4] + struct.pack(">I", int(time.monotonic() * 1000) & 0xFFFFFFFF) + c1[8:]
            self._write(bytes((RTMP_VERSION,)) + s1 + s2)
            self._state = "c2"
        if self._state == "c2" and len(self._hs) >= HANDSHAKE_SIZE:
            rest = bytes(self._hs[HANDSHAKE_SIZE:])
            self._hs = bytearray()
            self._state = "open"
            log.debug("rtmp %s: handshake done", self.peer)
            return self.reader.feed(rest) if rest else []
        return []

    @property
    def handshake_done(self) -> bool:
        return self._state in ("open", "closed")

    # ---------------------------------------------------------------- message dispatch
    def _drain_backlog(self) -> None:
        while self._backlog and not self._busy and self._state == "open":
            self._handle(self._backlog.popleft())

    def _await(self, coro: Any, name: str) -> None:
        """Run ``coro`` before handling further messages (e.g. the on_publish hooks)."""
        self._busy = True
        if self.transport is not None:
            self.transport.pause_reading()
        task = self.app.spawn(coro, name=name)
        task.add_done_callback(self._resume)

    def _resume(self, _task: asyncio.Task[Any]) -> None:
        self._busy = False
        if self._state == "open" and self.transport is not None:
            self.transport.resume_reading()
            try:
                self._drain_backlog()
            except (RtmpProtocolError, amf0.AmfError) as exc:
                self.close(f"protocol error: {exc}", level=logging.WARNING)

    def _handle(self, msg: Message) -> None:
        t = msg.type_id
        if t == VIDEO:
            self._on_video(msg)
        elif t == AUDIO:
            if self.stream is not None and not self.stream.has_audio:
                self.stream.has_audio = True
                self.stream.audio_codec = audio_codec(msg.payload)
        elif t == COMMAND_AMF0:
            self._on_command(amf0.decode_all(msg.payload), msg)
        elif t == COMMAND_AMF3:
            # AMF3 commands carry a leading format byte, then AMF0 values
            self._on_command(amf0.decode_all(msg.payload[1:]), msg)
        elif t in (DATA_AMF0, DATA_AMF3):
            payload = msg.payload[1:] if t == DATA_AMF3 else msg.payload
            self._on_data(amf0.decode_all(payload))
        elif t == WINDOW_ACK_SIZE and len(msg.payload) >= 4:
            self._peer_window = struct.unpack_from(">I", msg.payload)[0]
        elif t == USER_CONTROL and len(msg.payload) >= 6:
            event = struct.unpack_from(">H", msg.payload)[0]
            if event == PING_REQUEST:
                self._send(
                    CSID_CONTROL,
                    USER_CONTROL,
                    0,
                    struct.pack(">H", PING_RESPONSE) + msg.payload[2:6],
                )
        # SET_CHUNK_SIZE/ABORT are applied by the reader; ACK, peer bandwidth, aggregate
        # and shared objects need nothing from an ingest-only server.

    def _on_video(self, msg: Message) -> None:
        if self.stream is not None:
            ingest_video(self.app, self.stream, msg.payload, msg.timestamp)

    def _on_data(self, values: list[Any]) -> None:
        if self.stream is None or not values:
            return
        if values[0] == "@setDataFrame":
            values = values[1:]
        if len(values) >= 2 and values[0] == "onMetaData" and isinstance(values[1], dict):
            meta = {k: v for k, v in values[1].items() if isinstance(v, (int, float, str, bool))}
            self.stream.metadata.update(meta)

    # ---------------------------------------------------------------- commands
    def _on_command(self, values: list[Any], msg: Message) -> None:
        if not values or not isinstance(values[0], str):
            raise RtmpProtocolError("command message without a command name")
        name = values[0]
        txn = values[1] if len(values) > 1 and isinstance(values[1], float) else 0.0
        args = values[3:] if len(values) > 3 else []
        if name == "connect":
            obj = values[2] if len(values) > 2 and isinstance(values[2], dict) else {}
            self._on_connect(txn, obj)
        elif name == "createStream":
            stream_id = self._next_stream_id
            self._next_stream_id += 1
            self._result(txn, None, stream_id)
        elif name in ("releaseStream", "FCPublish"):
            if name == "FCPublish" and args and isinstance(args[0], str):
                self._command(
                    "onFCPublish",
                    0,
                    None,
                    {"code": "NetStream.Publish.Start", "description": args[0]},
                )
            if txn:
                self._result(txn, None, amf0.UNDEFINED_VALUE)
        elif name == "publish":
            self._on_publish(msg.stream_id, args)
        elif name in ("FCUnpublish", "deleteStream", "closeStream"):
            if self.stream is not None:
                self._stop_pacing()
                stream, self.stream = self.stream, None
                self._await(
                    self.app.unpublish(stream, f"{name} from publisher"),
                    f"rtmp-unpublish:{stream.name}",
                )
        elif name == "play":
            self._status(
                msg.stream_id,
                "error",
                "NetStream.Play.Failed",
                "streamsnap does not serve RTMP playback; use the snapshot API",
            )
        elif name == "getStreamLength" and txn:
            self._result(txn, None, 0)
        elif txn:
            self._command(
                "_error",
                txn,
                None,
                {
                    "level": "error",
                    "code": "NetConnection.Call.Failed",
                    "description": f"unknown command {name!r}",
                },
            )

    def _on_connect(self, txn: float, obj: dict[str, Any]) -> None:
        app, tc_url = obj.get("app"), obj.get("tcUrl")
        self.app_name = app.split("?", 1)[0] if isinstance(app, str) else ""
        self._connect_params = {
            **(_query(tc_url) if isinstance(tc_url, str) else {}),
            **(_query(app) if isinstance(app, str) else {}),
        }
        self._send(CSID_CONTROL, WINDOW_ACK_SIZE, 0, struct.pack(">I", SERVER_WINDOW))
        self._send(CSID_CONTROL, SET_PEER_BANDWIDTH, 0, struct.pack(">IB", SERVER_WINDOW, 2))
        self._send(CSID_CONTROL, SET_CHUNK_SIZE, 0, struct.pack(">I", self.config.chunk_size))
        self.out_chunk_size = self.config.chunk_size
        encoding = obj.get("objectEncoding", 0.0)
        self._result(
            txn,
            {"fmsVer": "FMS/3,5,7,7009", "capabilities": 31.0, "mode": 1.0},
            {
                "level": "status",
                "code": "NetConnection.Connect.Success",
                "description": "Connection succeeded.",
                "objectEncoding": encoding if isinstance(encoding, float) else 0.0,
            },
        )

    def _on_publish(self, stream_id: int, args: list[Any]) -> None:
        raw = args[0] if args and isinstance(args[0], str) else ""
        name = raw.split("?", 1)[0]
        if self.stream is not None:
            self._status(
                stream_id,
                "error",
                "NetStream.Publish.BadName",
                "this connection is already publishing",
            )
            return
        stream = self.app.new_stream(
            name,
            "rtmp",
            remote=self.peer,
            remote_ip=self.ip,
            app_name=self.app_name,
            terminator=self._terminate,
        )
        params = {**self._connect_params, **_query(raw)}
        self._await(self._admit(stream_id, stream, params), f"rtmp-admit:{name}")

    async def _admit(self, stream_id: int, stream: Stream, params: dict[str, str]) -> None:
        """Ask the app (name, hook, publish key, limits) and claim the stream, or refuse."""
        name = stream.name
        try:
            await self.app.admission.admit(stream, params)
        except Refused as exc:
            code = REFUSED_CODES.get(exc.kind, "NetStream.Publish.Rejected")
            self._status(stream_id, "error", code, f"publish of {name!r} refused: {exc}")
            self.close(f"publish of {name!r} refused: {exc}", level=logging.WARNING)
            return
        except StreamNameInUse as exc:
            self._status(
                stream_id, "error", "NetStream.Publish.BadName", "Stream name is already in use"
            )
            self.close(f"publish of {name!r} refused: {exc}", level=logging.WARNING)
            return
        if self._state != "open":  # the publisher left while we were deciding
            self.app.spawn(
                self.app.unpublish(stream, "publisher left"), name=f"rtmp-unpublish:{name}"
            )
            return
        self.stream = stream
        self.publish_name = name
        interval = self.app.config.streams.read_interval_ms / 1000
        if interval > 0 and self.transport is not None:
            self.pacer = ReadPacer(
                self.transport, stream.frames, self.data_received, interval, self._read_failed
            )
        self._publish_stream_id = stream_id
        self._send(CSID_CONTROL, USER_CONTROL, 0, struct.pack(">HI", STREAM_BEGIN, stream_id))
        self._status(stream_id, "status", "NetStream.Publish.Start", f"{name} is now published.")
        await self.app.announce(stream)

    def _terminate(self, reason: str) -> None:
        self.close(reason)

    # ---------------------------------------------------------------- sending
    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _send(self, csid: int, type_id: int, stream_id: int, payload: bytes) -> None:
        self._write(encode_message(csid, type_id, stream_id, 0, payload, self.out_chunk_size))

    def _command(self, name: str, txn: float, *values: Any, stream_id: int = 0) -> None:
        self._send(CSID_COMMAND, COMMAND_AMF0, stream_id, amf0.encode(name, txn, *values))

    def _result(self, txn: float, *values: Any) -> None:
        self._command("_result", txn, *values)

    def _status(self, stream_id: int, level: str, code: str, description: str) -> None:
        self._command(
            "onStatus",
            0,
            None,
            {"level": level, "code": code, "description": description},
            stream_id=stream_id,
        )

    def close(self, reason: str, level: int = logging.INFO) -> None:
        """Close the connection (flushing what was written); the stream ends with it."""
        if self._state == "closed":
            return
        name = self.stream.name if self.stream is not None else "-"
        log.log(level, "rtmp %s (stream %s): closing: %s", self.peer, name, reason)
        if self.stream is not None:
            # tell the publisher why its stream ends (shutdown, terminate, timeout) before the
            # connection closes; the transport flushes it first
            self._status(self._publish_stream_id, "status", "NetStream.Unpublish.Success", reason)
        self._closing_reason = reason
        self._state = "closed"
        self._stop_pacing()
        self._backlog.clear()
        if self.transport is not None:
            self.transport.close()
