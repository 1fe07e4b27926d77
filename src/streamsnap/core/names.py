"""Stream names: the rule every publisher's name follows, and safe file-system names.

``check_publish_name`` is the one rule for published names on every protocol. ``safe_name``
maps any name (``../x``, ``/abs``, NUL, 10 000 characters, Windows-reserved names, URLs with
credentials) to a readable, stable folder name; a name that had to change carries a short hash
of the original, so two different streams never share a folder.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from .supervisor import mask_credentials

MAX_NAME = 96
MAX_PUBLISH_NAME_BYTES = 255
# control characters (C0, DEL, C1), lone surrogates, and the line and paragraph separators
# that some log viewers break lines on
_CONTROL_CATEGORIES = {"Cc", "Cs", "Zl", "Zp"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_RESERVED = {
    "CON",
    "PRN",
    "AUX",
    "NUL",
    *(f"COM{i}" for i in range(10)),
    *(f"LPT{i}" for i in range(10)),
}


def check_publish_name(name: str) -> str | None:
    """None when a publisher may use ``name``, else why not (RTMP, WHIP and WebSocket alike)."""
    if not name:
        return "empty stream name"
    if "://" in name:
        # URL names belong to sources the server pulls: a publisher must never shadow a camera
        return "a published stream name cannot contain '://' (URL names are pulled, not published)"
    if any(unicodedata.category(c) in _CONTROL_CATEGORIES for c in name):
        return "a stream name cannot contain control characters"
    if len(name.encode("utf-8")) > MAX_PUBLISH_NAME_BYTES:
        return f"a stream name is at most {MAX_PUBLISH_NAME_BYTES} bytes (UTF-8)"
    return None


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
