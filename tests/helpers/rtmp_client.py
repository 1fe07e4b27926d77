"""A minimal RTMP publisher for protocol-level tests: send exactly the tags a test wants.

Real encoders (FFmpeg, GStreamer) are what the end-to-end tests publish with; this client is
for what they cannot be made to do on purpose: hold back the keyframe, vary the chunk size,
send non-monotonic timestamps, stop in the middle of a message.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import subprocess
from pathlib import Path
from typing import NamedTuple

from streamsnap.plugins.rtmp import amf0
from streamsnap.plugins.rtmp.chunks import ChunkReader, encode_message

from .media import FFMPEG


class FlvTag(NamedTuple):
    type_id: int  # 8 audio, 9 video, 18 data
    timestamp: int
    data: bytes

    @property
    def keyframe(self) -> bool:
        return self.type_id == 9 and (self.data[0] >> 4) == 1

    @property
    def sequence_header(self) -> bool:
        return self.type_id == 9 and len(self.data) > 1 and self.data[1] == 0


def read_flv(path: Path) -> list[FlvTag]:
    raw = path.read_bytes()
    assert raw[:3] == b"FLV"
    pos = struct.unpack(">I", raw[5:9])[0] + 4
    tags = []
    while pos + 11 <= len(raw):
        type_id = raw[pos]
        size = int.from_bytes(raw[pos + 1 : pos + 4], "big")
        ts = int.from_bytes(raw[pos + 4 : pos + 7], "big") | (raw[pos + 7] << 24)
        data = raw[pos + 11 : pos + 11 + size]
        if len(data) < size:
            break
        tags.append(FlvTag(type_id, ts, data))
        pos += 11 + size + 4
    return tags


def make_flv(
    path: Path,
    size: str = "640x360",
    seconds: float = 4,
    gop: int = 30,
    extra: tuple[str, ...] = ("-preset", "ultrafast"),
    audio: bool = True,
) -> list[FlvTag]:
    """An FLV made by FFmpeg: an H.264 test picture (and AAC sound), as its list of tags."""
    sound_in = ["-f", "lavfi", "-i", "sine=frequency=440"] if audio else []
    sound_out = ["-c:a", "aac"] if audio else []
    video_in = ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30"]
    video_out = ["-c:v", "libx264", *extra, "-g", str(gop), "-pix_fmt", "yuv420p"]
    subprocess.run(
        [
            FFMPEG,
            "-v",
            "error",
            "-y",
            *video_in,
            *sound_in,
            "-t",
            str(seconds),
            *video_out,
            *sound_out,
            "-f",
            "flv",
            str(path),
        ],
        check=True,
    )
    return read_flv(path)


class RtmpClient:
    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.chunk_size = 128
        self.reader = ChunkReader()
        self.stream_id = 0

    def handshake(self) -> None:
        c1 = bytes(8) + os.urandom(1528)
        self.sock.sendall(b"\x03" + c1)
        s = self._recv_exact(1 + 1536 * 2)
        assert s[0] == 3
        self.sock.sendall(s[1 : 1 + 1536])  # C2 echoes S1

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("server closed the connection")
            buf += chunk
        return buf

    def send(self, csid: int, type_id: int, stream_id: int, ts: int, payload: bytes) -> None:
        self.sock.sendall(encode_message(csid, type_id, stream_id, ts, payload, self.chunk_size))

    def set_chunk_size(self, size: int) -> None:
        self.send(2, 1, 0, 0, struct.pack(">I", size))
        self.chunk_size = size

    def command(self, *values: object, stream_id: int = 0) -> None:
        self.send(3, 20, stream_id, 0, amf0.encode(*values))

    def read_commands(
        self, until: str, txn: float | None = None, limit: int = 50
    ) -> list[list[object]]:
        """Read commands until one whose text contains ``until`` (and, if given, has ``txn``)."""
        seen: list[list[object]] = []
        for _ in range(limit):
            data = self.sock.recv(65536)
            if not data:
                break
            for msg in self.reader.feed(data):
                if msg.type_id != 20:
                    continue
                values = amf0.decode_all(msg.payload)
                seen.append(values)
                if until in repr(values) and (txn is None or values[1] == txn):
                    return seen
        raise AssertionError(f"no {until!r} in {seen}")

    def publish(self, name: str, app: str = "live") -> list[list[object]]:
        self.handshake()
        self.command(
            "connect",
            1.0,
            {
                "app": app,
                "tcUrl": f"rtmp://127.0.0.1/{app}",
                "type": "nonprivate",
                "flashVer": "FMLE/3.0",
            },
        )
        self.read_commands("NetConnection.Connect.Success")
        self.command("releaseStream", 2.0, None, name)
        self.command("FCPublish", 3.0, None, name)
        self.command("createStream", 4.0, None)
        result = self.read_commands("_result", txn=4.0)
        self.stream_id = int(result[-1][3])
        self.command("publish", 5.0, None, name, "live", stream_id=self.stream_id)
        return self.read_commands("NetStream.Publish")

    def send_tag(self, tag: FlvTag, timestamp: int | None = None) -> None:
        csid = 6 if tag.type_id == 9 else 4
        ts = tag.timestamp if timestamp is None else timestamp
        self.send(csid, tag.type_id, self.stream_id, ts, tag.data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
