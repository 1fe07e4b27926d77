from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamsnap.plugins.rtmp.chunks import (
    PREALLOCATE_MAX,
    ChunkReader,
    Message,
    RtmpProtocolError,
    encode_message,
)


def feed_in_pieces(reader: ChunkReader, data: bytes, cuts: list[int]) -> list[Message]:
    out = []
    pos = 0
    for cut in [*sorted(set(c % (len(data) + 1) for c in cuts)), len(data)]:
        out += reader.feed(data[pos:cut])
        pos = cut
    return out


messages = st.lists(
    st.tuples(
        st.integers(3, 400),
        st.sampled_from([8, 9, 18, 20]),
        st.integers(0, 5),
        st.integers(0, 0xFFFFFFFF),
        st.binary(max_size=2000),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(messages, st.sampled_from([128, 200, 4096, 65536]), st.lists(st.integers(0, 1 << 20)))
def test_messages_survive_any_tcp_split(msgs, chunk_size, cuts):
    reader = ChunkReader()
    reader.chunk_size = chunk_size
    wire = b"".join(encode_message(c, t, s, ts, p, chunk_size) for c, t, s, ts, p in msgs)
    got = feed_in_pieces(reader, wire, cuts)
    assert [(m.csid, m.type_id, m.stream_id, m.timestamp, m.payload) for m in got] == msgs


def test_compressed_headers_and_deltas():
    # type 0, then type 1 (delta + new length), type 2 (delta), type 3 (repeat delta)
    r = ChunkReader()
    wire = (
        bytes([0x06])
        + (1000).to_bytes(3, "big")
        + (2).to_bytes(3, "big")
        + b"\x09"
        + struct.pack("<I", 1)
        + b"ab"
    )
    wire += bytes([0x46]) + (40).to_bytes(3, "big") + (3).to_bytes(3, "big") + b"\x09" + b"cde"
    wire += bytes([0x86]) + (33).to_bytes(3, "big") + b"fgh"
    wire += bytes([0xC6]) + b"ijk"
    got = r.feed(wire)
    assert [(m.timestamp, m.payload, m.stream_id) for m in got] == [
        (1000, b"ab", 1),
        (1040, b"cde", 1),
        (1073, b"fgh", 1),
        (1106, b"ijk", 1),
    ]


def test_extended_timestamp_and_continuations():
    r = ChunkReader()
    payload = bytes(range(256)) * 2
    wire = encode_message(5, 9, 1, 0x01000000, payload, 128)
    assert r.feed(wire) == [Message(9, 1, 0x01000000, payload, 5)]


def test_set_chunk_size_applies_to_the_following_chunks():
    r = ChunkReader()
    wire = encode_message(2, 1, 0, 0, struct.pack(">I", 4096), 128)
    big = bytes(3000)
    wire += encode_message(6, 9, 1, 0, big, 4096)
    got = r.feed(wire)
    assert got[-1].payload == big and r.chunk_size == 4096


def test_oversized_message_is_refused():
    r = ChunkReader(max_message_bytes=1000)
    with pytest.raises(RtmpProtocolError, match="exceeds"):
        r.feed(encode_message(6, 9, 1, 0, bytes(2000), 128))


def test_too_many_chunk_streams_is_refused():
    r = ChunkReader()
    wire = b"".join(encode_message(3 + i, 9, 1, 0, b"x", 128) for i in range(100))
    with pytest.raises(RtmpProtocolError, match="chunk streams"):
        r.feed(wire)


def test_unfinished_messages_are_bounded():
    r = ChunkReader(max_message_bytes=10_000)
    with pytest.raises(RtmpProtocolError):
        for csid in range(3, 60):  # many messages each left one byte short of complete
            r.feed(encode_message(csid, 9, 1, 0, bytes(9999), 128)[:-1])


def test_a_message_spanning_chunks_is_assembled_in_one_buffer():
    payload = bytes(range(256)) * 40  # 10240 bytes: 80 chunks of 128
    wire = encode_message(6, 9, 1, 40, payload, 128)
    r = ChunkReader()
    assert r.feed(wire[:200]) == []
    assert r.buffered == len(payload) + len(wire[:200]) - 12 - 128  # its buffer, and the rest
    (msg,) = r.feed(wire[200:])
    assert msg.payload == payload and isinstance(msg.payload, bytearray)
    assert r.buffered == 0
    (small,) = r.feed(encode_message(6, 9, 1, 80, b"one chunk", 128))
    assert small.payload == b"one chunk" and isinstance(small.payload, bytes)


def test_a_large_announced_message_is_not_held_before_it_comes():
    r = ChunkReader(max_message_bytes=16 << 20)
    wire = encode_message(6, 9, 1, 0, bytes(8 << 20), 4096)
    r.chunk_size = 4096
    assert r.feed(wire[: 12 + 4096]) == []
    assert r.buffered == 4096  # not the 8 MiB its header announced
    (msg,) = r.feed(wire[12 + 4096 :])
    assert len(msg.payload) == 8 << 20 and r.buffered == 0
    small = encode_message(7, 9, 1, 0, bytes(PREALLOCATE_MAX), 4096)
    assert r.feed(small[: 12 + 4096 + 50]) == []
    assert r.buffered == PREALLOCATE_MAX + 50  # made whole at its first chunk


def test_abort_releases_the_unfinished_message():
    r = ChunkReader()
    r.feed(encode_message(6, 9, 1, 0, bytes(5000), 128)[: 12 + 128 + 2 * 129])  # 3 chunks
    assert r.buffered >= 5000
    abort = encode_message(2, 2, 0, 0, struct.pack(">I", 6), 128)
    (msg,) = r.feed(abort)
    assert msg.type_id == 2 and r.buffered == 0


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(raw):
    r = ChunkReader(max_message_bytes=1 << 16)
    try:
        r.feed(raw)
    except RtmpProtocolError:
        return
    # what came, plus the buffers announced messages were given: bounded per connection
    assert r.buffered <= len(raw) + 2 * r.max_message_bytes


@settings(max_examples=1000, deadline=None)
@given(messages, st.data())
def test_fuzz_mutated_stream(msgs, data):
    wire = bytearray(b"".join(encode_message(c, t, s, ts, p, 128) for c, t, s, ts, p in msgs))
    for _ in range(data.draw(st.integers(1, 5))):
        wire[data.draw(st.integers(0, len(wire) - 1))] = data.draw(st.integers(0, 255))
    r = ChunkReader(max_message_bytes=1 << 16)
    with contextlib.suppress(RtmpProtocolError):
        r.feed(bytes(wire))
