"""The client behind a trusted reverse proxy ([server] trusted_proxies)."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from streamsnap.core.config import ConfigError, load
from streamsnap.core.listeners import ForwardedFor


def test_the_nearest_untrusted_hop_is_the_client():
    proxies = ForwardedFor(["127.0.0.1", "10.0.0.0/8"])
    # a client's own X-Forwarded-For entries (left) cannot hide it: read from the right
    assert proxies.client("127.0.0.1", ["198.51.100.9, 203.0.113.7"]) == "203.0.113.7"
    # a chain of trusted proxies is walked through
    assert proxies.client("127.0.0.1", ["203.0.113.7, 10.1.2.3"]) == "203.0.113.7"
    assert proxies.client("127.0.0.1", ["203.0.113.7", "10.1.2.3"]) == "203.0.113.7"
    # every hop trusted: the farthest one
    assert proxies.client("127.0.0.1", ["10.9.9.9, 10.1.2.3"]) == "10.9.9.9"
    # garbage stops the walk: the last address that came through trusted hands
    assert proxies.client("127.0.0.1", ["203.0.113.7, bogus, 10.1.2.3"]) == "10.1.2.3"
    assert proxies.client("127.0.0.1", ["not-an-address"]) == "127.0.0.1"
    assert proxies.client("127.0.0.1", ["2001:db8::1"]) == "2001:db8::1"
    # a dual-stack listener sees IPv4 peers as IPv4-mapped IPv6 addresses
    assert proxies.trusts("::ffff:127.0.0.1") and not proxies.trusts("::ffff:192.0.2.1")


async def seen(proxies: ForwardedFor, remote: str, headers: dict[str, str]) -> tuple[str, str]:
    request = make_mocked_request("GET", "/x", headers=headers)
    request = request.clone(remote=remote)

    async def handler(req: web.Request) -> web.Response:
        return web.Response(text=f"{req.remote} {req.scheme}")

    response = await proxies.middleware(request, handler)
    remote_seen, scheme = response.text.split()
    return remote_seen, scheme


async def test_the_headers_count_only_from_a_trusted_proxy():
    headers = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
    assert await seen(ForwardedFor(["127.0.0.1"]), "127.0.0.1", headers) == ("203.0.113.7", "https")
    # from anyone else (or with no proxy trusted: the default) they are ignored
    assert await seen(ForwardedFor(["127.0.0.1"]), "192.0.2.5", headers) == ("192.0.2.5", "http")
    assert await seen(ForwardedFor([]), "127.0.0.1", headers) == ("127.0.0.1", "http")
    odd = {"X-Forwarded-Proto": "gopher"}
    assert await seen(ForwardedFor(["127.0.0.1"]), "127.0.0.1", odd) == ("127.0.0.1", "http")


def test_a_bad_entry_is_refused_by_name(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[server]\ntrusted_proxies = ["127.0.0.1", "nginx.lan"]\n')
    with pytest.raises(ConfigError, match=r"\[server\] trusted_proxies: 'nginx.lan'"):
        load(path, environ={})


def test_public_ws_url_must_be_a_websocket_url():
    from streamsnap.plugins.webrtc.settings import WebRtcSettings

    with pytest.raises(ConfigError, match=r"\[webrtc\] public_ws_url"):
        WebRtcSettings(public_ws_url="https://snap.example.com/ws/").check()
    WebRtcSettings(public_ws_url="wss://snap.example.com/ws/").check()
