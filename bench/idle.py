"""Idle cost per RTMP stream, streamsnap against nginx-rtmp, alternating round by round so the
ratio holds on a noisy machine (issue #18: at most 0.5 % of a core per stream, and at most
twice nginx-rtmp's).

    python bench/idle.py [--rounds 3] [--streams 10] [--window 20] [--size 1280x720]

Each round: the camera-like clip (bench/common.py: sensor noise, B-frames, the camera's
bitrate) looped by ``--streams`` FFmpeg publishers started at spread GOP offsets into one
server, nobody asking for a picture; the CPU over the server's own idle baseline
(``bench/part_idle.py``). Prints each round and the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import OUT, log  # noqa: E402
from bench.part_idle import bench_idle  # noqa: E402
from tests.helpers.nginx import NginxRtmp, nginx_available  # noqa: E402
from tests.helpers.server import ServerProcess, write_config  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--streams", type=int, default=10)
    ap.add_argument("--window", type=float, default=20.0)
    ap.add_argument("--size", default="1280x720")
    args = ap.parse_args()
    if not nginx_available():
        log("nginx-rtmp not installed (scripts/install-system-deps.sh bench)")
        return 1
    rounds = []
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp:
        config = write_config(
            Path(tmp) / "idle.toml",
            server={"host": "127.0.0.1", "http_port": 0, "ws_port": 0, "rtmp_port": 0},
        )
        server = ServerProcess(config, cwd=Path(tmp)).start()
        nginx = NginxRtmp()
        try:
            for r in range(args.rounds):
                result = bench_idle(server, nginx, args.streams, args.window, size=args.size)
                rounds.append(result)
                log(
                    f"round {r + 1}: streamsnap {result['streamsnap']['per_stream_pct']:.2f} %, "
                    f"nginx-rtmp {result['nginx-rtmp']['per_stream_pct']:.2f} % per stream"
                )
        finally:
            server.stop()
            nginx.cleanup()
    ours = statistics.median(r["streamsnap"]["per_stream_pct"] for r in rounds)
    theirs = statistics.median(r["nginx-rtmp"]["per_stream_pct"] for r in rounds)
    summary = {
        "args": vars(args),
        "streamsnap_per_stream_pct": ours,
        "nginx_per_stream_pct": theirs,
        "ratio": ours / theirs if theirs > 0 else None,
        "rounds": rounds,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"idle-{args.size}.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "rounds"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
