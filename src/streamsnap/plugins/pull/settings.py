"""``[pull]``: which sources may be pulled, the cameras and sources pulled from start-up, and
how FFmpeg reaches them. ``[rtsp]``, its older name, is read too (with a warning)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from ...core.config import setting


@dataclass
class PullSettings:
    aliases: ClassVar[tuple[str, ...]] = ("rtsp",)

    # URL schemes a stream name may use to be pulled through FFmpeg ("http" only when listed)
    allowed_schemes: list[str] = field(
        default_factory=lambda: ["rtsp", "rtsps", "rtmp", "rtmps", "srt", "https"]
    )
    # on-demand pulls only to these hosts: names ("cam1.lan", "*.cams.example.com"),
    # addresses, networks ("10.0.0.0/24") or "*"; loopback, link-local, multicast and the like
    # only when listed by address or network. Empty: no on-demand pulls.
    allowed_hosts: list[str] = field(default_factory=list)
    # URL query keys passed on beyond the built-in ones of each scheme (urls.QUERY_KEYS):
    # "key" for every scheme or "scheme:key", e.g. ["rtsp:token", "srt:maxbw"]
    allowed_query_keys: list[str] = field(default_factory=list)
    # pulled from start-up under a friendly name: [{ name = "studio", url = "rtmp://..." }]
    sources: list[dict[str, Any]] = field(default_factory=list)
    # IP cameras pulled from start-up: [{ name, url, transport, username, password }]
    cameras: list[dict[str, Any]] = field(default_factory=list)
    # for URLs that carry none: [{ host, username, password, scheme, port }]
    credentials: list[dict[str, Any]] = field(default_factory=list)
    transport: Literal["tcp", "udp"] = "tcp"  # RTP over the RTSP connection, or over UDP
    idle_timeout_s: float = setting(60.0, minimum=1)  # an unused on-demand pull is dropped
    ffmpeg: str = ""  # FFmpeg binary; empty: the one imageio-ffmpeg ships
    stall_timeout_s: float = setting(5.0, minimum=0.5)  # no packet this long: restarted
    connect_timeout_s: float = setting(10.0, minimum=0.5)
    backoff_max_s: float = setting(30.0, minimum=0.1)
