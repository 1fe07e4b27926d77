"""The build backend: setuptools', with the Flashphoner WebSDK's ``flashphoner.js`` (and a license
file beside it) put into ``src/streamsnap/web/sdk/`` before an sdist or a wheel is built.

The file comes from the exact version package-lock.json locks: ``node_modules`` when npm installed
that version, else the registry's tarball, checked against the lock's ``integrity`` before
anything is read from it and cached under ``build/``. ``STREAMSNAP_BUILD_WITHOUT_SDK=1`` lets a
build go on without it (the pages then need ``[webrtc] sdk_dir``). Editable installs fetch
nothing: a checkout serves ``node_modules``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import sys
import tarfile
import urllib.request
from pathlib import Path
from typing import Any

from setuptools import build_meta as _setuptools

# every hook of setuptools, re-exported; build_wheel and build_sdist are redefined below
from setuptools.build_meta import *  # noqa: F403

PACKAGE = "@flashphoner/websdk"
BUNDLE = "flashphoner.js"
LICENSE_NAME = "LICENSE.flashphoner-websdk.txt"
DEFAULT_REGISTRY = "https://registry.npmjs.org"
WITHOUT_SDK = "STREAMSNAP_BUILD_WITHOUT_SDK"

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "src" / "streamsnap" / "web" / "sdk"
CACHE = ROOT / "build" / "websdk"

# A package that ships no license file of its own gets the standard MIT text, with the holder
# its package.json names as "author" (@flashphoner/websdk 2.0.276 has no LICENSE file, and no
# copyright line for Flashphoner in its README or sources: "author": "Flashphoner").
MIT_TEXT = """\
MIT License

Copyright (c) {holder}

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""
LICENSE_FILES = ("LICENSE", "LICENSE.md", "LICENSE.txt", "LICENCE", "LICENSE-MIT")


class SdkUnavailable(RuntimeError):
    """Neither node_modules nor the registry gave the locked flashphoner.js."""


def locked(root: Path = ROOT) -> tuple[str, str]:
    """The version and integrity package-lock.json locks for the WebSDK."""
    lock = json.loads((root / "package-lock.json").read_text())
    entry = lock.get("packages", {}).get(f"node_modules/{PACKAGE}")
    if not entry or "version" not in entry or "integrity" not in entry:
        raise SdkUnavailable(f"package-lock.json locks no {PACKAGE} version with an integrity")
    return entry["version"], entry["integrity"]


def tarball_url(version: str, registry: str | None = None) -> str:
    """Where the registry keeps a version's tarball (npm's own layout for scoped names)."""
    if registry is None:  # npm reads its npm_config_* variables in any case
        registry = next(
            (v for k, v in os.environ.items() if k.lower() == "npm_config_registry" and v),
            DEFAULT_REGISTRY,
        )
    bare = PACKAGE.split("/", 1)[1]
    return f"{registry.rstrip('/')}/{PACKAGE}/-/{bare}-{version}.tgz"


def matches(data: bytes, integrity: str) -> bool:
    """Subresource-integrity check (``sha512-<base64>``, as npm writes it); several hashes
    separated by spaces: the strongest one decides."""
    hashes: dict[str, list[str]] = {}
    for item in integrity.split():
        algorithm, _, digest = item.partition("-")
        hashes.setdefault(algorithm, []).append(digest)
    for algorithm in ("sha512", "sha384", "sha256"):
        if algorithm in hashes:
            actual = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
            return actual in hashes[algorithm]
    raise SdkUnavailable(f"integrity {integrity!r} names no sha512, sha384 or sha256 hash")


def fetch_tarball(url: str, integrity: str, cache: Path, timeout: float = 120.0) -> bytes:
    """The tarball at ``url`` (http(s) or file), checked against ``integrity``; a checked copy
    is kept in ``cache`` and used instead of the network next time."""
    cached = cache / url.rsplit("/", 1)[-1]
    if cached.is_file():
        data = cached.read_bytes()
        if matches(data, integrity):
            return data
        cached.unlink()  # a damaged or stale copy: fetched again
    with urllib.request.urlopen(url, timeout=timeout) as response:
        data = response.read()
    if not matches(data, integrity):
        raise SdkUnavailable(
            f"{url}: the tarball does not match package-lock.json's integrity {integrity} "
            "(refused, nothing extracted)"
        )
    cache.mkdir(parents=True, exist_ok=True)
    partial = cached.with_name(cached.name + ".part")
    partial.write_bytes(data)
    partial.replace(cached)
    return data


def read_members(tarball: bytes, names: tuple[str, ...]) -> dict[str, bytes]:
    """The regular files of the tarball with exactly these names, read into memory: nothing is
    written where the archive says (no paths of its own, no links followed)."""
    found: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        for member in archive:
            if member.name in names and member.isreg():
                extracted = archive.extractfile(member)
                assert extracted is not None  # a regular file always has content to read
                found[member.name] = extracted.read()
    return found


