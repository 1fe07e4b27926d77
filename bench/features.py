"""What the camera-user features of issue #16 cost, each beside its floor or anchor, in one run:

- ``?at=`` (a picture of a past instant from the history) against a live warm snapshot of the
  same stream, and against the floor: PyAV alone decoding the keyframe group up to that frame;
- an MJPEG camera's JPEG served as the camera sent it against the same JPEG decoded and
  encoded again (``quality`` asked), and against the anchor users run today:
  ``ffmpeg -i rtsp://... -frames:v 1 out.jpg``;
- ``stream.mjpeg``: the server's CPU for 1 and for 8 viewers of the same variant (one encode
  per frame is shared), of the H.264 stream and of the MJPEG camera (its own JPEGs, no
  encode).

Media: the camera-like 720p30 clip of ``bench/compare.py`` (x264 veryfast, B-frames, GOP 60,
temporal noise, 2.5 Mbit/s) published over RTMP; a GStreamer MJPEG camera (640x360, 15 fps).

    python bench/features.py --requests 40
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import av  # noqa: E402
from bench.common import log, percentile, publish, stop  # noqa: E402
from bench.compare import camera_clip  # noqa: E402
from tests.helpers.media import FFMPEG  # noqa: E402
from tests.helpers.rtsp import RtspCamera  # noqa: E402
from tests.helpers.server import ServerProcess, write_config  # noqa: E402


def get_ms(url: str, gap: float = 0.0) -> tuple[float, dict[str, str], bytes]:
    """One GET, its latency; ``gap`` seconds first (past a frame interval: a new frame)."""
    time.sleep(gap)
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as resp:
        data = resp.read()
        headers = dict(resp.headers)
    return (time.perf_counter() - t0) * 1000, headers, data


FRAME_GAP_S = 0.08  # between requests: longer than a frame at 15 fps, so none is shared


def summary(values: list[float]) -> str:
    return f"p50 {statistics.median(values):.1f} ms, p99 {percentile(values, 99):.1f} ms"


def gop_decode_floor(clip: Path, frames: int) -> float:
    """PyAV alone: open a decoder, decode ``frames`` frames from a keyframe (ms, median of 5)."""
    with av.open(str(clip)) as box:
        packets = [p for p in box.demux(box.streams.video[0]) if p.size][:120]
        ctx_params = box.streams.video[0].codec_context.extradata
    start = next(i for i, p in enumerate(packets) if p.is_keyframe and i > 0)
    runs = []
    for _ in range(5):
        ctx = av.CodecContext.create("h264", "r")
        ctx.extradata = ctx_params
        ctx.thread_count, ctx.thread_type = 1, "NONE"
        t0 = time.perf_counter()
        for packet in packets[start : start + frames]:
            ctx.decode(packet)
        list(ctx.decode(None))
        runs.append((time.perf_counter() - t0) * 1000)
    return statistics.median(runs)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


async def mjpeg_cpu(
    server: ServerProcess, name: str, viewers: int, seconds: float
) -> tuple[float, int]:
    """The server's CPU share while ``viewers`` watch one variant, and the parts they got."""
    url = f"{server.http}/streams/{name}/stream.mjpeg?fps=15"
    parts = 0

    async def watch(session: aiohttp.ClientSession) -> None:
        nonlocal parts
        async with session.get(url) as resp:
            reader = aiohttp.MultipartReader(resp.headers, resp.content)
            while True:
                part = await reader.next()
                if part is None:
                    return
                await part.read()
                parts += 1

    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.ensure_future(watch(session)) for _ in range(viewers)]
        await asyncio.sleep(2)  # producers started, caches warm
        parts = 0
        before, t0 = cpu_seconds(server.proc.pid), time.monotonic()
        await asyncio.sleep(seconds)
        used = cpu_seconds(server.proc.pid) - before
        elapsed = time.monotonic() - t0
        got = parts
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return used / elapsed * 100, got


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--mjpeg-seconds", type=float, default=10.0)
    args = ap.parse_args()
    clip = camera_clip()
    work = Path(tempfile.mkdtemp(prefix="streamsnap-features-"))
    camera = RtspCamera(codec="mjpeg", size="640x360", fps=15, quality=80)
    config = write_config(
        work / "streamsnap.toml",
        server={"host": "127.0.0.1", "http_port": 0, "ws_port": 0, "rtmp_port": 0},
        streams={"history_s": 10},
        pull={"cameras": [{"name": "cam", "url": camera.url()}]},
        mjpeg={"max_viewers_per_ip": 16},
    )
    server = ServerProcess(config, cwd=work).start()
    pub = publish(clip, server.rtmp_url("door"))
    rows: list[str] = []
    try:
        server.wait_stream("door", frames=200, timeout=60)
        server.wait_stream("cam", frames=30, timeout=60)
        base = f"{server.http}/streams/door/snapshot.png"
        live = [get_ms(base, FRAME_GAP_S)[0] for _ in range(args.requests)]
        # instants 1-9 s ago, each a different frame: no answer is shared
        past, depth = [], []
        for i in range(args.requests):
            at = int(time.time() * 1000) - 1000 - (i * 197) % 8000
            ms, headers, _ = get_ms(f"{base}?at={at}")
            past.append(ms)
            depth.append(int(headers["X-Frame-Index"]))
        repeat = [get_ms(f"{base}?at={at}")[0] for _ in range(args.requests)]
        floor_mid = gop_decode_floor(clip, 30)
        floor_full = gop_decode_floor(clip, 60)
        rows += [
            "| 720p PNG | live, warm, a new frame each time | " + summary(live) + " |",
            "| 720p PNG | `?at=` 1-9 s ago, each a new frame | " + summary(past) + " |",
            "| 720p PNG | `?at=` the same instant again (shared) | " + summary(repeat) + " |",
            f"| floor | PyAV decoding 30 / 60 frames of the GOP | {floor_mid:.1f} / "
            f"{floor_full:.1f} ms |",
        ]
        cam = f"{server.http}/streams/cam/snapshot.jpg"
        own = [get_ms(cam, FRAME_GAP_S)[0] for _ in range(args.requests)]
        again = [get_ms(f"{cam}?quality=84", FRAME_GAP_S)[0] for _ in range(args.requests)]
        anchor = []
        for _ in range(min(10, args.requests)):
            t0 = time.perf_counter()
            source = ["-rtsp_transport", "tcp", "-i", camera.url()]
            out = ["-frames:v", "1", str(work / "anchor.jpg")]
            subprocess.run([FFMPEG, "-v", "error", "-y", *source, *out], check=True)
            anchor.append((time.perf_counter() - t0) * 1000)
        rows += [
            "| MJPEG camera JPEG | the camera's own, untouched | " + summary(own) + " |",
            "| MJPEG camera JPEG | decoded and encoded (`quality=84`) | " + summary(again) + " |",
            "| anchor | `ffmpeg -i rtsp://... -frames:v 1 out.jpg` | " + summary(anchor) + " |",
        ]
        for name, what in (("door", "720p H.264"), ("cam", "640x360 MJPEG camera")):
            for viewers in (0, 1, 8):
                cpu, parts = asyncio.run(mjpeg_cpu(server, name, viewers, args.mjpeg_seconds))
                rate = parts / args.mjpeg_seconds
                rows.append(
                    f"| `stream.mjpeg?fps=15` of a {what} | {viewers or 'no'} viewer(s) of one variant "
                    f"| server {cpu:.1f} % of a core, {rate:.0f} parts/s in all |"
                )
    finally:
        stop(pub)
        server.stop()
        camera.stop()
    print("| what | how | measured |\n|---|---|---|")
    print("\n".join(rows))
    log("done")


if __name__ == "__main__":
    main()
