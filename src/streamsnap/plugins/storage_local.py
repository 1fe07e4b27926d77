"""The ``local`` storage backend: copies saved snapshots into a folder tree.

Configured under ``[local]`` (the backend's name): ``dir`` (target folder). It shows the
contract every storage backend plugin follows: register a factory, get an object with
``async store()``.
Symlinks are never followed: not a snapshot that is one (it could point to any file), nor a
folder in ``dir`` that leads out of it.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
from pathlib import Path
from typing import Any

from ..hooks import hookimpl


class LocalStorage:
    """Stores each snapshot file as ``<dir>/<parent folder name>/<file name>``."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.root = Path(config.get("dir", "snapshots-archive"))

    def _copy(self, path: Path) -> Path:
        target_dir = self.root / path.parent.name
        target_dir.mkdir(parents=True, exist_ok=True)
        root = os.path.realpath(self.root)
        if os.path.commonpath((os.path.realpath(target_dir), root)) != root:
            raise OSError(f"{target_dir} is a symlink out of {self.root}: {path} not stored")
        target = target_dir / path.name
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.unlink(missing_ok=True)  # a stale one, or a planted symlink: never written through
        nofollow = getattr(os, "O_NOFOLLOW", 0)
        try:
            src_fd = os.open(path, os.O_RDONLY | nofollow)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise OSError(f"{path} is a symlink: not stored") from None
            raise
        with open(src_fd, "rb") as src:
            dst_fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)  # EXCL: no link
            with open(dst_fd, "wb") as dst:
                shutil.copyfileobj(src, dst)
        tmp.replace(target)  # whole file or nothing
        return target

    async def store(self, stream: Any, path: str) -> str:
        target = await asyncio.to_thread(self._copy, Path(path))
        return str(target)


@hookimpl
def register_storage_backends(register: Any) -> None:
    register("local", LocalStorage)
