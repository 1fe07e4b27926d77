"""Configuration: a typed model with WCS key names, read from TOML or a WCS ``.properties`` file.

Precedence: defaults < file < environment (``STREAMSNAP_<SECTION>_<KEY>``). Unknown keys are
warned about by name; wrong types or values raise :class:`ConfigError` naming key and value.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from .auth import Authenticator
from .errors import ConfigError

log = logging.getLogger(__name__)

ENV_PREFIX = "STREAMSNAP_"


@dataclass
class ServerConfig:
    host: str = "0.0.0.0"
    http_port: int = 8081
    ws_port: int = 8080
    rtmp_port: int = 1935
    https_port: int = 8444  # REST and pages over TLS, when tls_cert and tls_key are set
    wss_port: int = 8443  # the WebSocket API over TLS, when tls_cert and tls_key are set
    tls_cert: str = ""  # PEM certificate (chain) file
    tls_key: str = ""  # PEM private key file
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    shutdown_timeout_s: float = 10.0
    # WebSocket API: browser Origins accepted ("https://app.example.com", "*" any); empty: an
    # Origin whose host is the host the request was made to (the server's own pages)
    allowed_origins: list[str] = field(default_factory=list)
    # Host names accepted in the Host header besides IP literals, localhost and this machine's
    # own names (DNS rebinding): e.g. ["snap.example.com"]
    server_names: list[str] = field(default_factory=list)
    plaintext: bool = True  # false: with TLS on, no plain HTTP and WebSocket ports


@dataclass
class SnapshotConfig:
    snapshot_taking_interval_ms: int = 3000
    snapshot_taking_attempts: int = 30
    snapshot_auto_enabled: bool = False
    snapshot_auto_dir: str = "snapshots"
    snapshot_auto_naming: Literal["mediaSessionId", "streamName"] = "mediaSessionId"
    snapshot_auto_rate: int = 30
    snapshot_auto_retention: int = 20
    # per-session folders kept under snapshot_auto_dir: beyond it, the oldest ended ones go
    snapshot_auto_max_sessions: int = 100
    snapshot_auto_format: Literal["png", "jpeg", "webp"] = "png"  # beyond WCS: JPEG/WebP files
    # beyond WCS: per-stream settings, e.g. [{ name = "gate", rate = 10, format = "jpeg" }]
    snapshot_auto_streams: list[dict[str, Any]] = field(default_factory=list)
    png_encoder: Literal["auto", "fpng", "pillow"] = "auto"
    workers: int = 0  # decode/encode threads; 0 = one per core
    # a request this soon after a snapshot of the same stream shares it, if at most one newer
    # frame has arrived since or its burst is still arriving (0: every request waits for the
    # newest frame)
    coalesce_ms: int = 100


@dataclass
class StreamsConfig:
    max_gop_packets: int = 1800  # 60 s at 30 fps: a publisher that never sends a keyframe is capped
    max_gop_bytes: int = 64 * 1024 * 1024
    decode: Literal["adaptive", "lazy", "continuous"] = "adaptive"
    decode_demand_per_s: float = 1.0  # snapshots a second from which continuous is cheaper
    decode_warm_s: float = 30.0  # keep a stream asked for this recently warm, CPU allowing
    decode_cpu_budget: float = 0.6  # share of all cores below which warm streams stay decoded


@dataclass
class RtmpConfig:
    chunk_size: int = 4096
    handshake_timeout_s: float = 10.0
    idle_timeout_s: float = 30.0
    max_message_bytes: int = 16 * 1024 * 1024


@dataclass
class RtspConfig:
    transport: Literal["tcp", "udp"] = "tcp"  # RTP over the RTSP connection, or over UDP
    idle_timeout_s: float = 60.0  # an on-demand pull nobody used for this long is dropped
    allowed_hosts: list[str] = field(default_factory=list)  # alias of [pull] allowed_hosts
    ffmpeg: str = ""  # FFmpeg binary; empty: the one imageio-ffmpeg ships
    stall_timeout_s: float = 5.0  # no packet for this long: the camera is restarted
    connect_timeout_s: float = 10.0
    backoff_max_s: float = 30.0
    cameras: list[dict[str, Any]] = field(default_factory=list)  # {name, url, transport, ...}
    credentials: list[dict[str, Any]] = field(default_factory=list)  # {host, username, password}


@dataclass
class PullConfig:
    # URL schemes a stream name may use to be pulled through FFmpeg ("http" only when listed)
    allowed_schemes: list[str] = field(
        default_factory=lambda: ["rtsp", "rtsps", "rtmp", "rtmps", "srt", "https"]
    )
    # on-demand pulls only to these hosts: names ("cam1.lan", "*.cams.example.com"),
    # addresses, networks ("10.0.0.0/24") or "*"; loopback, link-local, multicast and the like
    # only when listed by address or network. Empty: no on-demand pulls.
    allowed_hosts: list[str] = field(default_factory=list)
    # URL query keys passed on beyond the built-in ones of each scheme (pull.QUERY_KEYS):
    # "key" for every scheme or "scheme:key", e.g. ["rtsp:token", "srt:maxbw"]
    allowed_query_keys: list[str] = field(default_factory=list)
    # pulled from start-up under a friendly name: [{ name = "studio", url = "rtmp://..." }]
    sources: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class WebRtcConfig:
    ice_addresses: list[str] = field(default_factory=list)  # host candidates; empty: every
    # non-loopback interface. "127.0.0.1" for a browser on the same host.
    public_address: str = ""  # 1:1 NAT: the address host candidates are rewritten to
    ice_servers: list[str] = field(default_factory=list)  # "stun:host:port"; empty: none
    max_message_bytes: int = 1 << 20  # WebSocket message limit
    sdk_dir: str = ""  # @flashphoner/websdk folder served at /sdk/; empty: ./node_modules/...
    idle_timeout_s: float = 10.0  # a WebRTC/WHIP publisher sending no video this long is ended


@dataclass
class StorageConfig:
    backends: list[str] = field(default_factory=list)  # e.g. ["local", "s3"]; settings in [name]


@dataclass
class FolderWatchConfig:
    dirs: list[str] = field(default_factory=list)  # watched besides snapshot_auto_dir


@dataclass
class AuthConfig:
    token: str = ""  # when set: REST, WHIP and /metrics need "Authorization: Bearer <token>",
    # the WebSocket API the WCS authToken
    users: list[dict[str, Any]] = field(default_factory=list)  # HTTP Basic users:
    # [{ name = "ops", password = "scrypt$..." }] (hashes from `streamsnap hash-password`)
    publish_keys: list[dict[str, Any]] = field(default_factory=list)  # publishers need a key:
    # [{ stream = "cam1", key = "..." }]; stream = "*" for every stream without its own
    # with a token or users set, publishers without a key or the API credentials are refused
    # unless this is true
    open_publish: bool = False


@dataclass
class LimitsConfig:
    max_streams: int = 0  # live streams (pulls included) beyond which publishers are refused
    max_publishers_per_ip: int = 0  # live published streams per publisher address
    # REST and WebSocket snapshots being served at once; by default 128 per core
    max_concurrent_snapshots: int = field(default_factory=lambda: 128 * (os.cpu_count() or 1))
    max_connections_per_ip: int = 100  # open connections of one address, on every port
    max_pulls_per_ip: int = 16  # on-demand pulls one client address has started
    # 0 = unlimited for each


@dataclass
class PluginsConfig:
    enabled: list[str] = field(default_factory=list)  # empty: every built-in and installed plugin
    disabled: list[str] = field(default_factory=list)
    # a synchronous hook call holding the event loop this long is logged; on_frame and
    # on_snapshot_saved of that plugin then run on a thread of its own
    slow_hook_s: float = 0.5


@dataclass
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    snapshot: SnapshotConfig = field(default_factory=SnapshotConfig)
    streams: StreamsConfig = field(default_factory=StreamsConfig)
    rtmp: RtmpConfig = field(default_factory=RtmpConfig)
    rtsp: RtspConfig = field(default_factory=RtspConfig)
    pull: PullConfig = field(default_factory=PullConfig)
    webrtc: WebRtcConfig = field(default_factory=WebRtcConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    folder_watch: FolderWatchConfig = field(default_factory=FolderWatchConfig)
    plugins: PluginsConfig = field(default_factory=PluginsConfig)
    # Sections no built-in model knows; plugins of the same name read them.
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: str = "<defaults>"

    def section(self, name: str) -> dict[str, Any]:
        """The raw table ``[name]`` for a plugin's own settings (empty if absent)."""
        return self.extra.get(name, {})