def license_text(package_json: dict[str, Any], version: str, shipped: bytes | None) -> str:
    """What goes beside flashphoner.js: which package it is, and its license."""
    license_id = package_json.get("license")
    if license_id != "MIT":
        raise SdkUnavailable(
            f"{PACKAGE} {version} says its license is {license_id!r}, not MIT: check it may "
            "be shipped, then update build_support/websdk_backend.py"
        )
    author = package_json.get("author") or ""
    holder = author.get("name", "") if isinstance(author, dict) else str(author)
    header = (
        f"flashphoner.js from the npm package {PACKAGE} {version}\n"
        f"https://www.npmjs.com/package/{PACKAGE}/v/{version}\n"
        "License: MIT\n"
        "flashphoner.js is the package's prebuilt bundle and includes third-party modules;\n"
        "their own copyright and license notices are kept inside the file, unchanged.\n\n"
    )
    if shipped is not None:
        return header + shipped.decode("utf-8", "replace")
    if not holder:
        raise SdkUnavailable(f"{PACKAGE} {version} names no author to hold its copyright")
    return (
        header
        + "The package ships no license file; this is the standard MIT text with the holder\n"
        + f"its package.json names as author ({holder!r}).\n\n"
        + MIT_TEXT.format(holder=holder)
    )


def from_node_modules(root: Path, version: str) -> tuple[bytes, str] | None:
    """flashphoner.js and the license text from node_modules, when npm installed this version.
    npm checked that package's tarball against the same integrity from package-lock.json, so
    these are the same bytes the tarball holds."""
    folder = root / "node_modules" / PACKAGE
    try:
        package_json = json.loads((folder / "package.json").read_text())
        bundle = (folder / BUNDLE).read_bytes()
    except (OSError, ValueError):
        return None
    if package_json.get("version") != version:
        return None
    shipped = next(
        ((folder / n).read_bytes() for n in LICENSE_FILES if (folder / n).is_file()), None
    )
    return bundle, license_text(package_json, version, shipped)


def from_registry(url: str, integrity: str, cache: Path, version: str) -> tuple[bytes, str]:
    """flashphoner.js and the license text from the checked tarball."""
    names = (BUNDLE, "package.json", *LICENSE_FILES)
    tarball = fetch_tarball(url, integrity, cache)
    read = read_members(tarball, tuple("package/" + n for n in names))
    members = {name.removeprefix("package/"): data for name, data in read.items()}
    if BUNDLE not in members or "package.json" not in members:
        raise SdkUnavailable(f"{url}: no package/{BUNDLE} (or package.json) in the tarball")
    package_json = json.loads(members["package.json"])
    if package_json.get("version") != version:
        raise SdkUnavailable(f"{url}: the tarball says version {package_json.get('version')}")
    shipped = next((members[n] for n in LICENSE_FILES if n in members), None)
    return members[BUNDLE], license_text(package_json, version, shipped)


def is_current(target: Path, version: str | None) -> bool:
    """The files are there, and (with a lock to compare with) of the locked version."""
    license_file = target / LICENSE_NAME
    if not (target / BUNDLE).is_file() or not license_file.is_file():
        return False
    if version is None:  # an unpacked sdist without package-lock.json: taken as it is
        return True
    return f"{PACKAGE} {version}\n" in license_file.read_text()


def ensure_sdk(root: Path = ROOT, target: Path = TARGET, cache: Path = CACHE) -> None:
    """Put the locked flashphoner.js and its license file into ``target``, or raise."""
    lock = root / "package-lock.json"
    version, integrity = locked(root) if lock.is_file() else (None, None)
    if is_current(target, version):
        return
    if version is None or integrity is None:
        raise SdkUnavailable(f"no package-lock.json in {root}, and no {BUNDLE} in {target}")
    found = from_node_modules(root, version)
    if found is not None:
        source = f"node_modules/{PACKAGE}"
    else:
        url = tarball_url(version)
        try:
            found = from_registry(url, integrity, cache, version)
        except OSError as exc:  # urllib's errors are OSErrors
            raise SdkUnavailable(f"{url}: {exc}") from exc
        source = url + " (integrity checked)"
    bundle, text = found
    target.mkdir(parents=True, exist_ok=True)
    # the license file last: it marks the folder current, so an interrupted build starts over
    for name, data in ((BUNDLE, bundle), (LICENSE_NAME, text.encode())):
        partial = target / (name + ".part")
        partial.write_bytes(data)
        partial.replace(target / name)
    print(f"streamsnap build: {PACKAGE} {version} {BUNDLE} from {source}", file=sys.stderr)


def _prepare() -> None:
    try:
        ensure_sdk()
    except SdkUnavailable as exc:
        message = (
            f"streamsnap build: the package needs the Flashphoner WebSDK's {BUNDLE}, and it "
            f"could not be fetched: {exc}.\nRun `npm install` (or let the build reach the npm "
            f"registry, npm_config_registry), or set {WITHOUT_SDK}=1 to build without it "
            "(the installed pages then need [webrtc] sdk_dir)."
        )
        if os.environ.get(WITHOUT_SDK) != "1":
            raise SystemExit(message) from exc
        print(message + f"\n{WITHOUT_SDK}=1: building without it.", file=sys.stderr)


def build_wheel(
    wheel_directory: str,
    config_settings: dict[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    _prepare()
    return _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_sdist(sdist_directory: str, config_settings: dict[str, Any] | None = None) -> str:
    _prepare()
    return _setuptools.build_sdist(sdist_directory, config_settings)
