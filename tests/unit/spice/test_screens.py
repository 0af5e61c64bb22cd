"""Several screens over SPICE: display and cursor channel k for screen k in the main
channel's list, the links that may be made, the client's monitor k sized onto screen k,
and keys and buttons going to the screen the pointer is on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from saffron.display import Display, SizeRequest
from saffron.spice.protocol import wire as w
from saffron.spice.protocol.agent import MonitorConfig, MonitorsConfigured
from saffron.spice.protocol.inputs_channel import InputsChannel, KeyEvent, PointerMoved
from saffron.spice.protocol.main_channel import MainChannel
from saffron.spice.server import channel_list, offered_channels
from saffron.spice.session import InputsHandler, MainHandler, Session
from tests.unit.spice.test_channels import client, sent

D, IN, C = w.ChannelType.DISPLAY, w.ChannelType.INPUTS, w.ChannelType.CURSOR


def test_one_screen_lists_what_it_always_did() -> None:
    assert channel_list(1) == ((D, 0), (IN, 0), (C, 0))
    assert channel_list(1, playback=True)[-1] == (w.ChannelType.PLAYBACK, 0)


def test_each_screen_has_a_display_and_a_cursor_channel_of_its_id() -> None:
    listed = channel_list(3)
    assert [k for kind, k in listed if kind == D] == [0, 1, 2]
    assert [k for kind, k in listed if kind == C] == [0, 1, 2]
    assert [k for kind, k in listed if kind == IN] == [0]  # one keyboard and mouse
    offered = offered_channels(3)
    assert (D, 2) in offered and (C, 2) in offered
    assert (D, 3) not in offered and (IN, 1) not in offered
    assert offered[(D, 1)] == offered[(D, 0)]


def test_the_main_channel_hints_how_many_displays() -> None:
    for screens in (1, 2):
        ch = MainChannel(mini_header=True, session_id=1, channels=channel_list(screens))
        ch.start(0, "vm", b"\0" * 16)
        (init,) = [m for m in sent(ch) if isinstance(m, w.MainInit)]
        assert init.display_channels_hint == screens


def test_a_pointer_position_says_which_display_it_is_on() -> None:
    ch = InputsChannel(mini_header=True)
    events = ch.receive_data(client(w.MousePosition(5, 6, 0, 1)))
    assert events == [PointerMoved(5, 6, 1)]


class Recorder:
    """A display's input handler that remembers what it got."""

    def __init__(self) -> None:
        self.got: list[tuple[Any, ...]] = []

    def key(self, scancode: int, down: bool) -> None:
        self.got.append(("key", scancode, down))

    def pointer(self, x: int, y: int) -> None:
        self.got.append(("pointer", x, y))

    def motion(self, dx: int, dy: int) -> None:
        self.got.append(("motion", dx, dy))

    def button(self, button: Any, down: bool) -> None:
        self.got.append(("button", button, down))


@dataclass
class Screens:
    """The part of the server a session's main and inputs handlers use."""

    displays: list[Display]
    view_only: bool = False

    @property
    def display(self) -> Display:
        return self.displays[0]

    def display_of(self, screen: int) -> Display | None:
        return self.displays[screen] if 0 <= screen < len(self.displays) else None


class Conn:
    peer = "test"
    congested = False

    def buffered(self) -> int:
        return 0

    def flush(self) -> None:
        pass

    def close(self, reason: str, *, warn: bool = False) -> None:
        pass


def two_screens() -> tuple[Screens, Session, list[list[SizeRequest]]]:
    displays = [Display(), Display()]
    asked: list[list[SizeRequest]] = [[], []]
    for display, log in zip(displays, asked, strict=True):
        display.resize_hook = log.append
    server = Screens(displays)
    return server, Session(server, 1, "test"), asked  # type: ignore[arg-type]


def test_monitor_k_of_the_client_sizes_screen_k() -> None:
    _, session, asked = two_screens()
    channel = MainChannel(mini_header=True, session_id=1, channels=channel_list(2))
    main = MainHandler(session, Conn(), channel)
    monitors = (MonitorConfig(800, 600), MonitorConfig(0, 0), MonitorConfig(640, 480))
    main._monitors(MonitorsConfigured(0, monitors))  # a third monitor: no such screen
    assert [(r.width, r.height) for r in asked[0]] == [(800, 600)]
    assert asked[1] == []  # disabled in the client: left alone
    main._monitors(MonitorsConfigured(0, (MonitorConfig(0, 0), MonitorConfig(1024, 768))))
    assert [(r.width, r.height) for r in asked[1]] == [(1024, 768)]
    assert len(asked[0]) == 1


def test_keys_and_buttons_go_to_the_screen_the_pointer_is_on() -> None:
    server, session, _ = two_screens()
    first, second = Recorder(), Recorder()
    server.displays[0].input, server.displays[1].input = first, second
    inputs = InputsHandler(session, Conn(), InputsChannel(mini_header=True))
    inputs._deliver(KeyEvent(0x1E, True))
    inputs._deliver(PointerMoved(10, 20, 1))
    inputs._deliver(KeyEvent(0x1E, False))
    inputs._deliver(PointerMoved(3, 4, 7))  # no such screen: stays on the last one
    inputs._deliver(PointerMoved(1, 2, 0))
    inputs._deliver(KeyEvent(0x30, True))
    assert first.got == [("key", 0x1E, True), ("pointer", 1, 2), ("key", 0x30, True)]
    assert second.got == [("pointer", 10, 20), ("key", 0x1E, False), ("pointer", 3, 4)]
