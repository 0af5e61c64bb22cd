"""The producer-facing interface: what a frame source calls, and what it gets back.

A producer (the demo scene, QEMU's D-Bus display, the pattern generator) runs in
its own thread or loop and calls :class:`Display`. Every call returns at once:
the "done" a producer waits for is the return of :meth:`Display.present`, which
never waits on an encoder or on the network.

Pixels are always 32-bit BGRX (bytes B, G, R, X in memory; pixman x8r8g8b8 on a
little-endian host), the format QEMU, EGL read-back and FFmpeg's scaler share.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

Pixels = npt.NDArray[np.uint8]
"""A frame's pixels: shape (height, width, 4), BGRX, rows may be strided."""


def now_us() -> int:
    """Wall-clock microseconds since the epoch: the capture-time stamp viewers compare."""
    return time.time_ns() // 1000


@dataclass(frozen=True, slots=True)
class Rect:
    """A damaged rectangle in frame coordinates."""

    x: int
    y: int
    width: int
    height: int

    @property
    def empty(self) -> bool:
        return self.width <= 0 or self.height <= 0

    def union(self, other: Rect | None) -> Rect:
        if other is None or other.empty:
            return self
        if self.empty:
            return other
        x0, y0 = min(self.x, other.x), min(self.y, other.y)
        x1 = max(self.x + self.width, other.x + other.width)
        y1 = max(self.y + self.height, other.y + other.height)
        return Rect(x0, y0, x1 - x0, y1 - y0)

    def clip(self, width: int, height: int) -> Rect:
        x0, y0 = max(self.x, 0), max(self.y, 0)
        x1, y1 = min(self.x + self.width, width), min(self.y + self.height, height)
        return Rect(x0, y0, max(x1 - x0, 0), max(y1 - y0, 0))


@dataclass(slots=True)
class Frame:
    """One picture on its way to the encoders. Its pixels belong to Saffron once made."""

    pixels: Pixels
    damage: Rect
    capture_us: int
    seq: int = 0

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


@dataclass(frozen=True, slots=True)
class Cursor:
    """A pointer image: straight-alpha BGRA rows, top-down, width*4 bytes each."""

    width: int
    height: int
    hot_x: int
    hot_y: int
    pixels: bytes
    serial: int = 0


class Button(enum.IntEnum):
    """Mouse buttons, numbered as SPICE numbers them."""

    LEFT = 1
    MIDDLE = 2
    RIGHT = 3
    WHEEL_UP = 4
    WHEEL_DOWN = 5
    SIDE = 6
    EXTRA = 7


class InputHandler(Protocol):
    """What a producer accepts from viewers.

    Keys are PC set-1 scancodes with the 0xE0 prefix folded into the high byte
    (0xE048 is Up), the numbering SPICE carries and QEMU's D-Bus keyboard takes.
    Positions are in frame pixels.
    """

    def key(self, scancode: int, down: bool) -> None: ...

    def pointer(self, x: int, y: int) -> None: ...

    def motion(self, dx: int, dy: int) -> None: ...

    def button(self, button: Button, down: bool) -> None: ...


class NoInput:
    """The input handler of a producer that takes none."""

    def key(self, scancode: int, down: bool) -> None:
        pass

    def pointer(self, x: int, y: int) -> None:
        pass

    def motion(self, dx: int, dy: int) -> None:
        pass

    def button(self, button: Button, down: bool) -> None:
        pass


class FrameSink(Protocol):
    """A consumer of frames (one per codec and size): see :mod:`saffron.pipeline`."""

    @property
    def ready(self) -> bool:
        """True when a frame offered now would be encoded (some viewer can take it)."""
        ...

    def offer(self, frame: Frame) -> None:
        """Take a frame; never blocks. A pending older frame is replaced."""
        ...

    def damage(self, rect: Rect) -> None:
        """Remember damage of a frame that was not offered, so it is not lost."""
        ...


class DisplayListener(Protocol):
    """Front ends hear of events that are not pixels."""

    def on_resize(self, width: int, height: int) -> None: ...

    def on_cursor(self, cursor: Cursor | None) -> None: ...

    def on_cursor_move(self, x: int, y: int, visible: bool) -> None: ...

    def on_disable(self) -> None: ...


@dataclass(frozen=True, slots=True)
class PcmFormat:
    """How a producer's sound samples are laid out (QEMU's audio ``Init`` says it)."""

    rate: int
    channels: int
    bits: int = 16
    signed: bool = True
    floating: bool = False
    big_endian: bool = False

    @property
    def bytes_per_frame(self) -> int:
        return self.channels * self.bits // 8

    @property
    def sample_format(self) -> str | None:
        """FFmpeg's name for these samples (what PyAV takes), None where it has none."""
        if self.floating:
            return {32: "flt", 64: "dbl"}.get(self.bits)
        if self.bits == 8:
            return None if self.signed else "u8"
        if not self.signed:
            return None
        return {16: "s16", 32: "s32"}.get(self.bits)


