"""The size of a JPEG picture, read from its frame header: enough to serve an MJPEG camera's
own frame without decoding it."""

from __future__ import annotations

# start-of-frame markers (baseline, extended, progressive, lossless, ...), not DHT/JPG/DAC
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE = frozenset(range(0xD0, 0xD9)) | {0x01}  # RSTn, SOI, TEM: no length field


def size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` of the JPEG ``data``, or None if it is not a well-formed JPEG that
    any viewer shows: one without Huffman tables (the "AVI1" MJPEG of USB cameras, which
    leaves out the standard tables) is None too, and gets decoded and encoded instead."""
    if data[:2] != b"\xff\xd8":
        return None
    pos, end = 2, len(data)
    found: tuple[int, int] | None = None
    tables = False
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2:
            return None
        if marker in _SOF:
            if pos + 9 > end:
                return None
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")
            if not (width and height):
                return None
            found = width, height
        elif marker == 0xC4:  # DHT
            tables = True
        elif marker == 0xDA:  # start of scan: the headers are over
            return found if tables else None
        pos += 2 + length
    return None
