"""Source URLs of pulls: what a name may be, which query keys pass, and which configured
credentials go to which camera."""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

from ...core import hosts
from ...core.errors import ConfigError, InvalidStreamName, NotAllowed
from .settings import PullSettings

# What FFmpeg may open for each kind of source: the protocol and the transports under it.
PROTOCOL_WHITELISTS = {
    "rtsp": "rtsp,rtp,srtp,udp,tcp",
    "rtsps": "rtsps,rtsp,rtp,srtp,udp,tcp,tls",
    "rtmp": "rtmp,tcp",
    "rtmps": "rtmps,rtmp,tcp,tls",
    "srt": "srt,udp",
    "https": "https,tls,tcp,crypto",  # HLS: playlists and segments over HTTPS (crypto: AES-128)
    "http": "http,tcp,crypto",
}
# Scheme-like prefixes that name an FFmpeg protocol: refused unless allowed, even without "//"
FFMPEG_PROTOCOLS = {
    "file",
    "concat",
    "concatf",
    "subfile",
    "data",
    "pipe",
    "fd",
    "crypto",
    "cache",
    "async",
    "tee",
    "hls",
    "http",
    "https",
    "httpproxy",
    "ftp",
    "gopher",
    "gophers",
    "sftp",
    "smb",
    "unix",
    "md5",
    "zmq",
    "rtmp",
    "rtmps",
    "rtmpt",
    "rtmpe",
    "rtmpte",
    "rtmpts",
    "srt",
    "udp",
    "udplite",
    "tcp",
    "tls",
    "dtls",
    "rtp",
    "srtp",
    "rist",
    "mmsh",
    "mmst",
    "ipfs",
    "ipns",
    "amqp",
    "librtmp",
    "bluray",
    "icecast",
    "prompeg",
    "shared",
    "ffrtmpcrypt",
    "ffrtmphttp",
}
# What a URL's query may carry to FFmpeg and the source, by scheme; more with
# [pull] allowed_query_keys. RTSP and HTTP queries go to the camera or server (a channel, a
# signed-URL token); SRT's are FFmpeg options, so only the caller's own settings pass (never
# "mode=listener", which would open a port anyone could publish into).
QUERY_KEYS = {
    "rtsp": (
        "channel", "subtype", "stream", "streamtype", "profile", "resolution", "fps",
        "videocodec", "compression", "transportmode", "unicast", "camera", "chn", "ch",
        "user", "password", "pwd",
    ),
    "srt": ("streamid", "passphrase", "latency", "pbkeylen"),
    "rtmp": ("key", "token"),
    "https": ("token", "expires", "signature", "sig", "policy", "key-pair-id", "hdnts", "hdnea"),
}  # fmt: skip
QUERY_KEYS["rtsps"] = QUERY_KEYS["rtsp"]
QUERY_KEYS["rtmps"] = QUERY_KEYS["rtmp"]
QUERY_KEYS["http"] = QUERY_KEYS["https"]
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "rtmp": 1935, "rtmps": 443, "https": 443, "http": 80}
# FFmpeg checks these sources' certificates against the host name, which an address in the URL
# would lose (and SNI with it): they are reached by name, the certificate standing in for the
# address check.
TLS_SCHEMES = {"rtsps", "rtmps", "https"}
ALLOWED_HOSTS = "[pull] allowed_hosts"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)[:,]")  # "subfile,,start,..." too
_UNSAFE = re.compile(r"[\x00-\x20\x7f|\\]")


@dataclass(frozen=True)
class SourceUrl:
    """A source URL taken apart; ``public`` (no credentials) is the stream's name and what logs
    and the API show."""

    scheme: str
    host: str  # lower case, IPv6 without brackets
    port: int | None  # as written; None: the scheme's default
    path: str
    query: str
    username: str | None = None
    password: str | None = None

    @property
    def public(self) -> str:
        return urlunsplit((self.scheme, self._hostport(self.host), self.path, self.query, ""))

    @property
    def effective_port(self) -> int | None:
        return self.port if self.port is not None else DEFAULT_PORTS.get(self.scheme)

    @property
    def credentials(self) -> tuple[str | None, str | None]:
        return self.username, self.password

    def _hostport(self, host: str, port: int | None = None) -> str:
        out = f"[{host}]" if ":" in host else host
        port = self.port if port is None else port
        return out + (f":{port}" if port is not None else "")

    def ffmpeg_url(self, host: str | None = None, port: int | None = None) -> str:
        """The URL FFmpeg opens, credentials included; ``host``/``port`` put the checked
        address (or the relay) in place of the name."""
        userinfo = ""
        if self.username is not None:
            userinfo = quote(self.username, safe="")
            if self.password is not None:
                userinfo += ":" + quote(self.password, safe="")
            userinfo += "@"
        netloc = userinfo + self._hostport(host or self.host, port)
        return urlunsplit((self.scheme, netloc, self.path, self.query, ""))


