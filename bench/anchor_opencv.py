"""The OpenCV anchor: what a Python user writes today to serve camera snapshots. One
``cv2.VideoCapture`` per camera (OpenCV's FFmpeg backend, RTP over TCP), each read by a thread
of its own that keeps the newest frame (so every frame is decoded, to BGR), and
``cv2.imencode(".png")`` of the newest frame when a snapshot is asked for.

    python bench/anchor_opencv.py --interval 10 --window 60 URL [URL ...]

Snapshots each camera once every ``--interval`` seconds (staggered) for ``--window`` seconds
and prints one JSON object: the latency of every snapshot (from asking to the PNG's bytes, ms),
its freshness (the age of the frame it shows when the PNG is ready, ms), and this process's
CPU (% of one core) and memory (RSS growth from before the cameras were opened, MiB), both
also per camera. Run in a process of its own so that nothing else is counted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import threading
import time

os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")

import cv2


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024


class Camera(threading.Thread):
    """The usual reader: the newest frame and when it was read, under a lock."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.capture = cv2.VideoCapture(url, cv2.CAP_FFMPEG)
        self.lock = threading.Lock()
        self.frame = None
        self.read_at = 0.0
        self.frames = 0
        self.running = True

    def run(self) -> None:
        while self.running:
            ok, frame = self.capture.read()
            if not ok:
                time.sleep(0.1)
                continue
            with self.lock:
                self.frame, self.read_at = frame, time.monotonic()
                self.frames += 1

    def snapshot(self) -> tuple[bytes, float]:
        with self.lock:
            frame, read_at = self.frame, self.read_at
        ok, png = cv2.imencode(".png", frame)
        assert ok
        return png.tobytes(), read_at


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("urls", nargs="+")
    args = parser.parse_args()
    rss0 = rss_mib()
    cameras = [Camera(url) for url in args.urls]
    for cam in cameras:
        cam.start()
    deadline = time.monotonic() + 60
    while any(c.frame is None for c in cameras) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(args.settle)
    cpu0, wall0 = time.process_time(), time.monotonic()
    frames0 = sum(c.frames for c in cameras)
    latency, freshness, failed = [], [], 0
    step = args.interval / len(cameras)
    total = int(args.window / step)
    for k in range(total):
        delay = wall0 + k * step - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        cam = cameras[k % len(cameras)]
        asked = time.monotonic()
        if cam.frame is None:
            failed += 1
            continue
        _png, read_at = cam.snapshot()
        done = time.monotonic()
        latency.append((done - asked) * 1000)
        freshness.append((done - read_at) * 1000)
    wall = time.monotonic() - wall0
    cpu = (time.process_time() - cpu0) / wall * 100
    rss = rss_mib() - rss0
    frames = sum(c.frames for c in cameras) - frames0
    for cam in cameras:
        cam.running = False
    for cam in cameras:
        cam.join(5)
        cam.capture.release()
    n = len(cameras)
    print(
        json.dumps(
            {
                "cameras": n,
                "latency_ms": latency,
                "freshness_ms": freshness,
                "failed": failed,
                "cpu_pct": cpu,
                "cpu_pct_per_camera": cpu / n,
                "rss_mib": rss,
                "rss_mib_per_camera": rss / n,
                "fps_read": frames / n / wall,  # per camera: below 30, frames were lost
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
