"""FrameSlot: newest wins, damage merged, nothing copied or encoded for nobody."""

from __future__ import annotations

import threading

import numpy as np

from saffron.display import Display, Frame, Rect
from saffron.slot import FifoSlot, FrameSlot


def frame(seq: int, damage: Rect) -> Frame:
    return Frame(np.zeros((4, 4, 4), np.uint8), damage, capture_us=seq, seq=seq)


def test_newest_frame_wins_and_inherits_damage() -> None:
    slot = FrameSlot()
    slot.put(frame(1, Rect(0, 0, 2, 2)))
    slot.put(frame(2, Rect(10, 10, 2, 2)))
    got = slot.take(0)
    assert got is not None and got.seq == 2
    assert got.damage == Rect(0, 0, 12, 12)
    assert slot.replaced == 1
    assert slot.take(0) is None


def test_damage_of_skipped_frames_is_merged_into_the_next() -> None:
    slot = FrameSlot()
    slot.add_damage(Rect(5, 5, 1, 1))
    slot.put(frame(1, Rect(0, 0, 1, 1)))
    got = slot.take(0)
    assert got is not None and got.damage == Rect(0, 0, 6, 6)
    slot.put(frame(2, Rect(0, 0, 1, 1)))
    got = slot.take(0)
    assert got is not None and got.damage == Rect(0, 0, 1, 1)


def test_take_waits_for_a_frame_and_close_wakes_it() -> None:
    slot = FrameSlot()
    result: list[Frame | None] = []
    t = threading.Thread(target=lambda: result.append(slot.take(30)))
    t.start()
    slot.put(frame(7, Rect(0, 0, 1, 1)))
    t.join(30)
    assert result and result[0] is not None and result[0].seq == 7
    t = threading.Thread(target=lambda: result.append(slot.take(30)))
    t.start()
    slot.close()
    t.join(30)
    assert not t.is_alive() and result[1] is None


def test_fifo_keeps_every_frame_in_order() -> None:
    slot = FifoSlot()
    for i in range(5):
        slot.put(frame(i, Rect(0, 0, 1, 1)))
    assert [f.seq for f in iter(lambda: slot.take(0), None)] == [0, 1, 2, 3, 4]


class Sink:
    def __init__(self, ready: bool) -> None:
        self._ready = ready
        self.offered: list[Frame] = []
        self.damaged: list[Rect] = []

    @property
    def ready(self) -> bool:
        return self._ready

    def offer(self, frame: Frame) -> None:
        self.offered.append(frame)

    def damage(self, rect: Rect) -> None:
        self.damaged.append(rect)


def test_no_viewer_ready_means_no_copy_and_damage_kept() -> None:
    display = Display()
    sink = Sink(ready=False)
    display.add_sink(sink)
    pixels = np.zeros((8, 8, 4), np.uint8)
    assert display.present(pixels, Rect(1, 1, 2, 2)) is False
    assert sink.offered == [] and sink.damaged == [Rect(1, 1, 2, 2)]
    assert display.last_frame is None  # nothing was copied


def test_nobody_at_all_costs_nothing() -> None:
    display = Display()
    assert display.present(np.zeros((8, 8, 4), np.uint8)) is False
    assert not display.wants_frame


def test_ready_viewer_gets_a_copy_unless_the_frame_is_given_away() -> None:
    display = Display()
    sink = Sink(ready=True)
    display.add_sink(sink)
    pixels = np.ones((8, 8, 4), np.uint8)
    assert display.present(pixels)
    assert sink.offered[0].pixels is not pixels
    assert np.array_equal(sink.offered[0].pixels, pixels)
    pixels[:] = 9  # the producer reuses its buffer: the copy is unaffected
    assert sink.offered[0].pixels[0, 0, 0] == 1
    owned = np.ones((8, 8, 4), np.uint8)
    display.present(owned, owned=True)
    assert sink.offered[1].pixels is owned
    assert sink.offered[1].damage == Rect(0, 0, 8, 8)


def test_one_frame_shared_by_every_ready_sink_and_damage_clipped() -> None:
    display = Display()
    a, b, c = Sink(True), Sink(True), Sink(False)
    for s in (a, b, c):
        display.add_sink(s)
    display.present(np.zeros((8, 8, 4), np.uint8), Rect(-4, -4, 100, 6))
    assert a.offered[0] is b.offered[0]
    assert a.offered[0].damage == Rect(0, 0, 8, 2)
    assert c.damaged == [Rect(0, 0, 8, 2)]


def test_resize_reaches_listeners() -> None:
    display = Display()
    sizes: list[tuple[int, int]] = []

    class Listener:
        def on_resize(self, w: int, h: int) -> None:
            sizes.append((w, h))

        def on_cursor(self, cursor: object) -> None: ...

        def on_cursor_move(self, x: int, y: int, visible: bool) -> None: ...

        def on_disable(self) -> None: ...

    display.add_listener(Listener())  # type: ignore[arg-type]
    display.present(np.zeros((8, 8, 4), np.uint8))
    display.present(np.zeros((8, 8, 4), np.uint8))
    display.present(np.zeros((6, 10, 4), np.uint8))
    assert sizes == [(8, 8), (10, 6)]
