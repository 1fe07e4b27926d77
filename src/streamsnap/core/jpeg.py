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


def _headers(data: bytes) -> tuple[int, int, int]:
    """``(SOF offset, SOS offset, end of the SOS segment)`` of a baseline JPEG of our own
    encoder; ValueError for anything else (restart markers already in it, no scan)."""
    if data[:2] != b"\xff\xd8" or data[-2:] != b"\xff\xd9":
        raise ValueError("not a whole JPEG")
    pos, sof = 2, -1
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ValueError(f"no marker at byte {pos}")
        marker = data[pos + 1]
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == 0xC0:
            sof = pos
        elif marker == 0xDD:  # DRI: the strip already has restart intervals
            raise ValueError("the strip has restart markers of its own")
        elif marker == 0xDA:
            if sof < 0:
                raise ValueError("no baseline frame header before the scan")
            return sof, pos, pos + 2 + length
        pos += 2 + length
    raise ValueError("no scan")


MAX_RESTART_INTERVAL = 0xFFFF  # DRI's field: MCUs between restart markers


def join_strips(strips: list[bytes], height: int, restart_interval: int) -> bytes:
    """One JPEG of ``height`` rows from JPEGs of its horizontal strips, top first.

    The strips are encoded separately (each on a core of its own) with the same tables, every
    one but the last ``restart_interval`` MCUs long (whole MCU rows). JPEG's restart markers
    are made for this: at each one, a decoder resets its DC predictions, as a strip's encoder
    started from zero. So the scans are joined with RSTn markers between them, under the
    first strip's headers with the whole height and a DRI segment. Decoded, the result is
    identical to the picture encoded in one piece."""
    if not strips:
        raise ValueError("no strips to join")
    if not 0 < restart_interval <= MAX_RESTART_INTERVAL:
        raise ValueError(f"restart interval {restart_interval} outside 1-{MAX_RESTART_INTERVAL}")
    if not 0 < height <= 0xFFFF:
        raise ValueError(f"height {height} outside what a JPEG holds")
    sof, sos, _ = _headers(strips[0])
    head = bytearray(strips[0][:sos])
    head[sof + 5 : sof + 7] = height.to_bytes(2, "big")
    out = [bytes(head), b"\xff\xdd\x00\x04", restart_interval.to_bytes(2, "big")]
    out.append(strips[0][sos:-2])  # the SOS segment and the first scan, without EOI
    tables = _tables(strips[0], sof, sos)
    for n, strip in enumerate(strips[1:]):
        s_sof, s_sos, s_scan = _headers(strip)
        if _tables(strip, s_sof, s_sos) != tables:
            raise ValueError("the strips were not encoded with the same tables")
        out.append(bytes((0xFF, 0xD0 + n % 8)))
        out.append(strip[s_scan:-2])
    out.append(b"\xff\xd9")
    return b"".join(out)


def _tables(data: bytes, sof: int, sos: int) -> bytes:
    """The headers before the scan without the frame height, which differs between strips."""
    return data[: sof + 5] + data[sof + 7 : sos]
