"""The inputs channel: keys as set-1 scancodes, pointer, buttons, wheel, motion acks.

SPICE packs a key's scancode bytes into a u32, lowest byte first (Up is bytes
E0 48, u32 0x48E0; its release E0 C8). Saffron's producers take the prefix in
the high byte and the make code in the low one (Up is 0xE048) with a separate
down flag, so :func:`decode_scancodes` turns one into the other. The Pause key
arrives as E1 1D then 45 (spice-gtk) and is passed on as 0xE11D and 0x45, the
bytes a PC keyboard sends. Where the events go (the producer, or nowhere when
view-only) is the owner's business.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ...display import Button
from .channel import Channel, Event
from .wire import (
    INPUT_MOTION_ACK_BUNCH,
    Caps,
    ChannelType,
    ClientKeyModifiers,
    InputsCap,
    InputsInit,
    KeyDown,
    KeyScancode,
    KeyUp,
    Message,
    MouseMotion,
    MouseMotionAck,
    MousePosition,
    MousePress,
    MouseRelease,
    make_caps,
)

SERVER_INPUTS_CAPS: Caps = make_caps([InputsCap.KEY_SCANCODE])
"""KEY_SCANCODE lets spice-gtk send press+release in one message (no stuck keys)."""


@dataclass(frozen=True)
class KeyEvent(Event):
    scancode: int
    """Set-1 scancode with any E0/E1 prefix in the high byte."""
    down: bool


@dataclass(frozen=True)
class PointerMoved(Event):
    x: int
    y: int
    display_id: int = 0
    """The display channel (screen) the pointer is on."""


@dataclass(frozen=True)
class PointerMotion(Event):
    dx: int
    dy: int


@dataclass(frozen=True)
class ButtonEvent(Event):
    button: Button
    down: bool


@dataclass(frozen=True)
class ModifiersChanged(Event):
    """The client's lock keys (scroll 1, num 2, caps 4)."""

    modifiers: int


def decode_scancodes(data: bytes) -> list[tuple[int, bool]]:
    """(scancode, down) pairs from a run of set-1 bytes; zero bytes end the run."""
    keys: list[tuple[int, bool]] = []
    prefix = 0
    for byte in data:
        if byte == 0:
            break
        if byte in (0xE0, 0xE1):
            prefix = byte
            continue
        down = not byte & 0x80
        code = byte & 0x7F
        keys.append(((prefix << 8) | code if prefix else code, down))
        prefix = 0
    return keys


def decode_key(code: int) -> list[tuple[int, bool]]:
    """The keys in one KEY_DOWN / KEY_UP u32."""
    return decode_scancodes((code & 0xFFFFFFFF).to_bytes(4, "little"))


def encode_key(scancode: int, down: bool) -> int:
    """The u32 a client puts in KEY_DOWN / KEY_UP (for test clients)."""
    code = scancode & 0x7F | (0 if down else 0x80)
    prefix = scancode >> 8
    return prefix | code << 8 if prefix else code


class InputsChannel(Channel):
    CHANNEL_TYPE = ChannelType.INPUTS

    def __init__(self, *, mini_header: bool, client_caps: Sequence[int] = ()) -> None:
        super().__init__(mini_header=mini_header, client_caps=tuple(client_caps))
        self.motions = 0

    def start(self, modifiers: int = 0) -> None:
        self.send(InputsInit(modifiers))

    def _motion(self) -> None:
        self.motions += 1
        if self.motions % INPUT_MOTION_ACK_BUNCH == 0:
            self.send(MouseMotionAck())

    def _handle(self, message: Message) -> list[Event]:
        if isinstance(message, KeyDown):
            return [KeyEvent(code, down) for code, down in decode_key(message.code)]
        if isinstance(message, KeyUp):  # a release whether or not the 0x80 bit is set
            return [KeyEvent(code, False) for code, _ in decode_key(message.code)]
        if isinstance(message, KeyScancode):
            return [KeyEvent(code, down) for code, down in decode_scancodes(message.codes)]
        if isinstance(message, MousePosition):
            self._motion()
            return [PointerMoved(message.x, message.y, message.display_id)]
        if isinstance(message, MouseMotion):
            self._motion()
            return [PointerMotion(message.dx, message.dy)]
        if isinstance(message, MousePress | MouseRelease):
            try:
                button = Button(message.button)
            except ValueError:
                return []  # a button Saffron has no name for: nothing to pass on
            return [ButtonEvent(button, isinstance(message, MousePress))]
        if isinstance(message, ClientKeyModifiers):
            return [ModifiersChanged(message.modifiers)]
        return []
