"""Safe file-system names for streams: a stream name never escapes its parent folder.

``../x``, ``/abs``, ``a/b``, NUL and control characters, 10 000 characters, Windows-reserved
names and URLs with credentials all map to a readable, stable folder name. A name that had to
change carries a short hash of the original, so two different streams never share a folder.
"""

from __future__ import annotations

import hashlib
import re

from .supervisor import mask_credentials

MAX_NAME = 96
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_RESERVED = {
    "CON",
    "PRN",
    "AUX",
    "NUL",
    *(f"COM{i}" for i in range(10)),
    *(f"LPT{i}" for i in range(10)),
}


def _credentials_removed(name: str) -> str:
    return re.sub(r"(://)[^/@\s]*@", r"\1", mask_credentials(name)).replace("***@", "")


def safe_name(name: str) -> str:
    """A folder/file name for ``name``: only ``[A-Za-z0-9._-]``, no leading dot, bounded."""
    clean = _credentials_removed(name)
    readable = _UNSAFE.sub("_", clean).strip("._-")
    readable = re.sub(r"_+", "_", readable)
    changed = readable != name
    stem, dot, rest = readable.partition(".")
    if stem.upper() in _RESERVED:  # Windows reserves CON, CON.txt, ...: whatever follows
        readable = f"{stem}_{dot}{rest}"
        changed = True
    if len(readable) > MAX_NAME:
        readable = readable[:MAX_NAME].rstrip("._-")
        changed = True
    if not readable:
        readable = "stream"
        changed = True
    if changed:
        digest = hashlib.sha256(clean.encode("utf-8", "surrogatepass")).hexdigest()[:10]
        readable = f"{readable}-{digest}"
    return readable
