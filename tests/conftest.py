from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.server import ServerProcess, write_config


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator:
    """Start servers with a config built from keyword sections; all are stopped afterwards."""
    started: list[ServerProcess] = []

    def start(env: dict[str, str] | None = None, **sections: dict) -> ServerProcess:
        sections.setdefault("server", {})
        sections["server"] = {
            "host": "127.0.0.1",
            "http_port": 0,
            "ws_port": 0,
            "rtmp_port": 0,
            **sections["server"],
        }
        config = write_config(tmp_path / f"streamsnap-{len(started)}.toml", **sections)
        server = ServerProcess(config, env=env, cwd=tmp_path)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def server(make_server) -> ServerProcess:
    return make_server(snapshot={"snapshot_taking_interval_ms": 3000})


@pytest.fixture
def make_camera() -> Iterator:
    """Start real RTSP cameras (GStreamer); all are stopped afterwards."""
    from tests.helpers.rtsp import RtspCamera, camera_available

    if not camera_available():
        pytest.skip("GStreamer RTSP server (python3-gi, gir1.2-gst-rtsp-server-1.0) not installed")
    cameras: list[RtspCamera] = []

    def start(**kwargs) -> RtspCamera:
        camera = RtspCamera(**kwargs)
        cameras.append(camera)
        return camera

    yield start
    for camera in cameras:
        camera.stop()


@pytest.fixture(scope="session")
def installed_plugin(tmp_path_factory) -> Path:
    """tests/fixtures/streamsnap-hello installed with pip into a folder (PYTHONPATH it)."""
    from tests.helpers.packages import HELLO, pip_install_target

    return pip_install_target(HELLO, tmp_path_factory.mktemp("hello-site"))
