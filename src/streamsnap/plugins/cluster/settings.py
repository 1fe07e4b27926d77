"""``[cluster]``: the Redis the nodes share and how this node takes part (off while
``redis_url`` is empty)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from ...core.config import setting
from ...core.errors import ConfigError

SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel")


@dataclass
class ClusterSettings:
    # redis://host:6379/0, rediss:// (TLS), unix:///run/redis.sock, or Redis Sentinel:
    # redis+sentinel://sentinel1:26379,sentinel2:26379/MASTER_NAME[/DB]
    redis_url: str = ""
    node_id: str = ""  # empty: this machine's host name and HTTP port
    # the URL the other nodes reach this node's HTTP API at; empty: http://HOST:http_port
    advertise_url: str = ""
    secret: str = ""  # shared by every node: signs the requests they forward to each other
    claim_ttl_s: float = setting(5.0, minimum=1.0, maximum=300.0)

    @property
    def enabled(self) -> bool:
        return bool(self.redis_url)

    def check(self) -> None:
        if not self.redis_url:
            return
        scheme = urlsplit(self.redis_url).scheme
        if scheme not in SCHEMES:
            raise ConfigError(
                f"[cluster] redis_url = {self.redis_url!r}: the scheme must be one of "
                + ", ".join(s + "://" for s in SCHEMES)
            )
        if len(self.secret) < 16:
            raise ConfigError(
                "[cluster] secret: required when redis_url is set, at least 16 characters, the "
                "same on every node (it signs the requests the nodes forward to each other)"
            )
        if self.advertise_url and urlsplit(self.advertise_url).scheme not in ("http", "https"):
            raise ConfigError(
                f"[cluster] advertise_url = {self.advertise_url!r}: must be an http:// or "
                "https:// URL"
            )
