"""The ``local`` storage backend: copies saved snapshots into a folder tree.

Configured under ``[storage_local]``: ``dir`` (target folder). It shows the contract every
storage backend plugin follows: register a factory, get an object with ``async store()``.
"""

from __future__ import annotations

import asyncio
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
        target = target_dir / path.name
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(path, tmp)
        tmp.replace(target)  # whole file or nothing
        return target

    async def store(self, stream: Any, path: str) -> str:
        target = await asyncio.to_thread(self._copy, Path(path))
        return str(target)


@hookimpl
def register_storage_backends(register: Any) -> None:
    register("local", LocalStorage)
