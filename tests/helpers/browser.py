"""Headless Chromium (Debian's) driven by Playwright, with a fake camera showing a known picture."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .media import FFMPEG

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]


def browser_available() -> bool:
    if not Path(CHROMIUM).exists():
        return False
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True


def make_y4m(path: Path, width: int = 640, height: int = 480) -> Path:
    """Two seconds of a picture a test can recognise: red left half, blue right half."""
    subprocess.run(
        [
            FFMPEG,
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"color=c=red:s={width}x{height}:r=30",
            "-vf",
            f"drawbox=x={width // 2}:y=0:w={width // 2}:h={height}:color=blue:t=fill",
            "-t",
            "2",
            "-pix_fmt",
            "yuv420p",
            str(path),
        ],
        check=True,
    )
    return path


@contextmanager
def chromium(tmp: Path, y4m: Path | None = None) -> Iterator:
    """A persistent-context Chromium; its pages log to ``context.console``."""
    from playwright.sync_api import sync_playwright

    args = list(FLAGS)
    if y4m is not None:
        args.append(f"--use-file-for-fake-video-capture={y4m}")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=args
        )
        context.console = []
        context.on("console", lambda msg: context.console.append(msg.text))
        try:
            yield context
        finally:
            context.close()
