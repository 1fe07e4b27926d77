"""A camera simulator that does not encode: one process serves any number of RTSP cameras,
each replaying the same pre-encoded camera-like H.264 clip in real time, so that a bench of
150 cameras costs the machine what sending 150 streams costs, not 150 encoders.

    python bench/camera_sim.py --clip camera.h264 [--port 0] [--fps 30]

Prints ``ready PORT``; then every ``rtsp://127.0.0.1:PORT/cam/ANYTHING`` is a camera. Cameras
whose paths differ start at different frames of the clip (``--groups`` starting points spread
over the GOP, and over the frame interval), as independent cameras do, so their keyframes do
not all come at once. RTP goes over the RTSP connection (RFC 2326 interleaved, what
``rtsp_transport=tcp`` asks for); UDP is refused with 461 and clients fall back to TCP. A
viewer that cannot keep up has frames dropped up to the next keyframe, as a camera would.
Every 10 s it prints ``stats`` (sessions, frames sent and dropped, the latest a tick ran).

Written by hand, and small, because nothing installable here replays a clip to many RTSP
clients without re-encoding or a pipeline per client: GStreamer's RTSP server needs an
encoder (or a seek per loop) per media and stopped answering at 50 cameras in an earlier
bench, and FFmpeg's RTSP muxer in listen mode serves one client.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import random
import struct
import sys
import time
import zlib
from dataclasses import dataclass, field
from urllib.parse import urlsplit

MAX_PAYLOAD = 1400  # RTP payload bytes: fits a 1500-byte MTU with headers
CLOCK = 90_000
PT = 96
MAX_BUFFERED = 2 * 1024 * 1024  # bytes queued for a viewer before its frames are dropped
PUBLIC = "OPTIONS, DESCRIBE, SETUP, PLAY, PAUSE, TEARDOWN, GET_PARAMETER, SET_PARAMETER"


def nal_units(access_unit: bytes) -> list[bytes]:
    """The NAL units of an Annex-B access unit, without their start codes."""
    units, start = [], access_unit.find(b"\x00\x00\x01")
    while start >= 0:
        begin = start + 3
        nxt = access_unit.find(b"\x00\x00\x01", begin)
        unit = access_unit[begin : len(access_unit) if nxt < 0 else nxt]
        unit = unit.rstrip(b"\x00")  # the leading zero of a 4-byte start code, trailing zeros
        if unit:
            units.append(unit)
        start = nxt
    return units


def payloads(unit: bytes) -> list[bytes]:
    """RTP payloads of one NAL unit (RFC 6184): the unit itself, or FU-A fragments."""
    if len(unit) <= MAX_PAYLOAD:
        return [unit]
    indicator, kind = (unit[0] & 0xE0) | 28, unit[0] & 0x1F
    body = unit[1:]
    step = MAX_PAYLOAD - 2
    chunks = [body[k : k + step] for k in range(0, len(body), step)]
    last = len(chunks) - 1
    return [
        bytes((indicator, kind | (0x80 if n == 0 else 0) | (0x40 if n == last else 0))) + chunk
        for n, chunk in enumerate(chunks)
    ]


@dataclass
class Frame:
    payloads: list[bytes]
    key: bool


@dataclass
class Clip:
    frames: list[Frame]
    sps: bytes
    pps: bytes

    @classmethod
    def load(cls, path: str) -> Clip:
        """Access units of a raw H.264 (Annex-B) file, split by FFmpeg's parser (PyAV)."""
        import av

        frames: list[Frame] = []
        sps = pps = b""
        with av.open(path, format="h264") as container:
            for packet in container.demux(container.streams.video[0]):
                if not packet.size:
                    continue
                units = nal_units(bytes(packet))
                for unit in units:
                    if unit[0] & 0x1F == 7 and not sps:
                        sps = unit
                    elif unit[0] & 0x1F == 8 and not pps:
                        pps = unit
                key = any(u[0] & 0x1F == 5 for u in units)
                frames.append(Frame([p for u in units for p in payloads(u)], key))
        if not frames or not sps or not pps or not frames[0].key:
            raise SystemExit(f"{path}: not an H.264 clip starting with SPS, PPS and an IDR")
        return cls(frames, sps, pps)

    def sdp(self) -> str:
        sprop = b",".join(base64.b64encode(u) for u in (self.sps, self.pps)).decode()
        return (
            "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=streamsnap camera simulator\r\n"
            "c=IN IP4 0.0.0.0\r\nt=0 0\r\na=range:npt=0-\r\n"
            f"m=video 0 RTP/AVP {PT}\r\na=rtpmap:{PT} H264/{CLOCK}\r\n"
            f"a=fmtp:{PT} packetization-mode=1;profile-level-id={self.sps[1:4].hex()};"
            f"sprop-parameter-sets={sprop}\r\na=control:trackID=0\r\n"
        )


