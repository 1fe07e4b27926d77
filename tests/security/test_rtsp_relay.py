"""The RTSP relay reads a camera's answers as FFmpeg does, so no redirect gets past it unseen.

Each payload below came from a review of FFmpeg's reply parser (``rtsp.c``): spellings the
relay once read differently from FFmpeg, so a 3xx reached FFmpeg unrewritten. A fake camera
sends it to a relay in this process; what reaches the client (FFmpeg's side) must never name
the forbidden host nor be a redirect.
"""

from __future__ import annotations

import asyncio

import pytest

from streamsnap.plugins.pull.rtsp_relay import RtspRelay, read_answer

FORBIDDEN = b"127.0.0.9:25542"
REDIRECT = b"rtsp://" + FORBIDDEN + b"/x"

PAYLOADS = {
    "two spaces": b"RTSP/1.0  302 Found\r\nCSeq: 1\r\nLocation: " + REDIRECT + b"\r\n\r\n",
    "tab": b"RTSP/1.0\t302 Found\r\nCSeq: 1\r\nLocation: " + REDIRECT + b"\r\n\r\n",
    "RTSP/1.00": b"RTSP/1.00 302 Found\r\nCSeq: 1\r\nLocation: " + REDIRECT + b"\r\n\r\n",
    "space in Location": b"RTSP/1.0 302 Found\r\nCSeq: 1\r\nLocation: " + REDIRECT + b" b\r\n\r\n",
    "two Locations": b"RTSP/1.0 302 Found\r\nCSeq: 1\r\nLocation: rtsp://127.0.0.1/ok\r\n"
    b"Location: " + REDIRECT + b"\r\n\r\n",
    "bare newlines": b"RTSP/1.0 200 OK\nCSeq: 1\n\nRTSP/1.0 302 Found\nCSeq: 2\nLocation: "
    + REDIRECT + b"\n\r\n\r\n",
    "two Content-Lengths": b"RTSP/1.0 200 OK\r\nCSeq: 1\r\nContent-Length: 60\r\n"
    b"Content-Length: 0\r\n\r\nRTSP/1.0 302 Found\r\nCSeq: 2\r\nLocation: " + REDIRECT
    + b"\r\n\r\n" + b" " * 20,
    "$ frame first": b"$\x00\x00\x00RTSP/1.0 302 Found\r\nCSeq: 1\r\nLocation: " + REDIRECT
    + b"\r\n\r\n",
    "huge body": b"RTSP/1.0 200 OK\r\nCSeq: 1\r\nContent-Length: 99999999999\r\n\r\n",
}  # fmt: skip


async def relay_answer(payload: bytes) -> tuple[bytes, list[str]]:
    """What the client gets through the relay for ``payload``, and the hosts checked."""
    checked: list[str] = []

    async def camera(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(payload)
        await writer.drain()
        await asyncio.sleep(0.5)
        writer.close()

    async def check(host: str, port: int) -> str:
        checked.append(f"{host}:{port}")
        raise PermissionError("not in [pull] allowed_hosts")

    server = await asyncio.start_server(camera, "127.0.0.1", 0)
    relay = RtspRelay("cam", ("127.0.0.1", server.sockets[0].getsockname()[1]), check, 2.0)
    await relay.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(b"DESCRIBE rtsp://127.0.0.1/x RTSP/1.0\r\nCSeq: 1\r\n\r\n")
    got = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), 3):
            got += chunk
    except (TimeoutError, ConnectionError):
        pass
    writer.close()
    await relay.close()
    server.close()
    return got, checked


@pytest.mark.parametrize("name", sorted(PAYLOADS))
async def test_no_redirect_reaches_ffmpeg_unchecked(name):
    got, _ = await relay_answer(PAYLOADS[name])
    assert FORBIDDEN not in got, (name, got)
    assert b" 302 " not in got.replace(b"\t", b" ").replace(b"  ", b" "), (name, got)


async def test_a_plain_answer_passes_in_canonical_form():
    answer = b"RTSP/1.0 200 OK\nCSeq: 1\nContent-Length: 4\n\nv=0\n"
    got, checked = await relay_answer(answer)
    assert got == b"RTSP/1.0 200 OK\r\nCSeq: 1\r\nContent-Length: 4\r\n\r\nv=0\n" and not checked


def test_answers_are_read_as_ffmpeg_reads_them():
    buf = bytearray(b"\r\nRTSP/1.0  302 x\nLocation:   rtsp://h/a b\r\nContent-Length: 2\n\nab")
    answer, size = read_answer(buf)  # type: ignore[misc]
    assert size == len(buf) and answer.status == 302 and answer.body == b"ab"
    assert answer.values(b"location") == [b"rtsp://h/a b"]
    assert read_answer(bytearray(b"RTSP/1.0 200 OK\r\nCSeq: 1\r\n")) is None  # incomplete
