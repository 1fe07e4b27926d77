"""Ways to make a JPEG of a decoded camera frame, timed on the same frames: the RGB path the
server takes today (swscale to RGB24, then Pillow's libjpeg-turbo) against paths that keep
the picture in YUV (FFmpeg's own MJPEG encoder from yuvj420p; YUV planes into libjpeg-turbo
with simplejpeg when it is installed).

    .venv/bin/python bench/jpeg_paths.py [--frames 60] [--quality 85]
"""

from __future__ import annotations

import argparse
import fractions
import io
import statistics
import sys
import time
from pathlib import Path

import av
import av.logging
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.compare import camera_clip  # noqa: E402


def frames(n: int) -> list[av.VideoFrame]:
    out = []
    with av.open(str(camera_clip())) as container:
        for frame in container.decode(video=0):
            out.append(frame)
            if len(out) == n:
                break
    return out


def timed(label: str, fn, pictures: list[av.VideoFrame], floor: str = "") -> list[bytes]:
    results, times = [], []
    fn(pictures[0])  # warm-up: codec set-up, first allocations
    for f in pictures:
        t0 = time.perf_counter()
        results.append(fn(f))
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    p50, p90 = statistics.median(times), times[int(len(times) * 0.9)]
    size = statistics.median(len(r) for r in results) / 1024
    print(f"{label:<44} p50 {p50:6.2f} ms  p90 {p90:6.2f} ms  {size:6.0f} KiB {floor}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--quality", type=int, default=85)
    args = parser.parse_args()
    av.logging.set_level(av.logging.ERROR)
    pictures = frames(args.frames)
    q = args.quality
    print(
        f"{len(pictures)} frames {pictures[0].width}x{pictures[0].height} {pictures[0].format.name}"
    )

    def rgb(f: av.VideoFrame) -> np.ndarray:
        return f.to_ndarray(format="rgb24", threads=1)

    def pillow(f: av.VideoFrame) -> bytes:
        out = io.BytesIO()
        Image.fromarray(rgb(f)).save(out, "JPEG", quality=q)
        return out.getvalue()

    timed(
        "swscale yuv420p -> rgb24 only",
        lambda f: rgb(f)[:1, :1].tobytes(),
        pictures,
        "(part of the next)",
    )
    reference = timed("RGB path: rgb24 + Pillow JPEG (today)", pillow, pictures)

    def full_range(f: av.VideoFrame) -> av.VideoFrame:
        return f.reformat(format="yuvj420p", threads=1)

    timed(
        "swscale yuv420p -> yuvj420p only", lambda f: bytes(full_range(f).planes[0])[:1], pictures
    )
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height = pictures[0].width, pictures[0].height
    codec.pix_fmt = "yuvj420p"
    codec.time_base = fractions.Fraction(1, 30)
    # FFmpeg's MJPEG encoder takes a quantiser scale, not a 1-100 quality: qscale 3 is about q85
    codec.qmin = codec.qmax = 3
    codec.options = {"huffman": "optimal"}
    codec.open()

    count = iter(range(1, 1 << 30))

    def ffmpeg_mjpeg(f: av.VideoFrame) -> bytes:
        j = full_range(f)
        j.pts, j.time_base = next(count), codec.time_base  # the encoder wants a rising timeline
        packets = codec.encode(j)
        return b"".join(bytes(p) for p in packets)

    mine = timed("YUV path: yuvj420p + FFmpeg mjpeg (qscale 3)", ffmpeg_mjpeg, pictures)
    try:
        import simplejpeg
    except ImportError:
        simplejpeg = None
        print("simplejpeg not installed: its YUV-planes path not measured")
    if simplejpeg is not None:

        def planes_jpeg(f: av.VideoFrame) -> bytes:
            j = full_range(f)
            y, u, v = (
                np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width]
                for p in j.planes
            )
            return simplejpeg.encode_jpeg_yuv_planes(y, u, v, quality=q)

        timed("YUV path: yuvj420p planes + simplejpeg", planes_jpeg, pictures)
        luma = [min(255, max(0, round((i - 16) * 255 / 219))) for i in range(256)]
        chroma = [min(255, max(0, round((i - 128) * 255 / 224 + 128))) for i in range(256)]

        def expanded(plane, table):
            img = Image.frombuffer(
                "L", (plane.width, plane.height), plane, "raw", "L", plane.line_size, 1
            )
            return np.asarray(img.point(table))

        def lut_jpeg(f: av.VideoFrame) -> bytes:
            y, u, v = (
                expanded(p, t) for p, t in zip(f.planes, (luma, chroma, chroma), strict=True)
            )
            return simplejpeg.encode_jpeg_yuv_planes(y, u, v, quality=q)

        lut = timed("YUV path: range by Pillow LUT + simplejpeg", lut_jpeg, pictures)
        a = np.asarray(Image.open(io.BytesIO(reference[0])).convert("RGB"), np.int16)
        b = np.asarray(Image.open(io.BytesIO(lut[0])).convert("RGB"), np.int16)
        print(
            f"mean abs difference RGB path vs LUT + simplejpeg: {np.abs(a - b).mean():.2f} (0-255)"
        )
    # how close the YUV path's picture is to the RGB path's
    a = np.asarray(Image.open(io.BytesIO(reference[0])).convert("RGB"), np.int16)
    b = np.asarray(Image.open(io.BytesIO(mine[0])).convert("RGB"), np.int16)
    print(f"mean abs difference RGB path vs FFmpeg mjpeg: {np.abs(a - b).mean():.2f} (0-255)")


if __name__ == "__main__":
    main()
