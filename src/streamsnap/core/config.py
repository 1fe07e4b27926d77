"""Configuration: typed sections with WCS key names, read from TOML or a WCS ``.properties`` file.

The core owns ``[server]``, ``[snapshot]``, ``[streams]``, ``[auth]``, ``[limits]`` and
``[plugins]``; every other section belongs to the plugin that declares it (hook
``settings_sections``) and is checked the same way when the plugins are loaded
(:meth:`Config.declare`). Precedence: defaults < file < environment
(``STREAMSNAP_<SECTION>_<KEY>``). Unknown keys are warned about by name; a wrong type or value
raises :class:`ConfigError` naming key and value.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import ipaddress
import logging
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from .auth import Authenticator
from .errors import ConfigError
from .framing import parse_crop, parse_fit, parse_side

log = logging.getLogger(__name__)

ENV_PREFIX = "STREAMSNAP_"
T = TypeVar("T")


def setting(default: Any, *, minimum: float | None = None, maximum: float | None = None) -> Any:
    """A settings field with the range its value must lie in (checked on load, the refusal
    naming key and value)."""
    bounds = {"min": minimum, "max": maximum}
    return field(default=default, metadata={k: v for k, v in bounds.items() if v is not None})


@dataclass
class ServerConfig:
    host: str = "0.0.0.0"
    http_port: int = setting(8081, minimum=0, maximum=65535)
    ws_port: int = setting(8080, minimum=0, maximum=65535)
    rtmp_port: int = setting(1935, minimum=0, maximum=65535)
    # REST and pages, and the WebSocket API, over TLS when tls_cert and tls_key are set
    https_port: int = setting(8444, minimum=0, maximum=65535)
    wss_port: int = setting(8443, minimum=0, maximum=65535)
    tls_cert: str = ""  # PEM certificate (chain) file
    tls_key: str = ""  # PEM private key file
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    shutdown_timeout_s: float = setting(10.0, minimum=0.1)
    # WebSocket API: browser Origins accepted ("https://app.example.com", "*" any); empty: an
    # Origin whose host is the host the request was made to (the server's own pages)
    allowed_origins: list[str] = field(default_factory=list)
    # Host names accepted in the Host header besides IP literals, localhost and this machine's
    # own names (DNS rebinding): e.g. ["snap.example.com"]
    server_names: list[str] = field(default_factory=list)
    plaintext: bool = True  # false: with TLS on, no plain HTTP and WebSocket ports
    # reverse proxies (addresses or networks, e.g. ["127.0.0.1"]) whose X-Forwarded-For and
    # X-Forwarded-Proto are believed; empty: those headers are ignored (any client could send)
    trusted_proxies: list[str] = field(default_factory=list)

    def check(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("[server] tls_cert and tls_key must be set together")
        for entry in self.trusted_proxies:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ConfigError(
                    f"[server] trusted_proxies: {entry!r} is not an address or a network"
                ) from None


@dataclass
class SnapshotConfig:
    snapshot_taking_interval_ms: int = setting(3000, minimum=1)
    snapshot_taking_attempts: int = setting(30, minimum=1)
    snapshot_auto_enabled: bool = False
    snapshot_auto_dir: str = "snapshots"
    snapshot_auto_naming: Literal["mediaSessionId", "streamName"] = "mediaSessionId"
    snapshot_auto_rate: int = setting(30, minimum=1)
    snapshot_auto_retention: int = setting(20, minimum=1)
    # per-session folders kept under snapshot_auto_dir: beyond it, the oldest ended ones go
    snapshot_auto_max_sessions: int = setting(100, minimum=1)
    snapshot_auto_format: Literal["png", "jpeg", "webp"] = "png"  # beyond WCS: JPEG/WebP files
    # beyond WCS: per-stream settings, e.g. [{ name = "gate", rate = 10, format = "jpeg" }]
    snapshot_auto_streams: list[dict[str, Any]] = field(default_factory=list)
    png_encoder: Literal["auto", "fpng", "pillow"] = "auto"
    workers: int = setting(0, minimum=0)  # decode/encode threads; 0 = one per core
    # a request this soon after a snapshot of the same stream shares it, if at most one newer
    # frame has arrived since or its burst is still arriving (0: every request waits for the
    # newest frame)
    coalesce_ms: int = setting(100, minimum=0)

    def check(self) -> None:
        """The picture keys of ``snapshot_auto_streams`` entries (width, height, fit, crop)."""
        checks = {"width": parse_side, "height": parse_side, "fit": parse_fit, "crop": parse_crop}
        for entry in self.snapshot_auto_streams:
            for key, parse in checks.items():
                if key in entry:
                    try:
                        parse(entry[key])
                    except ValueError as exc:
                        raise ConfigError(
                            f"[snapshot] snapshot_auto_streams, stream {entry.get('name')!r}: "
                            f"{key} = {entry[key]!r}: {exc}"
                        ) from None


@dataclass
class StreamsConfig:
    # 60 s at 30 fps: a publisher that never sends a keyframe is capped
    max_gop_packets: int = setting(1800, minimum=1)
    max_gop_bytes: int = setting(64 * 1024 * 1024, minimum=1024)
    decode: Literal["adaptive", "lazy", "continuous"] = "adaptive"
    decode_demand_per_s: float = 1.0  # snapshots a second from which continuous is cheaper
    decode_warm_s: float = 30.0  # keep a stream asked for this recently warm, CPU allowing
    decode_cpu_budget: float = 0.6  # share of all cores below which warm streams stay decoded
    # no video for this long while the source stays connected: the stream is stale (0: never)
    stale_after_s: float = setting(10.0, minimum=0)
    # a source nobody watches (RTMP, pulls) is read every read_interval_ms instead of at every
    # packet; a request naming the stream reads what is queued first (0: every packet at once)
    read_interval_ms: int = setting(100, minimum=0, maximum=1000)
    # the packets of the last history_s seconds are kept, for pictures of the past (?at=),
    # at most history_max_bytes of them per stream
    history_s: float = setting(0.0, minimum=0, maximum=3600)
    history_max_bytes: int = setting(32 * 1024 * 1024, minimum=1024)
    # per-stream values of the three above: [{name = "door*", history_s = 30}, ...]; ``name``
    # is a glob, the first entry that matches counts
    per_stream: list[dict[str, Any]] = field(default_factory=list)

    PER_STREAM_KEYS = {"stale_after_s": (0.0, None), "history_s": (0.0, 3600.0)}

    def check(self) -> None:
        for i, entry in enumerate(self.per_stream):
            where = f"[streams] per_stream[{i}]"
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise ConfigError(f"{where} needs a name (a stream name or a glob)")
            for key, value in entry.items():
                if key == "name":
                    continue
                if key == "history_max_bytes":
                    low, high = 1024.0, None
                elif key in self.PER_STREAM_KEYS:
                    low, high = self.PER_STREAM_KEYS[key]
                else:
                    raise ConfigError(
                        f"{where}: unknown key {key!r} (known: name, stale_after_s, history_s, "
                        "history_max_bytes)"
                    )
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ConfigError(f"{where}: {key} = {value!r} must be a number")
                if value < low or (high is not None and value > high):
                    raise ConfigError(f"{where}: {key} = {value!r} is out of range")

    def for_stream(self, name: str) -> tuple[float, float, int]:
        """``(stale_after_s, history_s, history_max_bytes)`` of the stream ``name``."""
        for entry in self.per_stream:
            if fnmatch.fnmatchcase(name, entry["name"]):
                return (
                    float(entry.get("stale_after_s", self.stale_after_s)),
                    float(entry.get("history_s", self.history_s)),
                    int(entry.get("history_max_bytes", self.history_max_bytes)),
                )
        return self.stale_after_s, self.history_s, self.history_max_bytes


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

    def check(self) -> None:
        Authenticator(self.token, self.users, self.publish_keys)  # raises ConfigError


@dataclass
class LimitsConfig:  # 0 = unlimited for each
    # live streams (pulls included) beyond which publishers are refused
    max_streams: int = setting(0, minimum=0)
    max_publishers_per_ip: int = setting(0, minimum=0)  # live published streams per address
    # REST and WebSocket snapshots being served at once; by default 128 per core
    max_concurrent_snapshots: int = field(
        default_factory=lambda: 128 * (os.cpu_count() or 1), metadata={"min": 0}
    )
    # open connections of one address, on every port
    max_connections_per_ip: int = setting(100, minimum=0)
    max_pulls_per_ip: int = setting(16, minimum=0)  # on-demand pulls one client has started


@dataclass
class PluginsConfig:
    enabled: list[str] = field(default_factory=list)  # empty: every built-in and installed plugin
    disabled: list[str] = field(default_factory=list)
    # a synchronous hook call holding the event loop this long is logged; on_frame and
    # on_snapshot_saved of that plugin then run on a thread of its own
    slow_hook_s: float = setting(0.5, minimum=0.01)


@dataclass
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    snapshot: SnapshotConfig = field(default_factory=SnapshotConfig)
    streams: StreamsConfig = field(default_factory=StreamsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    plugins: PluginsConfig = field(default_factory=PluginsConfig)
    # Sections the core does not own, as read; a plugin that declares one gets it checked.
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: str = "<defaults>"
    # values given as text (properties file, environment), by section, applied on declare
    text: dict[str, dict[str, tuple[str, str]]] = field(default_factory=dict, repr=False)
    env: list[tuple[str, str, str]] = field(default_factory=list, repr=False)
    _owned: dict[type, Any] = field(default_factory=dict, repr=False)
    _names: dict[str, type] = field(default_factory=dict, repr=False)
    _read: set[str] = field(default_factory=set, repr=False)

    def section(self, name: str) -> dict[str, Any]:
        """The raw table ``[name]`` (empty if absent), for a plugin that declares no model
        (e.g. a storage backend's settings)."""
        self._read.add(name)
        return self.extra.get(name, {})

    def declare(self, name: str, cls: type[T]) -> T:
        """Check section ``[name]`` against the dataclass ``cls`` the way the core's own
        sections are checked, and keep the result for :meth:`of`. Sections listed in
        ``cls.aliases`` are read first, with a warning to rename them."""
        if name in _CORE:
            raise ConfigError(f"[{name}] belongs to the core; a plugin cannot declare it")
        if name in self._names:
            if self._names[name] is cls:
                return typing.cast(T, self._owned[cls])
            raise ConfigError(
                f"[{name}] declared twice ({self._names[name].__name__}, {cls.__name__})"
            )
        values = cls()
        aliases = tuple(getattr(cls, "aliases", ()))
        given: set[str] = set()
        for section in (*aliases, name):
            table = self.extra.get(section, {})
            if section != name and (table or section in self.text or self._env_of(section)):
                log.warning(
                    "config %s: [%s] is read as [%s] (its keys moved there): rename the section",
                    self.source,
                    section,
                    name,
                )
            for key, value in table.items():
                _apply(values, name, key, value, from_text=False, origin=self.source, given=given)
        for section in (*aliases, name):
            for key, (value, origin) in self.text.get(section, {}).items():
                _apply(values, name, key, value, from_text=True, origin=origin)
            for variable, key, value in self._env_of(section):
                _apply(values, name, key, value, from_text=True, origin=f"environment {variable}")
        _check(values, name)
        self._owned[cls] = values
        self._names[name] = cls
        for alias in aliases:
            self._names.setdefault(alias, cls)
        return values

    def of(self, cls: type[T]) -> T:
        """The checked settings of a declared section, by its dataclass."""
        try:
            return typing.cast(T, self._owned[cls])
        except KeyError:
            raise LookupError(f"no section declared with {cls.__name__}") from None

    def undeclared(self) -> list[str]:
        """Sections given in the file or the environment that no one declared."""
        given = set(self.extra) | set(self.text)
        return sorted(s for s in given if s not in self._names and s not in self._read)

    def _env_of(self, section: str) -> list[tuple[str, str, str]]:
        prefix = section + "_"
        return [
            (v, rest[len(prefix) :], value)
            for v, rest, value in self.env
            if rest.startswith(prefix)
        ]


_CORE = {f.name: f for f in dataclasses.fields(Config) if f.type.endswith("Config")}

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
    if annotation is Any:
        return value
    raise ConfigError(f"{where}: the plugin declares an unsupported type {annotation!r}")


def _check(values: Any, section: str) -> None:
    """The ranges fields declare (:func:`setting`), then the section's own ``check()``."""
    for f in dataclasses.fields(values):
        value = getattr(values, f.name)
        low, high = f.metadata.get("min"), f.metadata.get("max")
        if low is not None and value < low:
            raise ConfigError(f"[{section}] {f.name} = {value!r}: must be at least {low}")
        if high is not None and value > high:
            raise ConfigError(f"[{section}] {f.name} = {value!r}: must be at most {high}")
    check = getattr(values, "check", None)
    if check is not None:
        check()


def _apply(
    target: Any,
    section: str,
    key: str,
    value: Any,
    *,
    from_text: bool,
    origin: str,
    given: set[str] | None = None,
) -> None:
    """Set ``[section] key`` on ``target``; a list given again in the same file (an alias
    section, then the section itself) extends the first."""
    hints = typing.get_type_hints(type(target))
    if key not in hints or key.startswith("_"):
        log.warning("config %s: unknown key [%s] %s (ignored)", origin, section, key)
        return
    value = _coerce(section, key, value, hints[key], from_text)
    if given is not None:
        if key in given and isinstance(value, list):
            value = [*getattr(target, key), *value]
        given.add(key)
    setattr(target, key, value)


def from_mapping(data: dict[str, Any], origin: str = "<mapping>") -> Config:
    """Build a config from a TOML-shaped mapping: ``{section: {key: value}}``."""
    cfg = Config(source=origin)
    for section, table in data.items():
        if not isinstance(table, dict):
            if section in _CORE:
                raise ConfigError(f"config {origin}: [{section}] must be a table, got {table!r}")
            log.warning("config %s: unknown top-level key %r (ignored)", origin, section)
            continue
        if section not in _CORE:
            cfg.extra[section] = table
            continue
        for key, value in table.items():
            _apply(getattr(cfg, section), section, key, value, from_text=False, origin=origin)
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
    """A config from a WCS ``flashphoner.properties`` file: its snapshot keys and ports, and
    ``section.key`` lines for the rest."""
    cfg = Config(source=origin)
    for key, value in parse_properties(text).items():
        target = _PROPERTIES_KEYS.get(key)
        if target is None and "." in key:
            section, _, sub = key.partition(".")
            if section not in _CORE:
                cfg.text.setdefault(section, {})[sub] = (value, origin)
                continue
            target = (section, sub)
        if target is None:
            log.warning("config %s: key %r is not used by streamsnap (ignored)", origin, key)
            continue
        section, sub = target
        _apply(getattr(cfg, section), section, sub, value, from_text=True, origin=origin)
    return cfg


def apply_env(cfg: Config, environ: dict[str, str] | os._Environ[str]) -> None:
    """Override values from ``STREAMSNAP_<SECTION>_<KEY>`` variables; those of sections the
    core does not own wait for the plugin that declares the section."""
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        for section in _CORE:
            if rest.startswith(section + "_"):
                key = rest[len(section) + 1 :]
                origin = f"environment {name}"
                _apply(getattr(cfg, section), section, key, value, from_text=True, origin=origin)
                break
        else:
            cfg.env.append((name, rest, value))


def load(path: str | Path | None = None, environ: dict[str, str] | None = None) -> Config:
    """Load the config file (``.toml`` or ``.properties``), then the environment, then check
    the core's sections (the plugins' are checked when they declare them)."""
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
    for section in _CORE:
        _check(getattr(cfg, section), section)
    return cfg
