from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamsnap.plugins.rtmp import amf0

values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(st.lists(values, max_size=5))
def test_roundtrip(items):
    assert amf0.decode_all(amf0.encode(*items)) == items


def test_decodes_what_encoders_send():
    # connect command as FFmpeg sends it (abridged): string, number, object with nested types
    raw = (
        b"\x02\x00\x07connect"
        + b"\x00"
        + struct.pack(">d", 1.0)
        + b"\x03"
        + b"\x00\x03app\x02\x00\x04live"
        + b"\x00\x04fpad\x01\x00"
        + b"\x00\x0eobjectEncoding\x00"
        + struct.pack(">d", 0.0)
        + b"\x00\x00\x09"
    )
    assert amf0.decode_all(raw) == [
        "connect",
        1.0,
        {"app": "live", "fpad": False, "objectEncoding": 0.0},
    ]
    ecma = b"\x08\x00\x00\x00\x01\x00\x05width\x00" + struct.pack(">d", 1280) + b"\x00\x00\x09"
    assert amf0.decode_all(ecma) == [{"width": 1280.0}]
    assert amf0.decode_all(b"\x06\x05") == [amf0.UNDEFINED_VALUE, None]


@pytest.mark.parametrize(
    "raw",
    [
        b"\x02\x00\x10short",  # string longer than the data
        b"\x0a\xff\xff\xff\xff",  # strict array claiming 4 billion items
        b"\x03" * 100,  # nesting bomb
        b"\x09",  # object end outside an object
        b"\x11\x00",  # AMF3 switch
        b"\x02\x00\x02\xff\xfe",  # not UTF-8
        b"\x00\x00\x00",  # truncated number
    ],
)
def test_malformed_input_raises_amf_error(raw):
    with pytest.raises(amf0.AmfError):
        amf0.decode_all(raw)


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes_only_raise_amf_error(raw):
    with contextlib.suppress(amf0.AmfError):
        amf0.decode_all(raw)


@settings(max_examples=1000, deadline=None)
@given(st.lists(values, min_size=1, max_size=3), st.data())
def test_fuzz_mutated_valid_input(items, data):
    raw = bytearray(amf0.encode(*items))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    with contextlib.suppress(amf0.AmfError):
        amf0.decode_all(bytes(raw))
