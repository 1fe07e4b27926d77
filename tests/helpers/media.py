"""Real publishers (FFmpeg, GStreamer) and pictures that carry a readable frame counter."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import threading
import time

import imageio_ffmpeg
import numpy as np
from PIL import Image

FFMPEG = os.environ.get("STREAMSNAP_TEST_FFMPEG") or imageio_ffmpeg.get_ffmpeg_exe()
GST_LAUNCH = shutil.which("gst-launch-1.0")

BITS = 12  # 4096 frames: over two minutes at 30 fps
BLOCK = 36
STEP = 44
MARGIN = 16


def counter_frame(n: int, width: int, height: int) -> bytes:
    """A gray8 picture whose top row of blocks spells ``n`` in binary (robust to compression)."""
    img = np.full((height, width), 128, np.uint8)
    img[height // 2 :, :] = (np.arange(width, dtype=np.uint32) * 255 // width).astype(np.uint8)
    for bit in range(BITS):
        x = MARGIN + bit * STEP
        img[MARGIN : MARGIN + BLOCK, x : x + BLOCK] = 235 if (n >> bit) & 1 else 16
    return img.tobytes()


def read_counter(png: bytes) -> int:
    """The frame number drawn by :func:`counter_frame`, read back from an image."""
    gray = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.int32)
    n = 0
    for bit in range(BITS):
        x = MARGIN + bit * STEP
        cell = gray[MARGIN + 10 : MARGIN + BLOCK - 10, x + 10 : x + BLOCK - 10]
        if cell.mean() > 128:
            n |= 1 << bit
    return n


class Publisher:
    """A publisher process; stopped (by pid) with :meth:`stop`."""

    def __init__(self, argv: list[str], stdin: bool = False) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.stderr_lines: list[bytes] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line)

    @property
    def stderr(self) -> str:
        return b"".join(self.stderr_lines).decode(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGINT, timeout: float = 5.0) -> None:
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, sig)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc.stdin:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()


class ListeningEncoder:
    """An encoder that listens for its receiver (e.g. SRT ``mode=listener``), started again each
    time a receiver leaves, as an encoder box serves whoever connects; :meth:`stop` stops the
    current process by its pid and starts no other."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.current = Publisher(argv)
        self.starts = 1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep, daemon=True)
        self._thread.start()

    def _keep(self) -> None:
        while not self._stop.wait(0.05):
            if not self.current.alive():
                self.current = Publisher(self.argv)
                self.starts += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.current.stop()


class CounterPublisher(Publisher):
    """Feeds counter pictures at ``fps`` in real time into an encoder's stdin.

    ``sent`` is the number of the newest picture handed to the encoder.
    """

    def __init__(self, argv: list[str], width: int, height: int, fps: int = 30) -> None:
        super().__init__(argv, stdin=True)
        self.width, self.height, self.fps = width, height, fps
        self.sent = -1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._feed, daemon=True)
        self._thread.start()

    def _feed(self) -> None:
        assert self.proc.stdin is not None
        start = time.monotonic()
        n = 0
        while not self._stop.is_set():
            frame = counter_frame(n, self.width, self.height)
            delay = start + n / self.fps - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                self.proc.stdin.write(frame)
                self.proc.stdin.flush()
            except (BrokenPipeError, ValueError, OSError):
                return
            self.sent = n
            n += 1

    def stop(self, sig: int = signal.SIGINT, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(2)
        super().stop(sig, timeout)


def ffmpeg_counter(
    url: str,
    width: int = 1280,
    height: int = 720,
    fps: int = 30,
    extra: tuple[str, ...] = ("-preset", "ultrafast", "-tune", "zerolatency"),
    gop: int = 60,
    codec: str = "libx264",
) -> CounterPublisher:
    argv = [
        FFMPEG,
        "-hide_banner",
        "-loglevel",
        "warning",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "gray",
        "-s",
        f"{width}x{height}",
        "-framerate",
        str(fps),
        "-i",
        "-",
        "-c:v",
        codec,
        *(CODEC_OPTIONS.get(codec, extra) if codec != "libx264" else extra),
        "-g",
        str(gop),
        "-pix_fmt",
        "yuv420p",
        "-f",
        "flv",
        url,
    ]
    return CounterPublisher(argv, width, height, fps)


# fast settings of each encoder FFmpeg publishes with over (Enhanced) RTMP
CODEC_OPTIONS: dict[str, tuple[str, ...]] = {
    "libx264": ("-preset", "ultrafast"),
    "libx265": ("-preset", "ultrafast", "-x265-params", "log-level=error"),
    "libvpx-vp9": ("-deadline", "realtime", "-cpu-used", "8", "-b:v", "1M"),
    "libsvtav1": ("-preset", "12", "-svtav1-params", "lp=1:pred-struct=1:lookahead=0"),
}


def ffmpeg_testsrc(
    url: str,
    size: str = "1280x720",
    fps: int = 30,
    gop: int = 60,
    audio: bool = True,
    video: bool = True,
    seconds: float | None = None,
    extra: tuple[str, ...] = ("-preset", "ultrafast"),
    codec: str = "libx264",
) -> Publisher:
    argv = [FFMPEG, "-hide_banner", "-loglevel", "warning", "-re"]
    if video:
        argv += ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}"]
    if audio:
        argv += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"]
    if seconds:
        argv += ["-t", str(seconds)]
    if video:
        options = extra if codec == "libx264" else CODEC_OPTIONS[codec]
        argv += ["-c:v", codec, *options, "-g", str(gop), "-pix_fmt", "yuv420p"]
    if audio:
        argv += ["-c:a", "aac", "-b:a", "64k"]
    argv += ["-f", "flv", url]
    return Publisher(argv)


