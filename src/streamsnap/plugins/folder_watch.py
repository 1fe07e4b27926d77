"""Watched snapshot folders: every new complete image file becomes one ``on_snapshot_saved``.

Watches ``snapshot_auto_dir`` and ``[folder_watch] dirs`` (files written by other processes
too) with watchdog. A file counts once it is complete: when a writer closes it after writing,
or when it is renamed into place (atomic writers, like streamsnap's own). Temporary and hidden
files never count, and each file is reported once (a file saved on request, which the
auto-snapshot plugin announces itself, not at all). A symlink that leads out of the watched
folders (a file, or a folder on the way) is refused and logged: storage backends never upload
what it points to.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from watchdog.events import (
    FileClosedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from ..core.app import App
from ..hooks import hookimpl
from .auto_snapshot import AUTO_SNAPSHOT

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", "~", ".swp")
REMEMBERED = 4096


@dataclass
class FolderWatchSettings:
    dirs: list[str] = field(default_factory=list)  # watched besides snapshot_auto_dir


def is_snapshot_file(path: str) -> bool:
    name = os.path.basename(path)
    return (
        not name.startswith(".")
        and not name.endswith(TEMP_SUFFIXES)
        and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES
    )


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: FolderWatcher) -> None:
        self.watcher = watcher

    def on_closed(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileClosedEvent) and not event.is_directory:
            self.watcher.complete(os.fsdecode(event.src_path))

    def on_moved(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileMovedEvent) and not event.is_directory:
            self.watcher.complete(os.fsdecode(event.dest_path))


class FolderWatcher:
    def __init__(self, app: App) -> None:
        self.app = app
        self.loop = asyncio.get_running_loop()
        self.dirs = [
            Path(app.config.snapshot.snapshot_auto_dir),
            *(Path(d) for d in app.config.of(FolderWatchSettings).dirs),
        ]
        # what paths must resolve into: the watched folders themselves, symlinks resolved
        self._real_dirs = [os.path.realpath(d) for d in self.dirs]
        self.observer = Observer()
        self._seen: OrderedDict[tuple[str, int, int], None] = OrderedDict()
        self.reported = 0

    def start(self) -> None:
        handler = _Handler(self)
        for folder in self.dirs:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                self.observer.schedule(handler, str(folder), recursive=True)
            except OSError as exc:
                log.error("cannot watch %s: %s", folder, exc.strerror or exc)
        self.observer.start()
        log.info("watching %s for new snapshots", ", ".join(map(str, self.dirs)))

    def stop(self) -> None:
        self.observer.stop()
        self.observer.join(5)

    def complete(self, path: str) -> None:
        """Watchdog thread: ``path`` may be a finished snapshot file."""
        if not is_snapshot_file(path):
            return
        real = os.path.realpath(path)
        if not any(os.path.commonpath((real, d)) == d for d in self._real_dirs):
            log.warning(
                "folder watch: %s is a symlink to %s, out of the watched folders: not reported",
                path,
                real,
            )
            return
        try:
            st = os.stat(path)
        except OSError:
            return  # already gone (retention, or a writer that renamed it again)
        key = (os.path.abspath(path), st.st_mtime_ns, st.st_size)
        if key in self._seen or st.st_size == 0:
            return
        snapshotter = self.app.state.get(AUTO_SNAPSHOT)
        if snapshotter is not None and snapshotter.announces(path, st):
            return  # saved on request: the auto-snapshot plugin announced it itself
        self._seen[key] = None
        if len(self._seen) > REMEMBERED:
            self._seen.popitem(last=False)
        self.loop.call_soon_threadsafe(self._report, path)

    def _report(self, path: str) -> None:
        self.reported += 1
        snapshotter = self.app.state.get(AUTO_SNAPSHOT)
        folder = os.path.basename(os.path.dirname(path))
        stream = snapshotter.folder_stream(folder) if snapshotter is not None else None
        self.app.spawn(self.app.snapshot_saved(stream, path), name="on_snapshot_saved")


@hookimpl
def settings_sections() -> dict[str, type]:
    return {"folder_watch": FolderWatchSettings}


@hookimpl
async def lifespan(app: App) -> AsyncIterator[None]:
    watcher = FolderWatcher(app)
    watcher.start()
    try:
        yield
    finally:
        watcher.stop()