_SECTIONS = {f.name: f for f in dataclasses.fields(Config) if f.name not in ("extra", "source")}

# WCS flashphoner.properties keys and where they live here. The snapshot keys keep their names.
_PROPERTIES_KEYS: dict[str, tuple[str, str]] = {
    **{f.name: ("snapshot", f.name) for f in dataclasses.fields(SnapshotConfig)},
    "ws.port": ("server", "ws_port"),
    "http.port": ("server", "http_port"),
    "rtmp.port": ("server", "rtmp_port"),
    "ip": ("server", "host"),
}

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(section: str, key: str, value: Any, annotation: Any, from_text: bool) -> Any:
    """Check ``value`` against ``annotation``; text (properties, env) is converted first."""
    where = f"[{section}] {key}"
    origin = get_origin(annotation)
    if origin is Literal:
        choices = get_args(annotation)
        if value not in choices:
            allowed = ", ".join(map(repr, choices))
            raise ConfigError(f"{where} = {value!r}: must be one of {allowed}")
        return value
    if origin is list and get_args(annotation)[0] is not str:
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise ConfigError(f"{where} = {value!r}: must be a list of tables")
        return value
    if origin is list:
        if from_text and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} = {value!r}: must be a list of strings")
        return value
    if annotation is bool:
        if from_text and isinstance(value, str):
            low = value.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
        if not isinstance(value, bool):
            raise ConfigError(f"{where} = {value!r}: must be true or false")
        return value
    if annotation is int:
        if from_text and isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise ConfigError(f"{where} = {value!r}: must be an integer") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} = {value!r}: must be an integer")
        return value
    if annotation is float:
        if from_text and isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise ConfigError(f"{where} = {value!r}: must be a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} = {value!r}: must be a number")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} = {value!r}: must be a string")
        return value
    raise AssertionError(f"unsupported config type {annotation!r} for {where}")  # pragma: no cover


