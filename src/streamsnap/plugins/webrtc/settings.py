"""``[webrtc]``: the settings of the engine and of the doors that run on it (a module of its
own, without aiortc, so that the pages can read ``sdk_dir`` cheaply)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...core.config import setting
from ...core.errors import ConfigError


@dataclass
class WebRtcSettings:
    """``[webrtc]``: the engine's, and the WebSocket API's and WHIP's that run on it."""

    # host candidates; empty: every non-loopback interface ("127.0.0.1": a browser on this host)
    ice_addresses: list[str] = field(default_factory=list)
    public_address: str = ""  # 1:1 NAT: the address host candidates are rewritten to
    ice_servers: list[str] = field(default_factory=list)  # "stun:host:port"; empty: none
    max_message_bytes: int = setting(1 << 20, minimum=4096)  # WebSocket message limit
    sdk_dir: str = ""  # @flashphoner/websdk folder served at /sdk/; empty: ./node_modules/...
    # a WebRTC/WHIP publisher sending no video this long is ended
    idle_timeout_s: float = setting(10.0, minimum=0.5)
    # the WebSocket API's URL as browsers reach it behind a reverse proxy, told to the pages
    # (e.g. "wss://snap.example.com/ws/"); empty: this server's own ws/wss port
    public_ws_url: str = ""

    def check(self) -> None:
        if self.public_ws_url and not self.public_ws_url.startswith(("ws://", "wss://")):
            raise ConfigError(
                f"[webrtc] public_ws_url: {self.public_ws_url!r} is not a ws:// or wss:// URL"
            )
