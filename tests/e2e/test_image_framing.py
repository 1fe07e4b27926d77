"""Framing (fit, crop) on image GETs and on per-stream auto snapshots, with a real publisher."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from tests.helpers.media import ffmpeg_testsrc
from tests.helpers.server import wait_for

pytestmark = pytest.mark.e2e


def test_image_get_and_auto_snapshots_are_framed(make_server, tmp_path):
    srv = make_server(
        snapshot={
            "snapshot_auto_dir": str(tmp_path / "snaps"),
            "snapshot_auto_naming": "streamName",
            "snapshot_auto_streams": [
                {
                    "name": "framed",
                    "enabled": True,
                    "rate": 10,
                    "format": "jpeg",
                    "width": 200,
                    "height": 200,
                    "fit": "contain",
                    "crop": [0, 0, 320, 180],
                }
            ],
        }
    )
    pub = ffmpeg_testsrc(srv.rtmp_url("framed"), size="640x360", audio=False)
    try:
        srv.wait_stream("framed", frames=10)
        status, png, _ = srv.request(
            "GET", "/streams/framed/snapshot.png?width=100&height=100&fit=cover"
        )
        assert status == 200, png
        assert Image.open(io.BytesIO(png)).size == (100, 100)
        status, png, _ = srv.request("GET", "/streams/framed/snapshot.png?crop=600,300,100,100")
        assert status == 200 and Image.open(io.BytesIO(png)).size == (40, 60)  # cut to fit
        for query, named in (
            ("crop=640,0,10,10", "640x360"),  # wholly outside: the picture's size is named
            ("fit=foo", "fit='foo'"),
            ("crop=1,2,3", "crop='1,2,3'"),
        ):
            status, body, _ = srv.request("GET", f"/streams/framed/snapshot.jpg?{query}")
            message = json.loads(body)["message"]
            assert status == 400 and named in message, (query, message)
        folder = tmp_path / "snaps" / "framed"
        files = wait_for(lambda: sorted(folder.glob("*.jpg")), 15, "framed auto snapshots")
    finally:
        pub.stop()
    time.sleep(0.2)
    img = Image.open(files[0])
    assert img.format == "JPEG" and img.size == (200, 200)
    gray = np.asarray(img.convert("L"))
    # the 320x180 crop contained in 200x200: 200x112, black bars of 44 px above and below
    assert gray[:40].max() <= 12 and gray[160:].max() <= 12
    assert gray[50:150].std() > 10  # the picture itself


def test_bad_per_stream_framing_refuses_the_start_naming_the_key(make_server, tmp_path):
    with pytest.raises(RuntimeError) as err:
        make_server(snapshot={"snapshot_auto_streams": [{"name": "gate", "fit": "stretch"}]})
    assert "snapshot_auto_streams, stream 'gate': fit = 'stretch'" in str(err.value)
