"""FLV from FFmpeg's pipe, cut into tags as it arrives: every tag once, in order, whatever the
reads' sizes; a stream that is not FLV, or that ends inside a tag, is an error."""

from __future__ import annotations

import random
import subprocess

import pytest

from streamsnap.core import flv
from tests.helpers.media import FFMPEG


@pytest.fixture(scope="module")
def flv_stream() -> bytes:
    source = ["-f", "lavfi", "-i", "testsrc2=size=160x120:rate=30", "-t", "2"]
    return subprocess.run(
        [FFMPEG, "-v", "error", *source, "-c:v", "libx264", "-g", "15", "-f", "flv", "pipe:1"],
        capture_output=True,
        check=True,
    ).stdout


def tags_by_hand(data: bytes) -> list[tuple[int, int, bytes]]:
    """The tags of a whole FLV file, read the plain way, for comparison."""
    pos = int.from_bytes(data[5:9], "big") + 4
    out = []
    while pos < len(data):
        size = int.from_bytes(data[pos + 1 : pos + 4], "big")
        ts = int.from_bytes(data[pos + 4 : pos + 7], "big") | (data[pos + 7] << 24)
        out.append((data[pos] & 0x1F, ts, data[pos + 11 : pos + 11 + size]))
        pos += 15 + size
    return out


@pytest.mark.parametrize("reads", ["whole", "bytes", "random"])
def test_every_tag_comes_once_in_order_whatever_the_reads(flv_stream, reads):
    tags: list = []
    parser = flv.TagParser(lambda *tag: tags.append(tag))
    if reads == "whole":
        parts = [flv_stream]
    elif reads == "bytes":
        parts = [flv_stream[i : i + 1] for i in range(len(flv_stream))]
    else:
        rng, parts, pos = random.Random(7), [], 0
        while pos < len(flv_stream):
            n = rng.randint(1, 9000)
            parts.append(flv_stream[pos : pos + n])
            pos += n
    for part in parts:
        parser.feed(part)
    parser.end()
    expected = tags_by_hand(flv_stream)
    # the sequence header, 60 frames and the end of sequence
    assert sum(1 for t in expected if t[0] == 9) == 62
    assert tags == expected


def test_a_stream_that_is_not_flv_is_refused():
    parser = flv.TagParser(lambda *tag: None)
    with pytest.raises(flv.FlvError, match="not an FLV stream"):
        parser.feed(b"RIFF\x00\x00\x00\x00WAVE")


@pytest.mark.parametrize(("cut", "where"), [(5, "header"), (40, "body")])
def test_a_stream_cut_inside_a_tag_is_an_error(flv_stream, cut, where):
    first = tags_by_hand(flv_stream)[0]
    header_end = int.from_bytes(flv_stream[5:9], "big") + 4
    assert len(first[2]) > 40
    parser = flv.TagParser(lambda *tag: None)
    parser.feed(flv_stream[: header_end + cut])
    with pytest.raises(flv.FlvError, match=f"cut inside a tag {where}"):
        parser.end()


def test_an_empty_stream_ended_before_its_header():
    with pytest.raises(flv.FlvError, match="before its header"):
        flv.TagParser(lambda *tag: None).end()


def test_a_failing_consumer_loses_no_later_tag(flv_stream):
    """A tag whose handler raised is gone; the next feed starts at the tag after it."""
    tags: list = []

    def on_tag(kind, ts, data):
        tags.append((kind, ts, data))
        if len(tags) == 3:
            raise RuntimeError("handler failed")

    parser = flv.TagParser(on_tag)
    with pytest.raises(RuntimeError):
        parser.feed(flv_stream)
    parser.feed(b"")
    parser.end()
    assert tags == tags_by_hand(flv_stream)
