"""AMF0, the value encoding of RTMP commands and metadata (Adobe's AMF0 spec).

The decoder faces the network: every length is checked against the bytes present, nesting is
bounded, and anything malformed raises :class:`AmfError` (a ``ValueError``).
"""

from __future__ import annotations

import struct
from typing import Any

NUMBER, BOOLEAN, STRING, OBJECT, MOVIECLIP, NULL, UNDEFINED, REFERENCE = range(8)
ECMA_ARRAY, OBJECT_END, STRICT_ARRAY, DATE, LONG_STRING, UNSUPPORTED = range(8, 14)
RECORDSET, XML_DOCUMENT, TYPED_OBJECT, AVMPLUS = range(14, 18)

MAX_DEPTH = 32

_DOUBLE = struct.Struct(">d")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


class AmfError(ValueError):
    """Malformed AMF0 data."""


class Undefined:
    """AMF0 ``undefined`` (distinct from ``null``, which decodes to None)."""

    _instance: Undefined | None = None

    def __new__(cls) -> Undefined:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "undefined"


UNDEFINED_VALUE = Undefined()


def decode_all(data: bytes | memoryview) -> list[Any]:
    """Decode a sequence of AMF0 values filling ``data``."""
    buf = bytes(data)
    out = []
    pos = 0
    while pos < len(buf):
        value, pos = _value(buf, pos, 0)
        out.append(value)
    return out


def _need(buf: bytes, pos: int, n: int) -> None:
    if pos + n > len(buf):
        have = len(buf) - pos
        raise AmfError(f"truncated AMF0 data: need {n} bytes at offset {pos}, have {have}")


def _utf8(buf: bytes, pos: int, n: int) -> tuple[str, int]:
    _need(buf, pos, n)
    try:
        return buf[pos : pos + n].decode("utf-8"), pos + n
    except UnicodeDecodeError:
        raise AmfError(f"AMF0 string at offset {pos} is not UTF-8") from None


def _short_string(buf: bytes, pos: int) -> tuple[str, int]:
    _need(buf, pos, 2)
    (n,) = _U16.unpack_from(buf, pos)
    return _utf8(buf, pos + 2, n)


def _properties(buf: bytes, pos: int, depth: int) -> tuple[dict[str, Any], int]:
    out: dict[str, Any] = {}
    while True:
        _need(buf, pos, 3)
        if buf[pos : pos + 3] == b"\x00\x00\x09":
            return out, pos + 3
        key, pos = _short_string(buf, pos)
        _need(buf, pos, 1)
        value, pos = _value(buf, pos, depth + 1)
        out[key] = value


def _value(buf: bytes, pos: int, depth: int) -> tuple[Any, int]:
    if depth > MAX_DEPTH:
        raise AmfError(f"AMF0 nesting deeper than {MAX_DEPTH}")
    _need(buf, pos, 1)
    marker = buf[pos]
    pos += 1
    if marker == NUMBER:
        _need(buf, pos, 8)
        return _DOUBLE.unpack_from(buf, pos)[0], pos + 8
    if marker == BOOLEAN:
        _need(buf, pos, 1)
        return buf[pos] != 0, pos + 1
    if marker == STRING:
        return _short_string(buf, pos)
    if marker == OBJECT:
        return _properties(buf, pos, depth)
    if marker in (NULL, UNSUPPORTED):
        return None, pos
    if marker == UNDEFINED:
        return UNDEFINED_VALUE, pos
    if marker == REFERENCE:
        _need(buf, pos, 2)
        return None, pos + 2  # references to earlier complex values: not needed for RTMP ingest
    if marker == ECMA_ARRAY:
        _need(buf, pos, 4)  # the count is a hint only; the end marker is what ends it
        return _properties(buf, pos + 4, depth)
    if marker == STRICT_ARRAY:
        _need(buf, pos, 4)
        (count,) = _U32.unpack_from(buf, pos)
        pos += 4
        if count > len(buf) - pos:  # every value takes at least one byte
            raise AmfError(f"AMF0 strict array of {count} items in {len(buf) - pos} bytes")
        items = []
        for _ in range(count):
            item, pos = _value(buf, pos, depth + 1)
            items.append(item)
        return items, pos
    if marker == DATE:
        _need(buf, pos, 10)
        return _DOUBLE.unpack_from(buf, pos)[0], pos + 10
    if marker in (LONG_STRING, XML_DOCUMENT):
        _need(buf, pos, 4)
        (n,) = _U32.unpack_from(buf, pos)
        return _utf8(buf, pos + 4, n)
    if marker == TYPED_OBJECT:
        _, pos = _short_string(buf, pos)
        return _properties(buf, pos, depth)
    if marker == OBJECT_END:
        raise AmfError(f"AMF0 object end marker outside an object at offset {pos - 1}")
    raise AmfError(f"unsupported AMF0 type marker 0x{marker:02x} at offset {pos - 1}")


def encode(*values: Any) -> bytes:
    """Encode values as AMF0 (None → null, dict → object, list → strict array)."""
    out = bytearray()
    for value in values:
        _encode(out, value)
    return bytes(out)


def _encode_key(out: bytearray, key: str) -> None:
    raw = key.encode("utf-8")
    out += _U16.pack(len(raw)) + raw


def _encode(out: bytearray, value: Any) -> None:
    if value is None:
        out.append(NULL)
    elif value is UNDEFINED_VALUE:
        out.append(UNDEFINED)
    elif isinstance(value, bool):
        out += bytes((BOOLEAN, int(value)))
    elif isinstance(value, (int, float)):
        out.append(NUMBER)
        out += _DOUBLE.pack(float(value))
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        if len(raw) <= 0xFFFF:
            out.append(STRING)
            out += _U16.pack(len(raw)) + raw
        else:
            out.append(LONG_STRING)
            out += _U32.pack(len(raw)) + raw
    elif isinstance(value, dict):
        out.append(OBJECT)
        for key, item in value.items():
            _encode_key(out, str(key))
            _encode(out, item)
        out += b"\x00\x00\x09"
    elif isinstance(value, (list, tuple)):
        out.append(STRICT_ARRAY)
        out += _U32.pack(len(value))
        for item in value:
            _encode(out, item)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as AMF0")
