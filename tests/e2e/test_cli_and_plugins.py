"""The command line, and a real third-party plugin installed with pip and found by entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from streamsnap import __version__
from tests.helpers.media import ffmpeg_testsrc

pytestmark = pytest.mark.e2e


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamsnap", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def test_version_both_ways():
    assert run_cli("--version").stdout.strip() == f"streamsnap {__version__}"
    exe = Path(sys.executable).with_name("streamsnap")
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"streamsnap {__version__}"


def test_plugins_lists_builtins_with_hooks():
    out = run_cli("plugins", "--json")
    assert out.returncode == 0, out.stderr
    plugins = {p["name"]: p for p in json.loads(out.stdout)}
    assert plugins["rtmp"]["source"] == "built-in"
    assert "register_routes" in plugins["rest"]["hooks"]


def test_bad_config_refuses_to_start(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nrtmp_port = 'x'\n")
    out = run_cli("serve", "--config", str(bad))
    assert out.returncode == 2
    assert "[server] rtmp_port = 'x'" in out.stderr


def test_snapshot_command_writes_png(server, tmp_path):
    pub = ffmpeg_testsrc(server.rtmp_url("clicam"), size="640x360")
    try:
        server.wait_stream("clicam", frames=3)
        out = run_cli("snapshot", "clicam", "-o", str(tmp_path / "x.png"), "--server", server.http)
        assert out.returncode == 0, out.stderr
        assert Image.open(tmp_path / "x.png").size == (640, 360)
        missing = run_cli("snapshot", "nope", "--server", server.http, cwd=tmp_path)
        assert missing.returncode == 1 and "404 Stream not found" in missing.stderr
    finally:
        pub.stop()


def test_third_party_plugin_is_discovered_and_called(installed_plugin, make_server, tmp_path):
    events = tmp_path / "events.jsonl"
    env = {"PYTHONPATH": str(installed_plugin), "HELLO_EVENTS": str(events)}
    listed = run_cli("plugins", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "hello" in listed.stdout and "1.2.3" in listed.stdout
    assert "streamsnap-hello" in listed.stdout and "on_publish" in listed.stdout

    srv = make_server(env=env)
    status, raw, _ = srv.request("GET", "/hello")
    assert (status, json.loads(raw)) == (200, {"hello": "world"})
    pub = ffmpeg_testsrc(srv.rtmp_url("plugged"), size="320x240")
    try:
        info = srv.wait_stream("plugged", frames=3)
    finally:
        pub.stop()
    srv.wait_gone("plugged")
    seen = [json.loads(line) for line in events.read_text().splitlines()]
    kinds = [e["event"] for e in seen]
    assert kinds == ["startup", "publish", "keyframe", "unpublish"], seen
    assert seen[1] == {
        "event": "publish",
        "name": "plugged",
        "protocol": "rtmp",
        "mediaSessionId": info["mediaSessionId"],
    }


def test_disabled_plugin_is_not_loaded(installed_plugin, make_server, tmp_path):
    env = {"PYTHONPATH": str(installed_plugin), "HELLO_EVENTS": str(tmp_path / "e.jsonl")}
    srv = make_server(env=env, plugins={"disabled": ["hello"]})
    status, _, _ = srv.request("GET", "/hello")
    assert status == 404
    assert not (tmp_path / "e.jsonl").exists()