def _validate(cfg: Config) -> None:
    """Range checks that the types alone do not express."""

    def positive(section: str, key: str, minimum: float = 1) -> None:
        value = getattr(getattr(cfg, section), key)
        if value < minimum:
            raise ConfigError(f"[{section}] {key} = {value!r}: must be at least {minimum}")

    if bool(cfg.server.tls_cert) != bool(cfg.server.tls_key):
        raise ConfigError("[server] tls_cert and tls_key must be set together")
    for key in ("http_port", "ws_port", "rtmp_port", "https_port", "wss_port"):
        port = getattr(cfg.server, key)
        if not 0 <= port <= 65535:
            raise ConfigError(f"[server] {key} = {port!r}: must be a TCP port (0-65535)")
    positive("snapshot", "snapshot_taking_interval_ms")
    positive("snapshot", "snapshot_taking_attempts")
    positive("snapshot", "snapshot_auto_rate")
    positive("snapshot", "snapshot_auto_retention")
    positive("snapshot", "snapshot_auto_max_sessions")
    positive("snapshot", "workers", 0)
    positive("snapshot", "coalesce_ms", 0)
    positive("streams", "max_gop_packets")
    positive("streams", "max_gop_bytes", 1024)
    positive("rtmp", "chunk_size", 128)
    positive("rtmp", "handshake_timeout_s", 0.1)
    positive("rtmp", "idle_timeout_s", 0.1)
    positive("rtmp", "max_message_bytes", 1024)
    positive("server", "shutdown_timeout_s", 0.1)
    positive("rtsp", "idle_timeout_s", 1)
    positive("rtsp", "stall_timeout_s", 0.5)
    positive("rtsp", "connect_timeout_s", 0.5)
    positive("rtsp", "backoff_max_s", 0.1)
    positive("webrtc", "max_message_bytes", 4096)
    for key in (
        "max_streams",
        "max_publishers_per_ip",
        "max_concurrent_snapshots",
        "max_connections_per_ip",
        "max_pulls_per_ip",
    ):
        positive("limits", key, 0)
    Authenticator(cfg.auth.token, cfg.auth.users, cfg.auth.publish_keys)  # raises ConfigError
    positive("webrtc", "idle_timeout_s", 0.5)
    positive("plugins", "slow_hook_s", 0.01)
    if cfg.rtmp.chunk_size > 0x7FFFFFFF:
        raise ConfigError(f"[rtmp] chunk_size = {cfg.rtmp.chunk_size!r}: at most 2147483647")


