"""Keyboard and mouse from the viewers, queued for QEMU without ever blocking the caller.

It only turns viewer events into QEMU's calls and queues them; the source's
thread (:mod:`.attach`) sends them to the QEMU it attached to.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from ...display import Display
from .interfaces import IFACE_KEYBOARD, IFACE_MOUSE
from .keymap import button_to_qemu, scancode_to_qnum

log = logging.getLogger("saffron.qemu")


@dataclass(frozen=True, slots=True)
class InputCall:
    interface: str
    member: str
    signature: str
    body: tuple[int, ...]


class QemuInput:
    """Keyboard and mouse for QEMU (an :class:`~saffron.display.InputHandler`).

    Calls only queue the event and wake the source's thread, which sends it on
    the bus: they return at once whatever QEMU is doing.
    """

    def __init__(
        self, display: Display, queue: Callable[[InputCall], None], absolute: Callable[[], bool]
    ) -> None:
        self._display = display
        self._queue = queue
        self._absolute = absolute
        """Whether QEMU's mouse takes absolute positions now (it can change at any time)."""
        self._pos: tuple[int, int] | None = None

    def key(self, scancode: int, down: bool) -> None:
        qnum = scancode_to_qnum(scancode)
        if qnum is None:
            log.debug("scancode 0x%x names no key QEMU knows", scancode)
            return
        self._queue(InputCall(IFACE_KEYBOARD, "Press" if down else "Release", "u", (qnum,)))

    def pointer(self, x: int, y: int) -> None:
        x, y = max(int(x), 0), max(int(y), 0)
        if self._absolute():
            self._queue(InputCall(IFACE_MOUSE, "SetAbsPosition", "uu", (x, y)))
        elif self._pos is not None:
            dx, dy = x - self._pos[0], y - self._pos[1]
            if dx or dy:
                self._queue(InputCall(IFACE_MOUSE, "RelMotion", "ii", (dx, dy)))
        self._pos = (x, y)

    def motion(self, dx: int, dy: int) -> None:
        if not self._absolute():
            self._queue(InputCall(IFACE_MOUSE, "RelMotion", "ii", (int(dx), int(dy))))
            return
        display = self._display
        x0, y0 = self._pos or (display.width // 2, display.height // 2)
        x = min(max(x0 + int(dx), 0), max(display.width - 1, 0))
        y = min(max(y0 + int(dy), 0), max(display.height - 1, 0))
        self.pointer(x, y)

    def button(self, button: int, down: bool) -> None:
        number = button_to_qemu(int(button))
        if number is None:
            return
        self._queue(InputCall(IFACE_MOUSE, "Press" if down else "Release", "u", (number,)))
