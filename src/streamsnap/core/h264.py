"""Rewrite an H.264 sequence parameter set so the decoder shows each picture at once.

A decoder holds pictures back for ``max_num_reorder_frames`` (the SPS's VUI field; 2 with x264's
defaults) so that it can return them in display order. A snapshot wants only the newest picture,
and with B-frames the newest in display order is always a reference frame decoded *before* the
B-frames that precede it on screen. Told that nothing is reordered, FFmpeg's decoder returns every
I/P picture as soon as it is decoded and drops the B-frames from its output as "out of order"
(they are still decoded, so every reference stays exact). The picture it returns is then always
the newest received: freshness 0 without draining the decoder.

Only streams whose SPS carries ``bitstream_restriction_flag`` are rewritten (x264, most
hardware encoders): without it the decoder learns the reorder depth itself and the rewrite
would have nothing to change. Anything unexpected leaves the SPS as it was.
"""

from __future__ import annotations

import functools

NAL_SPS = 7
_HIGH_PROFILES = {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}


class _Bits:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0  # in bits

    def u(self, n: int) -> int:
        value = 0
        for _ in range(n):
            byte = self.data[self.pos >> 3]  # IndexError past the end: caught by the caller
            value = (value << 1) | ((byte >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return value

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("exp-Golomb code too long")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


def _unescape(nal: bytes) -> bytes:
    """NAL payload to RBSP: drop the emulation prevention bytes (00 00 03 -> 00 00)."""
    out = bytearray()
    zeros = 0
    for b in nal:
        if zeros >= 2 and b == 3:
            zeros = 0
            continue
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


def _escape(rbsp: bytes) -> bytes:
    out = bytearray()
    zeros = 0
    for b in rbsp:
        if zeros >= 2 and b <= 3:
            out.append(3)
            zeros = 0
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


def _skip_scaling_list(bits: _Bits, size: int) -> None:
    last = nxt = 8
    for _ in range(size):
        if nxt:
            nxt = (last + bits.se() + 256) % 256
        last = nxt or last


def _skip_hrd(bits: _Bits) -> None:
    count = bits.ue() + 1
    bits.u(8)  # bit_rate_scale, cpb_size_scale
    for _ in range(count):
        bits.ue()
        bits.ue()
        bits.u(1)
    bits.u(20)  # four 5-bit lengths and delays


def _reorder_field(rbsp: bytes) -> tuple[int, int, int] | None:
    """(bit offset, bit length, value) of max_num_reorder_frames in an SPS RBSP (after the NAL
    header byte), or None when the SPS has no bitstream restriction."""
    bits = _Bits(rbsp)
    profile = bits.u(8)
    bits.u(16)  # constraint flags, level
    bits.ue()  # seq_parameter_set_id
    if profile in _HIGH_PROFILES:
        chroma = bits.ue()
        if chroma == 3:
            bits.u(1)
        bits.ue()
        bits.ue()
        bits.u(1)
        if bits.u(1):  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma != 3 else 12):
                if bits.u(1):
                    _skip_scaling_list(bits, 16 if i < 6 else 64)
    bits.ue()  # log2_max_frame_num_minus4
    poc_type = bits.ue()
    if poc_type == 0:
        bits.ue()
    elif poc_type == 1:
        bits.u(1)
        bits.se()
        bits.se()
        for _ in range(bits.ue()):
            bits.se()
    bits.ue()  # max_num_ref_frames
    bits.u(1)
    bits.ue()
    bits.ue()
    if not bits.u(1):  # frame_mbs_only_flag
        bits.u(1)
    bits.u(1)
    if bits.u(1):  # frame_cropping_flag
        for _ in range(4):
            bits.ue()
    if not bits.u(1):  # vui_parameters_present_flag
        return None
    if bits.u(1) and bits.u(8) == 255:  # aspect_ratio_info, Extended_SAR
        bits.u(32)
    if bits.u(1):  # overscan_info_present_flag
        bits.u(1)
    if bits.u(1):  # video_signal_type_present_flag
        bits.u(4)
        if bits.u(1):
            bits.u(24)
    if bits.u(1):  # chroma_loc_info_present_flag
        bits.ue()
        bits.ue()
    if bits.u(1):  # timing_info_present_flag
        bits.u(65)
    nal_hrd = bits.u(1)
    if nal_hrd:
        _skip_hrd(bits)
    vcl_hrd = bits.u(1)
    if vcl_hrd:
        _skip_hrd(bits)
    if nal_hrd or vcl_hrd:
        bits.u(1)
    bits.u(1)  # pic_struct_present_flag
    if not bits.u(1):  # bitstream_restriction_flag
        return None
    bits.u(1)
    for _ in range(4):
        bits.ue()
    start = bits.pos
    value = bits.ue()
    return start, bits.pos - start, value


def _put_bits(out: list[int], value: int, n: int) -> None:
    out.extend((value >> (n - 1 - i)) & 1 for i in range(n))


def no_reorder_sps(nal: bytes) -> bytes:
    """An SPS NAL unit (header byte included) with ``max_num_reorder_frames = 0``; the NAL as
    it was when it has no bitstream restriction, already says 0, or cannot be parsed."""
    return _no_reorder_sps(bytes(nal))


@functools.lru_cache(maxsize=64)  # a camera repeats its SPS at every keyframe
def _no_reorder_sps(nal: bytes) -> bytes:
    if not nal or nal[0] & 0x1F != NAL_SPS:
        return nal
    rbsp = _unescape(nal[1:])
    try:
        field = _reorder_field(rbsp)
    except (IndexError, ValueError):
        return nal
    if field is None or field[2] == 0:
        return nal
    start, length, _ = field
    src = [(rbsp[i >> 3] >> (7 - (i & 7))) & 1 for i in range(len(rbsp) * 8)]
    bits = [*src[:start], 1, *src[start + length :]]  # ue(0) is the single bit "1"
    while bits and bits[-1] == 0:  # strip the old rbsp trailing bits ...
        bits.pop()
    if bits:
        bits.pop()  # ... including their stop bit
    _put_bits(bits, 1, 1)  # and write them again at the new length
    while len(bits) % 8:
        bits.append(0)
    out = bytes(int("".join(map(str, bits[i : i + 8])), 2) for i in range(0, len(bits), 8))
    return nal[:1] + _escape(out)


def no_reorder_avcc(extradata: bytes) -> bytes:
    """An AVCDecoderConfigurationRecord with every SPS rewritten by :func:`no_reorder_sps`."""
    if len(extradata) < 7 or extradata[0] != 1:
        return extradata
    out = bytearray(extradata[:5])
    pos = 5
    try:
        count = extradata[pos] & 0x1F
        out.append(extradata[pos])
        pos += 1
        for _ in range(count):
            size = int.from_bytes(extradata[pos : pos + 2], "big")
            if pos + 2 + size > len(extradata):
                return extradata
            sps = no_reorder_sps(extradata[pos + 2 : pos + 2 + size])
            out += len(sps).to_bytes(2, "big") + sps
            pos += 2 + size
    except IndexError:
        return extradata
    return bytes(out + extradata[pos:])


def no_reorder_access_unit(data: bytes | memoryview, length_size: int = 4) -> bytes | memoryview:
    """A length-prefixed (AVCC) access unit with any in-band SPS rewritten: ``data`` itself
    when no SPS changes (every keyframe of most cameras), so nothing is copied then."""
    pos, end, changed = 0, len(data), []
    while pos + length_size <= end:
        size = int.from_bytes(data[pos : pos + length_size], "big")
        start = pos + length_size
        if size and start < end and data[start] & 0x1F == NAL_SPS:
            nal = data[start : start + size]
            new = no_reorder_sps(nal)
            if new != nal:
                changed.append((pos, start + size, new))
        pos = start + size
    if not changed or pos != end:
        return data
    out, copied = bytearray(), 0
    for nal_start, nal_end, new in changed:
        out += data[copied:nal_start]
        out += len(new).to_bytes(length_size, "big") + new
        copied = nal_end
    out += data[copied:]
    return bytes(out)


def avcc_length_size(extradata: bytes) -> int:
    """The NAL length prefix size of an AVCDecoderConfigurationRecord (4 when unknown)."""
    return (extradata[4] & 3) + 1 if len(extradata) > 4 and extradata[0] == 1 else 4


def is_reference(data: bytes, length_size: int = 4) -> bool:
    """Whether an AVCC access unit holds a picture other pictures may refer to (nal_ref_idc)."""
    pos = 0
    while pos + length_size < len(data):
        size = int.from_bytes(data[pos : pos + length_size], "big")
        header = data[pos + length_size]
        if header & 0x1F in (1, 5):  # a coded slice
            return header & 0x60 != 0
        pos += length_size + size
    return True
