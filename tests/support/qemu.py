"""A QEMU display's listeners as the tests see them: a frame sink that remembers what it
was given and waits for a frame that passes a test, a DisplayListener that counts what
the front ends would hear, and waiting for a line on a guest's serial port."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saffron.display import Display, Frame, Rect
from saffron.sources import qemu as Q
from tests.support.wait import wait_until


class Sink:
    """A frame sink that is always ready and remembers what it was given."""

    def __init__(self, on_offer: Callable[[Frame], None] | None = None) -> None:
        self.cond = threading.Condition()
        self.frames: list[Frame] = []
        self.count = 0
        self.on_offer = on_offer

    @property
    def ready(self) -> bool:
        return True

    def offer(self, frame: Frame) -> None:
        if self.on_offer is not None:
            self.on_offer(frame)
        with self.cond:
            self.count += 1
            self.frames.append(frame)
            del self.frames[:-50]
            self.cond.notify_all()

    def damage(self, rect: Rect) -> None:
        pass

    @property
    def last(self) -> Frame | None:
        with self.cond:
            return self.frames[-1] if self.frames else None

    def wait_for(self, test: Callable[[Frame], bool], timeout: float, after: int = 0) -> Frame:
        """The first frame, among the last 50 and those to come, that passes ``test``;
        with ``after``, only frames offered after the ``after``-th one."""
        deadline = time.monotonic() + timeout
        checked = after
        with self.cond:
            while True:
                first = self.count - len(self.frames)  # number of frames forgotten
                for i in range(max(checked, first), self.count):
                    if test(self.frames[i - first]):
                        return self.frames[i - first]
                checked = self.count
                left = deadline - time.monotonic()
                if left <= 0:
                    last = self.frames[-1] if self.frames else None
                    raise AssertionError(
                        f"no such frame in {timeout} s ({self.count} frames, last "
                        f"{None if last is None else (last.width, last.height)})"
                    )
                self.cond.wait(left)


@dataclass
class Events:
    """A DisplayListener that records what the front ends would hear."""

    resizes: list[tuple[int, int]] = field(default_factory=list)
    disables: int = 0
    cursors: int = 0

    def on_resize(self, width: int, height: int) -> None:
        self.resizes.append((width, height))

    def on_cursor(self, cursor: object) -> None:
        self.cursors += 1

    def on_cursor_move(self, x: int, y: int, visible: bool) -> None:
        pass

    def on_disable(self) -> None:
        self.disables += 1


def new_display() -> tuple[Display, Sink, Events]:
    display, sink, events = Display(), Sink(), Events()
    display.add_sink(sink)
    display.add_listener(events)
    return display, sink, events


def wait_serial(path: Path, text: str, timeout: float) -> None:
    def seen() -> bool:
        return path.exists() and text.encode() in path.read_bytes()

    assert wait_until(seen, timeout), f"timed out waiting for {text!r} on the guest's serial port"


def qmp_screendump(socket_path: Path, out: Path, timeout: float = 10) -> None:
    """What QEMU's own console shows, as a PPM file: the ground truth a viewer's picture is
    compared with. ``socket_path`` is a QMP socket (``-qmp unix:PATH,server=on,wait=off``)."""
    import json
    import socket

    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        sock.connect(str(socket_path))
        reader = sock.makefile("r")

        def answer() -> dict[str, object]:
            while True:
                msg: dict[str, object] = json.loads(reader.readline())
                if "event" not in msg:
                    return msg

        answer()  # the greeting
        for command in (
            {"execute": "qmp_capabilities"},
            {"execute": "screendump", "arguments": {"filename": str(out)}},
        ):
            sock.sendall(json.dumps(command).encode() + b"\n")
            reply = answer()
            if "error" in reply:
                raise RuntimeError(f"QMP {command['execute']}: {reply['error']}")


@contextmanager
def attached_guest(
    display: Display, argv: list[str], serial: Path, *, ready_s: float = 60, **start: Any
) -> Iterator[Q.QemuSource]:
    """QEMU (``argv``, with the test guest writing to ``serial``) started with ``start``'s
    options (``audio=True``, ``clipboard=True``), attached to ``display``, once the guest
    says it is ready; both stopped afterwards."""
    proc = Q.start_qemu(argv, **start)
    source = Q.open_qemu_source(display, dbus_address=proc.address)
    try:
        assert source.wait_attached(20)
        wait_serial(serial, "saffron-guest: ready", ready_s)
        yield source
    finally:
        source.stop()
        proc.stop()
