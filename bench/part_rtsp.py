"""The ``rtsp`` part: cold snapshots of an RTSP camera not yet pulled, against the FFmpeg
command line on the same camera, warm snapshots of a camera already pulled, and the CPU and
memory of keeping 720p30 cameras pulled (the server and its FFmpeg children) with nobody
asking for a picture. The camera is the test helpers' GStreamer RTSP server."""

from __future__ import annotations

import json
import random
import subprocess
import time

from bench.common import (
    OUT,
    keep_camera_open,
    log,
    rest_snapshot_ms,
    stop,
    tree_cpu_seconds,
    tree_pss_mib,
)
from tests.helpers.media import FFMPEG
from tests.helpers.server import ServerProcess


def bench_rtsp(
    server: ServerProcess, n_cold: int, n_warm: int, cameras: int, window: float
) -> dict:
    """Cold and warm snapshots of an RTSP camera, and the cost of keeping cameras pulled."""
    from tests.helpers.rtsp import RtspCamera, camera_available

    if not camera_available():
        log("GStreamer RTSP server not installed: RTSP benchmark skipped")
        return {}
    cam = RtspCamera(size="1280x720", one_encoder=True)
    keeper = keep_camera_open(cam)
    out: dict = {"camera": "GStreamer RTSP server, x264 720p30, keyframe every 30 frames"}
    try:
        log(f"RTSP: {n_cold} cold snapshots (camera not yet pulled) vs the ffmpeg CLI")
        cold, cli = [], []
        for i in range(n_cold):
            cold.append(rest_snapshot_ms(server, cam.url(query=f"?channel=cold{i}")))
            t0 = time.perf_counter()
            subprocess.run(
                [
                    FFMPEG,
                    "-v",
                    "error",
                    "-y",
                    "-rtsp_transport",
                    "tcp",
                    "-i",
                    cam.url(query=f"?cli={i}"),
                    "-frames:v",
                    "1",
                    str(OUT / "rtsp.png"),
                ],
                check=True,
                timeout=60,
                stdin=subprocess.DEVNULL,
            )
            cli.append((time.perf_counter() - t0) * 1000)
        out["cold_ms"], out["ffmpeg_cli_ms"] = cold, cli
        log(f"RTSP: {n_warm} warm snapshots")
        warm_url = cam.url(query="?channel=warm")
        rest_snapshot_ms(server, warm_url)
        warm = []
        for _ in range(n_warm):
            time.sleep(random.uniform(0.2, 1.2))
            warm.append(rest_snapshot_ms(server, warm_url))
        out["warm_ms"] = warm
        deadline = time.monotonic() + 90  # let the idle pulls go before the baseline
        while server.request("POST", "/rest-api/stream/find_all")[0] != 404:
            if time.monotonic() > deadline:
                raise RuntimeError("RTSP pulls were not dropped after their idle timeout")
            time.sleep(1)
        time.sleep(2)
        pid = server.proc.pid
        mem0 = tree_pss_mib(pid)
        c0 = tree_cpu_seconds(pid)
        time.sleep(window / 2)
        base = (tree_cpu_seconds(pid) - c0) / (window / 2)
        urls = [cam.url(query=f"?channel=idle{i}") for i in range(cameras)]
        for url in urls:  # find starts the pull without asking for a picture: truly idle
            deadline = time.monotonic() + 20  # one at a time: the camera's shared pipeline
            while time.monotonic() < deadline:  # is prepared by the first session only
                status, raw, _ = server.request("POST", "/rest-api/stream/find", {"name": url})
                if status == 200 and json.loads(raw)[0]["framesIn"] > 0:
                    break
                time.sleep(0.2)
            else:
                raise RuntimeError(f"RTSP pull {url} received no frame in 20 s")
        time.sleep(3)
        c0, t0 = tree_cpu_seconds(pid), time.monotonic()
        # keep them in use (find, not snapshot: no decode) so the idle timeout does not drop them
        for _ in range(int(window)):
            for url in urls:
                server.request("POST", "/rest-api/stream/find", {"name": url})
            time.sleep(1)
        used = (tree_cpu_seconds(pid) - c0) / (time.monotonic() - t0)
        mem1 = tree_pss_mib(pid)
        per = (used - base) / cameras * 100
        log(
            f"RTSP idle: {used * 100:.1f} % of a core for {cameras} cameras "
            f"(server + FFmpeg children) -> {per:.2f} % per camera"
        )
        out["idle"] = {
            "cameras": cameras,
            "total_pct": used * 100,
            "baseline_pct": base * 100,
            "per_camera_pct": per,
            "mem_per_camera_mib": (mem1 - mem0) / cameras,
        }
    finally:
        stop(keeper)
        cam.stop()
    return out
