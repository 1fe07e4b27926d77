"""The console at ``/``, in headless Chromium: real RTMP publishers and a GStreamer RTSP camera."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers.browser import browser_available, chromium
from tests.helpers.media import ffmpeg_counter, read_counter

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not browser_available(), reason="chromium or playwright not installed"),
]

TOKEN = "console-token-0123456789"
ROW = '#streams tbody tr[data-stream="{}"]'

# the thumbnail as the page shows it, drawn onto a canvas: the picture the operator sees
THUMBNAIL_JS = """(selector) => {
  const img = document.querySelector(selector + ' .thumb img');
  if (!img || !img.complete || !img.naturalWidth) return null;
  const canvas = document.createElement('canvas');
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  canvas.getContext('2d').drawImage(img, 0, 0);
  return canvas.toDataURL('image/png');
}"""


def thumbnail(page, name: str, source_width: int = 640) -> tuple[Image.Image, int]:
    """The row's thumbnail and the frame number it shows (read at the source's scale; -1
    for a source too small to carry the counter)."""
    page.wait_for_function(
        "(s) => { const i = document.querySelector(s + ' .thumb img');"
        " return i && i.complete && i.naturalWidth > 0; }",
        arg=ROW.format(name),
        timeout=15_000,
    )
    url = page.evaluate(THUMBNAIL_JS, ROW.format(name))
    img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    if source_width < 640:
        return img, -1
    scale = source_width / img.width
    full = img.resize((source_width, round(img.height * scale)))
    out = io.BytesIO()
    full.save(out, "PNG")
    return img, read_counter(out.getvalue())


def cell(page, name: str, column: str) -> str:
    return page.inner_text(f"{ROW.format(name)} td.{column}").strip()


def wait_rows(page, count: int, timeout: float = 15_000) -> None:
    page.wait_for_function(
        "(n) => document.querySelectorAll('#streams tbody tr').length === n",
        arg=count,
        timeout=timeout,
    )


@pytest.fixture
def console_server(make_server):
    return make_server(
        pull={"allowed_hosts": ["127.0.0.1"]},
        snapshot={"snapshot_taking_interval_ms": 5000},
    )


def test_console_rows_thumbnails_totals_and_a_stopped_publisher(console_server, tmp_path):
    srv = console_server
    names = ["door", "yard", "gate"]
    pubs = {n: ffmpeg_counter(srv.rtmp_url(n), 640, 360, gop=30) for n in names}
    try:
        for n in names:
            srv.wait_stream(n, frames=10)
        with chromium(tmp_path) as browser:
            page = browser.new_page()
            response = page.goto(srv.http + "/")
            assert "default-src 'self'" in response.headers["content-security-policy"]
            wait_rows(page, 3)
            for n in names:
                assert cell(page, n, "protocol") == "rtmp"
                assert cell(page, n, "codec") == "h264"
            # each thumbnail is the live frame, and a newer one 2.5 s later
            first = {n: thumbnail(page, n)[1] for n in names}
            page.wait_for_timeout(2500)
            for n in names:
                img, later = thumbnail(page, n)
                assert img.width == 320, img.size
                assert later > first[n], (n, first[n], later)
                assert pubs[n].sent - later < 90, (n, pubs[n].sent, later)  # within 3 s
                # known once a picture was decoded (a lazily decoded stream's first thumbnail)
                assert cell(page, n, "size") == "640\u00d7360"
                assert float(cell(page, n, "fps")) > 20
            # totals from the server's own /metrics
            page.wait_for_function(
                "() => document.getElementById('cpu').textContent.endsWith('%')", timeout=10_000
            )
            assert page.inner_text("#totalStreams") == "3"
            assert "rtmp 3" in page.inner_text("#byProtocol")
            assert "MiB" in page.inner_text("#memory")
            assert float(page.inner_text("#snapshotRate")) > 0  # the thumbnails themselves
            # a publisher that stops: its row goes within 10 s
            pubs["gate"].stop()
            t0 = time.monotonic()
            wait_rows(page, 2, timeout=10_000)
            assert time.monotonic() - t0 < 10
            assert page.locator(ROW.format("gate")).count() == 0
            broken = [
                m for m in browser.console if "Content Security Policy" in m or "Uncaught" in m
            ]
            assert not broken, broken
    finally:
        for pub in pubs.values():
            pub.stop()


def test_console_full_picture_downloads_and_a_stale_stream(make_server, tmp_path):
    srv = make_server(
        streams={"stale_after_s": 1.5}, snapshot={"snapshot_taking_interval_ms": 5000}
    )
    pub = ffmpeg_counter(srv.rtmp_url("porch"), 640, 360, gop=30)
    try:
        srv.wait_stream("porch", frames=10)
        with chromium(tmp_path) as browser:
            page = browser.new_page()
            page.goto(srv.http + "/")
            wait_rows(page, 1)
            page.click(ROW.format("porch") + " .thumb button")
            page.wait_for_function(
                "() => document.getElementById('viewer').open &&"
                " document.getElementById('viewerImage').naturalWidth === 640",
                timeout=15_000,
            )
            assert page.inner_text("#viewerInfo").startswith("640\u00d7360")
            with page.expect_download() as png_download:
                page.click("#downloadPng")
            png = png_download.value
            assert png.suggested_filename.startswith("porch-") and png.suggested_filename.endswith(
                ".png"
            )
            data = Path(png.path()).read_bytes()
            assert Image.open(io.BytesIO(data)).format == "PNG"
            assert Image.open(io.BytesIO(data)).size == (640, 360)
            shown = read_counter(data)
            assert 0 <= pub.sent - shown < 90, (pub.sent, shown)
            with page.expect_download() as jpeg_download:
                page.click("#downloadJpeg")
            jpeg = Path(jpeg_download.value.path()).read_bytes()
            assert Image.open(io.BytesIO(jpeg)).format == "JPEG"
            assert read_counter(jpeg) >= shown
            page.click("#viewerClose")
            assert not page.evaluate("document.getElementById('viewer').open")
            # a publisher that stays connected but sends nothing: the row says stale, and why
            os.kill(pub.proc.pid, signal.SIGSTOP)
            page.wait_for_function(
                "(s) => document.querySelector(s).classList.contains('stale')",
                arg=ROW.format("porch"),
                timeout=10_000,
            )
            assert cell(page, "porch", "faults").startswith("stale: no video for")
            # the thumbnail stays the last picture (?stale=ok), its age badge growing
            page.wait_for_function(
                "(s) => document.querySelector(s + ' .thumb .age').textContent.endsWith(' s')",
                arg=ROW.format("porch"),
                timeout=10_000,
            )
    finally:
        os.kill(pub.proc.pid, signal.SIGCONT)
        pub.stop()


def test_console_adds_a_camera_shows_api_errors_and_terminates(
    console_server, make_camera, tmp_path
):
    srv = console_server
    cam = make_camera(size="320x240")
    with chromium(tmp_path) as browser:
        page = browser.new_page()
        page.goto(srv.http + "/")
        page.wait_for_function("() => !document.getElementById('empty').hidden", timeout=10_000)
        # a URL the pull API refuses: the console shows the API's own message
        refused = {"uri": "file:///etc/passwd", "localStreamName": "evil"}
        status, raw, _ = srv.request("POST", "/rest-api/pull/startup", refused)
        assert status >= 400
        page.fill("#cameraUrl", refused["uri"])
        page.fill("#cameraName", refused["localStreamName"])
        page.click("#addCameraBtn")
        page.wait_for_function(
            "() => document.getElementById('addCameraStatus').classList.contains('error')",
            timeout=10_000,
        )
        assert page.inner_text("#addCameraStatus") == f"{status}: {json.loads(raw)['message']}"
        # a real camera
        page.fill("#cameraUrl", cam.url())
        page.fill("#cameraName", "driveway")
        page.click("#addCameraBtn")
        wait_rows(page, 1, timeout=20_000)
        img, _ = thumbnail(page, "driveway", source_width=320)
        assert img.size == (320, 240)
        assert cell(page, "driveway", "protocol") == "rtsp"
        # terminate asks for a second click, then the row and the pull go
        button = ROW.format("driveway") + " button.terminate"
        page.click(button)
        assert page.inner_text(button) == "Confirm"
        page.click(button)
        wait_rows(page, 0, timeout=10_000)
        status, raw, _ = srv.request("POST", "/rest-api/pull/find_all", {})
        assert status == 404 or all(p.get("localStreamName") != "driveway" for p in json.loads(raw))


def test_console_with_auth_asks_for_the_token_once(make_server, tmp_path):
    from streamsnap.core.auth import hash_password

    srv = make_server(
        auth={
            "token": TOKEN,
            "open_publish": True,
            "users": [{"name": "ops", "password": hash_password("ops-password", n=1 << 14)}],
        },
        snapshot={"snapshot_taking_interval_ms": 5000},
    )
    pub = ffmpeg_counter(srv.rtmp_url("vault"), 640, 360, gop=30)
    try:
        deadline = time.monotonic() + 15
        headers = {"Authorization": f"Bearer {TOKEN}"}
        while time.monotonic() < deadline:
            status, _, _ = srv.request(
                "POST", "/rest-api/stream/find", {"name": "vault"}, headers=headers
            )
            if status == 200:
                break
            time.sleep(0.2)
        with chromium(tmp_path) as browser:
            page = browser.new_page()
            page.goto(srv.http + "/")
            page.wait_for_function("() => document.getElementById('login').open", timeout=10_000)
            # closed with Esc: what was typed is not kept, and the prompt stays away until asked
            page.fill("#token", "typed-then-escaped")
            page.keyboard.press("Escape")
            page.wait_for_selector("#signIn", state="visible", timeout=10_000)
            page.wait_for_timeout(1500)  # a few rounds of polling: no prompt again
            assert not page.evaluate("document.getElementById('login').open")
            assert page.evaluate("sessionStorage.length") == 0
            page.click("#signIn")
            page.wait_for_function("() => document.getElementById('login').open", timeout=10_000)
            page.fill("#token", "not-the-token")
            page.click("#loginBtn")
            page.wait_for_function(
                "() => document.getElementById('login').open &&"
                " document.getElementById('loginError').textContent.includes('refused')",
                timeout=10_000,
            )
            page.fill("#token", TOKEN)
            page.click("#loginBtn")
            wait_rows(page, 1)
            _img, frame = thumbnail(page, "vault")
            assert frame > 0
            page.wait_for_function(
                "() => document.getElementById('cpu').textContent.endsWith('%')", timeout=10_000
            )
            # the tab keeps the token: a reload does not ask again
            page.reload()
            wait_rows(page, 1)
            assert not page.evaluate("document.getElementById('login').open")
            assert not page.is_hidden("#signOut")
            # a user of [auth] users signs in with a name and password instead
            page.click("#signOut")
            page.wait_for_function("() => document.getElementById('login').open", timeout=10_000)
            page.fill("#user", "ops")
            page.fill("#password", "ops-password")
            page.click("#loginBtn")
            wait_rows(page, 1)
            thumbnail(page, "vault")
        assert "wrong credentials" in srv.log
        # one wrong token, sent by the requests that were waiting, not by every poll after it
        assert srv.log.count("wrong credentials") <= 4, srv.log.count("wrong credentials")
    finally:
        pub.stop()


def test_console_of_a_cluster_shows_every_node_and_their_pictures(make_server, tmp_path):
    from tests.helpers.redis import RedisServer, redis_available

    if not redis_available():
        pytest.skip("redis-server not installed")
    redis = RedisServer()
    pubs = []
    try:
        nodes = [
            make_server(
                cluster={
                    "redis_url": redis.url,
                    "secret": "a-shared-secret-of-the-console-test",
                    "node_id": f"node{i}",
                },
                snapshot={"snapshot_taking_interval_ms": 5000},
            )
            for i in range(2)
        ]
        pubs = [
            ffmpeg_counter(n.rtmp_url(f"cam{i}"), 640, 360, gop=30) for i, n in enumerate(nodes)
        ]
        for i, node in enumerate(nodes):
            node.wait_stream(f"cam{i}", frames=10)
        with chromium(tmp_path) as browser:
            page = browser.new_page()
            page.goto(nodes[0].http + "/")  # one node's console shows both nodes' streams
            wait_rows(page, 2)
            assert cell(page, "cam1", "node") == "node1"
            assert page.is_visible(ROW.format("cam1") + " td.node")
            _img, frame = thumbnail(page, "cam1")  # the other node's picture, forwarded
            assert 0 <= pubs[1].sent - frame < 90, (pubs[1].sent, frame)
    finally:
        for pub in pubs:
            pub.stop()
        redis.stop()
