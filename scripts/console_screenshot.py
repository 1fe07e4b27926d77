"""Take the console screenshot the README shows: a server on free ports, three RTMP
publishers of FFmpeg test pictures and a GStreamer RTSP camera, in headless Chromium.

    .venv/bin/python scripts/console_screenshot.py docs/images/console.png

(and docs/images/console-picture.png: the full-size picture of one stream).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers.browser import chromium  # noqa: E402
from tests.helpers.media import FFMPEG, Publisher  # noqa: E402
from tests.helpers.rtsp import RtspCamera  # noqa: E402
from tests.helpers.server import ServerProcess, write_config  # noqa: E402

PICTURES = {  # stream name: an FFmpeg source that looks different from the others
    "lobby": "testsrc2=size=1280x720:rate=30",
    "loading-dock": "smptehdbars=size=1280x720:rate=25",
    "parking": "mandelbrot=size=960x540:rate=15",
}


def publish(url: str, source: str) -> Publisher:
    argv = [FFMPEG, "-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi", "-i", source]
    argv += ["-c:v", "libx264", "-preset", "ultrafast", "-g", "60", "-pix_fmt", "yuv420p"]
    return Publisher([*argv, "-f", "flv", url])


def main(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = write_config(
            folder / "streamsnap.toml",
            server={"host": "127.0.0.1", "http_port": 0, "ws_port": 0, "rtmp_port": 0},
            pull={"allowed_hosts": ["127.0.0.1"]},
        )
        server = ServerProcess(config, cwd=folder).start()
        camera = RtspCamera(size="640x360", pattern="smpte")
        pubs = [publish(server.rtmp_url(n), s) for n, s in PICTURES.items()]
        try:
            for name in PICTURES:
                server.wait_stream(name, frames=5)
            with chromium(folder) as browser:
                page = browser.new_page()
                page.set_viewport_size({"width": 1400, "height": 760})
                page.goto(server.http + "/")
                page.fill("#cameraUrl", camera.url())
                page.fill("#cameraName", "front-door")
                page.click("#addCameraBtn")
                page.wait_for_function(
                    "() => [...document.querySelectorAll('.thumb img')]"
                    ".filter(i => i.naturalWidth > 0).length === 4",
                    timeout=30_000,
                )
                time.sleep(4)  # totals need two looks at /metrics
                page.screenshot(path=str(out), full_page=True)
                # the full-size picture of one stream, with its downloads
                page.click('#streams tbody tr[data-stream="lobby"] .thumb button')
                page.wait_for_function(
                    "() => document.getElementById('viewerImage').naturalWidth > 0",
                    timeout=15_000,
                )
                page.screenshot(path=str(out.with_name(out.stem + "-picture.png")))
        finally:
            for pub in pubs:
                pub.stop()
            camera.stop()
            server.stop()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "images" / "console.png")
