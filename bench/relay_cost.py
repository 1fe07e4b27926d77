"""What the RTSP redirect relay costs: server CPU per pulled 720p camera, by URL (through the
relay) against the same cameras listed in the config (FFmpeg connects directly).

Usage: ``python bench/relay_cost.py [--cameras 10] [--window 20] [--rounds 2]``; each round
starts a fresh camera simulator and server per mode, the modes alternating so that the ratio
holds on a noisy machine. Prints one line per round and mode (percent of one core per camera,
the server process only: the FFmpeg children cost the same in both modes).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import cpu_seconds  # noqa: E402
from tests.helpers.rtsp import RtspCamera  # noqa: E402
from tests.helpers.server import ServerProcess, find, wait_for, write_config  # noqa: E402


def measure(configured: bool, cameras: int, window: float, work: Path) -> float:
    cam = RtspCamera(size="1280x720", one_encoder=True, preset="veryfast", bitrate=2500)
    try:
        urls = [cam.url(query=f"?channel={i}") for i in range(cameras)]
        listed = [{"name": f"c{i}", "url": u} for i, u in enumerate(urls)]
        config = write_config(
            work / ("configured.toml" if configured else "by-url.toml"),
            server={"host": "127.0.0.1", "http_port": 0, "ws_port": 0, "rtmp_port": 0},
            pull={"allowed_hosts": ["127.0.0.1"]},
            rtsp={"idle_timeout_s": 3600, "cameras": listed if configured else []},
        )
        server = ServerProcess(config, cwd=work).start()
        try:
            names = [c["name"] for c in listed] if configured else urls
            for name in names:  # find starts an on-demand pull without asking for a picture
                server.request("POST", "/rest-api/stream/find", {"name": name})
            for name in names:
                wait_for(lambda n=name: (find(server, n) or {}).get("framesIn", 0) > 30, 60, name)
            time.sleep(3)
            c0, t0 = cpu_seconds(server.proc.pid), time.monotonic()
            time.sleep(window)
            used = (cpu_seconds(server.proc.pid) - c0) / (time.monotonic() - t0)
            return 100 * used / cameras
        finally:
            server.stop()
    finally:
        cam.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cameras", type=int, default=10)
    parser.add_argument("--window", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-relay-"))
    for round_ in range(args.rounds):
        for label, configured in (("configured", True), ("by URL (relay)", False)):
            pct = measure(configured, args.cameras, args.window, work)
            print(f"round {round_ + 1}: {label}: {pct:.2f} % of a core per camera", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
