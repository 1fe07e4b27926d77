from __future__ import annotations

import re

import pytest

from streamsnap.core.names import safe_name

HOSTILE = [
    "../x",
    "../../etc/passwd",
    "/abs",
    "a/b",
    "a\\b",
    "x\x00y",
    "\x01\x02",
    "a" * 10000,
    "CON",
    "con.txt",
    "LPT1",
    "..",
    ".",
    "",
    " ",
    "ünïcode",
    "-rf",
    ".hidden",
    "rtsp://admin:secret@10.0.0.7:554/Streaming/101",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_map_to_safe_folder_names(name):
    safe = safe_name(name)
    assert re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", safe), safe
    assert len(safe) <= 110 and safe not in (".", "..")
    assert safe.split(".")[0].upper() not in {"CON", "PRN", "AUX", "NUL", "LPT1"}
    assert "secret" not in safe and "admin" not in safe
    assert safe_name(name) == safe  # stable


def test_plain_names_stay_as_they_are():
    assert safe_name("cam1") == "cam1"
    assert safe_name("Front-Door_2.hd") == "Front-Door_2.hd"


def test_different_names_never_share_a_folder():
    names = ["a/b", "a_b", "a\\b", "a:b", "a" * 200, "a" * 201, "../x", "x"]
    assert len({safe_name(n) for n in names}) == len(names)


def test_credentials_do_not_change_the_camera_folder():
    assert safe_name("rtsp://u:p@cam.local/s1") == safe_name("rtsp://cam.local/s1")
    assert safe_name("rtsp://cam.local/s1").startswith("rtsp_cam.local_s1")
