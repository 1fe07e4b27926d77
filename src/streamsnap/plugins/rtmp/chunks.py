"""RTMP chunk streams: split the byte stream into messages, and messages into chunks.

:class:`ChunkReader` is incremental (feed it whatever TCP delivers) and defensive: message
sizes, chunk sizes and the number of chunk streams are bounded, and anything malformed raises
:class:`RtmpProtocolError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

# Message type ids (RTMP spec 5.4 and 7.1)
SET_CHUNK_SIZE, ABORT, ACK, USER_CONTROL, WINDOW_ACK_SIZE, SET_PEER_BANDWIDTH = 1, 2, 3, 4, 5, 6
AUDIO, VIDEO = 8, 9
DATA_AMF3, SHARED_OBJECT_AMF3, COMMAND_AMF3 = 15, 16, 17
DATA_AMF0, SHARED_OBJECT_AMF0, COMMAND_AMF0 = 18, 19, 20
AGGREGATE = 22

MAX_CHUNK_STREAMS = 64  # real encoders use a handful (2-8)
MAX_CHUNK_SIZE = 0x7FFFFFFF
# A message's buffer is made whole at its first chunk up to this size (a 4K keyframe fits);
# a larger one grows as its chunks come, so a 12-byte header cannot make the server hold more.
PREALLOCATE_MAX = 1 << 20

_U32 = struct.Struct(">I")
_U32LE = struct.Struct("<I")


class RtmpProtocolError(Exception):
    """The peer broke the RTMP chunk protocol."""


class Message(NamedTuple):
    type_id: int
    stream_id: int
    timestamp: int  # milliseconds, 32-bit
    payload: bytes | bytearray  # a bytearray when the message came in more than one chunk
    csid: int


@dataclass
class _ChunkStream:
    timestamp: int = 0
    delta: int = 0
    length: int = 0
    type_id: int = 0
    stream_id: int = 0
    extended: bool = False
    # A message spanning chunks is written into one buffer of its announced length: no list
    # of chunk copies joined at the end. The event loop then makes one block per video frame
    # (the frame store keeps it for the keyframe group) instead of three to five. (It did not
    # stop the main heap's free space growing over the endurance hour: BENCHMARKS.md.)
    body: bytearray | None = None
    received: int = 0
    started: bool = False  # a header has been seen on this chunk stream


class ChunkReader:
    def __init__(self, max_message_bytes: int = 16 << 20) -> None:
        self.chunk_size = 128
        self.max_message_bytes = max_message_bytes
        self._streams: dict[int, _ChunkStream] = {}
        self._buf = bytearray()
        # bytes held for messages not yet complete, across chunk streams: the size of each
        # one's buffer (its announced length, up to PREALLOCATE_MAX; beyond, what came)
        self._partial = 0

    @property
    def buffered(self) -> int:
        return len(self._buf) + self._partial

    def feed(self, data: bytes) -> list[Message]:
        """Consume ``data``; return the messages it completed."""
        buf = self._buf
        buf += data
        out: list[Message] = []
        view = memoryview(buf)  # chunk bodies copied straight into their message's buffer
        try:
            pos = self._messages(buf, view, out)
        finally:
            view.release()  # before the buffer is resized, here or by the next feed
        if pos:
            del buf[:pos]
        return out

    def _messages(self, buf: bytearray, view: memoryview, out: list[Message]) -> int:
        """Append the messages completed in ``buf`` to ``out``; return the bytes consumed."""
        pos = 0
        end = len(buf)
        while True:
            start = pos
            if pos >= end:
                break
            b0 = buf[pos]
            fmt = b0 >> 6
            csid = b0 & 0x3F
            pos += 1
            if csid == 0:
                if pos + 1 > end:
                    pos = start
                    break
                csid = 64 + buf[pos]
                pos += 1
            elif csid == 1:
                if pos + 2 > end:
                    pos = start
                    break
                csid = 64 + buf[pos] + (buf[pos + 1] << 8)
                pos += 2
            header_len = (11, 7, 3, 0)[fmt]
            if pos + header_len > end:
                pos = start
                break
            cs = self._streams.get(csid)
            if cs is None:
                if len(self._streams) >= MAX_CHUNK_STREAMS:
                    raise RtmpProtocolError(f"more than {MAX_CHUNK_STREAMS} chunk streams")
                cs = _ChunkStream()
                self._streams[csid] = cs
            new_message = cs.received == 0
            if fmt == 3 and not cs.started:
                raise RtmpProtocolError(f"chunk stream {csid}: continuation before any header")
            hpos = pos
            ts_field = 0
            if fmt <= 2:
                ts_field = (buf[hpos] << 16) | (buf[hpos + 1] << 8) | buf[hpos + 2]
            pos += header_len
            extended = cs.extended if fmt == 3 else ts_field == 0xFFFFFF
            if extended:
                if pos + 4 > end:
                    pos = start
                    break
                ts_field = _U32.unpack_from(buf, pos)[0]
                pos += 4
            # Work out the new state in locals; commit it only once the chunk body is here.
            timestamp, delta = cs.timestamp, cs.delta
            length, type_id, stream_id = cs.length, cs.type_id, cs.stream_id
            if fmt <= 1:
                if not new_message:
                    raise RtmpProtocolError(f"chunk stream {csid}: new header inside a message")
                length = (buf[hpos + 3] << 16) | (buf[hpos + 4] << 8) | buf[hpos + 5]
                type_id = buf[hpos + 6]
                if length > self.max_message_bytes:
                    raise RtmpProtocolError(
                        f"message of {length} bytes exceeds the limit of {self.max_message_bytes}"
                    )
            if fmt == 0:
                stream_id = _U32LE.unpack_from(buf, hpos + 7)[0]
                timestamp, delta = ts_field, 0
            elif fmt <= 2:
                if not new_message:
                    raise RtmpProtocolError(f"chunk stream {csid}: type 2 header inside a message")
                timestamp, delta = (timestamp + ts_field) & 0xFFFFFFFF, ts_field
            elif new_message:
                timestamp = (timestamp + delta) & 0xFFFFFFFF
            take = min(self.chunk_size, length - cs.received)
            if pos + take > end:
                pos = start  # wait for the whole chunk; the header is parsed again then
                break
            cs.timestamp, cs.delta, cs.extended, cs.started = timestamp, delta, extended, True
            cs.length, cs.type_id, cs.stream_id = length, type_id, stream_id
            if take == length:  # the whole message in this chunk
                payload: bytes | bytearray = bytes(view[pos : pos + take])
            else:
                body = cs.body
                if body is None:
                    body = cs.body = bytearray(length if length <= PREALLOCATE_MAX else 0)
                    self._partial += len(body)
                if len(body) < length:  # a message larger than PREALLOCATE_MAX
                    body += view[pos : pos + take]
                    self._partial += take
                else:
                    body[cs.received : cs.received + take] = view[pos : pos + take]
                if self._partial > 2 * self.max_message_bytes:
                    raise RtmpProtocolError("too many unfinished messages buffered")
                cs.received += take
                if cs.received < length:
                    pos += take
                    continue
                payload = body
                self._partial -= len(body)
                cs.body = None
                cs.received = 0
            pos += take
            msg = Message(cs.type_id, cs.stream_id, cs.timestamp, payload, csid)
            if msg.type_id == SET_CHUNK_SIZE:
                self._set_chunk_size(payload)
            elif msg.type_id == ABORT and len(payload) >= 4:
                self._abort(_U32.unpack_from(payload)[0])
            out.append(msg)
        return pos

    def _set_chunk_size(self, payload: bytes) -> None:
        if len(payload) < 4:
            raise RtmpProtocolError("Set Chunk Size message shorter than 4 bytes")
        size = _U32.unpack_from(payload)[0] & 0x7FFFFFFF
        if size < 1:
            raise RtmpProtocolError(f"invalid chunk size {size}")
        self.chunk_size = size

    def _abort(self, csid: int) -> None:
        cs = self._streams.get(csid)
        if cs is not None and cs.body is not None:
            self._partial -= len(cs.body)
            cs.body = None
            cs.received = 0


def _basic_header(fmt: int, csid: int) -> bytes:
    if csid < 64:
        return bytes(((fmt << 6) | csid,))
    if csid < 320:
        return bytes((fmt << 6, csid - 64))
    return bytes(((fmt << 6) | 1, (csid - 64) & 0xFF, (csid - 64) >> 8))


def encode_message(
    csid: int, type_id: int, stream_id: int, timestamp: int, payload: bytes, chunk_size: int
) -> bytes:
    """One message as chunks: a full (type 0) header, then type 3 continuation headers."""
    extended = timestamp >= 0xFFFFFF
    ts_field = 0xFFFFFF if extended else timestamp
    header = bytearray(_basic_header(0, csid))
    header += ts_field.to_bytes(3, "big") + len(payload).to_bytes(3, "big")
    header.append(type_id)
    header += _U32LE.pack(stream_id)
    ext = _U32.pack(timestamp & 0xFFFFFFFF) if extended else b""
    header += ext
    out = bytearray(header)
    cont = _basic_header(3, csid) + ext
    view = memoryview(payload)
    for offset in range(0, max(len(payload), 1), chunk_size):
        if offset:
            out += cont
        out += view[offset : offset + chunk_size]
    return bytes(out)
