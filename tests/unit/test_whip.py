"""The pure parts of the WHIP publish, and its viewer's newest-wins and RTCP handling."""

from __future__ import annotations

import asyncio

from aiortc.rtp import RTCP_PSFB_APP, RTCP_PSFB_PLI, RtcpPsfbPacket, pack_remb_fci

from saffron.encoders.base import Packet
from saffron.whip.sdp import (
    backoff,
    h264_profile_level_id,
    is_constrained_baseline,
    resource_url,
    with_profile_level_id,
)
from saffron.whip.viewer import MAX_QUEUE_PACKETS, QUEUE_PACKETS, WhipViewer

SPS = b"\x00\x00\x00\x01\x67\x42\xc0\x1f\xda\x01\x40\x16\xe8"
PPS = b"\x00\x00\x00\x01\x68\xce\x0f\x2c\x80"
IDR = b"\x00\x00\x01\x65\x88\x84\x00\x33"


def test_profile_level_id_comes_from_the_sps() -> None:
    assert h264_profile_level_id(SPS + PPS + IDR) == "42c01f"
    assert h264_profile_level_id(PPS + IDR) is None
    assert is_constrained_baseline("42c01f")
    assert is_constrained_baseline("42e01f")
    assert not is_constrained_baseline("42001f")  # baseline without constraint_set1
    assert not is_constrained_baseline("64001f")  # High


def test_offer_gets_the_streams_profile_level_id() -> None:
    sdp = (
        "a=rtpmap:97 H264/90000\r\n"
        "a=fmtp:97 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n"
        "a=fmtp:98 apt=97\r\n"
    )
    out = with_profile_level_id(sdp, "42c020")
    assert "profile-level-id=42c020\r\n" in out
    assert "a=fmtp:98 apt=97\r\n" in out


def test_backoff_doubles_up_to_half_a_minute() -> None:
    assert [backoff(n) for n in range(0, 8)] == [0, 1, 2, 4, 8, 16, 30, 30]


def test_location_may_be_relative() -> None:
    url = "http://127.0.0.1:7080/whip/endpoint/abc"
    assert resource_url(url, "/whip/resource/abc") == "http://127.0.0.1:7080/whip/resource/abc"
    assert resource_url(url, "https://other/r/1") == "https://other/r/1"


class FakeStream:
    def __init__(self) -> None:
        self.keyframes = 0

    def request_keyframe(self) -> None:
        self.keyframes += 1


class FakeBroadcast:
    def __init__(self) -> None:
        self.stream = FakeStream()
        self.ready = 0

    def stream_of(self, viewer: object) -> FakeStream:
        return self.stream

    def viewer_ready(self, viewer: object) -> None:
        self.ready += 1


def packet(seq: int, key: bool = False) -> Packet:
    return Packet("h264", b"x", key, 64, 64, seq, seq * 1000)


async def test_viewer_takes_one_keyframe_then_waits_for_the_connection() -> None:
    b = FakeBroadcast()
    v = WhipViewer(b, "h264", "http://x/")  # type: ignore[arg-type]
    assert v.writable()
    v.send_packet(packet(0))  # not a keyframe: ignored
    assert v.writable()
    v.send_packet(packet(1, key=True))
    assert v.first_keyframe.result().seq == 1
    assert not v.writable()  # until connected: skipped by the broadcast, costs nothing
    v.start_sending()
    assert v.writable() and b.stream.keyframes == 1


async def test_viewer_is_newest_wins() -> None:
    b = FakeBroadcast()
    v = WhipViewer(b, "h264", "http://x/")  # type: ignore[arg-type]
    v.send_packet(packet(0, key=True))
    v.start_sending()
    for i in range(QUEUE_PACKETS):
        v.send_packet(packet(10 + i, key=i == 0))
    assert not v.writable()
    got = await asyncio.wait_for(v.next_packet(), 1)
    assert got.seq == 10 and v.writable() and b.ready == 1
    # handed more than it can hold (admitted while writable): dropped, waits for a keyframe
    for i in range(MAX_QUEUE_PACKETS + 1):
        v.send_packet(packet(20 + i))
    assert b.stream.keyframes == 2 and v.dropped > 0
    v.send_packet(packet(40))
    assert not v._queue
    v.send_packet(packet(41, key=True))
    assert (await asyncio.wait_for(v.next_packet(), 1)).seq == 41


async def test_rtcp_pli_asks_a_keyframe_and_remb_sets_the_rate() -> None:
    b = FakeBroadcast()
    v = WhipViewer(b, "h264", "http://x/")  # type: ignore[arg-type]
    assert v.rate_kbps() is None
    v.on_rtcp(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=5), 5)
    assert b.stream.keyframes == 1 and v.keyframe_requests == 1
    fci = pack_remb_fci(2_500_000, [5])
    remb = RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0, fci=fci)
    v.on_rtcp(remb, 5)
    assert v.rate_kbps() == 2500
    other = RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0, fci=pack_remb_fci(1000, [9]))
    v.on_rtcp(other, 5)
    assert v.rate_kbps() == 2500


def test_saffrons_x264_is_constrained_baseline() -> None:
    """What the offer will say for the stream Saffron really encodes (no second encode:
    the SDP must describe these very packets)."""
    import numpy as np

    from saffron.display import Frame, Rect
    from saffron.encoders.registry import create_encoder

    w, h = 320, 240
    enc = create_encoder("h264", w, h, 30, 2000)
    try:
        src = np.zeros((h, w, 4), np.uint8)
        key = enc.encode(Frame(src, Rect(0, 0, w, h), 0), keyframe=True)
    finally:
        enc.close()
    profile = h264_profile_level_id(key.data)
    assert profile is not None and is_constrained_baseline(profile), profile
