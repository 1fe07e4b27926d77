"""SDP handling of the WebRTC engine: candidate rewriting for NAT, codec detection."""

from __future__ import annotations

from streamsnap.plugins.webrtc.engine import _CANDIDATE, video_codec_of

ANSWER = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n"
    "a=candidate:1 1 udp 2130706431 10.1.2.3 50000 typ host\r\n"
    "a=candidate:2 1 udp 1694498815 198.51.100.7 50000 typ srflx raddr 10.1.2.3 rport 50000\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 97 98\r\na=rtpmap:97 VP8/90000\r\na=rtpmap:98 H264/90000\r\n"
)


def test_host_candidates_are_rewritten_for_nat():
    out = _CANDIDATE.sub(
        lambda m: m.group(1) + "203.0.113.9" + m.group(3), ANSWER.replace("\r\n", "\n")
    )
    assert "a=candidate:1 1 udp 2130706431 203.0.113.9 50000 typ host" in out
    assert "198.51.100.7 50000 typ srflx" in out  # only host candidates change


def test_video_codec_of_answer():
    assert video_codec_of(ANSWER) == "vp8"
    assert video_codec_of(ANSWER.replace("97 98", "98 97")) == "h264"
    assert video_codec_of("v=0\r\n") == ""
