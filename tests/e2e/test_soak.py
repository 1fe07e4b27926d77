"""Soak: 1 000 publish/unpublish cycles over RTMP, RTSP pulls and WHIP against one server, then
no growth in its file descriptors, threads, child processes or memory beyond stated bounds.

Cycles run concurrently (several per protocol at once). RTMP: the project's RTMP client
publishes a few real H.264 frames of a clip FFmpeg made once, and leaves gracefully
(FCUnpublish, deleteStream) or by dropping the connection. RTSP: a GStreamer camera pulled
with ``/rest-api/pull/startup`` until the first frame arrives, then ``/pull/terminate``. WHIP:
FFmpeg's WHIP muxer publishes one second and DELETEs. Figures are printed (``pytest -s``) and
quoted in the README's reliability section.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers.media import ffmpeg_whip
from tests.helpers.rtmp_client import RtmpClient, make_flv

pytestmark = pytest.mark.e2e

RTMP_CYCLES, RTSP_CYCLES, WHIP_CYCLES = 800, 100, 100
RTMP_WORKERS, RTSP_WORKERS, WHIP_WORKERS = 4, 4, 3
WARMUP = (24, 8, 12)  # cycles per protocol before the baseline is taken

# Bounds on growth from after the warm-up to after the soak, once the server is idle again
MAX_FDS = 10
MAX_THREADS = 8  # the worker pools may start threads the warm-up did not need
MAX_RSS_MIB = 40  # measured +28 MiB here: WHIP sessions (aiortc) keep ~0.1 MiB each


def usage(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    field = dict(re.findall(r"^(\w+):\s+(\d+)", status, re.M))
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            kids += (task / "children").read_text().split()
    return {
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": int(field["Threads"]),
        "children": len(kids),
        "rss_kib": int(field["VmRSS"]),
    }


def ended(srv, protocol: str) -> int:
    _status, raw, _ = srv.request("GET", "/metrics")
    total = 0
    for line in raw.decode().splitlines():
        if line.startswith(f'streamsnap_streams_ended_total{{protocol="{protocol}"'):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def settle(srv, timeout: float = 30.0) -> None:
    """Wait until no stream is live and no child runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, _, _ = srv.request("POST", "/rest-api/stream/find_all")
        if status == 404 and usage(srv.proc.pid)["children"] == 0:
            time.sleep(2)  # let closing connections and threads finish
            return
        time.sleep(0.2)
    raise AssertionError("streams or children still there after the cycles")


class Soak:
    def __init__(self, srv, tags, camera_url: str) -> None:
        self.srv, self.tags, self.camera_url = srv, tags, camera_url
        self.lock = threading.Lock()
        self.done = {"rtmp": 0, "rtsp": 0, "whip": 0}
        self.retries = 0

    def count(self, protocol: str) -> None:
        with self.lock:
            self.done[protocol] += 1

    def rtmp(self, worker: int, cycles: int) -> None:
        name = f"rtmp{worker}"
        for i in range(cycles):
            client = RtmpClient("127.0.0.1", self.srv.ports["rtmp"])
            try:
                deadline = time.monotonic() + 10
                while "Publish.Start" not in repr(reply := client.publish(name)):
                    # the previous session of this name is still being unpublished
                    assert "BadName" in repr(reply) and time.monotonic() < deadline, reply
                    client.close()
                    with self.lock:
                        self.retries += 1
                    time.sleep(0.05)
                    client = RtmpClient("127.0.0.1", self.srv.ports["rtmp"])
                for tag in self.tags:
                    client.send_tag(tag)
                if i % 2:
                    client.command("FCUnpublish", 6.0, None, name)
                    client.command("deleteStream", 7.0, None, float(client.stream_id))
            finally:
                client.close()
            self.count("rtmp")

    def rtsp(self, worker: int, cycles: int) -> None:
        name = f"pull{worker}"
        for _ in range(cycles):
            uri = f"{self.camera_url}?channel={worker}"
            status, raw, _ = self.srv.request(
                "POST", "/rest-api/pull/startup", {"uri": uri, "localStreamName": name}
            )
            assert status == 200, raw
            self.srv.wait_stream(name, frames=1, timeout=20)
            status, raw, _ = self.srv.request(
                "POST", "/rest-api/pull/terminate", {"localStreamName": name}
            )
            assert status == 200, raw
            self.count("rtsp")

    def whip(self, worker: int, cycles: int) -> None:
        for _ in range(cycles):
            pub = ffmpeg_whip(self.srv.http + f"/whip/whip{worker}", size="160x120", seconds=1)
            try:
                assert pub.proc.wait(30) == 0, pub.stderr
            finally:
                pub.stop()
            self.count("whip")

    def run(self, rtmp: int, rtsp: int, whip: int) -> None:
        jobs = []
        with ThreadPoolExecutor(RTMP_WORKERS + RTSP_WORKERS + WHIP_WORKERS) as pool:
            for kind, total, workers in (
                (self.rtmp, rtmp, RTMP_WORKERS),
                (self.rtsp, rtsp, RTSP_WORKERS),
                (self.whip, whip, WHIP_WORKERS),
            ):
                for w in range(workers):
                    share = total // workers + (1 if w < total % workers else 0)
                    jobs.append(pool.submit(kind, w, share))
            for job in jobs:
                job.result()


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    tags = make_flv(
        tmp_path_factory.mktemp("soak") / "clip.flv",
        size="320x240",
        seconds=1,
        gop=10,
        audio=False,
    )
    video = [t for t in tags if t.type_id == 9]
    return video[:13]  # the sequence header and the first 12 frames (a keyframe every 10)


def test_soak_1000_cycles_no_growth(make_server, make_camera, tmp_path, clip):
    cam = make_camera(size="320x240")
    srv = make_server(
        snapshot={
            "snapshot_auto_enabled": True,
            "snapshot_auto_dir": str(tmp_path / "snaps"),
            "snapshot_auto_naming": "streamName",
            "snapshot_auto_rate": 5,
            "snapshot_auto_retention": 5,
        },
        webrtc={"ice_addresses": ["127.0.0.1"]},
        rtsp={"connect_timeout_s": 5.0},
        pull={"allowed_hosts": ["127.0.0.1"]},
    )
    soak = Soak(srv, clip, cam.url())
    soak.run(*WARMUP)
    settle(srv)
    before = usage(srv.proc.pid)
    ended_before = {p: ended(srv, p) for p in ("rtmp", "rtsp", "whip")}
    t0 = time.monotonic()
    soak.run(RTMP_CYCLES, RTSP_CYCLES, WHIP_CYCLES)
    took = time.monotonic() - t0
    settle(srv)
    after = usage(srv.proc.pid)
    cycles = {p: ended(srv, p) - ended_before[p] for p in ended_before}
    growth = {k: after[k] - before[k] for k in before}
    print(
        f"\nsoak: {json.dumps(cycles)} cycles in {took:.0f} s ({soak.retries} publish retries); "
        f"before {json.dumps(before)}, after {json.dumps(after)}, growth {json.dumps(growth)}"
    )
    # every cycle was a real publish that the server saw start and end
    assert cycles == {"rtmp": RTMP_CYCLES, "rtsp": RTSP_CYCLES, "whip": WHIP_CYCLES}
    assert srv.proc.poll() is None
    assert growth["fds"] <= MAX_FDS, growth
    assert growth["threads"] <= MAX_THREADS, growth
    assert after["children"] == 0
    assert growth["rss_kib"] <= MAX_RSS_MIB * 1024, growth
    assert "Traceback" not in srv.log
