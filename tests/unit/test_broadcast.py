"""Broadcast: one encode per codec for all its viewers; a slow viewer slows nobody."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import ClassVar

import numpy as np
import pytest

from saffron import broadcast
from saffron.broadcast import KEYFRAME_MIN_INTERVAL, Broadcast
from saffron.display import Display, Frame, Rect
from saffron.encoders.base import Encoder, Packet
from saffron.web.protocol import CODEC_IDS

W, H = 64, 48


class CountingEncoder(Encoder):
    """Stands in for a codec so the test sees exactly which frames were encoded."""

    codec = "h264"
    backend = "counting"
    made: ClassVar[list[CountingEncoder]] = []

    def __init__(self, width: int, height: int, fps: int, kbps: int) -> None:
        super().__init__(width, height, fps, kbps)
        self.frames: list[tuple[int, bool]] = []
        CountingEncoder.made.append(self)

    def encode(self, frame: Frame, keyframe: bool = False, prepared: object = None) -> Packet:
        self.frames.append((frame.seq, keyframe))
        return Packet(
            self.codec, bytes(10), keyframe, self.width, self.height, frame.seq, frame.capture_us
        )


def factory(codec: str, w: int, h: int, fps: int, kbps: int, skip: int) -> Encoder:
    return CountingEncoder(w, h, fps, kbps)


class FakeViewer:
    def __init__(self, label: str, window: int = 1000) -> None:
        self.label = label
        self.window = window
        self.got: list[Packet] = []

    def writable(self) -> bool:
        return len(self.got) < self.window

    def send_packet(self, packet: Packet) -> None:
        self.got.append(packet)

    def rate_kbps(self) -> float | None:
        return None


async def settle(broadcast: Broadcast, n: int = 50) -> None:
    for _ in range(n):
        await asyncio.sleep(0.01)
        if all(not s.slot.pending for s in broadcast.streams.values()):
            await asyncio.sleep(0.02)
            return


async def present_one(display: Display, broadcast: Broadcast, seq_value: int) -> None:
    display.present(np.full((H, W, 4), seq_value % 256, np.uint8), owned=True)
    await settle(broadcast)


async def test_one_encode_serves_every_viewer() -> None:
    display = Display()
    b = Broadcast(display, asyncio.get_running_loop(), encoder_factory=factory)
    viewers = [FakeViewer(f"v{i}") for i in range(5)]
    for v in viewers:
        b.join(v, "h264")
    for i in range(10):
        await present_one(display, b, i)
    enc = b.streams["h264"].encoder
    assert isinstance(enc, CountingEncoder)
    assert len(enc.frames) == 10
    assert enc.frames[0][1] is True, "a new viewer starts with a keyframe"
    for v in viewers:
        assert [p.seq for p in v.got] == [seq for seq, _ in enc.frames]
    b.close()


async def test_no_viewer_ready_means_no_encode() -> None:
    display = Display()
    b = Broadcast(display, asyncio.get_running_loop(), encoder_factory=factory)
    full = FakeViewer("full", window=0)
    b.join(full, "h264")
    for i in range(5):
        await present_one(display, b, i)
    stream = b.streams["h264"]
    assert stream.frames_encoded == 0 and display.last_frame is None
    b.close()


async def test_slow_viewer_drops_and_resumes_at_a_keyframe() -> None:
    display = Display()
    b = Broadcast(display, asyncio.get_running_loop(), encoder_factory=factory)
    fast, slow = FakeViewer("fast"), FakeViewer("slow", window=1)
    b.join(fast, "h264")
    b.join(slow, "h264")
    for i in range(6):
        await present_one(display, b, i)
    stream = b.streams["h264"]
    assert len(fast.got) == 6, "the fast viewer gets every frame"
    assert len(slow.got) == 1, "frames admitted after its window filled are not for it"
    assert stream.seats[slow].dropped == 5
    # The slow viewer catches up: it must get a keyframe before any other frame.
    slow.window = 100
    b.viewer_ready(slow)
    await asyncio.sleep(0.6)  # keyframe requests are rate-limited
    for i in range(3):
        await present_one(display, b, 10 + i)
    resumed = slow.got[1:]
    assert resumed and resumed[0].keyframe
    assert len(fast.got) >= 9, "the fast viewer kept receiving throughout"
    b.close()


async def test_codecs_are_encoded_separately_and_once_each() -> None:
    display = Display()
    b = Broadcast(display, asyncio.get_running_loop(), encoder_factory=factory)
    CountingEncoder.made.clear()
    b.join(FakeViewer("a"), "h264")
    b.join(FakeViewer("b"), "vp8")
    b.join(FakeViewer("c"), "vp8")
    for i in range(4):
        await present_one(display, b, i)
    assert len(CountingEncoder.made) == 2
    assert all(len(e.frames) == 4 for e in CountingEncoder.made)
    b.close()


async def test_resize_reopens_the_encoder_with_a_keyframe() -> None:
    display = Display()
    b = Broadcast(display, asyncio.get_running_loop(), encoder_factory=factory)
    v = FakeViewer("v")
    b.join(v, "h264")
    await present_one(display, b, 1)
    await present_one(display, b, 2)
    display.present(np.zeros((H * 2, W * 2, 4), np.uint8), owned=True)
    await settle(b)
    assert [(p.width, p.height, p.keyframe) for p in v.got] == [
        (W, H, True),
        (W, H, False),
        (W * 2, H * 2, True),
    ]
    b.close()


async def test_joins_share_keyframes_at_a_limited_rate() -> None:
    """A viewer that joins again and again (any page may, view-only too) gets keyframes
    for everyone at most every KEYFRAME_MIN_INTERVAL, and still gets its picture."""
    display = Display()
    b = Broadcast(display, asyncio.get_running_loop(), encoder_factory=factory)
    watcher, joiner = FakeViewer("watcher"), FakeViewer("joiner")
    b.join(watcher, "h264")
    await present_one(display, b, 1)
    start = time.monotonic()
    for _ in range(50):
        b.join(joiner, "h264")
        await asyncio.sleep(0.01)
    elapsed = time.monotonic() - start
    await asyncio.sleep(KEYFRAME_MIN_INTERVAL)
    await settle(b)
    keyframes = sum(p.keyframe for p in watcher.got)
    # The first picture, then at most one per interval of the joins, and one at its end.
    assert keyframes <= 2 + elapsed / KEYFRAME_MIN_INTERVAL, f"{keyframes} keyframes"
    assert joiner.got and joiner.got[0].keyframe, "the last join still got a picture"
    b.close()


async def test_a_viewer_that_stopped_reading_costs_nobody_keyframes() -> None:
    """A page that stops acknowledging waits for a keyframe it cannot take: none is made
    for it until it can (it used to cost everyone a keyframe every interval)."""
    display = Display()
    b = Broadcast(display, asyncio.get_running_loop(), encoder_factory=factory)
    watcher, stuck = FakeViewer("watcher"), FakeViewer("stuck", window=1)
    b.join(watcher, "h264")
    b.join(stuck, "h264")
    for i in range(int(4 * KEYFRAME_MIN_INTERVAL / 0.1)):
        display.present(np.full((H, W, 4), i, np.uint8), owned=True)
        await asyncio.sleep(0.1)
    await settle(b)
    assert len(stuck.got) == 1 and len(watcher.got) > 10
    assert sum(p.keyframe for p in watcher.got) == 1
    b.close()


async def test_a_stream_nobody_watches_is_closed_after_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A page cycling through the codecs must not leave five encoders and their threads
    behind; a viewer that comes back within the while keeps the encoder."""
    monkeypatch.setattr(broadcast, "IDLE_STREAM_CLOSE_S", 0.3, raising=False)
    baseline = threading.active_count()
    display = Display()
    b = Broadcast(display, asyncio.get_running_loop(), fps=10, bitrate_kbps=300)
    page, back = FakeViewer("page"), FakeViewer("back")
    pixels = np.full((96, 128, 4), 80, np.uint8)
    streams = []
    for codec in CODEC_IDS:
        streams.append(b.join(page, codec))
        display.present(pixels.copy(), owned=True)
        for _ in range(200):
            if page.got and page.got[-1].codec == codec:
                break
            await asyncio.sleep(0.02)
        assert page.got[-1].codec == codec, f"no {codec} frame"
        if codec == CODEC_IDS[0]:
            assert b.join(page, CODEC_IDS[1]) is not streams[0]
            assert b.join(back, CODEC_IDS[0]) is streams[0], "joined within the while"
            await asyncio.sleep(0.6)
            assert b.streams[CODEC_IDS[0]] is streams[0] and not streams[0].closed
            b.leave(back)
    b.leave(page)
    for _ in range(500):
        if not b.streams and threading.active_count() <= baseline:
            break
        await asyncio.sleep(0.02)
    assert b.streams == {}, f"still open: {list(b.streams)}"
    assert all(s.closed for s in streams)
    assert threading.active_count() == baseline, [t.name for t in threading.enumerate()]
    b.close()


def test_damage_rect_union() -> None:
    assert Rect(0, 0, 2, 2).union(Rect(4, 4, 1, 1)) == Rect(0, 0, 5, 5)
    assert Rect(0, 0, 0, 0).union(Rect(1, 1, 1, 1)) == Rect(1, 1, 1, 1)
