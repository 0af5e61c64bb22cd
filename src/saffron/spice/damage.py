"""Where the picture changed, frame by frame: the damage behind each SPICE stream clip.

:class:`DamageLog` is a frame sink the server adds to the producer's display
once; every display channel viewer asks it what changed between two frames it
sent, to clip the video stream to that area. It knows frames and rectangles,
not viewers, channels or the wire.
"""

from __future__ import annotations

import bisect
import threading

from ..display import Display, Frame
from ..display import Rect as Area


class DamageLog:
    """Every presented frame's damage, tagged with the seq of the last frame taken before it.

    A frame sink that is never ready: :meth:`Display.present` then calls
    :meth:`damage` for every frame, taken or not. The damage that a packet for
    frame *s* adds on top of frame *p* is then everything tagged from *p* to *s - 1*.
    """

    LIMIT = 4096

    def __init__(self, display: Display) -> None:
        self.display = display
        self._lock = threading.Lock()
        self._tags: list[int] = []
        self._rects: list[Area] = []
        self._floor = -1  # tags at or below this may have been forgotten

    @property
    def ready(self) -> bool:
        return False

    def offer(self, frame: Frame) -> None:
        pass

    def damage(self, rect: Area) -> None:
        last = self.display.last_frame
        tag = last.seq if last is not None else 0
        with self._lock:
            self._tags.append(tag)
            self._rects.append(rect)
            if len(self._tags) > 2 * self.LIMIT:
                self._floor = self._tags[-self.LIMIT - 1]
                del self._tags[: -self.LIMIT]
                del self._rects[: -self.LIMIT]

    def between(self, first: int, last: int) -> list[Area] | None:
        """Damage tagged ``first``..``last``; None when part of it was forgotten."""
        with self._lock:
            if first <= self._floor:
                return None
            lo = bisect.bisect_left(self._tags, first)
            hi = bisect.bisect_right(self._tags, last)
            return self._rects[lo:hi]
