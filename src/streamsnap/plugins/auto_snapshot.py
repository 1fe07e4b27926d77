"""Automatic snapshots, as WCS takes them: every ``snapshot_auto_rate``-th video frame of every
stream is written to ``snapshot_auto_dir/<mediaSessionId or streamName>/``.

File names end in their sequence number (``cam1_00000042.png``); numbering continues when a
stream of the same name is published again, also after a restart (the folder is the memory);
only the newest ``snapshot_auto_retention`` numbered files of the stream stay; at most
``snapshot_auto_max_sessions`` folders stay (the oldest of ended sessions go first). A file
appears whole or not at all (temporary name, fsync, rename). Writing runs in the worker pool,
never on the event loop; a stream whose previous snapshot is still being written skips a turn
instead of queueing. A full or read-only disk is logged once per stream, counted, and stops
nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import threading
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web

from ..core.app import APP_KEY, App
from ..core.errors import NotAllowed, SnapshotError, StreamNameInUse, StreamNotFound
from ..core.frames import FrameHandle
from ..core.framing import Crop, Fit, parse_crop, parse_fit, parse_side
from ..core.http import FAILURES, error_response, failure_response, json_body
from ..core.names import safe_name
from ..core.snapshot import SnapshotRequest
from ..core.state import StateKey
from ..core.streams import Stream
from ..hooks import hookimpl

log = logging.getLogger(__name__)

EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
REMEMBERED_FOLDERS = 4096
# what a session folder holds: numbered snapshots and their temporary files, nothing else
SESSION_FILE = re.compile(r"^\.?.+_\d+\.(png|jpg|webp)(\.tmp)?$")


@dataclass
class Target:
    """Where and how one stream's snapshots are written."""

    stream: Stream
    folder: Path
    prefix: str
    rate: int
    format: str
    retention: int
    # the picture's framing, as an image GET's ?width=&height=&fit=&crop= ask for it
    width: int | None = None
    height: int | None = None
    fit: Fit = "fill"
    crop: Crop | None = None
    next_seq: int = 1
    kept: deque[int] = field(default_factory=deque)  # sequence numbers on disk, oldest first
    failing: bool = False  # an error was logged for this stream; log again once it recovers
    busy: bool = False  # a snapshot is being taken or written
    owed: bool = False  # a turn came while busy: take one more right after
    errors: int = 0  # files that could not be written

    def path(self, seq: int) -> Path:
        return self.folder / f"{self.prefix}_{seq:08d}.{EXTENSIONS[self.format]}"

    def snapshot_request(self, source: str) -> SnapshotRequest:
        return SnapshotRequest(
            format=self.format,  # type: ignore[arg-type]
            width=self.width,
            height=self.height,
            fit=self.fit,
            crop=self.crop,
            source=source,
            newest=True,  # each file shows its own frame, never a shared one
        )

    def frame_with(self, override: dict) -> None:
        """Take the framing keys of a ``snapshot_auto_streams`` entry. The config check
        refuses bad ones at start; a config built in code is not checked: a bad value is
        logged naming the stream and key, and left at its default."""
        parsers = {"width": parse_side, "height": parse_side, "fit": parse_fit, "crop": parse_crop}
        for key, parse in parsers.items():
            if key not in override:
                continue
            try:
                setattr(self, key, parse(override[key]))
            except ValueError as exc:
                log.error(
                    "stream %s: auto-snapshot %s = %r %s; ignored",
                    self.stream.name,
                    key,
                    override[key],
                    exc,
                )


@dataclass
class Stats:
    written: int = 0
    skipped: int = 0  # turns skipped: two came while a snapshot was still being taken
    errors: int = 0


