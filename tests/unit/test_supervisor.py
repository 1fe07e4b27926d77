"""The FFmpeg supervisor: progress-based liveness, backoff, escalation, reaping."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from streamsnap.core.supervisor import (
    ChildExit,
    FfmpegSupervisor,
    PipeSink,
    SupervisorPolicy,
    mask_credentials,
)
from tests.helpers.media import FFMPEG

TICKER = ["/bin/sh", "-c", "while :; do echo tick; sleep 0.02; done"]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def children() -> list[int]:
    me = str(os.getpid())
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if stat[1] == me:
                out.append(int(pid))
    return out


def line_consumer(sup_ref: list[FfmpegSupervisor]):
    async def consume(stdout: asyncio.StreamReader) -> None:
        while await stdout.readline():
            sup_ref[0].progress()

    return consume


def make(argv: list[str], **policy) -> FfmpegSupervisor:
    ref: list[FfmpegSupervisor] = []
    sup = FfmpegSupervisor(
        "test child", lambda: argv, line_consumer(ref), SupervisorPolicy(**policy)
    )
    ref.append(sup)
    return sup


async def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met")


async def test_two_hundred_start_stop_cycles_leave_nothing_behind():
    await asyncio.sleep(0)
    fds_before = open_fds()
    for _ in range(200):
        sup = make(TICKER, stop_timeouts_s=(1.0, 1.0, 1.0))
        sup.start()
        await wait_until(lambda s=sup: s.running)
        await sup.stop()
        assert sup.state == "stopped"
    await asyncio.sleep(0.1)
    assert children() == []  # every child reaped: no zombie
    assert open_fds() <= fds_before + 2  # no pipe left open


async def test_stop_escalates_int_term_kill(caplog):
    stubborn = ["/bin/sh", "-c", "trap '' INT TERM; while :; do echo tick; sleep 0.02; done"]
    sup = make(stubborn, stop_timeouts_s=(0.3, 0.3, 2.0))
    sup.start()
    await wait_until(lambda: sup.running)
    pid = sup.pid
    t0 = time.monotonic()
    await sup.stop()
    assert 0.5 < time.monotonic() - t0 < 3
    assert "ignored SIGINT" in caplog.text and "ignored SIGTERM" in caplog.text
    assert sup.last_exit is not None and sup.last_exit.returncode == -9
    assert not os.path.exists(f"/proc/{pid}") or children() == []


async def test_a_child_that_stops_producing_is_restarted():
    # prints twice, then stays alive but silent (like a camera frozen with TCP open)
    silent = ["/bin/sh", "-c", "echo a; echo b; exec sleep 30"]
    sup = make(silent, stall_timeout_s=0.5, backoff_initial_s=0.1, stop_timeouts_s=(1, 1, 1))
    sup.start()
    await wait_until(lambda: sup.starts >= 2, timeout=5)
    assert sup.last_exit is not None and sup.last_exit.kind == "stall"
    await sup.stop()


async def test_backoff_grows_and_is_capped():
    failing = ["/bin/sh", "-c", "echo 'Connection refused' >&2; exit 1"]
    exits = []
    sup = FfmpegSupervisor(
        "failing",
        lambda: failing,
        lambda r: r.read(),
        SupervisorPolicy(backoff_initial_s=0.05, backoff_max_s=0.2),
        on_exit=exits.append,
    )
    t0 = time.monotonic()
    sup.start()
    await wait_until(lambda: len(exits) >= 6, timeout=5)
    await sup.stop()
    assert all(e.kind == "unreachable" for e in exits)
    assert exits[0].message == "Failed to connect to rtsp stream"
    # 0.05, 0.1, 0.2, 0.2, 0.2 (±20 %): about 0.75 s between six starts
    assert 0.5 < time.monotonic() - t0 < 3


async def test_real_ffmpeg_child_is_supervised():
    argv = [
        FFMPEG,
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "warning",
        "-re",
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=64x64:rate=30",
        "-c:v",
        "libx264",
        "-f",
        "flv",
        "pipe:1",
    ]
    got = []

    async def consume(stdout: asyncio.StreamReader) -> None:
        while chunk := await stdout.read(4096):
            got.append(len(chunk))
            sup.progress()

    sup = FfmpegSupervisor("ffmpeg", lambda: argv, consume)
    sup.start()
    await wait_until(lambda: sup.running and sum(got) > 1000)
    await sup.stop()
    assert sup.last_exit is not None and sup.last_exit.kind == "stopped"
    assert sup.last_exit.returncode in (0, 255)  # FFmpeg exits cleanly on SIGINT


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("rtsp://admin:secret@10.0.0.7:554/x", "rtsp://***@10.0.0.7:554/x"),
        ("-i rtsps://u@h/p -f flv", "-i rtsps://***@h/p -f flv"),
        ("no url here", "no url here"),
        ("rtsp://host/path@odd", "rtsp://host/path@odd"),
    ],
)
def test_credentials_are_masked(text, masked):
    assert mask_credentials(text) == masked


def make_sink(argv: list[str], parse, **policy) -> tuple[FfmpegSupervisor, list[ChildExit]]:
    """A supervisor whose child's stdout goes to a PipeSink calling ``parse(sup, data)``."""
    exits: list[ChildExit] = []
    ref: list[FfmpegSupervisor] = []

    def sink() -> PipeSink:
        return PipeSink(lambda data: parse(ref[0], data), lambda: None)

    async def unused(stdout: asyncio.StreamReader) -> None:
        raise AssertionError("stdout goes to the sink")

    sup = FfmpegSupervisor(
        "sink child",
        lambda: argv,
        unused,
        SupervisorPolicy(**policy),
        on_exit=exits.append,
        sink=sink,
    )
    ref.append(sup)
    return sup, exits


async def test_a_sink_gets_the_output_and_its_pipes_are_closed_after_each_run():
    await asyncio.sleep(0)
    fds_before = open_fds()
    seen: list[bytes] = []

    def parse(sup: FfmpegSupervisor, data: bytes) -> None:
        seen.append(data)
        sup.progress()

    for _ in range(50):
        sup, _exits = make_sink(TICKER, parse, stop_timeouts_s=(1.0, 1.0, 1.0))
        sup.start()
        await wait_until(lambda s=sup: s.running)
        await sup.stop()
    assert b"".join(seen).startswith(b"tick\n")
    await asyncio.sleep(0.1)
    assert children() == []
    assert open_fds() <= fds_before + 2  # neither end of any stdout pipe left open


async def test_output_a_sink_cannot_parse_restarts_the_child(caplog):
    def parse(sup: FfmpegSupervisor, data: bytes) -> None:
        sup.progress()
        raise ValueError("not what was expected")

    sup, exits = make_sink(TICKER, parse, backoff_initial_s=0.05, stop_timeouts_s=(1, 1, 1))
    sup.start()
    await wait_until(lambda: len(exits) >= 2)
    await sup.stop()
    # the ticker never ends by itself: the sink's error stopped it, and it was started again
    assert exits[0].kind == "exited" and sup.starts >= 2
    assert "output not understood: not what was expected" in caplog.text
