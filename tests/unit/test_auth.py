"""Credentials: the password hash format, basic users, bearer tokens, publish keys."""

from __future__ import annotations

import base64
import subprocess
import sys

import pytest

from streamsnap.core import auth, config
from streamsnap.core.auth import Authenticator, hash_password, parse_hash, verify_password
from streamsnap.core.errors import ConfigError


def test_hash_format_is_self_describing_salted_scrypt():
    encoded = hash_password("correct horse")
    scheme, n, r, p, salt, digest = encoded.split("$")
    assert (scheme, int(n), int(r), int(p)) == ("scrypt", auth.DEFAULT_N, 8, 1)
    assert len(base64.b64decode(salt + "==")) == 16 and len(base64.b64decode(digest + "=")) == 32
    assert hash_password("correct horse") != encoded  # a new salt every time
    assert verify_password("correct horse", encoded)
    assert not verify_password("correct horsE", encoded)
    assert parse_hash(encoded)[:3] == (auth.DEFAULT_N, 8, 1)


def test_hash_parameters_come_from_the_string():
    cheap = hash_password("pw", n=1 << 10, r=4, p=2)
    assert cheap.startswith("scrypt$1024$4$2$") and verify_password("pw", cheap)


@pytest.mark.parametrize(
    ("encoded", "needle"),
    [
        ("hunter2", "not a 'scrypt$N$r$p$salt$hash'"),
        ("pbkdf2$1$2$3$abc$def", "not a 'scrypt"),
        ("scrypt$x$8$1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA", "malformed"),
        ("scrypt$1000$8$1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA", "out of range"),
        ("scrypt$1073741824$8$1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA", "out of range"),
        ("scrypt$1024$8$1$c2E$aGFzaGhhc2hoYXNoaGFzaA", "too short"),
    ],
)
def test_malformed_hashes_are_refused(encoded, needle):
    with pytest.raises(ValueError, match=needle.replace("$", r"\$")):
        parse_hash(encoded)


def test_plain_text_password_refuses_to_start(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[auth]\nusers = [{ name = "ops", password = "hunter2" }]\n')
    with pytest.raises(ConfigError) as info:
        config.load(p, environ={})
    message = str(info.value)
    assert "[auth] users 'ops'" in message and "plain-text passwords are refused" in message
    assert "streamsnap hash-password" in message and "hunter2" not in message


def test_cli_hash_password_reads_stdin():
    out = subprocess.run(
        [sys.executable, "-m", "streamsnap", "hash-password"],
        input="s3cret\n",
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert verify_password("s3cret", out) and "s3cret" not in out


async def test_basic_users_bearer_and_the_verification_cache(monkeypatch):
    a = Authenticator("tok", [{"name": "ops", "password": hash_password("pw", n=1 << 14)}], [])
    basic = "Basic " + base64.b64encode(b"ops:pw").decode()
    assert await a.check_header("Bearer tok") == "token"
    assert await a.check_header("bearer tok") == "token"
    assert await a.check_header("Bearer tok2") is None
    assert await a.check_header(basic) == "ops"
    assert await a.check_header("Basic " + base64.b64encode(b"ops:wrong").decode()) is None
    assert await a.check_header("Basic " + base64.b64encode(b"nobody:pw").decode()) is None
    assert await a.check_header("Basic !!!") is None
    assert await a.check_ws_token("tok") == "token"
    assert await a.check_ws_token("ops:pw") == "ops"
    assert await a.check_ws_token("ops:nope") is None
    # a verified password is not hashed again while cached; a wrong one always is
    calls = []
    monkeypatch.setattr(auth, "verify_password", lambda pw, enc: calls.append(pw) or False)
    assert await a.check_header(basic) == "ops"
    assert await a.check_header("Basic " + base64.b64encode(b"ops:wrong").decode()) is None
    assert calls == ["wrong"]
    a.close()


async def test_the_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(auth, "CACHE_SIZE", 2)
    users = [{"name": n, "password": hash_password(n, n=1 << 14)} for n in ("a", "b", "c")]
    a = Authenticator("", users, [])
    for name in ("a", "b", "c", "c"):
        assert await a.check_user(name, name)
    assert len(a._cache) == 2  # "a", the oldest, went
    calls = []
    real = auth.verify_password
    monkeypatch.setattr(auth, "verify_password", lambda pw, enc: calls.append(pw) or real(pw, enc))
    assert await a.check_user("c", "c") and await a.check_user("a", "a")
    assert calls == ["a"]
    a.close()


def test_publish_keys_per_stream_and_wildcard():
    a = Authenticator("", [], [{"stream": "cam1", "key": "k1"}, {"stream": "*", "key": "any"}])
    assert a.check_publish_key("cam1", "k1") is None
    assert a.check_publish_key("cam1", "any") == "wrong publish key"
    assert a.check_publish_key("cam2", "any") is None
    assert a.check_publish_key("cam2", "") == "publish key required"
    b = Authenticator("", [], [{"stream": "cam1", "key": "k1"}])
    assert b.check_publish_key("cam2", "") is None  # streams without a key stay open
    assert not b.enabled  # publish keys alone do not protect the API


@pytest.mark.parametrize(
    ("host", "token", "warns"),
    [
        ("0.0.0.0", "", True),
        ("::", "", True),
        ("192.168.1.20", "", True),
        ("cams.example.org", "", True),
        ("0.0.0.0", "t", False),
        ("127.0.0.1", "", False),
        ("127.0.0.2", "", False),
        ("::1", "", False),
        ("localhost", "", False),
    ],
)
def test_warning_when_serving_beyond_loopback_without_auth(host, token, warns):
    from streamsnap.core.access import open_access_warning

    cfg = config.Config()
    cfg.server.host, cfg.auth.token = host, token
    warning = open_access_warning(cfg)
    assert bool(warning) == warns
    if warns:
        assert f"serving on {host} without authentication" in warning
        assert "[auth] token or [auth] users" in warning