class AutoSnapshotter:
    def __init__(self, app: App) -> None:
        self.app = app
        self.config = app.config.snapshot
        self.root = Path(self.config.snapshot_auto_dir)
        self.targets: dict[str, Target] = {}  # by mediaSessionId
        # folder name -> the stream writing there, kept after it ends: its last files land later
        self.folders: OrderedDict[str, Stream] = OrderedDict()
        self.stats = Stats()
        self.overrides = {
            str(o.get("name")): o for o in self.config.snapshot_auto_streams if "name" in o
        }
        # files save() announces itself, as (real path, mtime, size): the folder watcher skips them
        self._announced: OrderedDict[tuple[str, int, int], None] = OrderedDict()
        self._announced_lock = threading.Lock()
        # folders save() numbers files in without a Target: (their lock, saves using it)
        self._saving: dict[Path, tuple[asyncio.Lock, int]] = {}

    # ---- the public interface: what the pages, the folder watcher and /metrics read
    def folder_stream(self, folder_name: str) -> Stream | None:
        """The stream whose snapshots go to ``folder_name`` (it may have ended since)."""
        return self.folders.get(folder_name)

    def folder_of(self, stream: Stream) -> Path | None:
        """The folder the live ``stream``'s snapshots go to, per-stream settings included;
        None when it writes none."""
        target = self.targets.get(stream.media_session_id)
        return target.folder if target is not None and target.stream is stream else None

    def write_errors(self) -> list[tuple[str, int]]:
        """``(stream name, files that could not be written)`` of every live stream."""
        return [(t.stream.name, t.errors) for t in list(self.targets.values())]

    async def publish(self, stream: Stream) -> None:
        override = self.overrides.get(stream.name, {})
        if not override.get("enabled", self.config.snapshot_auto_enabled):
            return
        target = self._target_for(stream, log_errors=True)
        await self._open_folder(target)
        self.targets[stream.media_session_id] = target
        log.info(
            "stream %s: auto-snapshots every %d frames into %s (next number %d)",
            stream.name,
            target.rate,
            target.folder,
            target.next_seq,
        )

    def unpublish(self, stream: Stream) -> None:
        self.targets.pop(stream.media_session_id, None)

    def _make_room(self, folder: Path, live: set[str]) -> None:
        """Worker thread: before a new session ``folder`` is made, remove the oldest folders of
        ended sessions beyond ``snapshot_auto_max_sessions``. A folder that holds anything but
        snapshots is left alone: ``snapshot_auto_dir`` may hold the operator's files too."""
        most = self.config.snapshot_auto_max_sessions
        try:
            if folder.exists():
                return
            with os.scandir(self.root) as entries:
                folders = [e for e in entries if e.is_dir(follow_symlinks=False)]
        except OSError:
            return  # no snapshot_auto_dir yet: nothing to remove
        excess = len(folders) + 1 - most
        if excess <= 0:
            return
        ended = [e for e in folders if e.name not in live]
        for entry in sorted(ended, key=_mtime):
            if excess <= 0:
                break
            if _remove_session_folder(Path(entry.path)):
                excess -= 1
                log.info(
                    "removed auto-snapshot folder %s of an ended session: more than "
                    "[snapshot] snapshot_auto_max_sessions = %d folders",
                    entry.path,
                    most,
                )
        if excess > 0:
            log.warning(
                "%s holds more than [snapshot] snapshot_auto_max_sessions = %d folders: the "
                "others are of live streams or hold other files",
                self.root,
                most,
            )

    @staticmethod
    def _scan(target: Target) -> list[int]:
        """Worker thread: the numbers of the stream's files on disk, oldest first. A temporary
        file of the stream's is what a killed server left half-written: removed (the name is
        this server's now, nobody else writes these files)."""
        prefix = re.escape(target.prefix)
        pattern = re.compile(rf"^{prefix}_(\d+)\.(png|jpg|webp)$")
        partial = re.compile(rf"^\.{prefix}_\d+\.(png|jpg|webp)\.tmp$")
        try:
            names = os.listdir(target.folder)
        except OSError:
            return []
        for name in names:
            if partial.match(name):
                with contextlib.suppress(FileNotFoundError):
                    (target.folder / name).unlink()
                    log.warning(
                        "stream %s: removed %s, left half-written", target.stream.name, name
                    )
        return sorted(int(m.group(1)) for n in names if (m := pattern.match(n)))

    def frame(self, stream: Stream, frame: FrameHandle) -> None:
        target = self.targets.get(stream.media_session_id)
        if target is None or (frame.index + 1) % target.rate:
            return
        if target.busy:
            # The previous snapshot is still being taken: owe one (taken right after it), so
            # that a moment of congestion costs no file; a second turn in a row is skipped.
            if target.owed:
                self.stats.skipped += 1
            target.owed = True
            return
        target.busy = True
        self.app.spawn(self._take(target), name=f"auto-snapshot:{stream.name}")

    async def _take(self, target: Target) -> None:
        try:
            snap = await self.app.snapshots.take(
                target.stream,
                target.snapshot_request("auto"),
                is_live=self.app.is_live,
            )
            seq = target.next_seq
            target.next_seq += 1
            await asyncio.get_running_loop().run_in_executor(
                self.app.io_executor, self._write, target, seq, snap.data
            )
        except (SnapshotError, StreamNotFound) as exc:  # no picture yet, or the stream ended
            log.debug("stream %s: no auto-snapshot this turn: %s", target.stream.name, exc)
        except NotAllowed as exc:  # a crop outside this stream's picture: logged once
            if target.stream.faults.get("auto_snapshot") != str(exc):
                target.stream.faults["auto_snapshot"] = str(exc)
                log.error(
                    "stream %s: no auto-snapshots: %s ([snapshot] snapshot_auto_streams)",
                    target.stream.name,
                    exc,
                )
        except Exception:
            log.exception("stream %s: auto-snapshot failed", target.stream.name)
        finally:
            if target.owed and self.app.is_live(target.stream):
                target.owed = False
                self.app.spawn(self._take(target), name=f"auto-snapshot:{target.stream.name}")
            else:
                target.busy = False

    def _write(self, target: Target, seq: int, data: bytes) -> None:
        """Worker thread: write ``data`` as number ``seq`` atomically, then apply retention."""
        try:
            _write_atomically(target.path(seq), data)
        except OSError as exc:
            self.stats.errors += 1
            target.errors += 1
            if not target.failing:
                target.failing = True
                target.stream.faults["auto_snapshot"] = (
                    f"cannot write snapshots to {target.folder}: {exc.strerror or exc}"
                )
                log.error(
                    "stream %s: cannot write snapshots to %s: %s (further failures are "
                    "counted, not logged)",
                    target.stream.name,
                    target.folder,
                    exc.strerror or exc,
                )
            return
        if target.failing:
            target.failing = False
            target.stream.faults.pop("auto_snapshot", None)
            log.info("stream %s: writing snapshots to %s again", target.stream.name, target.folder)
        self.stats.written += 1
        target.kept.append(seq)
        while len(target.kept) > target.retention:
            old = target.kept.popleft()
            with contextlib.suppress(FileNotFoundError):
                target.path(old).unlink()

    # ---- saving on request (POST /rest-api/stream/snapshot/save)
    async def save(self, stream: Stream) -> Path:
        """Write the current frame of the live ``stream`` into its auto-snapshot folder as the
        next numbered file (names, numbering, retention and atomic write as auto snapshots;
        when they are off for it, the folder is where they would go), then announce it
        (``on_snapshot_saved``) once, whether the folder watcher runs or not. Raises
        StreamNotFound, SnapshotError, and OSError when the file cannot be written."""
        target = self.targets.get(stream.media_session_id)
        if target is not None and target.stream is stream:
            return await self._save(target)
        target = self._target_for(stream)
        async with self._folder_lock(target.folder):  # numbers come from the folder: one at a time
            await self._open_folder(target)
            return await self._save(target)

    async def _open_folder(self, target: Target) -> None:
        """Make room for ``target``'s folder and continue its numbering from what is on disk."""
        loop = asyncio.get_running_loop()
        live = self._live_folders()
        await loop.run_in_executor(self.app.io_executor, self._make_room, target.folder, live)
        existing = await loop.run_in_executor(self.app.io_executor, self._scan, target)
        target.kept.extend(existing)
        target.next_seq = (existing[-1] + 1) if existing else 1
        self._remember(target.folder.name, target.stream)

    def _live_folders(self) -> set[str]:
        """Folders of live streams (auto snapshots, or saved on request): never made room of."""
        live = {t.folder.name for t in self.targets.values()}
        live.update(name for name, s in self.folders.items() if self.app.is_live(s))
        return live

    def _remember(self, folder_name: str, stream: Stream) -> None:
        self.folders[folder_name] = stream
        self.folders.move_to_end(folder_name)
        while len(self.folders) > REMEMBERED_FOLDERS:
            self.folders.popitem(last=False)

    def announces(self, path: str, st: os.stat_result) -> bool:
        """Is the file at ``path``, as ``st`` shows it, one :meth:`save` announced itself (the
        folder watcher leaves it alone)? Any thread."""
        with self._announced_lock:
            return (os.path.realpath(path), st.st_mtime_ns, st.st_size) in self._announced

    def _target_for(self, stream: Stream, log_errors: bool = False) -> Target:
        """Where and how ``stream``'s auto snapshots would be written, on or off."""
        cfg = self.config
        override = self.overrides.get(stream.name, {})
        naming = override.get("naming", cfg.snapshot_auto_naming)
        folder_name = safe_name(
            stream.media_session_id if naming == "mediaSessionId" else stream.name
        )
        fmt = str(override.get("format", cfg.snapshot_auto_format))
        if fmt not in EXTENSIONS and log_errors:
            log.error(
                "stream %s: auto-snapshot format %r is not png, jpeg or webp; using png",
                stream.name,
                fmt,
            )
        target = Target(
            stream=stream,
            folder=self.root / folder_name,
            prefix=safe_name(stream.name),
            rate=max(1, int(override.get("rate", cfg.snapshot_auto_rate))),
            format=fmt if fmt in EXTENSIONS else "png",
            retention=max(1, int(override.get("retention", cfg.snapshot_auto_retention))),
        )
        target.frame_with(override)
        return target

    @contextlib.asynccontextmanager
    async def _folder_lock(self, folder: Path) -> AsyncIterator[None]:
        lock, users = self._saving.get(folder, (asyncio.Lock(), 0))
        self._saving[folder] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._saving.pop(folder)
            if users > 1:
                self._saving[folder] = (lock, users - 1)

    async def _save(self, target: Target) -> Path:
        snap = await self.app.snapshot(target.stream.name, target.snapshot_request("save"))
        seq = target.next_seq
        target.next_seq += 1
        try:
            path = await asyncio.get_running_loop().run_in_executor(
                self.app.io_executor, self._write_saved, target, seq, snap.data
            )
        except OSError:
            if target.next_seq == seq + 1:
                target.next_seq = seq  # no file took the number: the next one gets it
            raise
        self.app.spawn(self.app.snapshot_saved(target.stream, str(path)), name="on_snapshot_saved")
        return path

    def _write_saved(self, target: Target, seq: int, data: bytes) -> Path:
        """Worker thread: write ``data`` as number ``seq`` atomically, remembered as announced
        before it appears under its name; then apply retention. Raises OSError."""
        final = target.path(seq)

        def announced(st: os.stat_result) -> None:  # a rename keeps mtime and size: the key
            with self._announced_lock:
                self._announced[(os.path.realpath(final), st.st_mtime_ns, st.st_size)] = None
                while len(self._announced) > REMEMBERED_FOLDERS:
                    self._announced.popitem(last=False)

        try:
            _write_atomically(final, data, announced)
        except OSError as exc:
            if exc.filename is None:  # a failed write or fsync names no file: the answer does
                exc.filename = str(final)
            raise
        target.kept.append(seq)
        while len(target.kept) > target.retention:
            try:
                old = target.kept.popleft()
            except IndexError:  # an auto snapshot's write applied retention at the same time
                break
            with contextlib.suppress(FileNotFoundError):
                target.path(old).unlink()
        return final