def scheme_of(name: str) -> str | None:
    """The URL scheme of ``name`` if it looks like a URL FFmpeg would open, else None."""
    m = _SCHEME.match(name)
    if not m:
        return None
    scheme = m.group(1).lower()
    if "://" in name or scheme in FFMPEG_PROTOCOLS:
        return scheme
    return None


def failure_text(scheme: str) -> str:
    """WCS wording for RTSP; the same shape for other sources."""
    return f"Failed to connect to {'rtsp' if scheme.startswith('rtsp') else scheme} stream"


def parse_source_url(name: str, settings: PullSettings, trusted: bool = False) -> SourceUrl:
    """Validate a source URL; raises InvalidStreamName with the reason, or NotAllowed (400)
    for a query key no allow-list names. ``trusted`` (the operator's own config) skips the
    query check."""
    scheme = scheme_of(name)
    allowed = [s.lower() for s in settings.allowed_schemes]
    if scheme is None:
        raise InvalidStreamName(f"{name[:64]!r} is not a source URL (scheme://host/path)")
    if scheme not in allowed or scheme not in PROTOCOL_WHITELISTS:
        raise InvalidStreamName(
            f"{scheme}: URLs are not allowed as stream names (pulled schemes: "
            f"{', '.join(s + '://' for s in allowed if s in PROTOCOL_WHITELISTS)}; "
            "see [pull] allowed_schemes)"
        )
    if _UNSAFE.search(name):
        raise InvalidStreamName("source URL contains spaces, control characters, '|' or '\\'")
    try:
        parts = urlsplit(name)
        port = parts.port
    except ValueError as exc:
        raise InvalidStreamName(f"malformed source URL: {exc}") from None
    host = (parts.hostname or "").lower()
    if not host:
        raise InvalidStreamName("source URL has no host")
    if not trusted:
        check_query(scheme, parts.query, settings.allowed_query_keys)
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return SourceUrl(scheme, host, port, parts.path, parts.query, user, password)


def check_query(scheme: str, query: str, extra: list[str]) -> None:
    """Every query key of a requested URL must be on its scheme's allow-list."""
    allowed = set(QUERY_KEYS.get(scheme, ()))
    for entry in extra:
        key_scheme, sep, key = entry.lower().rpartition(":")
        if not sep or key_scheme == scheme:
            allowed.add(key)
    for key, _ in parse_qsl(query, keep_blank_values=True):
        if key.lower() not in allowed:
            raise NotAllowed(
                f"query key {key!r} is not allowed in {scheme}:// source URLs (allowed: "
                f"{', '.join(sorted(allowed)) or 'none'}; add it to [pull] allowed_query_keys)",
                status=400,
            )


@dataclass(frozen=True)
class CredentialRule:
    """One ``[pull] credentials`` entry: given only to its scheme, host and port."""

    scheme: str
    host: str  # a name pattern, or "" when ``network`` is set
    network: hosts.Network | None
    port: int | None
    username: str
    password: str

    @classmethod
    def parse(cls, i: int, entry: dict[str, Any]) -> CredentialRule:
        where = f"[pull] credentials #{i + 1}"
        host, user = entry.get("host"), entry.get("username")
        scheme = str(entry.get("scheme", "rtsp")).lower()
        if not isinstance(host, str) or not host.strip() or not isinstance(user, str):
            raise ConfigError(f"{where}: needs a host and a username")
        if scheme not in PROTOCOL_WHITELISTS:
            raise ConfigError(f"{where} scheme = {scheme!r}: not a pulled scheme")
        port = entry.get("port")
        if port is not None and (isinstance(port, bool) or not isinstance(port, int)):
            raise ConfigError(f"{where} port = {port!r}: must be an integer")
        if port is None and scheme not in DEFAULT_PORTS:
            raise ConfigError(f"{where}: {scheme}:// has no default port: give the port")
        network = None
        with contextlib.suppress(ValueError):
            network = ipaddress.ip_network(host.strip().strip("[]"), strict=False)
        return cls(
            scheme,
            "" if network else host.strip().lower(),
            network,
            port if port is not None else DEFAULT_PORTS.get(scheme),
            user,
            str(entry.get("password", "")),
        )

    def matches(self, url: SourceUrl, address: hosts.Address | None) -> bool:
        if url.scheme != self.scheme or url.effective_port != self.port:
            return False
        if self.network is not None:
            addr = address or hosts.address_of(url.host)
            return (
                addr is not None and addr.version == self.network.version and (addr in self.network)
            )
        return hosts.name_matches(self.host, url.host)


def same_credentials(a: tuple[str | None, str | None], b: tuple[str | None, str | None]) -> bool:
    """Constant-time comparison: timing must not tell how much of a password was right."""
    left = "\0".join("-" if v is None else "+" + v for v in a).encode("utf-8", "surrogatepass")
    right = "\0".join("-" if v is None else "+" + v for v in b).encode("utf-8", "surrogatepass")
    return hmac.compare_digest(left, right)
