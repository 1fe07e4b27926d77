"""Where an idle pulled camera's CPU goes: the server process against its FFmpeg children.

    python bench/idle_split.py [--cameras 40] [--window 15]

``--cameras`` simulated 720p30 cameras (bench/camera_sim.py: the camera-like clip replayed,
nothing encoded) in ``[[pull.cameras]]``, nobody asking for a picture; after every camera
delivers and a settling pause, the CPU of the server and of its children over ``--window``
seconds, per camera. BENCHMARKS.md quotes it (issue #18).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import SimCameras, camera_h264, child_pids, cpu_seconds, log  # noqa: E402


def split(cameras: int, window: float) -> dict[str, float]:
    sim = SimCameras(camera_h264("1280x720"))
    work = Path(tempfile.mkdtemp(prefix="bench-idle-split-"))
    names = [f"cam{i}" for i in range(cameras)]
    server = sim.server(names, work)
    pid = server.proc.pid
    try:
        for name in names:
            server.wait_stream(name, timeout=60, frames=30)
        time.sleep(5)
        kids = child_pids(pid)
        s0, k0, m0 = cpu_seconds(pid), {k: cpu_seconds(k) for k in kids}, cpu_seconds(sim.pid)
        t0 = time.monotonic()
        time.sleep(window)
        wall = time.monotonic() - t0
        server_pct = (cpu_seconds(pid) - s0) / wall * 100
        children_pct = sum(cpu_seconds(k) - k0[k] for k in kids) / wall * 100
        return {
            "cameras": cameras,
            "server_pct_per_camera": server_pct / cameras,
            "ffmpeg_pct_per_camera": children_pct / cameras,
            "simulator_pct": (cpu_seconds(sim.pid) - m0) / wall * 100,
        }
    finally:
        server.stop()
        sim.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cameras", type=int, default=40)
    ap.add_argument("--window", type=float, default=15.0)
    args = ap.parse_args()
    result = split(args.cameras, args.window)
    log(
        f"{args.cameras} cameras: server {result['server_pct_per_camera']:.2f} %, FFmpeg "
        f"{result['ffmpeg_pct_per_camera']:.2f} % of a core per camera"
    )
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
