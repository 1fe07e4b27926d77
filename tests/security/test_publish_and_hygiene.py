"""Issue "Safe by default", points 5, 8 and 11: publishing covered by auth, one stream-name rule
on every protocol, output sizes clamped, secrets masked, no symlinks followed out of folders,
strong password hashes, a bounded number of auto-snapshot session folders."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

from streamsnap.core import imaging
from streamsnap.core.app import App
from streamsnap.core.auth import Authenticator, hash_password, parse_hash, verify_password
from streamsnap.core.config import Config
from streamsnap.core.errors import ConfigError
from streamsnap.core.names import MAX_PUBLISH_NAME_BYTES, check_publish_name
from streamsnap.core.supervisor import mask_credentials
from streamsnap.plugins.folder_watch import FolderWatcher
from streamsnap.plugins.storage_local import LocalStorage
from tests.helpers.media import ffmpeg_testsrc
from tests.helpers.rtmp_client import RtmpClient
from tests.helpers.server import wait_for

TOKEN = "t0ken-for-publishers"


# ---------------------------------------------------------------- point 5: publishing and auth
@pytest.mark.e2e
def test_rtmp_publish_needs_a_key_or_the_token_when_auth_is_on(make_server):
    srv = make_server(auth={"token": TOKEN, "publish_keys": [{"stream": "keyed", "key": "k1"}]})
    bare = ffmpeg_testsrc(srv.rtmp_url("bare"), size="160x120", audio=False)
    good = ffmpeg_testsrc(srv.rtmp_url(f"good?key={TOKEN}"), size="160x120", audio=False)
    try:
        assert bare.proc.wait(15) != 0
        assert "publish key or API token required" in bare.stderr
        assert "[auth] open_publish = true" in bare.stderr
        headers = {"Authorization": f"Bearer {TOKEN}"}
        wait_for(lambda: _find(srv, "good", headers), 15, "the publisher with the token as key")
        # the token is accepted in place of a stream's own key, in the connect URL too
        c = RtmpClient("127.0.0.1", srv.ports["rtmp"])
        try:
            assert "NetStream.Publish.Start" in repr(c.publish("keyed", app=f"live?key={TOKEN}"))
        finally:
            c.close()
    finally:
        bare.stop()
        good.stop()
    assert TOKEN not in srv.log  # the key in the publisher's URL is not logged


@pytest.mark.e2e
def test_open_publish_lets_publishers_in_without_a_key(make_server):
    srv = make_server(auth={"token": TOKEN, "open_publish": True})
    pub = ffmpeg_testsrc(srv.rtmp_url("open"), size="160x120", audio=False)
    try:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        wait_for(lambda: _find(srv, "open", headers), 15, "the publisher without a key")
    finally:
        pub.stop()
    # WHIP too: the empty offer is admitted, then fails for lack of video (400, not 401)
    status, body = _whip(srv, "openwhip")
    assert status == 400 and "no video" in body
    assert srv.request("POST", "/rest-api/stream/find_all")[0] == 401  # the API stays guarded


def test_publish_key_rule_with_auth_on():
    settings = "([auth] publish_keys, or [auth] open_publish = true)"
    a = Authenticator(TOKEN, [], [{"stream": "cam1", "key": "k1"}])
    assert a.check_publish_key("cam2", "") == f"publish key or API token required {settings}"
    assert a.check_publish_key("cam2", "k1") == f"wrong publish key or API token {settings}"
    assert a.check_publish_key("cam2", TOKEN) is None
    assert a.check_publish_key("cam1", TOKEN) is None  # the token beats a stream's own key
    assert a.check_publish_key("cam1", "") == "publish key required"
    opened = Authenticator(TOKEN, [], [{"stream": "cam1", "key": "k1"}], open_publish=True)
    assert opened.check_publish_key("cam2", "") is None
    assert opened.check_publish_key("cam1", "") == "publish key required"  # its key still holds


@pytest.mark.e2e
def test_whip_without_credentials_is_refused_when_auth_is_on(make_server):
    srv = make_server(auth={"token": TOKEN})
    assert _whip(srv, "nokey")[0] == 401


def _find(srv, name: str, headers: dict[str, str]) -> bool:
    req = urllib.request.Request(
        srv.http + "/rest-api/stream/find",
        data=json.dumps({"name": name}).encode(),
        method="POST",
        headers={"Content-Type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())[0]["framesIn"] > 0
    except urllib.error.HTTPError:
        return False


def _whip(srv, path: str) -> tuple[int, str]:
    status, raw, _ = srv.request(
        "POST", f"/whip/{path}", b"v=0\r\n", content_type="application/sdp"
    )
    return status, raw.decode()


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("rtsp://localhost:25542/cam", "'://'"),
        ("a\nb", "control characters"),
        ("tab\there", "control characters"),
        ("del\x7f", "control characters"),
        ("c1\x85", "control characters"),
        ("line\u2028sep", "control characters"),
        ("lone\ud800", "control characters"),
        ("", "empty"),
        ("é" * 128, "255 bytes"),  # 256 bytes in UTF-8
    ],
)
def test_publish_name_rule_refuses(name, why):
    reason = check_publish_name(name)
    assert reason is not None and why in reason


@pytest.mark.parametrize("name", ["cam1", "a/b", "x" * MAX_PUBLISH_NAME_BYTES, "ünïcode-名前"])
def test_publish_name_rule_accepts(name):
    assert check_publish_name(name) is None


@pytest.mark.e2e
def test_one_name_rule_on_rtmp_whip_and_websocket(make_server):
    srv = make_server(webrtc={"ice_addresses": ["127.0.0.1"]})
    c = RtmpClient("127.0.0.1", srv.ports["rtmp"])
    try:
        reply = repr(c.publish("rtsp://localhost:25542/cam"))
        assert "NetStream.Publish.BadName" in reply and "'://'" in reply
    finally:
        c.close()
    c = RtmpClient("127.0.0.1", srv.ports["rtmp"])
    try:
        reply = repr(c.publish("n" * 256))
        assert "NetStream.Publish.BadName" in reply and "255 bytes" in reply
    finally:
        c.close()

    status, body = _whip(srv, "forged%0A2030-01-01%20INFO%20streamsnap:%20all%20is%20well")
    assert status == 400 and "control characters" in body
    assert not any(line.startswith("2030-01-01") for line in srv.lines)
    status, body = _whip(srv, "rtsp:%2F%2Flocalhost:25542%2Fcam")
    assert status == 400 and "'://'" in body

    async def ws_publish(name: str) -> dict:
        url = f"ws://127.0.0.1:{srv.ports['ws']}/"
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            await ws.send_json({"message": "connection", "data": [{}]})
            assert (await ws.receive_json(timeout=10))["message"] == "getUserData"
            p = {"mediaSessionId": "m1", "name": name, "sdp": "v=0\r\n"}
            await ws.send_json({"message": "publishStream", "data": [p]})
            return (await ws.receive_json(timeout=10))["data"][0]

    refused = asyncio.run(ws_publish("rtsp://localhost:25542/cam"))
    assert refused["status"] == "FAILED" and "'://'" in refused["info"]
    _, raw, _ = srv.request("GET", "/metrics")
    assert 'streamsnap_refused_total{reason="bad_name"} 5' in raw.decode()


# ---------------------------------------------------------------- point 8: amplification
@pytest.mark.parametrize(
    ("source", "asked", "out"),
    [
        ((320, 16), (None, 512), (640, 32)),  # the 10240x512
        ((320, 16), (8192, 8192), (32, 32)),  # square asked: 2x the short side wins
        ((320, 16), (100, None), (100, 5)),  # shrinking is untouched
        ((1280, 720), (None, None), (1280, 720)),  # no scaling asked: the source itself
        ((1280, 720), (2560, None), (2560, 1440)),  # exactly 2x is allowed
        ((6000, 100), (12000, None), (8192, 136)),  # 8192 per side
        ((8000, 8000), (16000, 16000), (5760, 5760)),  # 33 Mpx (7680x4320 pixels)
    ],
)
def test_output_size_is_clamped_keeping_the_aspect_ratio(source, asked, out):
    w, h = imaging.target_size(*source, *asked)
    assert (w, h) == out
    assert w <= 8192 and h <= 8192 and w * h <= imaging.MAX_OUTPUT_PIXELS


@pytest.mark.e2e
def test_a_thin_stream_is_not_blown_up(make_server):
    srv = make_server()
    pub = ffmpeg_testsrc(srv.rtmp_url("thin"), size="320x16", audio=False)
    try:
        srv.wait_stream("thin", frames=3)
        for query, size in (("height=512", (640, 32)), ("width=8192&height=8192", (32, 32))):
            status, raw, _ = srv.request("GET", f"/streams/thin/snapshot.png?{query}")
            assert status == 200, raw
            assert Image.open(io.BytesIO(raw)).size == size
    finally:
        pub.stop()


def test_max_concurrent_snapshots_is_on_by_default():
    assert Config().limits.max_concurrent_snapshots == 128 * (os.cpu_count() or 1)


# ---------------------------------------------------------------- point 11: hygiene
@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (
            "srt://10.0.0.7:9000?streamid=cam&passphrase=s3cretpass&latency=200",
            "srt://10.0.0.7:9000?streamid=cam&passphrase=***&latency=200",
        ),
        ("rtmp://h/live/x?key=k1", "rtmp://h/live/x?key=***"),
        ("https://h/a.m3u8?TOKEN=abc&x=1", "https://h/a.m3u8?TOKEN=***&x=1"),
        ("https://h/a?access_token=abc#frag", "https://h/a?access_token=***#frag"),
        ("https://h/a?api_key=1&auth=2&secret=3", "https://h/a?api_key=***&auth=***&secret=***"),
        ("https://h/a?pass=1&passwd=2&password=3", "https://h/a?pass=***&passwd=***&password=***"),
        ("rtsp://u:p@h/x?auth_token=t -f flv", "rtsp://***@h/x?auth_token=*** -f flv"),
        ("srt://h:1?pbkeylen=16&keyframes=2", "srt://h:1?pbkeylen=16&keyframes=2"),
        ("no url, key=value stays", "no url, key=value stays"),
    ],
)
def test_secrets_in_url_queries_are_masked(text, masked):
    assert mask_credentials(text) == masked


def test_find_shows_stream_names_with_secrets_masked():
    app = App(Config())
    stream = app.new_stream("srt://cam:9000?passphrase=s3cretpass&latency=20", "srt")
    from streamsnap.plugins.rest import stream_json

    assert stream_json(stream)["name"] == "srt://cam:9000?passphrase=***&latency=20"


def test_hash_password_is_strong_and_still_verifies():
    encoded = hash_password("correct horse")
    n, r, _, _, _ = parse_hash(encoded)
    assert n >= 1 << 17 and r == 8
    assert verify_password("correct horse", encoded)
    assert not verify_password("wrong horse", encoded)


def test_a_weak_password_hash_stops_the_start(tmp_path):
    weak = hash_password("pw", n=1 << 13)
    with pytest.raises(ConfigError) as caught:
        Authenticator("", [{"name": "ops", "password": weak}], [])
    message = str(caught.value)
    assert "'ops'" in message and "N=8192" in message and "streamsnap hash-password" in message
    Authenticator("", [{"name": "ops", "password": hash_password("pw", n=1 << 14)}], [])


async def test_folder_watch_does_not_follow_symlinks_out_of_its_folders(tmp_path, caplog):
    watched = tmp_path / "snaps"
    (watched / "cam").mkdir(parents=True)
    secret = tmp_path / "outside" / "passwd.png"
    secret.parent.mkdir()
    secret.write_bytes(b"root:x:0:0")
    link = watched / "cam" / "leak.png"
    link.symlink_to(secret)
    (watched / "cam" / "real.png").write_bytes(b"png")
    (watched / "dirlink").symlink_to(secret.parent, target_is_directory=True)

    cfg = Config()
    cfg.snapshot.snapshot_auto_dir = str(watched)
    watcher = FolderWatcher(App(cfg))
    reported: list[str] = []
    watcher._report = reported.append
    with caplog.at_level(logging.WARNING, logger="streamsnap.plugins.folder_watch"):
        watcher.complete(str(link))
        watcher.complete(str(watched / "dirlink" / "passwd.png"))
        watcher.complete(str(watched / "cam" / "real.png"))
        await asyncio.sleep(0.05)
    assert reported == [str(watched / "cam" / "real.png")]
    assert str(link) in caplog.text and "symlink" in caplog.text
    assert str(watched / "dirlink" / "passwd.png") in caplog.text


async def test_local_storage_does_not_follow_symlinks(tmp_path, caplog):
    src = tmp_path / "snaps" / "cam"
    src.mkdir(parents=True)
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"root:x:0:0")
    (src / "leak.png").symlink_to(secret)
    (src / "real.png").write_bytes(b"png")
    archive = tmp_path / "archive"
    (archive).mkdir()
    (archive / "cam").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    storage = LocalStorage({"dir": str(archive)})
    with pytest.raises(OSError) as caught:
        await storage.store(None, str(src / "leak.png"))
    assert "leak.png" in str(caught.value) and "symlink" in str(caught.value)
    # the archive's own folder for "cam" is a symlink out of it: nothing is written there
    with pytest.raises(OSError) as caught:
        await storage.store(None, str(src / "real.png"))
    assert "symlink" in str(caught.value)
    assert not list((tmp_path / "elsewhere").iterdir())
    (archive / "cam").unlink()
    assert Path(await storage.store(None, str(src / "real.png"))).read_bytes() == b"png"


@pytest.mark.e2e
def test_auto_snapshot_session_folders_are_bounded(make_server, tmp_path):
    root = tmp_path / "snaps"
    for i, name in enumerate(("old1", "old2", "old3")):  # ended sessions of an earlier run
        folder = root / name
        folder.mkdir(parents=True)
        (folder / f"{name}_00000001.png").write_bytes(b"png")
        os.utime(folder, (time.time() - 300 + i, time.time() - 300 + i))
    (root / "notes").mkdir()  # not a session folder: never removed
    (root / "notes" / "readme.txt").write_text("mine")
    os.utime(root / "notes", (time.time() - 900, time.time() - 900))
    srv = make_server(
        snapshot={
            "snapshot_auto_enabled": True,
            "snapshot_auto_dir": str(root),
            "snapshot_auto_naming": "streamName",
            "snapshot_auto_rate": 1,
            "snapshot_auto_max_sessions": 3,
        }
    )
    live = ffmpeg_testsrc(srv.rtmp_url("live1"), size="160x120", audio=False)
    try:
        wait_for(lambda: (root / "live1").is_dir(), 15, "live1's folder")
        # live1 is the 5th folder: the two oldest session folders go; "notes" stays
        assert sorted(p.name for p in root.iterdir()) == ["live1", "notes", "old3"]
        srv.wait_log(r"removed auto-snapshot folder .*old1 .*snapshot_auto_max_sessions")
        second = ffmpeg_testsrc(srv.rtmp_url("live2"), size="160x120", audio=False)
        third = ffmpeg_testsrc(srv.rtmp_url("live3"), size="160x120", audio=False)
        try:
            for name in ("live2", "live3"):
                wait_for(lambda name=name: (root / name).is_dir(), 15, f"{name}'s folder")
            # old3 went; the folders of live streams are never removed, even over the bound
            names = sorted(p.name for p in root.iterdir())
            assert names == ["live1", "live2", "live3", "notes"]
        finally:
            second.stop()
            third.stop()
    finally:
        live.stop()
