"""The signatures of forwarded requests: what passes, and every way a forged, stale or
replayed one is refused; and the [cluster] settings' refusals."""

from __future__ import annotations

import time

import pytest

from streamsnap.core.config import Config
from streamsnap.core.errors import ConfigError
from streamsnap.plugins.cluster.settings import ClusterSettings
from streamsnap.plugins.cluster.signing import SIGNATURE, TIME, BadSignature, Verifier, sign

SECRET = b"sixteen-bytes-or-more-secret"


def test_a_signed_request_passes_once():
    verifier = Verifier(SECRET)
    headers = sign(SECRET, "node-a", "me", "POST", "/rest-api/stream/find?x=1", b'{"name":"cam"}')
    assert (
        verifier.verify(headers, "POST", "/rest-api/stream/find?x=1", b'{"name":"cam"}', "me")
        == "node-a"
    )
    with pytest.raises(BadSignature, match="replayed"):
        verifier.verify(headers, "POST", "/rest-api/stream/find?x=1", b'{"name":"cam"}', "me")


@pytest.mark.parametrize(
    ("method", "target", "body"),
    [
        ("GET", "/rest-api/stream/find?x=1", b'{"name":"cam"}'),  # another method
        ("POST", "/rest-api/stream/terminate", b'{"name":"cam"}'),  # another path
        ("POST", "/rest-api/stream/find?x=2", b'{"name":"cam"}'),  # another query
        ("POST", "/rest-api/stream/find?x=1", b'{"name":"other"}'),  # another body
    ],
)
def test_a_signature_covers_method_path_query_and_body(method, target, body):
    headers = sign(SECRET, "node-a", "me", "POST", "/rest-api/stream/find?x=1", b'{"name":"cam"}')
    with pytest.raises(BadSignature, match="does not match"):
        Verifier(SECRET).verify(headers, method, target, body, "me")


def test_another_secret_a_stale_clock_and_missing_headers_are_refused():
    with pytest.raises(BadSignature, match="does not match"):
        Verifier(b"another-secret-entirely").verify(
            sign(SECRET, "n", "me", "GET", "/x"), "GET", "/x", b"", "me"
        )
    stale = sign(SECRET, "n", "me", "GET", "/x")
    stale[TIME] = str(int((time.time() - 120) * 1000))
    with pytest.raises(BadSignature, match="off this node's clock"):
        Verifier(SECRET).verify(stale, "GET", "/x", b"", "me")
    partial = sign(SECRET, "n", "me", "GET", "/x")
    del partial[SIGNATURE]
    with pytest.raises(BadSignature, match="every X-Streamsnap"):
        Verifier(SECRET).verify(partial, "GET", "/x", b"", "me")
    bad_time = sign(SECRET, "n", "me", "GET", "/x")
    bad_time[TIME] = "yesterday"
    with pytest.raises(BadSignature, match="not a Unix time"):
        Verifier(SECRET).verify(bad_time, "GET", "/x", b"", "me")


def test_a_changed_node_name_breaks_the_signature():
    headers = sign(SECRET, "node-a", "me", "GET", "/x")
    headers["X-Streamsnap-Node"] = "node-b"
    with pytest.raises(BadSignature, match="does not match"):
        Verifier(SECRET).verify(headers, "GET", "/x", b"", "me")


def test_a_request_signed_for_one_node_is_refused_by_another():
    headers = sign(SECRET, "node-a", "node-b", "POST", "/rest-api/stream/terminate", b"{}")
    with pytest.raises(BadSignature, match="does not match"):
        Verifier(SECRET).verify(headers, "POST", "/rest-api/stream/terminate", b"{}", "node-c")
    assert Verifier(SECRET).verify(headers, "POST", "/rest-api/stream/terminate", b"{}", "node-b")


def test_an_absurd_time_is_refused_not_a_crash():
    headers = sign(SECRET, "n", "me", "GET", "/x")
    headers[TIME] = "9" * 400
    with pytest.raises(BadSignature):
        Verifier(SECRET).verify(headers, "GET", "/x", b"", "me")


@pytest.mark.parametrize(
    ("section", "needle"),
    [
        ({"redis_url": "redis://127.0.0.1:6379/0"}, "[cluster] secret: required"),
        ({"redis_url": "redis://h", "secret": "short"}, "at least 16 characters"),
        ({"redis_url": "http://h:6379", "secret": "x" * 16}, "the scheme must be one of"),
        (
            {"redis_url": "redis://h", "secret": "x" * 16, "advertise_url": "h:8081"},
            "advertise_url",
        ),
        ({"claim_ttl_s": 0.1}, "[cluster] claim_ttl_s = 0.1: must be at least 1.0"),
    ],
)
def test_cluster_settings_refuse_what_cannot_work(section, needle):
    cfg = Config()
    cfg.extra["cluster"] = section
    with pytest.raises(ConfigError) as info:
        cfg.declare("cluster", ClusterSettings)
    assert needle in str(info.value)


def test_cluster_is_off_by_default():
    assert not Config().declare("cluster", ClusterSettings).enabled
