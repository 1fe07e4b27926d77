"""Supervised FFmpeg child processes: start, watch for progress, restart with backoff, stop.

A child is alive when it makes progress (its consumer reports output), not merely when its pid
exists: a camera that stops sending while TCP stays open is caught within ``stall_timeout_s``.
Restarts back off exponentially with jitter; a run that stayed healthy resets the backoff.
Stopping escalates INT → TERM → KILL, each with a timeout, and always reaps the child.
Every step is logged with the child's name and pid; command lines and stderr are masked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import signal
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .pacing import ReadPacer

if TYPE_CHECKING:
    from .frames import FrameStore

log = logging.getLogger(__name__)

_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
# secret query parameters: these names, alone or as the last word of a longer one (api_key,
# auth-token), but not names that merely contain them (pbkeylen)
_SECRET_QUERY = re.compile(
    r"(?P<key>[?&;](?:[\w.-]*[_.-])?"
    r"(?:passphrase|password|passwd|pass|token|access_token|key|secret|auth)=)[^&;#\s]*",
    re.IGNORECASE,
)


def mask_credentials(text: str) -> str:
    """Replace ``user:password@`` in every URL of ``text`` with ``***@``, and the values of
    secret query parameters (``passphrase``, ``token``, ``key``, ``password``, ...) with
    ``***``."""
    return _SECRET_QUERY.sub(r"\g<key>***", _CREDENTIALS.sub(r"\g<scheme>***@", text))


class MaskSecrets(logging.Filter):
    """A log handler filter: secrets in any URL a message carries (a stream name, a camera's
    answer) are masked, whichever module logged it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_credentials(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


@dataclass
class SupervisorPolicy:
    stall_timeout_s: float = 5.0  # no progress for this long: restart
    start_timeout_s: float = 10.0  # no first progress within this: restart
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    healthy_after_s: float = 30.0  # a run this long resets the backoff
    stop_timeouts_s: tuple[float, float, float] = (2.0, 2.0, 2.0)  # after INT, TERM, KILL


# What FFmpeg prints, and what it means for the user (WCS wording where WCS has one)
FAILURES: tuple[tuple[re.Pattern[str], str, str], ...] = (
    (re.compile(r"401 Unauthorized|403 Forbidden"), "auth", "Failed to connect to rtsp stream"),
    (
        re.compile(
            r"404 Not Found|454 Session Not Found|Server error: .*not found|"
            r"Stream not found"
        ),
        "not_found",
        "Rtsp stream not found",
    ),
    (
        re.compile(
            r"Connection refused|No route to host|Network is unreachable|"
            r"Name or service not known|Cannot assign requested address"
        ),
        "unreachable",
        "Failed to connect to rtsp stream",
    ),
    (re.compile(r"timed out|Operation timed out"), "timeout", "Failed to connect to rtsp stream"),
    (re.compile(r"Protocol not on whitelist|not on whitelist"), "refused", "Protocol not allowed"),
    # the pipe format cannot carry the camera's codec (FLV and MJPEG, MPEG-4 Part 2, ...)
    (
        re.compile(r"not compatible with flv|not supported in the official FLV"),
        "container",
        "Codec not carried by FLV",
    ),
)
# what ends a child as soon as FFmpeg prints it: it can only fail, and FFmpeg may linger (an
# RTSP input keeps reading after the output gave up)
FATAL = tuple(pattern for pattern, kind, _ in FAILURES if kind == "container")


@dataclass(frozen=True)
class ChildExit:
    # "auth", "not_found", "unreachable", "timeout", "refused", "container", "stall",
    # "bad_output", "exited", "stopped"
    kind: str
    message: str  # for users (REST, stream status)
    detail: str  # for logs (masked)
    returncode: int | None


Consumer = Callable[[asyncio.StreamReader], Awaitable[None]]


class PipeSink:
    """A child's stdout parsed where it arrives, in the pipe transport's callback: no buffer in
    between and no task to wake, so a camera's frame costs the event loop one callback instead
    of a read, a buffer copy and a task step (BENCHMARKS.md). ``parse(data)`` gets every read,
    ``finish()`` the end of the pipe; the first exception of either ends the consumption,
    which the supervisor treats like a consumer that failed."""

    def __init__(
        self,
        parse: Callable[[bytes], None],
        finish: Callable[[], None],
        pace: tuple[FrameStore, float] | None = None,
    ) -> None:
        self._parse = parse
        self._finish = finish
        self.pace = pace  # the frames the output feeds, and the read interval (pacing.py)
        self.pacer: ReadPacer | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.ReadTransport | None = None  # the pipe, once connected

    def connected(self, transport: asyncio.ReadTransport) -> None:
        self.transport = transport
        if self.pace is not None and self.pace[1] > 0:
            self.pacer = ReadPacer(transport, self.pace[0], self.feed, self.pace[1])

    def close(self) -> None:
        """Stop reading (the child is gone or being stopped); nothing is delivered after."""
        if not self.done.done():
            self.done.cancel()
        if self.pacer is not None:
            self.pacer.close()
        if self.transport is not None:
            self.transport.close()

    def feed(self, data: bytes) -> None:
        if self.done.done():
            return  # failed, or nobody listens any more: the child is being stopped
        try:
            self._parse(data)
        except Exception as exc:
            self.done.set_exception(exc)

    def end(self) -> None:
        if self.done.done():
            return
        try:
            self._finish()
        except Exception as exc:
            self.done.set_exception(exc)
        else:
            self.done.set_result(None)


class _SinkProtocol(asyncio.Protocol):
    """The read end of a child's stdout, each read handed straight to a :class:`PipeSink`
    (asyncio's subprocess protocol would first schedule every read as a callback of its own)."""

    def __init__(self, sink: PipeSink) -> None:
        self.sink = sink

    def data_received(self, data: bytes) -> None:
        self.sink.feed(data)
        if self.sink.pacer is not None:
            self.sink.pacer.after_read(len(data))

    def eof_received(self) -> bool | None:
        self.sink.end()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.sink.end()  # a no-op after eof_received


class FfmpegSupervisor:
    """Keeps one child running: ``build_argv()`` gives its command line, ``consume(stdout)``
    reads its output and must call :meth:`progress` as data arrives. ``sink()``, when given,
    is asked before each start for a :class:`PipeSink` to take stdout instead (None: this
    start is read by ``consume``)."""

    def __init__(
        self,
        name: str,
        build_argv: Callable[[], list[str]],
        consume: Consumer,
        policy: SupervisorPolicy | None = None,
        on_exit: Callable[[ChildExit], None] | None = None,
        sink: Callable[[], PipeSink | None] | None = None,
    ) -> None:
        self.name = name
        self.build_argv = build_argv
        self.consume = consume
        self.sink = sink
        self.policy = policy or SupervisorPolicy()
        self.on_exit = on_exit
        self.state = "new"  # new, starting, running, backoff, stopping, stopped
        self.pid: int | None = None
        self.starts = 0
        self.last_exit: ChildExit | None = None
        self.exits: Counter[str] = Counter()  # exits by kind, stops on request included
        self._last_progress = 0.0
        self._progressed = False
        self._stopping = asyncio.Event()
        self._fatal = asyncio.Event()  # FFmpeg printed a FATAL line
        self._task: asyncio.Task[None] | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self.stderr_tail: deque[str] = deque(maxlen=30)

    # ---------------------------------------------------------------- public
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"supervisor:{self.name}"
            )

    def progress(self) -> None:
        """Called by the consumer whenever the child produced something useful."""
        self._last_progress = time.monotonic()
        if not self._progressed:
            self._progressed = True
            self.state = "running"

    @property
    def running(self) -> bool:
        return self.state == "running"

    async def stop(self) -> None:
        """Stop the child (INT → TERM → KILL) and the supervision; idempotent."""
        self._stopping.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.state = "stopped"

    # ---------------------------------------------------------------- supervision
    async def _run(self) -> None:
        backoff = self.policy.backoff_initial_s
        while not self._stopping.is_set():
            started = time.monotonic()
            result = await self._run_once()
            self.last_exit = result
            self.exits[result.kind] += 1
            if self._stopping.is_set():
                break
            if self.on_exit is not None:
                try:
                    self.on_exit(result)
                except Exception:
                    log.exception("%s: exit callback failed", self.name)
            if time.monotonic() - started >= self.policy.healthy_after_s:
                backoff = self.policy.backoff_initial_s
            delay = backoff * random.uniform(0.8, 1.2)
            backoff = min(backoff * 2, self.policy.backoff_max_s)
            self.state = "backoff"
            log.info("%s: restarting in %.1f s (%s)", self.name, delay, result.kind)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
        self.state = "stopped"

    async def _run_once(self) -> ChildExit:
        argv = self.build_argv()
        self.state = "starting"
        self._progressed = False
        self._fatal.clear()
        self.stderr_tail.clear()
        sink = self.sink() if self.sink is not None else None
        try:
            proc = await self._spawn(argv, sink)
        except OSError as exc:
            log.error("%s: cannot start %s: %s", self.name, argv[0], exc)
            return ChildExit("exited", "Failed to start FFmpeg", str(exc), None)
        self._proc = proc
        self.pid = proc.pid
        self.starts += 1
        self._last_progress = time.monotonic()
        log.info("%s: started pid %d: %s", self.name, proc.pid, mask_credentials(" ".join(argv)))
        assert proc.stderr is not None and (sink is not None or proc.stdout is not None)
        consumer = asyncio.ensure_future(
            self._consume(proc.stdout) if sink is None else self._drained(sink)  # type: ignore[arg-type]
        )
        stderr = asyncio.ensure_future(self._read_stderr(proc.stderr))
        waiter = asyncio.ensure_future(proc.wait())
        stopper = asyncio.ensure_future(self._stopping.wait())
        fatal = asyncio.ensure_future(self._fatal.wait())
        reason: str | None = None
        try:
            while True:
                done, _ = await asyncio.wait(
                    {waiter, stopper, consumer, fatal},
                    timeout=0.5,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if waiter in done:
                    break
                if stopper in done:
                    reason = "stopped"
                    break
                if fatal in done:
                    reason = "fatal"
                    break
                if consumer in done:
                    reason = self._consumer_failure(consumer)
                    break
                idle = time.monotonic() - self._last_progress
                limit = (
                    self.policy.stall_timeout_s if self._progressed else self.policy.start_timeout_s
                )
                if idle > limit:
                    reason = "stall"
                    log.warning(
                        "%s: pid %d made no progress for %.1f s: restarting",
                        self.name,
                        proc.pid,
                        idle,
                    )
                    break
        finally:
            stopper.cancel()
            fatal.cancel()
            await self._terminate(proc)
            if sink is not None:
                sink.close()
            for task in (consumer, stderr):
                if not task.done():
                    task.cancel()
            await asyncio.gather(consumer, stderr, return_exceptions=True)
            self._proc = None
        return self._classify(proc.returncode, reason)

    async def _consume(self, stdout: asyncio.StreamReader) -> None:
        await self.consume(stdout)

    @staticmethod
    async def _drained(sink: PipeSink) -> None:
        await sink.done

    @staticmethod
    async def _spawn(argv: list[str], sink: PipeSink | None) -> asyncio.subprocess.Process:
        options: dict[str, Any] = {
            "stdin": asyncio.subprocess.DEVNULL,
            "stdout": asyncio.subprocess.PIPE,
            "stderr": asyncio.subprocess.PIPE,
            "start_new_session": True,
        }
        if sink is None:
            return await asyncio.create_subprocess_exec(*argv, **options)
        # stdout on a pipe of our own, read by a plain protocol: one callback per read
        read_end, write_end = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(*argv, **{**options, "stdout": write_end})
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)  # the child holds it: its exit is the pipe's end
        pipe = open(read_end, "rb", buffering=0)  # noqa: SIM115 - the transport closes it
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_read_pipe(lambda: _SinkProtocol(sink), pipe)
        sink.connected(transport)
        return proc

    def _consumer_failure(self, consumer: asyncio.Future[None]) -> str:
        exc = consumer.exception()
        if exc is not None:
            log.warning("%s: output not understood: %s", self.name, exc)
            return "bad_output"
        return "eof"

    async def _read_stderr(self, stderr: asyncio.StreamReader) -> None:
        while True:
            line = await stderr.readline()
            if not line:
                return
            text = mask_credentials(line.decode("utf-8", "replace").rstrip())
            if text:
                self.stderr_tail.append(text)
                log.debug("%s: ffmpeg: %s", self.name, text)
                if any(pattern.search(text) for pattern in FATAL):
                    self._fatal.set()

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        """INT, then TERM, then KILL, each followed by a bounded wait; the child is reaped."""
        if proc.returncode is None:
            for sig, wait in zip(
                (signal.SIGINT, signal.SIGTERM, signal.SIGKILL),
                self.policy.stop_timeouts_s,
                strict=True,
            ):
                if proc.returncode is not None:
                    break
                # os.kill, not proc.send_signal: Popen.send_signal first polls the child, which
                # reaps an exited one behind asyncio's child watcher; the watcher then reports
                # exit status 255 instead of the real one (e.g. -9 for a crash). Until the
                # watcher has reaped it, the pid is the child's own (a zombie at worst).
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, sig)
                try:
                    await asyncio.wait_for(proc.wait(), wait)
                    break
                except TimeoutError:
                    log.warning("%s: pid %d ignored %s", self.name, proc.pid, sig.name)
            else:
                await proc.wait()
        log.info("%s: pid %d exited with %s", self.name, proc.pid, proc.returncode)

    def _classify(self, returncode: int | None, reason: str | None) -> ChildExit:
        tail = "\n".join(self.stderr_tail)
        detail = self.stderr_tail[-1] if self.stderr_tail else ""
        if reason == "stopped":
            return ChildExit("stopped", "Stopped", detail, returncode)
        for pattern, kind, message in FAILURES:
            if pattern.search(tail):
                # FFmpeg's own line that says it, not whatever it printed last
                detail = next((t for t in reversed(self.stderr_tail) if pattern.search(t)), detail)
                log.warning("%s: %s (%s)", self.name, message, detail)
                return ChildExit(kind, message, detail, returncode)
        if reason == "stall":
            return ChildExit("stall", "Source stopped sending", detail, returncode)
        log.warning("%s: exited with %s (%s)", self.name, returncode, detail or reason)
        return ChildExit("exited", "Source ended", detail, returncode)
