"""MJPEG live output with a real FFmpeg RTMP publisher and real HTTP clients (aiohttp)."""

from __future__ import annotations

import asyncio
import io
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import aiohttp
import numpy as np
import pytest
from PIL import Image

from tests.helpers.media import ffmpeg_counter, read_counter
from tests.helpers.server import ServerProcess, wait_for, write_config

pytestmark = pytest.mark.e2e

SIZE = (640, 360)  # wide enough for the frame counter, cheap for the two shared cores


@pytest.fixture(scope="module")
def srv(tmp_path_factory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("mjpeg")
    config = write_config(
        folder / "streamsnap.toml",
        server={"host": "127.0.0.1", "http_port": 0, "ws_port": 0, "rtmp_port": 0},
        mjpeg={"max_viewers": 2, "max_viewers_per_ip": 1, "stalled_viewer_s": 6},
    )
    server = ServerProcess(config, cwd=folder).start()
    yield server
    server.stop()
    assert "Traceback" not in server.log and " ERROR " not in server.log, server.log[-3000:]


@pytest.fixture(scope="module")
def cam(srv):
    pub = ffmpeg_counter(srv.rtmp_url("cam"), *SIZE)
    srv.wait_stream("cam", frames=10)
    yield pub
    pub.stop()


def metrics(srv: ServerProcess) -> dict[str, float]:
    _, body, _ = srv.request("GET", "/metrics")
    values = {}
    for line in body.decode().splitlines():
        m = re.match(r"^(streamsnap_(?:mjpeg|snapshot_encodes)\w*) (\S+)$", line)
        if m:
            values[m.group(1)] = float(m.group(2))
    return values


def rss_kb(srv: ServerProcess) -> int:
    assert srv.proc is not None
    with open(f"/proc/{srv.proc.pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


@pytest.fixture
def idle(srv, cam):
    """No viewer of an earlier test left: the producers stop with their last viewer."""
    wait_for(
        lambda: (
            metrics(srv)["streamsnap_mjpeg_viewers"] == 0
            and metrics(srv)["streamsnap_mjpeg_producers"] == 0
        ),
        10,
        "the MJPEG viewers and producers of earlier tests to go",
    )
    return srv


class Viewer:
    """One MJPEG client: the answer's parts, read with aiohttp's multipart reader."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.reader = aiohttp.MultipartReader(resp.headers, resp.content)

    async def part(self, timeout: float = 10) -> tuple[dict[str, str], bytes] | None:
        async def read() -> tuple[dict[str, str], bytes] | None:
            part = await self.reader.next()
            if part is None:
                return None
            return dict(part.headers), bytes(await part.read())

        return await asyncio.wait_for(read(), timeout)

    async def parts(self, n: int) -> list[tuple[dict[str, str], bytes]]:
        out = []
        for _ in range(n):
            part = await self.part()
            assert part is not None, "the stream ended early"
            out.append(part)
        return out


@asynccontextmanager
async def viewer(
    srv: ServerProcess, query: str = "", name: str = "cam", source: str = "127.0.0.1", rcvbuf=0
) -> AsyncIterator[Viewer]:
    # rcvbuf: a client that holds little of what it has not read, in the kernel and in
    # aiohttp's own buffer (which its event loop fills while the test does not read)
    def small_buffer(addr_info):
        family, kind, proto, _, _ = addr_info
        sock = socket.socket(family, kind, proto)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        return sock

    connector = aiohttp.TCPConnector(local_addr=(source, 0), socket_factory=small_buffer)
    read_bufsize = rcvbuf or 2**16
    async with aiohttp.ClientSession(connector=connector, read_bufsize=read_bufsize) as session:
        url = f"{srv.http}/streams/{name}/stream.mjpeg{query}"
        async with session.get(url, timeout=aiohttp.ClientTimeout(sock_read=15)) as resp:
            assert resp.status == 200, await resp.text()
            yield Viewer(resp)


async def get(srv: ServerProcess, path: str, source: str = "127.0.0.1") -> tuple[int, dict]:
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(srv.http + path) as resp,
    ):
        return resp.status, json.loads(await resp.read())


def counters(parts) -> list[int]:
    return [read_counter(data) for _, data in parts]


async def test_parts_are_jpegs_of_the_live_frame_with_their_headers(idle, cam):
    async with viewer(idle, "?fps=10") as v:
        ctype = v.resp.headers["Content-Type"]
        assert ctype.startswith("multipart/x-mixed-replace; boundary=streamsnap"), ctype
        started = time.monotonic()
        parts = await v.parts(8)
        took = time.monotonic() - started
        live = cam.sent
    for headers, data in parts:
        assert headers["Content-Type"] == "image/jpeg"
        assert int(headers["Content-Length"]) == len(data)
        assert int(headers["X-Frame-Timestamp"]) > 0 and int(headers["X-Frame-Age-Ms"]) >= 0
        assert "encode;dur=" in headers["Server-Timing"], headers
        assert Image.open(io.BytesIO(data)).size == SIZE
    shown = counters(parts)
    indexes = [int(h["X-Frame-Index"]) for h, _ in parts]
    assert shown == sorted(set(shown)) and indexes == sorted(set(indexes)), (shown, indexes)
    assert live - shown[-1] <= 10, (shown, live)  # the live frame, not an old one
    assert took >= 0.5, f"8 parts in {took:.2f} s: fps=10 is not applied"
    print(f"8 parts in {took:.2f} s, counters {shown}, live {live}")


async def test_two_viewers_of_one_variant_cost_one_encode_per_frame(idle):
    before = metrics(idle)
    async with viewer(idle) as a, viewer(idle, source="127.0.0.2") as b:
        parts_a, parts_b = await asyncio.gather(a.parts(12), b.parts(12))
    after = metrics(idle)
    seen_a = {int(h["X-Frame-Index"]) for h, _ in parts_a}
    seen_b = {int(h["X-Frame-Index"]) for h, _ in parts_b}
    encodes = after["streamsnap_mjpeg_encodes_total"] - before["streamsnap_mjpeg_encodes_total"]
    service = (
        after["streamsnap_snapshot_encodes_total"] - before["streamsnap_snapshot_encodes_total"]
    )
    sent = after["streamsnap_mjpeg_parts_sent_total"] - before["streamsnap_mjpeg_parts_sent_total"]
    print(
        f"frames shown {len(seen_a | seen_b)}, encodes {encodes} (service {service}), sent {sent}"
    )
    assert len(seen_a & seen_b) >= 10, (sorted(seen_a), sorted(seen_b))
    assert encodes <= len(seen_a | seen_b) + 2  # once per frame, not once per viewer
    assert service == encodes  # and nothing else encoded for them
    assert sent >= 24 and sent >= 2 * encodes - 4


async def test_a_slow_viewer_gets_fresh_frames_not_a_backlog(idle, cam):
    before = metrics(idle)
    async with viewer(idle, "?fps=10", rcvbuf=4096) as v:
        first = await v.parts(3)
        size = max(len(data) for _, data in first)
        rss = rss_kb(idle)
        await asyncio.sleep(4)  # reads nothing: about 40 parts are made meanwhile
        during = metrics(idle)
        grown = rss_kb(idle) - rss
        live = cam.sent
        resumed = time.monotonic()
        after_pause = []
        while True:  # what the buffers held, then live again
            _, data = await v.part()
            after_pause.append(read_counter(data))
            if live - after_pause[-1] <= 10 or len(after_pause) > 30:
                break
        caught_up = time.monotonic() - resumed
    skipped = (
        metrics(idle)["streamsnap_mjpeg_parts_skipped_total"]
        - before["streamsnap_mjpeg_parts_skipped_total"]
    )
    print(
        f"part {size} bytes; after the pause: {after_pause} (live {live}) within "
        f"{caught_up:.2f} s; held in the server {during['streamsnap_mjpeg_buffered_bytes']} B; "
        f"RSS +{grown} kB; parts the viewer skipped while paused: {skipped}"
    )
    # what sat in the socket buffers when the viewer stopped reading: a few parts, not 40
    assert len(after_pause) <= 8, after_pause
    assert caught_up < 1.5
    # the part the viewer is taking and the next one, no more
    assert during["streamsnap_mjpeg_buffered_bytes"] <= 2.5 * size
    assert grown < 20_000  # kB: no queue grows while the viewer does not read
    assert skipped >= 25


async def test_a_viewer_that_takes_nothing_is_let_go_and_its_slot_freed(idle, cam):
    before = metrics(idle)["streamsnap_mjpeg_viewers_stalled_total"]
    async with viewer(idle, "?fps=10", rcvbuf=4096) as v:
        await v.parts(2)
        # reads nothing for longer than [mjpeg] stalled_viewer_s = 6
        wait_for(
            lambda: metrics(idle)["streamsnap_mjpeg_viewers_stalled_total"] == before + 1,
            12,
            "the stalled viewer to be let go",
        )
        assert metrics(idle)["streamsnap_mjpeg_viewers"] == 0
        assert "took nothing for 6 s ([mjpeg] stalled_viewer_s): let go" in idle.log
        # its slot is free again (max_viewers_per_ip = 1): the same address is let in
        async with viewer(idle, "?fps=10") as again:
            assert len(await again.parts(2)) == 2


async def test_size_fit_and_crop_apply_to_the_parts(idle):
    async with viewer(idle, "?width=320&height=320&fit=contain&quality=70") as v:
        (_, data), *_ = await v.parts(2)
    img = Image.open(io.BytesIO(data))
    assert img.size == (320, 320)
    gray = np.asarray(img.convert("L"))
    # 640x360 in 320x320: black bars 70 px high above and below, the picture between
    assert gray[:64].max() <= 12 and gray[256:].max() <= 12, (gray[:64].max(), gray[256:].max())
    assert gray[80:240].mean() > 60
    # from another address: the server may not have seen the first viewer go yet
    async with viewer(idle, "?crop=0,0,320,180", source="127.0.0.2") as v:
        (_, data), *_ = await v.parts(1)
    assert Image.open(io.BytesIO(data)).size == (320, 180)


async def test_the_answer_ends_when_the_stream_ends(idle):
    pub = ffmpeg_counter(idle.rtmp_url("ending"), *SIZE)
    try:
        idle.wait_stream("ending", frames=5)
        async with viewer(idle, name="ending") as v:
            await v.parts(2)
            pub.stop()
            ends = time.monotonic()
            while await v.part(timeout=15) is not None:
                pass
            print(f"closed {time.monotonic() - ends:.2f} s after the publisher stopped")
            assert v.resp.content.at_eof() or await v.resp.content.read() == b""
    finally:
        pub.stop()


async def test_unknown_stream_and_bad_parameters(idle):
    status, body = await get(idle, "/streams/nope/stream.mjpeg")
    assert status == 404 and body["message"] == "Stream not found"
    assert body["exception"].endswith("NotFoundException")
    for query, named in (
        ("fps=0", "fps"),
        ("fps=1000", "max_fps"),
        ("fps=x", "fps"),
        ("fit=foo", "fit"),
        ("crop=1,2,3", "crop"),
        ("width=1", "width"),
    ):
        status, body = await get(idle, f"/streams/cam/stream.mjpeg?{query}")
        assert status == 400 and named in body["message"], (query, body)
    status, body = await get(idle, "/streams/cam/stream.mjpeg?crop=5000,0,10,10")
    assert status == 400 and "crop=5000,0,10,10" in body["message"] and "640x360" in body["message"]


async def test_viewers_beyond_max_viewers_per_ip_are_refused_naming_it(idle):
    async with viewer(idle) as v:
        await v.parts(1)
        status, body = await get(idle, "/streams/cam/stream.mjpeg")
    assert status == 429 and "[mjpeg] max_viewers_per_ip" in body["message"], body


async def test_viewers_beyond_max_viewers_are_refused_naming_it(idle):
    async with viewer(idle) as a, viewer(idle, source="127.0.0.2") as b:
        await asyncio.gather(a.parts(1), b.parts(1))
        status, body = await get(idle, "/streams/cam/stream.mjpeg", source="127.0.0.3")
    assert status == 503 and "[mjpeg] max_viewers" in body["message"], body
    refused = metrics(idle)
    assert refused["streamsnap_mjpeg_viewers"] <= 2
