"""The cursor channel: the producer's pointer image and position, as ALPHA cursors.

spice-gtk ignores SET and MOVE before CURSOR_INIT, so INIT always goes first.
A producer that never set a cursor gets a plain arrow: a cursor channel that
says "none" makes spice-gtk hide the local pointer, which leaves a user of the
demo or a pattern source with nothing to point with. The owner tells it what
the producer's cursor is and where; this machine never asks the producer.
"""

from __future__ import annotations

from collections.abc import Sequence

from ...display import Cursor
from .channel import Channel
from .wire import (
    ChannelType,
    CursorFlags,
    CursorHide,
    CursorInit,
    CursorMove,
    CursorSet,
    CursorShape,
    CursorType,
)

_ARROW = (
    "X...........",
    "XX..........",
    "XoX.........",
    "XooX........",
    "XoooX.......",
    "XooooX......",
    "XoooooX.....",
    "XooooooX....",
    "XoooooooX...",
    "XooooooooX..",
    "XoooooooooX.",
    "XooooooXXXXX",
    "XoooXooX....",
    "XooXXooX....",
    "XoX..XooX...",
    "XX...XooX...",
    "X.....XooX..",
    "......XooX..",
    ".......XX...",
)


def default_arrow() -> Cursor:
    """A black-edged white arrow, hot spot at its tip."""
    colours = {"X": b"\x00\x00\x00\xff", "o": b"\xff\xff\xff\xff", ".": b"\x00\x00\x00\x00"}
    pixels = b"".join(colours[c] for row in _ARROW for c in row)
    return Cursor(len(_ARROW[0]), len(_ARROW), 0, 0, pixels, serial=0)


def shape_of(cursor: Cursor | None) -> CursorShape:
    """A SpiceCursor of type ALPHA: BGRA bytes with straight alpha, as Saffron keeps them."""
    if cursor is None:
        return CursorShape.none()
    return CursorShape(
        flags=0,
        unique=cursor.serial & 0xFFFFFFFFFFFFFFFF,
        type=CursorType.ALPHA,
        width=cursor.width,
        height=cursor.height,
        hot_spot_x=cursor.hot_x,
        hot_spot_y=cursor.hot_y,
        data=cursor.pixels,
    )


def _i16(value: int) -> int:
    return max(-0x8000, min(0x7FFF, value))


class CursorChannel(Channel):
    CHANNEL_TYPE = ChannelType.CURSOR

    def __init__(self, *, mini_header: bool, client_caps: Sequence[int] = ()) -> None:
        super().__init__(mini_header=mini_header, client_caps=tuple(client_caps))
        self.initialised = False
        self.visible = False

    def start(self, cursor: Cursor | None, x: int, y: int, visible: bool) -> None:
        shape = shape_of(cursor)
        self.visible = visible and not shape.flags & CursorFlags.NONE
        self.send(CursorInit(_i16(x), _i16(y), 0, 0, int(self.visible), shape))
        self.initialised = True

    def set(self, cursor: Cursor | None, x: int, y: int, visible: bool) -> None:
        """A new image (None hides the pointer)."""
        if not self.initialised:
            return
        shape = shape_of(cursor)
        self.visible = visible and not shape.flags & CursorFlags.NONE
        self.send(CursorSet(_i16(x), _i16(y), int(self.visible), shape))

    def move(self, x: int, y: int) -> None:
        if self.initialised:
            self.send(CursorMove(_i16(x), _i16(y)))

    def hide(self) -> None:
        if self.initialised and self.visible:
            self.send(CursorHide())
            self.visible = False