def ffmpeg_whip(
    url: str, size: str = "640x360", token: str | None = None, seconds: float | None = None
) -> Publisher:
    """FFmpeg 9's WHIP muxer publishing a test picture and sound (it DELETEs when it ends)."""
    argv = [FFMPEG, "-hide_banner", "-loglevel", "warning", "-re"]
    argv += ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30"]
    argv += ["-f", "lavfi", "-i", "sine=sample_rate=48000"]
    if seconds:
        argv += ["-t", str(seconds)]
    argv += ["-c:v", "libx264", "-profile:v", "baseline", "-tune", "zerolatency", "-bf", "0"]
    argv += ["-g", "30", "-pix_fmt", "yuv420p", "-c:a", "libopus", "-ac", "2"]
    if token:
        argv += ["-authorization", token]
    return Publisher([*argv, "-f", "whip", url])


def gst_counter(
    url: str, sink: str = "rtmp2sink", width: int = 1280, height: int = 720, fps: int = 30
) -> CounterPublisher:
    assert GST_LAUNCH
    pipeline = (
        f"fdsrc fd=0 blocksize={width * height} ! rawvideoparse format=gray8 width={width} "
        f"height={height} framerate={fps}/1 ! videoconvert ! video/x-raw,format=I420 ! "
        f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps * 2} ! "
        f"video/x-h264,profile=baseline ! h264parse ! flvmux streamable=true name=m ! "
        f"{sink} location={url}"
    )
    return CounterPublisher([GST_LAUNCH, "-q", "-e", *pipeline.split()], width, height, fps)


def gst_testsrc(url: str, sink: str = "rtmp2sink", size: tuple[int, int] = (640, 360)) -> Publisher:
    assert GST_LAUNCH
    w, h = size
    pipeline = (
        f"videotestsrc is-live=true pattern=ball ! video/x-raw,width={w},height={h},"
        f"framerate=30/1 ! x264enc tune=zerolatency key-int-max=30 ! h264parse ! "
        f"flvmux streamable=true name=m ! {sink} location={url} "
        f"audiotestsrc is-live=true ! audioconvert ! lamemp3enc ! mpegaudioparse ! m."
    )
    return Publisher([GST_LAUNCH, "-q", "-e", *pipeline.split()])


def gst_has(element: str) -> bool:
    if not GST_LAUNCH:
        return False
    inspect = shutil.which("gst-inspect-1.0")
    return (
        bool(inspect)
        and subprocess.run(
            [inspect, element], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        ).returncode
        == 0
    )
