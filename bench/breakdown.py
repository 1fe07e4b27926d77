"""Where a snapshot's time goes, on camera-like media: REST PNG warm and cold and JPEG GET warm,
each figure with its Server-Timing steps (decode, convert, encode) beside the client's clock,
and the floor of the same steps measured in this process on the same clip.

    .venv/bin/python bench/breakdown.py [--size 1280x720] [--streams 10] [--requests 60]

Ten publishers of the camera-like clip (bench/common.py: sensor noise, B-frames, the camera's
bitrate) start at spread GOP offsets; a lean kept-alive client times each request to its last
byte. Warm: the stream is decoded as it arrives (asked for often); cold: the first request
on a stream idle since it was published (decoded lazily from its keyframe).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    OUT,
    lean_client,
    log,
    make_clip,
    percentile,
    publish_spread,
    rest_snapshot,
    stop,
)
from bench.part_latency import wait_decoded  # noqa: E402
from tests.helpers.server import ServerProcess, write_config  # noqa: E402


def summary(label: str, runs: list[tuple[float, dict[str, float]]]) -> dict:
    totals = [ms for ms, _ in runs]
    steps: dict[str, list[float]] = {}
    for _, timing in runs:
        for step, ms in timing.items():
            steps.setdefault(step, []).append(ms)
    out = {
        "what": label,
        "n": len(runs),
        "p50": percentile(totals, 50),
        "p99": percentile(totals, 99),
        "max": max(totals),
        "steps_p50": {k: round(statistics.median(v), 2) for k, v in steps.items()},
        "steps_n": {k: len(v) for k, v in steps.items()},
    }
    log(
        f"{label}: p50 {out['p50']:.1f} ms, p99 {out['p99']:.1f} ms, max {out['max']:.1f} ms; "
        f"server steps p50 {out['steps_p50']}"
    )
    return out


def floors(clip: Path, n: int = 120) -> dict:
    """Decode, RGB conversion and PNG/JPEG encode of the same clip, in this process."""
    import io

    import fpng
    from PIL import Image

    pictures, decode_ms = [], []
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        stream.thread_type, stream.thread_count = "NONE", 1
        t0 = time.perf_counter()
        for frame in container.decode(stream):
            decode_ms.append((time.perf_counter() - t0) * 1000)
            pictures.append(frame)
            if len(pictures) == n:
                break
            t0 = time.perf_counter()
    from streamsnap.core import imaging

    convert, png, jpeg, yuv_jpeg = [], [], [], []
    for f in pictures[1:]:
        t0 = time.perf_counter()
        rgb = f.to_ndarray(format="rgb24", threads=1)
        t1 = time.perf_counter()
        fpng.from_ndarray(rgb)
        t2 = time.perf_counter()
        Image.fromarray(rgb).save(io.BytesIO(), "JPEG", quality=85)
        t3 = time.perf_counter()
        plan = imaging.layout(f.width, f.height)
        imaging.yuv_jpeg(*imaging.yuv420(f, plan), 85, None)  # the server's route, one thread
        yuv_jpeg.append((time.perf_counter() - t3) * 1000)
        convert.append((t1 - t0) * 1000)
        png.append((t2 - t1) * 1000)
        jpeg.append((t3 - t2) * 1000)
    gop = 60
    out = {
        "decode_frame_p50": statistics.median(decode_ms),
        "decode_gop_ms": sum(decode_ms[:gop]),
        "convert_p50": statistics.median(convert),
        "png_p50": statistics.median(png),
        "png_p99": percentile(png, 99),
        "jpeg_p50": statistics.median(jpeg),  # from RGB (Pillow), conversion not included
        "jpeg_yuv_p50": statistics.median(yuv_jpeg),  # from the YUV planes, range included
    }
    log(f"floors in process: {json.dumps({k: round(v, 2) for k, v in out.items()})}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--streams", type=int, default=10)
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--no-bframes", action="store_true")
    ap.add_argument(
        "--jpeg-strips",
        type=int,
        default=0,
        help="run the server with this many JPEG strips (1: one thread; 0: as it decides)",
    )
    args = ap.parse_args()
    clip = make_clip(args.size, bframes=not args.no_bframes)
    results: dict = {"args": vars(args), "floors": floors(clip)}
    with tempfile.TemporaryDirectory(prefix="breakdown-") as tmp:
        cfg = write_config(
            Path(tmp) / "c.toml",
            server={"host": "127.0.0.1", "http_port": 0, "ws_port": 0, "rtmp_port": 0},
        )
        server = ServerProcess(cfg, cwd=Path(tmp))
        if args.jpeg_strips:  # the same server, its JPEG strips set before it starts
            server.launcher = [
                sys.executable,
                "-c",
                "import sys; from streamsnap.core import imaging; "
                f"imaging.STRIPS = {args.jpeg_strips}; "
                "from streamsnap.cli import main; raise SystemExit(main())",
            ]
        server.start()
        names = [f"cam{i}" for i in range(args.streams)]
        pubs = []
        try:
            pubs = publish_spread(clip, [server.rtmp_url(n) for n in names])
            for n in names:
                server.wait_stream(n, timeout=30, frames=90)
            time.sleep(3)
            # cold: the first request on each stream, idle since it was published
            cold = []
            for n in random.sample(names, len(names)):
                time.sleep(random.uniform(0.1, 2.0))  # anywhere in the GOP
                cold.append(rest_snapshot(server, n))
            results["cold_png"] = summary("REST PNG, cold", cold)
            # warm: one stream asked for often enough to be decoded as it arrives
            rest_snapshot(server, names[0])
            wait_decoded(server, names[0])
            warm = []
            for _ in range(args.requests):
                time.sleep(random.uniform(0.05, 0.5))
                warm.append(rest_snapshot(server, names[0]))
            results["warm_png"] = summary("REST PNG, warm", warm)
            client = lean_client(server)
            jpeg = []
            for _ in range(args.requests):
                time.sleep(random.uniform(0.05, 0.5))
                ms, status, raw = client.request("GET", f"/streams/{names[0]}/snapshot.jpg")
                assert status == 200 and raw[:2] == b"\xff\xd8"
                jpeg.append((ms, client.timing))
            results["warm_jpeg"] = summary("JPEG GET, warm", jpeg)
            # the HTTP floor: a round trip to the same server on the same connection, paced
            # alike, with no picture (GET /healthz): what any answer costs on this machine
            http = []
            for _ in range(args.requests):
                time.sleep(random.uniform(0.05, 0.5))
                ms, status, _ = client.request("GET", "/healthz")
                assert status == 200
                http.append((ms, {}))
            results["http_floor"] = summary("HTTP round trip (GET /healthz)", http)
        finally:
            for p in pubs:
                stop(p)
            server.stop()
    OUT.mkdir(parents=True, exist_ok=True)
    strips = f"-strips{args.jpeg_strips}" if args.jpeg_strips else ""
    out = OUT / f"breakdown-{args.size}{'-bf0' if args.no_bframes else ''}{strips}.json"
    out.write_text(json.dumps(results, indent=2))
    log(f"written {out}")


if __name__ == "__main__":
    main()
