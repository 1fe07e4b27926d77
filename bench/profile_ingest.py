"""Where an idle stream's CPU goes: the server under cProfile with RTMP publishers (and RTSP
cameras) connected and nobody asking for a picture.

Usage: ``python bench/profile_ingest.py [--streams 10] [--seconds 20] [--rtsp]``. Prints the
functions with the most own time and the cost per received message; BENCHMARKS.md quotes it.
"""

from __future__ import annotations

import argparse
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import make_clip, publish_spread, stop  # noqa: E402
from tests.helpers.server import ServerProcess, write_config  # noqa: E402


class ProfiledServer(ServerProcess):
    """``python -m cProfile -o OUT -m streamsnap serve``: the profile is written at exit."""

    def __init__(self, config: Path, out: Path, cwd: Path) -> None:
        super().__init__(config, cwd=cwd)
        self.launcher = [sys.executable, "-m", "cProfile", "-o", str(out), "-m", "streamsnap"]


IDLE_WAIT = "'select.epoll'"  # the event loop waiting for data: not CPU


def profile(streams: int, seconds: float, rtsp: bool = False, top: int = 12) -> dict:
    """Run the server under cProfile with ``streams`` idle streams for ``seconds``; returns the
    functions with the most own time (waiting in epoll left out) and the frames received."""
    work = Path(tempfile.mkdtemp(prefix="profile-ingest-"))
    out = work / "server.prof"
    config = write_config(
        work / "p.toml",
        server={"host": "127.0.0.1", "http_port": 0, "ws_port": 0, "rtmp_port": 0},
        rtsp={"idle_timeout_s": 3600, "allowed_hosts": ["127.0.0.1"]},
    )
    server = ProfiledServer(config, out, work).start()
    pubs: list[subprocess.Popen[bytes]] = []
    cam = None
    names = [f"prof{i}" for i in range(streams)]
    try:
        if rtsp:
            from tests.helpers.rtsp import RtspCamera

            cam = RtspCamera(size="1280x720", gop=60, one_encoder=True)
            names = [cam.url(query=f"?channel=p{i}") for i in range(streams)]
            for name in names:
                server.request("POST", "/rest-api/stream/find", {"name": name})
        else:
            clip = make_clip("1280x720")
            pubs = publish_spread(clip, [server.rtmp_url(n) for n in names])
        for n in names:
            server.wait_stream(n, timeout=30, frames=30)
        frames0 = sum(server.wait_stream(n)["framesIn"] for n in names)
        time.sleep(seconds)
        frames = sum(server.wait_stream(n)["framesIn"] for n in names) - frames0
    finally:
        for p in pubs:
            stop(p)
        server.stop()
        if cam is not None:
            cam.stop()
    stats = pstats.Stats(str(out)).stats  # type: ignore[attr-defined]
    rows = []
    busy = 0.0
    for (file, line, func), (_, ncalls, tottime, cumtime, _) in stats.items():
        name = func if file == "~" else f"{Path(file).name}:{line}({func})"
        if IDLE_WAIT in name:
            continue
        busy += tottime
        rows.append({"function": name, "calls": ncalls, "tottime_s": tottime, "cumtime_s": cumtime})
    rows.sort(key=lambda r: r["tottime_s"], reverse=True)
    return {
        "protocol": "rtsp" if rtsp else "rtmp",
        "streams": streams,
        "seconds": seconds,
        "frames": frames,
        "busy_s": busy,
        "top": rows[:top],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rtsp", action="store_true", help="RTSP cameras instead of RTMP")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    result = profile(args.streams, args.seconds, args.rtsp, args.top)
    print(
        f"{result['streams']} {result['protocol']} streams, {result['frames']} video frames in "
        f"{result['seconds']:.0f} s; {result['busy_s']:.2f} s of profiled CPU (start-up included)"
    )
    for r in result["top"]:
        print(f"{r['tottime_s']:8.3f} {r['cumtime_s']:8.3f} {r['calls']:8d}  {r['function']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
