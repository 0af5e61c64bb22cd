"""Broadcast: one encode per codec for all its viewers; a slow viewer slows nobody."""

from __future__ import annotations

import asyncio
from typing import ClassVar

import numpy as np

from saffron.broadcast import Broadcast
from saffron.display import Display, Frame, Rect
from saffron.encoders.base import Encoder, Packet

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


def test_damage_rect_union() -> None:
    assert Rect(0, 0, 2, 2).union(Rect(4, 4, 1, 1)) == Rect(0, 0, 5, 5)
    assert Rect(0, 0, 0, 0).union(Rect(1, 1, 1, 1)) == Rect(1, 1, 1, 1)
