"""The clipboard without I/O: QEMU's D-Bus clipboard peer (answers, serials, limits) and
the fan-out between the producer and the viewers."""

from __future__ import annotations

import asyncio

import pytest
from jeepney.low_level import Header, HeaderFields, Message, MessageType
from jeepney.wrappers import DBusAddress, new_method_call

from saffron.clipboard import ClipboardBroadcast, ClipboardTooBig
from saffron.display import CLIPBOARD_MAX_BYTES, Display
from saffron.sources.qemu.clipboard import MIME_TEXT, QemuClipboard, guest_text
from saffron.sources.qemu.dbus import Incoming
from saffron.sources.qemu.interfaces import CLIPBOARD_PATH, IFACE_CLIPBOARD, IFACE_PROPERTIES


def call(member: str, signature: str | None = None, body: tuple = (), iface: str = "") -> Incoming:
    """A call QEMU makes on our object, as it comes off the wire."""
    msg = new_method_call(
        DBusAddress(CLIPBOARD_PATH, ":1.1", iface or IFACE_CLIPBOARD), member, signature, body
    )
    buf = bytearray(msg.serialise(serial=5))
    header, pos = Header.from_buffer(buf)
    return Incoming(header, buf, pos, [], 0, 0)


def kind(msg: Message) -> MessageType:
    return msg.header.message_type


def test_qemus_calls_are_answered() -> None:
    clip = QemuClipboard()
    answer, _ = clip.answer(call("GetAll", "s", (IFACE_CLIPBOARD,), IFACE_PROPERTIES))
    assert kind(answer) is MessageType.method_return and answer.body == ({},)
    answer, copied = clip.answer(call("Register"))
    assert kind(answer) is MessageType.method_return and not copied
    # nothing offered yet: QEMU's Request is refused at once (QEMU waits for the answer)
    answer, _ = clip.answer(call("Request", "uas", (0, [MIME_TEXT])))
    assert kind(answer) is MessageType.error
    answer, _ = clip.answer(call("Frobnicate"))
    assert answer.header.fields[HeaderFields.error_name].endswith("UnknownMethod")


def test_the_guests_grab_is_asked_for_and_serials_follow_qemu() -> None:
    clip = QemuClipboard()
    answer, copied = clip.answer(call("Grab", "uuas", (0, 7, [MIME_TEXT])))
    assert kind(answer) is MessageType.method_return and copied
    grab = clip.grab(":1.5", "mine")
    assert grab.body == (0, 8, [MIME_TEXT])  # at least the newest QEMU told
    # X11's primary selection and images are not taken
    assert clip.answer(call("Grab", "uuas", (1, 9, [MIME_TEXT])))[1] is False
    assert clip.answer(call("Grab", "uuas", (0, 10, ["image/png"])))[1] is False
    # QEMU starts serials again when a peer registers
    clip.answer(call("Register"))
    assert clip.grab(":1.5", "again").body[1] == 1


def test_a_viewers_text_is_given_to_qemu_until_the_guest_copies() -> None:
    clip = QemuClipboard()
    clip.grab(":1.5", "naïve ✓")
    answer, _ = clip.answer(call("Request", "uas", (0, [MIME_TEXT])))
    assert answer.body == (MIME_TEXT, "naïve ✓".encode())
    assert kind(clip.answer(call("Request", "uas", (1, [MIME_TEXT])))[0]) is MessageType.error
    clip.answer(call("Grab", "uuas", (0, 3, [MIME_TEXT])))
    assert kind(clip.answer(call("Request", "uas", (0, [MIME_TEXT])))[0]) is MessageType.error


def test_the_guests_text_is_bounded() -> None:
    assert guest_text((MIME_TEXT, "grüße\0".encode())) == "grüße"
    assert guest_text(("image/png", b"x")) is None
    assert guest_text((MIME_TEXT, bytes(CLIPBOARD_MAX_BYTES + 1))) is None
    assert guest_text(()) is None


class Viewer:
    def __init__(self) -> None:
        self.texts: list[str] = []

    def clipboard_changed(self, text: str) -> None:
        self.texts.append(text)


def test_the_fan_out_passes_text_both_ways() -> None:
    loop = asyncio.new_event_loop()
    try:
        display = Display()
        hub = ClipboardBroadcast(display, loop)
        assert display.clipboard is hub and not hub.available
        given: list[str] = []
        display.clipboard_hook = given.append
        one, two = Viewer(), Viewer()
        hub.add_viewer(one)
        hub.add_viewer(two)
        display.clipboard.guest_clipboard("from the guest")
        loop.run_until_complete(asyncio.sleep(0))
        assert one.texts == two.texts == ["from the guest"]
        hub.viewer_copied("from one", one)
        assert given == ["from one"] and two.texts[-1] == "from one" and len(one.texts) == 1
        late = Viewer()
        hub.add_viewer(late)
        assert late.texts == ["from one"]  # a viewer that joins gets what is there
        with pytest.raises(ClipboardTooBig):
            hub.viewer_copied("x" * (CLIPBOARD_MAX_BYTES + 1), one)
        display.clipboard.guest_clipboard("é" * CLIPBOARD_MAX_BYTES)  # 2 MiB of UTF-8
        loop.run_until_complete(asyncio.sleep(0))
        assert late.texts == ["from one"]
    finally:
        loop.close()