def snapshot_url(app: App, path: str) -> str | None:
    """The ``/snapshots/...`` URL of a file under ``snapshot_auto_dir``, or None."""
    root = os.path.realpath(app.config.snapshot.snapshot_auto_dir)
    real = os.path.realpath(path)
    if os.path.commonpath([root, real]) != root:
        return None
    return "/snapshots/" + quote(os.path.relpath(real, root).replace(os.sep, "/"))


def _write_atomically(
    final: Path, data: bytes, before_rename: Callable[[os.stat_result], None] | None = None
) -> None:
    """Write ``data`` to ``final`` whole or not at all: a hidden temporary name, fsync, then a
    rename (``before_rename`` sees the file's stat just before). Raises OSError."""
    tmp = final.with_name(f".{final.name}.tmp")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            st = os.fstat(f.fileno())
        if before_rename is not None:
            before_rename(st)
        os.replace(tmp, final)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _mtime(entry: os.DirEntry[str]) -> float:
    try:
        return entry.stat(follow_symlinks=False).st_mtime
    except OSError:
        return 0.0


def _remove_session_folder(folder: Path) -> bool:
    """Remove a folder of snapshots; False (nothing removed) if it holds anything else."""
    try:
        names = os.listdir(folder)
        if not all(SESSION_FILE.match(n) for n in names):
            return False
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(folder / name)
        os.rmdir(folder)
    except OSError as exc:
        log.warning("cannot remove auto-snapshot folder %s: %s", folder, exc.strerror or exc)
        return False
    return True