class PcmSink(Protocol):
    """What a producer's sound goes to: interleaved PCM with capture-time stamps.

    ``stream`` tells apart a producer's voices (QEMU has one per sound device).
    Calls come from the producer's thread and return at once. ``capture_us`` is the
    :func:`now_us` time of the chunk's *last* sample, the clock video frames carry.
    """

    def pcm_start(self, stream: int, fmt: PcmFormat) -> None: ...

    def pcm_enable(self, stream: int, enabled: bool) -> None: ...

    def pcm_write(self, stream: int, data: bytes, capture_us: int) -> None: ...

    def pcm_stop(self, stream: int) -> None: ...


class NoAudio:
    """The sound sink of a display nobody listens to."""

    def pcm_start(self, stream: int, fmt: PcmFormat) -> None:
        pass

    def pcm_enable(self, stream: int, enabled: bool) -> None:
        pass

    def pcm_write(self, stream: int, data: bytes, capture_us: int) -> None:
        pass

    def pcm_stop(self, stream: int) -> None:
        pass


class PcmSource(Protocol):
    """Where a producer's capture voices (the guest's microphone input) take their sound.

    The producer says a voice's format (``mic_start``), when the guest records
    (``mic_enable``) and takes ``size`` bytes at the pace the guest records
    (``mic_read``, from the producer's thread; it must answer at once: QEMU waits for
    it): the viewers' microphone, padded with silence.
    """

    def mic_start(self, stream: int, fmt: PcmFormat) -> None: ...

    def mic_enable(self, stream: int, enabled: bool) -> None: ...

    def mic_read(self, stream: int, size: int) -> bytes: ...

    def mic_stop(self, stream: int) -> None: ...


class NoMic:
    """The capture source of a display no viewer speaks into: the guest records silence."""

    def mic_start(self, stream: int, fmt: PcmFormat) -> None:
        pass

    def mic_enable(self, stream: int, enabled: bool) -> None:
        pass

    def mic_read(self, stream: int, size: int) -> bytes:
        return bytes(size)

    def mic_stop(self, stream: int) -> None:
        pass


CLIPBOARD_MAX_BYTES = 1 << 20
"""The most clipboard text (UTF-8) passed either way: a page of text is kilobytes, and a
viewer must not make the server or the guest hold more. A viewer that sends more is
closed; a guest's bigger clipboard is not passed on."""


class ClipboardSink(Protocol):
    """Where a producer says its clipboard now holds this text (called from any thread)."""

    def guest_clipboard(self, text: str) -> None: ...


class NoClipboard:
    """The clipboard sink of a display nobody copies from."""

    def guest_clipboard(self, text: str) -> None:
        pass


MIN_GUEST_WIDTH, MIN_GUEST_HEIGHT = 320, 200
"""The smallest screen a viewer may ask the guest for: below it a desktop is unusable
and some drivers refuse the mode."""
MAX_GUEST_WIDTH, MAX_GUEST_HEIGHT = 4096, 2304
"""The largest: what the encoders take at a usable rate (H.264 level 5.1 is 4096x2304)
and what a hostile page may make the guest allocate."""


@dataclass(frozen=True, slots=True)
class SizeRequest:
    """A viewer's window, which the guest's screen should follow (SPICE's monitors config,
    a page's viewport): pixels, and millimetres when the viewer knows them (0 otherwise)."""

    width: int
    height: int
    width_mm: int = 0
    height_mm: int = 0

    def clamped(self) -> SizeRequest:
        """Within MIN_GUEST_* and MAX_GUEST_*, millimetres within 16 bits (what QEMU takes)."""
        return SizeRequest(
            min(max(int(self.width), MIN_GUEST_WIDTH), MAX_GUEST_WIDTH),
            min(max(int(self.height), MIN_GUEST_HEIGHT), MAX_GUEST_HEIGHT),
            min(max(int(self.width_mm), 0), 0xFFFF),
            min(max(int(self.height_mm), 0), 0xFFFF),
        )


class Resizable(enum.Enum):
    """Whether the producer's screen can follow a viewer's window."""

    UNKNOWN = "unknown"
    """Nobody asked yet, or the producer has not answered."""
    YES = "yes"
    NO = "no"
    """It cannot (e.g. QEMU's plain VGA): viewers scale the picture instead."""


@dataclass
class DisplayInfo:
    """What viewers are told about the producer."""

    name: str = "Saffron"
    uuid: bytes = b"\0" * 16


