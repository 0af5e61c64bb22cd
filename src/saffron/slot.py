"""FrameSlot: the newest-wins buffering between a producer and one encoder.

At most one frame is being encoded (the one the worker took) and one is
pending. A newer frame replaces the pending one and inherits its damage, so
nothing the producer changed is forgotten even when frames are skipped.
"""

from __future__ import annotations

import collections
import threading

from .display import Frame, Rect


class FrameSlot:
    """One pending frame; ``put`` never blocks, ``take`` waits for the worker."""

    fifo = False

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: Frame | None = None
        self._damage: Rect | None = None
        self._closed = False
        self.replaced = 0
        """Frames that were overwritten before an encoder took them."""

    def put(self, frame: Frame) -> None:
        with self._cond:
            if self._pending is not None:
                self.replaced += 1
                frame.damage = frame.damage.union(self._pending.damage)
            if self._damage is not None:
                frame.damage = frame.damage.union(self._damage)
                self._damage = None
            self._pending = frame
            self._cond.notify()

    def add_damage(self, rect: Rect) -> None:
        """Damage of a frame that was never put: merged into the next one."""
        with self._cond:
            self._damage = rect.union(self._damage)

    @property
    def pending(self) -> bool:
        return self._pending is not None

    def take(self, timeout: float | None = None) -> Frame | None:
        """The pending frame, waiting up to ``timeout``; None on timeout or close."""
        with self._cond:
            if self._pending is None and not self._closed:
                self._cond.wait(timeout)
            frame, self._pending = self._pending, None
            return frame

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class FifoSlot(FrameSlot):
    """A plain queue that keeps every frame: only for measuring what newest-wins saves.

    Bounded so that a comparison run cannot eat the machine's memory; when full,
    ``put`` blocks the producer, which is exactly the behaviour being shown.
    """

    fifo = True
    LIMIT = 600  # ten seconds at 60 fps: enough to show the latency grow

    def __init__(self) -> None:
        super().__init__()
        self._queue: collections.deque[Frame] = collections.deque()

    def put(self, frame: Frame) -> None:
        with self._cond:
            while len(self._queue) >= self.LIMIT and not self._closed:
                self._cond.wait(0.1)
            self._queue.append(frame)
            self._cond.notify_all()

    @property
    def pending(self) -> bool:
        return bool(self._queue)

    def take(self, timeout: float | None = None) -> Frame | None:
        with self._cond:
            if not self._queue and not self._closed:
                self._cond.wait(timeout)
            frame = self._queue.popleft() if self._queue else None
            self._cond.notify_all()
            return frame


class Handoff:
    """One item passed from a stage to the next: ``put`` waits until the last one was taken.

    Between colour conversion and encoding, so at most one converted frame
    waits, and the converter never works on frames the encoder would not take.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: tuple[Frame, object] | None = None
        self._closed = False

    def put(self, item: tuple[Frame, object]) -> bool:
        """Hand over ``item``; False if closed meanwhile."""
        with self._cond:
            while self._item is not None and not self._closed:
                self._cond.wait(0.5)
            if self._closed:
                return False
            self._item = item
            self._cond.notify_all()
            return True

    def take(self, timeout: float) -> tuple[Frame, object] | None:
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            self._cond.notify_all()
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