# the plugin's public interface: the folder watcher and /metrics read it
AUTO_SNAPSHOT: StateKey[AutoSnapshotter] = StateKey("auto_snapshot", AutoSnapshotter)


def _snapshotter(app: App) -> AutoSnapshotter | None:
    return app.state.get(AUTO_SNAPSHOT)


@hookimpl
async def lifespan(app: App) -> AsyncIterator[None]:
    app.state[AUTO_SNAPSHOT] = AutoSnapshotter(app)
    yield
    app.state.pop(AUTO_SNAPSHOT)


@hookimpl
async def on_publish(stream: Stream, app: App) -> None:
    snapshotter = _snapshotter(app)
    if snapshotter is not None:
        await snapshotter.publish(stream)


@hookimpl
def on_frame(stream: Stream, frame: FrameHandle, app: App) -> None:
    snapshotter = _snapshotter(app)
    if snapshotter is not None and snapshotter.targets:
        snapshotter.frame(stream, frame)


@hookimpl
def on_unpublish(stream: Stream, app: App) -> None:
    snapshotter = _snapshotter(app)
    if snapshotter is not None:
        snapshotter.unpublish(stream)


async def save_snapshot(request: web.Request) -> web.Response:
    """``POST /rest-api/stream/snapshot/save {"streamName"}`` → ``{"file", "url"}``: the
    current frame, saved as the stream's next auto-snapshot file."""
    app = request.app[APP_KEY]
    snapshotter = _snapshotter(app)
    if snapshotter is None:
        return error_response(request, 503, "auto-snapshots are not running")
    remote = request.remote or ""
    try:
        body = await json_body(request, ("streamName",))
        name = body["streamName"]
        if app.streams.lookup(name) is None:  # perhaps held by another node: saved there
            answer = await _elsewhere(app, request, body)
            if answer is not None:
                return answer
        stream = await app.resolve(name, remote)  # may start a pull, as the REST snapshot does
        with app.admission.snapshot_slot(name, remote):
            path = await snapshotter.save(stream)
    except StreamNameInUse:  # a source another node of the cluster pulls: save it there
        answer = await _elsewhere(app, request, body)
        return answer if answer is not None else error_response(request, 404, "Stream not found")
    except FAILURES as exc:
        return failure_response(request, exc)
    except OSError as exc:
        where = os.path.dirname(exc.filename) if exc.filename else str(snapshotter.root)
        message = f"cannot write the snapshot of {name!r} into {where}: {exc.strerror or exc}"
        log.error("stream %s: %s", name, message)
        return error_response(request, 500, message)
    # where this client reached this server (in a cluster, the holder's advertised address)
    url = snapshot_url(app, str(path)) or "/snapshots/" + quote(f"{path.parent.name}/{path.name}")
    return web.json_response({"file": os.path.abspath(path), "url": f"{request.url.origin()}{url}"})


async def _elsewhere(
    app: App, request: web.Request, body: dict[str, Any]
) -> web.StreamResponse | None:
    """The holder's answer for a stream another server holds (``forward_request``)."""
    return await app.pm.afirstresult("forward_request", app=app, request=request, body=body)


@hookimpl
def register_routes(app: App) -> list[web.RouteDef]:
    # needs API credentials when [auth] is on, as POST /rest-api/stream/snapshot does
    return [web.post("/rest-api/stream/snapshot/save", save_snapshot)]