class Display:
    """The one object a producer talks to. Thread-safe; no call blocks on viewers."""

    def __init__(self, info: DisplayInfo | None = None) -> None:
        self.info = info or DisplayInfo()
        self.input: InputHandler = NoInput()
        self.audio: PcmSink = NoAudio()
        """Where the producer's sound goes (the front ends' audio fan-out sets it)."""
        self.mic: PcmSource = NoMic()
        """Where the producer's capture voices take their sound (the viewers' microphone)."""
        self.clipboard: ClipboardSink = NoClipboard()
        """Where the producer's clipboard text goes (the front ends' clipboard fan-out)."""
        self.clipboard_hook: Callable[[str], None] | None = None
        """Set by a producer with a clipboard (QEMU's D-Bus ``Clipboard``): puts a viewer's
        text on the guest's clipboard. Returns at once, from any thread."""
        self.width = 0
        self.height = 0
        self.enabled = False
        self.cursor: Cursor | None = None
        self.cursor_pos: tuple[int, int, bool] = (0, 0, False)
        self.last_frame: Frame | None = None
        self.drawn_at = 0.0
        """When the producer last changed the picture (monotonic seconds), taken or not
        (a producer that skips frames nobody takes leaves it old meanwhile): for
        measurements that wait for the picture to settle."""
        self._sinks: list[FrameSink] = []
        self._listeners: list[DisplayListener] = []
        self._seq = 0
        self._lock = threading.Lock()
        self.refresh_hook: Callable[[], None] | None = None
        self.resize_hook: Callable[[SizeRequest], None] | None = None
        """Set by a producer whose screen can follow a viewer's window (QEMU's SetUIInfo)."""
        self.resizable = Resizable.UNKNOWN
        """What the producer said the last time it was asked; NO when it has no resize_hook."""

    # -- wiring (front ends, pipelines) ----------------------------------------

    def add_sink(self, sink: FrameSink) -> None:
        with self._lock:
            self._sinks = [*self._sinks, sink]

    def remove_sink(self, sink: FrameSink) -> None:
        with self._lock:
            self._sinks = [s for s in self._sinks if s is not sink]

    def add_listener(self, listener: DisplayListener) -> None:
        self._listeners = [*self._listeners, listener]

    def remove_listener(self, listener: DisplayListener) -> None:
        self._listeners = [li for li in self._listeners if li is not listener]

    def request_refresh(self) -> None:
        """Ask the producer to present its whole picture again (a viewer joined).

        A producer that only sends damage sets ``refresh_hook``; one that redraws
        continuously needs nothing.
        """
        hook = self.refresh_hook
        if hook is not None:
            hook()

    def request_size(self, request: SizeRequest) -> None:
        """A viewer's window is this size: ask the producer to make its screen so.

        Returns at once; the size is clamped to sane limits here, and the producer
        debounces (it gets every request, from every viewer, the newest wins). A
        producer that cannot resize leaves ``resizable`` at NO and the viewers scale.
        """
        hook = self.resize_hook
        if hook is None:
            self.resizable = Resizable.NO
            return
        hook(request.clamped())

    @property
    def wants_frame(self) -> bool:
        """Whether a frame presented now would be used: producers may skip rendering."""
        return any(s.ready for s in self._sinks)

    # -- the producer's calls --------------------------------------------------

    def scanout(self, width: int, height: int) -> None:
        """A new framebuffer of this size; the next present() carries its pixels."""
        changed = (width, height) != (self.width, self.height) or not self.enabled
        self.width, self.height, self.enabled = width, height, True
        if changed:
            for li in self._listeners:
                li.on_resize(width, height)

    def present(
        self,
        pixels: Pixels,
        damage: Rect | None = None,
        *,
        owned: bool = False,
        capture_us: int | None = None,
    ) -> bool:
        """Hand over a picture. Returns whether it was taken for encoding.

        With ``owned=True`` the producer gives the array away and must not write
        to it again; otherwise it is copied, and only when some viewer will use
        it. ``damage`` is the changed area (None: everything).
        """
        h, w = int(pixels.shape[0]), int(pixels.shape[1])
        if (w, h) != (self.width, self.height) or not self.enabled:
            self.scanout(w, h)
        rect = Rect(0, 0, w, h) if damage is None else damage.clip(w, h)
        if not rect.empty:
            self.drawn_at = time.monotonic()
        sinks = self._sinks
        ready = [s for s in sinks if s.ready]
        for s in sinks:
            if not s.ready:
                s.damage(rect)
        if not ready:
            return False
        if not owned:
            pixels = pixels.copy()
        self._seq += 1
        frame = Frame(pixels, rect, capture_us if capture_us is not None else now_us(), self._seq)
        self.last_frame = frame
        for s in ready:
            s.offer(frame)
        return True

    def set_cursor(self, cursor: Cursor | None) -> None:
        self.cursor = cursor
        for li in self._listeners:
            li.on_cursor(cursor)

    def move_cursor(self, x: int, y: int, visible: bool = True) -> None:
        self.cursor_pos = (x, y, visible)
        for li in self._listeners:
            li.on_cursor_move(x, y, visible)

    def disable(self) -> None:
        """The producer has no picture any more (VM stopped, console gone)."""
        self.enabled = False
        for li in self._listeners:
            li.on_disable()