@dataclass(eq=False)
class Group:
    """Cameras that start at the same frame of the clip: the frame's RTP packets are built
    once per tick and written to every viewer of the group."""

    clip: Clip
    offset: int  # frame of the clip this group starts at
    phase: float  # seconds into the frame interval at which this group's frames go out
    viewers: set[Connection] = field(default_factory=set)
    seq: int = field(default_factory=lambda: random.randrange(1 << 16))
    timestamp: int = field(default_factory=lambda: random.randrange(1 << 32))
    ssrc: int = field(default_factory=lambda: random.randrange(1 << 32))

    def packets(self, frame: Frame) -> bytes:
        out = bytearray()
        last = len(frame.payloads) - 1
        for n, payload in enumerate(frame.payloads):
            marker = 0x80 if n == last else 0
            out += b"$\x00" + struct.pack("!H", 12 + len(payload))
            out += struct.pack("!BBHII", 0x80, marker | PT, self.seq, self.timestamp, self.ssrc)
            out += payload
            self.seq = (self.seq + 1) & 0xFFFF
        return bytes(out)

    async def run(self, fps: float, stats: Stats) -> None:
        loop = asyncio.get_running_loop()
        interval, step = 1.0 / fps, round(CLOCK / fps)
        frames = self.clip.frames
        due = loop.time() + self.phase
        for k in itertools.count():
            frame = frames[(self.offset + k) % len(frames)]
            if self.viewers:
                data = self.packets(frame)
                for viewer in list(self.viewers):
                    viewer.send(data, frame.key, stats)
            self.timestamp = (self.timestamp + step) & 0xFFFFFFFF
            due += interval
            late = loop.time() - due
            stats.late_ms = max(stats.late_ms, late * 1000)
            if late > 1.0:  # far behind (machine saturated): skip ahead instead of bursting
                due = loop.time()
            await asyncio.sleep(max(0.0, due - loop.time()))


@dataclass
class Stats:
    sent: int = 0
    dropped: int = 0
    late_ms: float = 0.0