def _apply(
    cfg: Config, section: str, key: str, value: Any, *, from_text: bool, origin: str
) -> None:
    target = getattr(cfg, section)
    hints = _field_types(type(target))
    if key not in hints:
        log.warning("config %s: unknown key [%s] %s (ignored)", origin, section, key)
        return
    setattr(target, key, _coerce(section, key, value, hints[key], from_text))


def from_mapping(data: dict[str, Any], origin: str = "<mapping>") -> Config:
    """Build a config from a TOML-shaped mapping: ``{section: {key: value}}``."""
    cfg = Config(source=origin)
    for section, table in data.items():
        if not isinstance(table, dict):
            if section in _SECTIONS:
                raise ConfigError(f"config {origin}: [{section}] must be a table, got {table!r}")
            log.warning("config %s: unknown top-level key %r (ignored)", origin, section)
            continue
        if section not in _SECTIONS:
            cfg.extra[section] = table
            continue
        for key, value in table.items():
            _apply(cfg, section, key, value, from_text=False, origin=origin)
    return cfg


def parse_properties(text: str) -> dict[str, str]:
    """Parse Java-style ``key=value`` / ``key: value`` lines (comments ``#``/``!``)."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#!":
            continue
        sep = min((i for i in (line.find("="), line.find(":")) if i >= 0), default=-1)
        if sep < 0:
            out[line] = ""
            continue
        out[line[:sep].strip()] = line[sep + 1 :].strip()
    return out


def from_properties(text: str, origin: str = "<properties>") -> Config:
    cfg = Config(source=origin)
    for key, value in parse_properties(text).items():
        target = _PROPERTIES_KEYS.get(key)
        if target is None and "." in key:
            section, _, sub = key.partition(".")
            if section in _SECTIONS:
                target = (section, sub)
        if target is None:
            log.warning("config %s: key %r is not used by streamsnap (ignored)", origin, key)
            continue
        _apply(cfg, *target, value, from_text=True, origin=origin)
    return cfg


def apply_env(cfg: Config, environ: dict[str, str] | os._Environ[str]) -> None:
    """Override values from ``STREAMSNAP_<SECTION>_<KEY>`` variables."""
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        for section in _SECTIONS:
            if rest.startswith(section + "_"):
                key = rest[len(section) + 1 :]
                _apply(cfg, section, key, value, from_text=True, origin=f"environment {name}")
                break


def load(path: str | Path | None = None, environ: dict[str, str] | None = None) -> Config:
    """Load the config file (``.toml`` or ``.properties``), then the environment, then check it."""
    if path is None:
        cfg = Config()
    else:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"config file {p}: {exc.strerror or exc}") from None
        if p.suffix == ".properties":
            cfg = from_properties(text, origin=str(p))
        else:
            try:
                data = tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"config file {p}: not valid TOML: {exc}") from None
            cfg = from_mapping(data, origin=str(p))
    apply_env(cfg, os.environ if environ is None else environ)
    _validate(cfg)
    return cfg
