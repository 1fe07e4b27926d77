"""The build backend's WebSDK fetch: only a tarball that matches the lock's integrity is read,
only the named regular files are taken from it, and the package folder gets flashphoner.js and
its license file, from node_modules or the registry."""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.util
import io
import json
import tarfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "websdk_backend", ROOT / "build_support" / "websdk_backend.py"
)
assert _spec is not None and _spec.loader is not None
backend = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(backend)

VERSION = "9.9.9"
BUNDLE = b"/* flashphoner.js test bundle */ var Flashphoner = {};\n"


def sri(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def make_tgz(entries: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                archive.addfile(entry)
            else:
                name, data = entry
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def package_json(**fields: str) -> tuple[str, bytes]:
    meta = {"name": "@flashphoner/websdk", "version": VERSION, "license": "MIT"}
    meta["author"] = "Flashphoner"
    return "package/package.json", json.dumps({**meta, **fields}).encode()


GOOD = make_tgz([("package/flashphoner.js", BUNDLE), package_json()])


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A registry on 127.0.0.1 serving a folder: (base URL, folder)."""
    folder = tmp_path / "registry"
    folder.mkdir()
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", folder
    finally:
        server.shutdown()
        server.server_close()


def publish(folder: Path, data: bytes, version: str = VERSION) -> Path:
    path = folder / "@flashphoner" / "websdk" / "-" / f"websdk-{version}.tgz"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def project(tmp_path: Path, integrity: str, version: str = VERSION) -> Path:
    """A project folder whose package-lock.json locks ``version`` with ``integrity``."""
    root = tmp_path / "project"
    root.mkdir()
    lock = {
        "name": "streamsnap-web",
        "lockfileVersion": 3,
        "packages": {
            "node_modules/@flashphoner/websdk": {
                "version": version,
                "integrity": integrity,
                "license": "MIT",
            }
        },
    }
    (root / "package-lock.json").write_text(json.dumps(lock))
    return root


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_tarball_url_follows_npm_config_registry(monkeypatch):
    monkeypatch.delenv("npm_config_registry", raising=False)
    monkeypatch.delenv("NPM_CONFIG_REGISTRY", raising=False)
    assert backend.tarball_url("2.0.276") == (
        "https://registry.npmjs.org/@flashphoner/websdk/-/websdk-2.0.276.tgz"
    )
    monkeypatch.setenv("npm_config_registry", "http://mirror.example/npm/")
    assert backend.tarball_url("2.0.276") == (
        "http://mirror.example/npm/@flashphoner/websdk/-/websdk-2.0.276.tgz"
    )


def test_the_real_lock_names_a_sha512():
    version, integrity = backend.locked(ROOT)
    assert version == "2.0.276"
    assert integrity.startswith("sha512-")


def test_integrity_check():
    assert backend.matches(b"abc", sri(b"abc"))
    assert not backend.matches(b"abd", sri(b"abc"))
    assert backend.matches(b"abc", f"sha512-AAAA {sri(b'abc')}")
    with pytest.raises(backend.SdkUnavailable):
        backend.matches(b"abc", "md5-kAFQmDzST7DWlj99KOF/cg==")


def test_a_tarball_that_does_not_match_is_refused_and_not_kept(registry, tmp_path):
    base, folder = registry
    publish(folder, make_tgz([("package/flashphoner.js", b"evil()"), package_json()]))
    url = backend.tarball_url(VERSION, base)
    cache = tmp_path / "cache"
    with pytest.raises(backend.SdkUnavailable, match="does not match"):
        backend.fetch_tarball(url, sri(GOOD), cache)
    assert not cache.exists() or files_under(cache) == set()


def test_ensure_refuses_a_wrong_tarball_and_writes_nothing(registry, tmp_path, monkeypatch):
    base, folder = registry
    publish(folder, make_tgz([("package/flashphoner.js", b"evil()"), package_json()]))
    monkeypatch.setenv("npm_config_registry", base)
    root = project(tmp_path, sri(GOOD))
    target = tmp_path / "sdk"
    with pytest.raises(backend.SdkUnavailable, match="does not match"):
        backend.ensure_sdk(root, target, tmp_path / "cache")
    assert not target.exists()


def test_a_good_tarball_is_cached_and_reused_offline(registry, tmp_path):
    base, folder = registry
    served = publish(folder, GOOD)
    url = backend.tarball_url(VERSION, base)
    cache = tmp_path / "cache"
    assert backend.fetch_tarball(url, sri(GOOD), cache) == GOOD
    served.unlink()  # the registry no longer has it: the cache answers
    assert backend.fetch_tarball(url, sri(GOOD), cache) == GOOD
    (cache / served.name).write_bytes(b"damaged")  # a damaged cache is not trusted
    with pytest.raises(OSError):  # and the registry (404 now) is asked again
        backend.fetch_tarball(url, sri(GOOD), cache)


def test_a_file_url_registry(tmp_path):
    publish(tmp_path / "registry", GOOD)
    url = backend.tarball_url(VERSION, (tmp_path / "registry").as_uri())
    assert backend.fetch_tarball(url, sri(GOOD), tmp_path / "cache") == GOOD


def test_only_the_named_regular_files_are_read(tmp_path, monkeypatch):
    tarball = make_tgz(
        [
            ("../evil.js", b"outside"),
            ("/tmp/absolute.js", b"absolute"),
            ("package/../../traversal.js", b"traversal"),
            ("package/flashphoner.js", BUNDLE),
            ("package/examples/demo.html", b"<html>"),
            link("package/LICENSE", "/etc/passwd"),
            link("package/LICENSE.md", "package/flashphoner.js", tarfile.LNKTYPE),
            package_json(),
        ]
    )
    monkeypatch.chdir(tmp_path)
    wanted = ("package/flashphoner.js", "package/LICENSE", "package/LICENSE.md")
    found = backend.read_members(tarball, wanted)
    # links are not followed, other names are not read, and nothing lands on disk
    assert set(found) == {"package/flashphoner.js"}
    assert found["package/flashphoner.js"] == BUNDLE
    assert files_under(tmp_path) == set()


def test_ensure_from_the_registry_takes_only_the_bundle(registry, tmp_path, monkeypatch):
    base, folder = registry
    tarball = make_tgz(
        [
            ("package/../../../traversal.js", b"traversal"),
            ("package/flashphoner.js", BUNDLE),
            ("package/flashphoner.min.js", b"min"),
            ("package/examples/demo.html", b"<html>"),
            package_json(),
        ]
    )
    publish(folder, tarball)
    monkeypatch.setenv("npm_config_registry", base)
    root = project(tmp_path, sri(tarball))
    target = tmp_path / "out" / "sdk"
    before = files_under(tmp_path)
    backend.ensure_sdk(root, target, tmp_path / "cache")
    assert files_under(target) == {"flashphoner.js", backend.LICENSE_NAME}
    assert (target / "flashphoner.js").read_bytes() == BUNDLE
    license_text = (target / backend.LICENSE_NAME).read_text()
    assert f"@flashphoner/websdk {VERSION}\n" in license_text
    assert "Copyright (c) Flashphoner" in license_text
    assert "Permission is hereby granted, free of charge" in license_text
    new = files_under(tmp_path) - before
    assert new == {
        "out/sdk/flashphoner.js",
        f"out/sdk/{backend.LICENSE_NAME}",
        f"cache/websdk-{VERSION}.tgz",
    }


def test_a_bundle_that_is_a_link_is_not_taken(registry, tmp_path, monkeypatch):
    base, folder = registry
    tarball = make_tgz([link("package/flashphoner.js", "/etc/passwd"), package_json()])
    publish(folder, tarball)
    monkeypatch.setenv("npm_config_registry", base)
    root = project(tmp_path, sri(tarball))
    with pytest.raises(backend.SdkUnavailable, match=r"no package/flashphoner\.js"):
        backend.ensure_sdk(root, tmp_path / "sdk", tmp_path / "cache")


def test_a_license_file_of_the_package_is_kept_and_a_new_license_refused():
    meta = {"license": "MIT", "author": {"name": "Someone"}}
    text = backend.license_text(meta, VERSION, b"MIT License\n\nCopyright (c) 2020 Someone\n")
    assert text.endswith("Copyright (c) 2020 Someone\n")
    assert "Copyright (c) Someone" in backend.license_text(meta, VERSION, None)
    with pytest.raises(backend.SdkUnavailable, match="not MIT"):
        backend.license_text({"license": "UNLICENSED", "author": "x"}, VERSION, None)


def test_node_modules_of_the_locked_version_needs_no_network(tmp_path, monkeypatch):
    monkeypatch.setenv("npm_config_registry", "http://127.0.0.1:9")  # nothing listens there
    root = project(tmp_path, sri(GOOD))
    installed = root / "node_modules" / "@flashphoner" / "websdk"
    installed.mkdir(parents=True)
    (installed / "flashphoner.js").write_bytes(BUNDLE)
    (installed / "package.json").write_bytes(package_json()[1])
    target = tmp_path / "sdk"
    backend.ensure_sdk(root, target, tmp_path / "cache")
    assert (target / "flashphoner.js").read_bytes() == BUNDLE
    # another version in node_modules is not used: the registry is asked (and is not there)
    (installed / "package.json").write_bytes(package_json(version="1.0.0")[1])
    lock = json.loads((root / "package-lock.json").read_text())
    lock["packages"]["node_modules/@flashphoner/websdk"]["version"] = "9.9.10"
    (root / "package-lock.json").write_text(json.dumps(lock))
    with pytest.raises(backend.SdkUnavailable, match=r"127\.0\.0\.1:9"):
        backend.ensure_sdk(root, target, tmp_path / "cache")


def test_current_files_are_kept_and_an_sdist_without_a_lock_builds(tmp_path, monkeypatch):
    monkeypatch.setenv("npm_config_registry", "http://127.0.0.1:9")
    root = project(tmp_path, sri(GOOD))
    target = tmp_path / "sdk"
    target.mkdir()
    (target / "flashphoner.js").write_bytes(BUNDLE)
    (target / backend.LICENSE_NAME).write_text(f"@flashphoner/websdk {VERSION}\n")
    backend.ensure_sdk(root, target, tmp_path / "cache")  # current: nothing fetched
    (root / "package-lock.json").unlink()  # an unpacked sdist without a lock
    backend.ensure_sdk(root, target, tmp_path / "cache")
    (target / "flashphoner.js").unlink()
    with pytest.raises(backend.SdkUnavailable, match=r"no package-lock\.json"):
        backend.ensure_sdk(root, target, tmp_path / "cache")


def test_the_build_stops_without_the_sdk_unless_told(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("npm_config_registry", "http://127.0.0.1:9")
    root = project(tmp_path, sri(GOOD))
    monkeypatch.setattr(
        backend,
        "ensure_sdk",
        functools.partial(backend.ensure_sdk, root, tmp_path / "sdk", tmp_path / "cache"),
    )
    monkeypatch.delenv(backend.WITHOUT_SDK, raising=False)
    with pytest.raises(SystemExit, match="STREAMSNAP_BUILD_WITHOUT_SDK=1"):
        backend._prepare()
    monkeypatch.setenv(backend.WITHOUT_SDK, "1")
    backend._prepare()
    assert "building without it" in capsys.readouterr().err
