"""The REST API against its OpenAPI description, fuzzed by schemathesis on a live server."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def test_rest_api_conforms_to_its_openapi_description(make_server):
    st = Path(sys.executable).with_name("schemathesis")
    if not st.exists() and not shutil.which("schemathesis"):
        pytest.skip("schemathesis not installed")
    # Pulls only from this machine: generated URLs must never reach another host.
    srv = make_server(
        snapshot={"snapshot_taking_interval_ms": 300},
        pull={"allowed_hosts": ["127.0.0.1"]},
        rtsp={"connect_timeout_s": 1.0},
    )
    out = subprocess.run(
        [
            str(st) if st.exists() else "schemathesis",
            "run",
            f"{srv.http}/openapi.yaml",
            "--checks",
            "all",
            "--max-examples",
            "30",
            "--request-timeout",
            "10",
            "--generation-deterministic",
            "--exclude-path",
            "/rest-api/pull/startup",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-4000:]
    assert "generated" in out.stdout
    assert srv.request("GET", "/healthz")[0] == 200
    # (aiohttp itself logs the malformed HTTP it answered 400; streamsnap logged no error)
    assert " ERROR streamsnap" not in srv.log