class Connection(asyncio.Protocol):
    """One RTSP client: requests in, interleaved RTP out."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.session = ""
        self.group: Group | None = None
        self.waiting_key = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.leave()
        self.server.sessions.discard(self)

    def leave(self) -> None:
        if self.group is not None:
            self.group.viewers.discard(self)

    def send(self, data: bytes, key: bool, stats: Stats) -> None:
        assert self.transport is not None
        if self.waiting_key and not key:
            return
        if self.transport.get_write_buffer_size() > MAX_BUFFERED:
            self.waiting_key = True  # a slow viewer: drop to the next keyframe
            stats.dropped += 1
            return
        self.waiting_key = False
        self.transport.write(data)
        stats.sent += 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.buffer:
            if self.buffer[0] == 0x24:  # an interleaved packet from the client (RTCP): skip
                if len(self.buffer) < 4:
                    return
                size = 4 + int.from_bytes(self.buffer[2:4], "big")
                if len(self.buffer) < size:
                    return
                del self.buffer[:size]
                continue
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > 65536:
                    self.close()
                return
            head = bytes(self.buffer[:end]).decode("latin-1")
            lines = head.split("\r\n")
            headers = {}
            for line in lines[1:]:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
            body = int(headers.get("content-length", "0") or 0)
            if len(self.buffer) < end + 4 + body:
                return
            del self.buffer[: end + 4 + body]
            self.request(lines[0], headers)

    def reply(self, status: str, headers: dict[str, str], cseq: str, body: str = "") -> None:
        assert self.transport is not None
        lines = [f"RTSP/1.0 {status}", f"CSeq: {cseq}", "Server: streamsnap-camera-sim"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if body:
            lines.append(f"Content-Length: {len(body.encode())}")
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n" + body).encode())

    def request(self, line: str, headers: dict[str, str]) -> None:
        method, url, *_ = ([*line.split(" "), "", ""])[:3]
        cseq = headers.get("cseq", "0")
        camera = urlsplit(url).path.removesuffix("/trackID=0").rstrip("/") or "/"
        if method in ("OPTIONS", "GET_PARAMETER", "SET_PARAMETER"):
            self.reply("200 OK", {"Public": PUBLIC}, cseq)
        elif method == "DESCRIBE":
            base = url.split("?", 1)[0].rstrip("/") + "/"
            self.reply(
                "200 OK",
                {"Content-Base": base, "Content-Type": "application/sdp"},
                cseq,
                self.server.clip.sdp(),
            )
        elif method == "SETUP":
            if "TCP" not in headers.get("transport", "").upper():
                self.reply("461 Unsupported Transport", {}, cseq)
                return
            self.session = self.session or f"{random.randrange(1 << 48):012x}"
            self.group = self.server.group_of(camera)
            self.reply(
                "200 OK",
                {
                    "Transport": "RTP/AVP/TCP;unicast;interleaved=0-1",
                    "Session": f"{self.session};timeout=60",
                },
                cseq,
            )
        elif method == "PLAY" and self.group is not None:
            group = self.group
            info = f"url={url.rstrip('/')}/trackID=0;seq={group.seq};rtptime={group.timestamp}"
            self.reply(
                "200 OK",
                {"Session": self.session, "Range": "npt=0.000-", "RTP-Info": info},
                cseq,
            )
            self.waiting_key = True
            group.viewers.add(self)
        elif method == "PAUSE":
            self.leave()
            self.reply("200 OK", {"Session": self.session}, cseq)
        elif method == "TEARDOWN":
            self.reply("200 OK", {"Session": self.session}, cseq)
            self.close()
        elif method in ("PLAY", "PAUSE"):
            self.reply("455 Method Not Valid in This State", {}, cseq)
        else:
            self.reply("501 Not Implemented", {"Public": PUBLIC}, cseq)

    def close(self) -> None:
        self.leave()
        if self.transport is not None:
            self.transport.close()


class Server:
    def __init__(self, clip: Clip, groups: int, fps: float) -> None:
        self.clip = clip
        self.sessions: set[Connection] = set()
        gop = next((i for i, f in enumerate(clip.frames[1:], 1) if f.key), len(clip.frames))
        self.groups = [
            Group(clip, offset=(g * gop) // groups, phase=(g / groups) / fps) for g in range(groups)
        ]
        self.stats = Stats()

    def group_of(self, camera: str) -> Group:
        return self.groups[zlib.crc32(camera.encode()) % len(self.groups)]

    def connection(self) -> Connection:
        conn = Connection(self)
        self.sessions.add(conn)
        return conn


async def serve(args: argparse.Namespace) -> None:
    clip = Clip.load(args.clip)
    server = Server(clip, args.groups, args.fps)
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(server.connection, "127.0.0.1", args.port, backlog=1024)
    port = listener.sockets[0].getsockname()[1]
    print(f"ready {port}", flush=True)
    tasks = [asyncio.create_task(g.run(args.fps, server.stats)) for g in server.groups]
    started = time.monotonic()
    while True:
        await asyncio.sleep(10)
        viewers = sum(len(g.viewers) for g in server.groups)
        s = server.stats
        print(
            f"stats t={time.monotonic() - started:.0f} connections={len(server.sessions)} "
            f"viewers={viewers} sent={s.sent} dropped={s.dropped} late_ms={s.late_ms:.1f}",
            flush=True,
        )
        s.late_ms = 0.0
        if any(t.done() for t in tasks):
            for t in tasks:
                if t.done():
                    t.result()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip", required=True, help="raw H.264 (Annex-B) file")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--groups", type=int, default=12, help="starting points in the clip")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
