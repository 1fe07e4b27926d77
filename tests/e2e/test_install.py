"""Install the way users do: build the wheel, pip install it into a fresh virtualenv outside the
checkout, run ``streamsnap serve`` in an empty folder, and take a snapshot from the Stream
Snapshot page in headless Chromium."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.e2e.test_webrtc_websdk import assert_red_blue, snapshot_on_our_page
from tests.helpers.browser import browser_available, chromium, make_y4m
from tests.helpers.server import ServerProcess, write_config

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not browser_available(), reason="chromium or playwright not installed"),
]

ROOT = Path(__file__).resolve().parents[2]
NPM_BUNDLE = ROOT / "node_modules" / "@flashphoner" / "websdk" / "flashphoner.js"
PACKAGED = "streamsnap/web/sdk/"
BUNDLE = PACKAGED + "flashphoner.js"
LICENSE = PACKAGED + "LICENSE.flashphoner-websdk.txt"


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result


def build_wheel(out: Path) -> Path:
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    run([*pip, "-w", str(out), str(ROOT)])
    (wheel,) = out.glob("streamsnap-*.whl")
    return wheel


def clean_env() -> dict[str, str]:
    """The environment without anything that would lead Python back to the checkout."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def test_pip_installed_wheel_serves_the_pages(tmp_path):
    wheel = build_wheel(tmp_path / "dist")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        packaged = archive.read(BUNDLE)
    assert {n for n in names if n.startswith(PACKAGED)} == {BUNDLE, LICENSE}
    assert not [n for n in names if "node_modules" in n]
    if NPM_BUNDLE.is_file():
        assert packaged == NPM_BUNDLE.read_bytes()

    # a fresh virtualenv outside the checkout; the checkout's pip installs into it (same as
    # fresh/bin/pip install, without the seconds ensurepip takes), dependencies from PyPI
    fresh = tmp_path / "fresh"
    run([sys.executable, "-m", "venv", "--without-pip", str(fresh)])
    python = fresh / "bin" / "python"
    run([sys.executable, "-m", "pip", "-q", "--python", str(python), "install", str(wheel)])
    empty = tmp_path / "empty"
    empty.mkdir()
    where = run(
        [str(python), "-c", "import streamsnap; print(streamsnap.__file__)"],
        cwd=empty,
        env=clean_env(),
    ).stdout.strip()
    assert Path(where).is_relative_to(fresh), where

    config = write_config(
        tmp_path / "streamsnap.toml",
        server={"host": "127.0.0.1", "http_port": 0, "ws_port": 0, "rtmp_port": 0},
        webrtc={"ice_addresses": ["127.0.0.1"]},
    )
    srv = ServerProcess(config, cwd=empty)
    srv.env = clean_env()
    srv.launcher = [str(fresh / "bin" / "streamsnap")]
    try:
        srv.start()
        assert "WebSDK not found" not in srv.log
        srv.wait_log("packaged with streamsnap serves the pages")
        status, body, _ = srv.request("GET", "/sdk/flashphoner.js")
        assert status == 200
        assert body == packaged
        status, _, _ = srv.request("GET", "/sdk/examples/demo/streaming/stream-snapshot/")
        assert status == 404  # the SDK's own examples come with npm only

        with chromium(tmp_path, make_y4m(tmp_path / "cam.y4m")) as browser:
            assert_red_blue(snapshot_on_our_page(browser.new_page(), srv, "installed"))
    finally:
        srv.stop()
