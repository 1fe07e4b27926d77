"""Automatic snapshots with real RTMP publishers, watched folders and storage backends."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers.media import ffmpeg_testsrc
from tests.helpers.rtmp_client import RtmpClient, make_flv
from tests.helpers.server import wait_for

pytestmark = pytest.mark.e2e


def auto_server(make_server, tmp_path, env=None, **snapshot):
    settings = {
        "snapshot_auto_enabled": True,
        "snapshot_auto_dir": str(tmp_path / "snaps"),
        "snapshot_auto_naming": "streamName",
        "snapshot_auto_rate": 10,
        "snapshot_auto_retention": 1000,
        **snapshot,
    }
    sections = {"snapshot": settings}
    if "storage" in snapshot:
        sections["storage"] = settings.pop("storage")
    return make_server(env=env, **sections)


def numbered(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return sorted(
        int(m.group(1))
        for p in folder.iterdir()
        if (m := re.search(r"_(\d+)\.(png|jpg|webp)$", p.name))
    )


def frames_of(server, name: str) -> int:
    line = server.wait_log(rf"stream {re.escape(name)}: unpublished \(.*; (\d+) frames\)")
    return int(re.search(r"(\d+) frames\)", line).group(1))


def publish_for(server, name: str, seconds: float, size: str = "640x360") -> None:
    pub = ffmpeg_testsrc(server.rtmp_url(name), size=size, seconds=seconds)
    pub.proc.wait(seconds + 20)
    server.wait_gone(name)


def test_files_appear_at_the_configured_rate(make_server, tmp_path):
    srv = auto_server(make_server, tmp_path, snapshot_auto_rate=10)
    publish_for(srv, "ratecam", 4)
    frames = frames_of(srv, "ratecam")
    time.sleep(0.5)
    folder = tmp_path / "snaps" / "ratecam"
    seqs = numbered(folder)
    assert abs(len(seqs) - frames // 10) <= 1, (len(seqs), frames)
    assert seqs == list(range(1, len(seqs) + 1))  # no gap, from 1
    img = Image.open(folder / f"ratecam_{seqs[-1]:08d}.png")
    assert img.size == (640, 360)
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temp file left


def test_retention_under_load_and_numbering_across_republish_and_restart(make_server, tmp_path):
    srv = auto_server(make_server, tmp_path, snapshot_auto_rate=1, snapshot_auto_retention=5)
    publish_for(srv, "busy", 3)
    folder = tmp_path / "snaps" / "busy"
    time.sleep(0.5)
    first = numbered(folder)
    assert len(first) == 5 and first == list(range(first[0], first[0] + 5))
    assert first[-1] >= 30  # about every frame of 3 s at 30 fps was written
    publish_for(srv, "busy", 2)  # same name again: numbering continues
    time.sleep(0.5)
    second = numbered(folder)
    assert len(second) == 5 and second[0] > first[-1]
    srv.stop()
    srv2 = auto_server(make_server, tmp_path, snapshot_auto_rate=1, snapshot_auto_retention=5)
    publish_for(srv2, "busy", 2)  # and after a restart
    time.sleep(0.5)
    third = numbered(folder)
    assert len(third) == 5 and third[0] > second[-1]


def test_media_session_id_naming_and_jpeg_override(make_server, tmp_path):
    srv = auto_server(
        make_server,
        tmp_path,
        snapshot_auto_naming="mediaSessionId",
        snapshot_auto_streams=[{"name": "jpegcam", "format": "jpeg", "rate": 15}],
    )
    pub = ffmpeg_testsrc(srv.rtmp_url("jpegcam"), size="320x240", seconds=3)
    info = srv.wait_stream("jpegcam", frames=1)
    pub.proc.wait(20)
    srv.wait_gone("jpegcam")
    time.sleep(0.5)
    folder = tmp_path / "snaps" / info["mediaSessionId"]
    files = sorted(folder.iterdir())
    assert files and all(p.suffix == ".jpg" for p in files)
    assert Image.open(files[-1]).format == "JPEG"


@pytest.fixture(scope="module")
def tags(tmp_path_factory):
    return make_flv(tmp_path_factory.mktemp("flv") / "c.flv", size="320x240", seconds=2, gop=15)


def test_hostile_names_stay_inside_the_snapshot_folder(make_server, tmp_path, tags):
    outside = tmp_path / "outside"
    outside.mkdir()
    srv = auto_server(make_server, tmp_path / "inside", snapshot_auto_rate=5)
    # (URL-shaped names with credentials are covered by tests/unit/test_names.py: asking for
    # one that is not live would start a pull of that URL)
    names = [
        "../x",
        "../../etc",
        "/abs",
        "a/b",
        "CON",
        "..",
        "~root",
        "a" * 255,  # the longest name a publisher may use: still too long for a folder
        'we|ird "name" *:<>',
    ]
    for name in names:
        c = RtmpClient("127.0.0.1", srv.ports["rtmp"])
        try:
            assert "Publish.Start" in repr(c.publish(name))
            for tag in tags[:40]:
                c.send_tag(tag)
            srv.wait_stream(name, frames=10)
            root = tmp_path / "inside" / "snaps"
            deadline = time.monotonic() + 15  # its first file is written while it is live
            while (
                time.monotonic() < deadline
                and sum(1 for d in root.iterdir() if numbered(d)) < names.index(name) + 1
            ):
                time.sleep(0.1)
        finally:
            c.close()
        srv.wait_gone(name)
    time.sleep(0.5)
    root = tmp_path / "inside" / "snaps"
    folders = sorted(p.name for p in root.iterdir())
    assert len(folders) == len(names), folders
    for folder in folders:
        assert re.fullmatch(r"[A-Za-z0-9._-]+", folder) and len(folder) < 120
        assert numbered(root / folder), folder
    assert not any(outside.iterdir()) and not (tmp_path / "x").exists()
    for path in root.rglob("*"):
        assert path.resolve().is_relative_to(root.resolve())


def test_unwritable_folder_is_logged_once_and_other_streams_continue(make_server, tmp_path):
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    (snaps / "blocked").write_text("a file where the stream's folder should be")
    srv = auto_server(make_server, tmp_path, snapshot_auto_rate=5)
    blocked = ffmpeg_testsrc(srv.rtmp_url("blocked"), size="320x240", seconds=3)
    fine = ffmpeg_testsrc(srv.rtmp_url("fine"), size="320x240", seconds=3)
    blocked.proc.wait(20)
    fine.proc.wait(20)
    srv.wait_gone("blocked")
    srv.wait_gone("fine")
    time.sleep(0.5)
    assert srv.log.count("stream blocked: cannot write snapshots") == 1
    assert len(numbered(snaps / "fine")) >= 10
    assert (snaps / "blocked").is_file()


def test_watched_folder_other_process_file_and_raising_plugin(
    make_server, tmp_path, installed_plugin
):
    events = tmp_path / "events.jsonl"
    dropbox = tmp_path / "dropbox"
    archive = tmp_path / "archive"
    env = {"PYTHONPATH": str(installed_plugin), "HELLO_EVENTS": str(events), "HELLO_RAISE": "1"}
    srv = make_server(
        env=env,
        snapshot={
            "snapshot_auto_enabled": True,
            "snapshot_auto_dir": str(tmp_path / "snaps"),
            "snapshot_auto_naming": "streamName",
            "snapshot_auto_rate": 15,
        },
        folder_watch={"dirs": [str(dropbox)]},
        storage={"backends": ["local"]},
        local={"dir": str(archive)},
    )
    # another process writes a file the slow way (created, then filled, then closed)
    (dropbox / "cams").mkdir(parents=True)
    with open(dropbox / "cams" / "door.jpg", "wb") as f:
        f.write(b"\xff\xd8")
        f.flush()
        time.sleep(0.3)
        f.write(b"\x00" * 5000)
    (dropbox / "cams" / ".hidden.png").write_bytes(b"x" * 10)
    (dropbox / "cams" / "partial.png.tmp").write_bytes(b"x" * 10)
    publish_for(srv, "watched", 3, size="320x240")
    time.sleep(1.0)
    saved = [
        json.loads(line)
        for line in events.read_text().splitlines()
        if json.loads(line)["event"] == "saved"
    ]
    paths = [e["path"] for e in saved]
    assert paths.count(str(dropbox / "cams" / "door.jpg")) == 1
    assert not [p for p in paths if ".hidden" in p or p.endswith(".tmp")]
    auto = [e for e in saved if e["name"] == "watched"]
    written = numbered(tmp_path / "snaps" / "watched")
    assert len(auto) == len(written) >= 4  # once per file, with its live stream
    # the raising plugin did not stop the storage backend: every file was archived
    assert sorted(os.listdir(archive / "watched")) == sorted(
        p.name for p in (tmp_path / "snaps" / "watched").iterdir()
    )
    assert (archive / "cams" / "door.jpg").stat().st_size == 5002
    assert "plugin hello failed in on_snapshot_saved" in srv.log


def test_gallery_page_shows_new_snapshots_without_reload(make_server, tmp_path):
    from tests.helpers.browser import browser_available, chromium

    if not browser_available():
        pytest.skip("chromium or playwright not installed")
    srv = auto_server(make_server, tmp_path, snapshot_auto_rate=15)
    pub = ffmpeg_testsrc(srv.rtmp_url("gallerycam"), size="320x240")
    try:
        srv.wait_stream("gallerycam", frames=20)
        with chromium(tmp_path) as browser:
            page = browser.new_page()
            page.goto(srv.http + "/pages/gallery.html")
            page.wait_for_selector('.card[data-stream="gallerycam"] img')
            page.wait_for_function(
                "document.getElementById('status').textContent == 'live'", timeout=10_000
            )
            first = page.get_attribute('.card[data-stream="gallerycam"] img', "src")
            # new files arrive as events: the picture changes without a reload
            page.wait_for_function(
                """(first) => {
                    const img = document.querySelector('.card[data-stream="gallerycam"] img');
                    return img.src !== first && img.src.includes('/snapshots/gallerycam/')
                        && img.complete && img.naturalWidth === 320;
                }""",
                arg=page.evaluate("(s) => new URL(s, location.href).href", first),
                timeout=15_000,
            )
            src = page.get_attribute('.card[data-stream="gallerycam"] img', "src")
            assert re.search(r"/snapshots/gallerycam/gallerycam_\d{8}\.png$", src)
            status, raw, _headers = srv.request("GET", src)
            assert status == 200 and raw[:4] == b"\x89PNG"
    finally:
        pub.stop()


def test_sigterm_shuts_down_cleanly_and_loses_no_file(make_server, tmp_path):
    srv = auto_server(make_server, tmp_path, snapshot_auto_rate=2, snapshot_auto_retention=1000)
    pub = ffmpeg_testsrc(srv.rtmp_url("closing"), size="640x360")
    try:
        srv.wait_stream("closing", frames=30)
        t0 = time.monotonic()
        assert srv.stop() == 0  # SIGTERM: listeners closed, publishers told, files finished
        assert time.monotonic() - t0 < 10
    finally:
        pub.stop()
    pub.proc.wait(10)  # the encoder saw its connection end
    folder = tmp_path / "snaps" / "closing"
    files = sorted(folder.iterdir())
    assert files and not [p for p in files if p.name.startswith(".")]  # no half-written file
    for path in files:  # every file that exists is a whole picture
        with Image.open(path) as img:
            img.load()
    assert "shutting down" in srv.log


def test_gallery_finds_each_stream_in_the_folder_it_really_writes(make_server, tmp_path):
    """The gallery asks the auto-snapshot plugin where a stream's files go: a per-stream
    ``naming`` override is honoured (the pages used to recompute the folder from the global
    naming, and showed nothing for such a stream)."""

    srv = auto_server(
        make_server,
        tmp_path,
        snapshot_auto_naming="mediaSessionId",
        snapshot_auto_streams=[{"name": "by-name", "naming": "streamName"}],
    )
    pubs = [ffmpeg_testsrc(srv.rtmp_url(n), size="320x240") for n in ("by-name", "by-session")]
    try:
        for name in ("by-name", "by-session"):
            srv.wait_stream(name, frames=40)

        def gallery() -> dict:
            status, raw, _ = srv.request("GET", "/gallery.json")
            assert status == 200
            streams = {s["name"]: s for s in json.loads(raw)["streams"]}
            return streams if all(s["snapshot"] for s in streams.values()) else {}

        streams = wait_for(gallery, 15, "a snapshot of both streams in the gallery")
        assert re.search(r"^/snapshots/by-name/by-name_\d{8}\.png$", streams["by-name"]["snapshot"])
        msid = streams["by-session"]["mediaSessionId"]
        assert streams["by-session"]["snapshot"].startswith(f"/snapshots/{msid}/by-session_")
    finally:
        for p in pubs:
            p.stop()


def test_after_a_sigkill_the_half_written_file_goes_and_numbering_continues(make_server, tmp_path):
    """A server killed in the middle of a write leaves ``.NAME_N.png.tmp``; when the stream
    is published again (on a restarted server) that file is removed and numbering goes on
    after the highest complete file."""
    import signal

    srv = auto_server(make_server, tmp_path, snapshot_auto_rate=5)
    pub = ffmpeg_testsrc(srv.rtmp_url("crash"), size="320x240")
    folder = tmp_path / "snaps" / "crash"
    try:
        wait_for(lambda: len(numbered(folder)) >= 3, 15, "a few files")
        os.kill(srv.proc.pid, signal.SIGKILL)
        srv.proc.wait()
    finally:
        pub.stop()
    last = numbered(folder)[-1]
    partial = folder / f".crash_{last + 1:08d}.png.tmp"
    partial.write_bytes(b"\x89PNG half of it")  # what the kill left mid-write
    srv2 = auto_server(make_server, tmp_path, snapshot_auto_rate=5)
    publish_for(srv2, "crash", 2)
    assert not partial.exists()
    srv2.wait_log(r"stream crash: removed \.crash_\d+\.png\.tmp, left half-written")
    after = numbered(folder)
    assert after[after.index(last) + 1] == last + 1  # numbering goes on from the disk
