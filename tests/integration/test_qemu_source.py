"""The QEMU source against stand-ins for QEMU: a private bus with no QEMU on it, a
stand-in for the GL paths, and stand-ins for QEMU on the bus (input ownership,
reattach). Real QEMU is tests/e2e/test_qemu_source.py's.

QEMU cannot make a GL scanout on a machine without a DRM render node, and QEMU
7.2 has no ``Unix.Map``; for those paths a test plays QEMU's part on the
peer-to-peer connection and passes a memfd, which maps like a linear dma-buf
(or like QEMU's shared framebuffer): it stands in for the real thing.
"""

from __future__ import annotations

import array
import os
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from jeepney import new_error, new_method_return
from jeepney.bus_messages import DBus
from jeepney.io.blocking import open_dbus_connection
from jeepney.low_level import (
    Endianness,
    Header,
    HeaderFields,
    Message,
    MessageFlag,
    MessageType,
    Parser,
)

from saffron.display import Display, Rect, Resizable, SizeRequest
from saffron.sources import qemu as Q
from saffron.sources.qemu import interfaces as names
from saffron.sources.qemu import pixels as px
from saffron.sources.qemu.listener import QemuListener
from saffron.sources.qemu.uiinfo import MIN_INTERVAL_S, UNSUPPORTED_ERROR
from tests.support.qemu import Sink, new_display
from tests.support.wait import wait_until

# CI installs dbus (scripts/apt-packages.txt): missing, the bus tests fail, not skip.


# -- a bus without QEMU -------------------------------------------------------------------


def test_no_qemu_on_the_bus_gives_up_after_the_timeout(tmp_path: Path) -> None:
    display, _sink, events = new_display()
    bus = Q.DBusDaemon(tmp_path)
    try:
        t0 = time.monotonic()
        source = Q.open_qemu_source(display, dbus_address=bus.address, attach_timeout=1.0)
        assert source.wait_closed(10)
        assert 0.9 < time.monotonic() - t0 < 5
        assert "could not attach" in source.close_reason and source.attach_count == 0
        assert events.disables == 1
        display.input.key(0x1E, True)  # input after the end goes nowhere, quietly
    finally:
        bus.stop()


# -- a stand-in for QEMU on the peer-to-peer connection -------------------------------------


XR24 = int.from_bytes(b"XR24", "little")


class FakeQemu:
    """QEMU's side of a listener connection: the D-Bus server, and the one calling."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.parser = Parser()
        self.serial = 0

    def handshake(self) -> None:
        buf = b""
        while True:
            chunk = self.sock.recv(4096)
            assert chunk, "the listener hung up during authentication"
            buf += chunk
            while b"\r\n" in buf:
                line, buf = buf.split(b"\r\n", 1)
                line = line.lstrip(b"\0")
                if line.startswith(b"AUTH EXTERNAL"):
                    self.sock.sendall(b"OK 0123456789abcdef0123456789abcdef\r\n")
                elif line == b"NEGOTIATE_UNIX_FD":
                    self.sock.sendall(b"AGREE_UNIX_FD\r\n")
                elif line == b"BEGIN":
                    assert not buf
                    return
                else:
                    raise AssertionError(f"unexpected {line!r}")

    def call(
        self, interface: str, member: str, signature: str, body: tuple[Any, ...], reply: bool
    ) -> int:
        self.serial += 1
        fields = {
            HeaderFields.path: names.LISTENER_PATH,
            HeaderFields.interface: interface,
            HeaderFields.member: member,
        }
        if signature:
            fields[HeaderFields.signature] = signature
        flags = 0 if reply else MessageFlag.no_reply_expected
        msg = Message(
            Header(Endianness.little, MessageType.method_call, flags, 1, 0, 0, fields), body
        )
        fds = array.array("i")
        data = msg.serialise(serial=self.serial, fds=fds)
        if fds:
            self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])
        else:
            self.sock.sendall(data)
        return self.serial

    def reply(self, timeout: float = 5.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            msg = self.parser.get_next_message()
            if msg is not None:
                return msg
            assert select.select([self.sock], [], [], deadline - time.monotonic())[0], "no reply"
            data = self.sock.recv(65536)
            assert data, "the listener hung up"
            self.parser.add_data(data)

    def reply_pending(self) -> bool:
        return bool(select.select([self.sock], [], [], 0)[0])


@pytest.fixture
def fake() -> Iterator[tuple[FakeQemu, QemuListener, Display, Sink]]:
    display, sink, _ = new_display()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    listener = QemuListener(display, ours).start()
    qemu = FakeQemu(theirs)
    qemu.handshake()
    serial = qemu.call(names.IFACE_PROPERTIES, "GetAll", "s", (names.IFACE_LISTENER,), reply=True)
    answer = qemu.reply()
    assert answer.header.fields[HeaderFields.reply_serial] == serial
    assert answer.body[0] == {"Interfaces": ("as", [names.IFACE_MAP])}
    yield qemu, listener, display, sink
    listener.close()
    theirs.close()


def memfd_image(width: int, height: int, stride: int, offset: int = 0) -> tuple[int, np.ndarray]:
    """A memfd holding a BGRX picture (standing in for a linear XR24 dma-buf)."""
    rng = np.random.default_rng(7)
    picture = rng.integers(0, 256, (height, width, 4), np.uint8)
    rows = np.zeros((height, stride), np.uint8)
    rows[:, : width * 4] = picture.reshape(height, width * 4)
    fd = os.memfd_create("saffron-test-dmabuf")
    os.write(fd, bytes(offset) + rows.tobytes())
    return fd, picture


def test_dmabuf_update_is_answered_before_the_frame_is_offered(
    fake: tuple[FakeQemu, QemuListener, Display, Sink],
) -> None:
    """UpdateDMABUF's answer is QEMU's "frame done": it must precede any encoding.

    A memfd stands in for the dma-buf QEMU would pass (a linear XR24 one maps
    the same way); real GL scanouts need a GPU render node this machine lacks.
    """
    qemu, _listener, display, sink = fake
    pending_at_offer: list[bool] = []
    sink.on_offer = lambda frame: pending_at_offer.append(qemu.reply_pending())
    width, height, stride = 64, 48, 64 * 4 + 32
    fd, picture = memfd_image(width, height, stride)
    body = (fd, width, height, stride, XR24, px.DRM_FORMAT_MOD_LINEAR, True)
    qemu.call(names.IFACE_LISTENER, "ScanoutDMABUF", "huuuutb", body, reply=False)
    os.close(fd)  # the listener has its own copy now
    serial = qemu.call(names.IFACE_LISTENER, "UpdateDMABUF", "iiii", (0, 0, width, height), True)
    frame = sink.wait_for(lambda f: True, 5)
    answer = qemu.reply()
    assert answer.header.message_type is MessageType.method_return
    assert answer.header.fields[HeaderFields.reply_serial] == serial
    assert pending_at_offer == [True], "the frame reached a sink before QEMU had its answer"
    assert (frame.width, frame.height) == (width, height)
    assert np.array_equal(frame.pixels, picture)
    assert display.enabled

    # bottom-up buffer, a damaged rectangle: rows come out flipped, the rest stays
    fd, flipped = memfd_image(width, height, stride)
    body2 = (fd, width, height, stride, XR24, px.DRM_FORMAT_MOD_LINEAR, False)
    qemu.call(names.IFACE_LISTENER, "ScanoutDMABUF", "huuuutb", body2, reply=False)
    os.close(fd)
    count = sink.count
    rect = Rect(8, 4, 16, 8)
    qemu.call(names.IFACE_LISTENER, "UpdateDMABUF", "iiii", (8, 4, 16, 8), True)
    frame = sink.wait_for(lambda f: True, 5, after=count)
    qemu.reply()
    assert frame.damage == rect
    upright = flipped[::-1]
    got = frame.pixels[rect.y : rect.y + rect.height, rect.x : rect.x + rect.width]
    assert np.array_equal(got, upright[4:12, 8:24])


def test_unix_map_scanout_and_updates(
    fake: tuple[FakeQemu, QemuListener, Display, Sink],
) -> None:
    """The newer shared-memory path (QEMU 9.2+), with a memfd as QEMU's framebuffer."""
    qemu, listener, display, sink = fake
    width, height, stride, offset = 80, 60, 80 * 4, 4096
    fd, picture = memfd_image(width, height, stride, offset)
    body = (fd, offset, width, height, stride, px.PIXMAN_X8R8G8B8)
    serial = qemu.call(names.IFACE_MAP, "ScanoutMap", "huuuuu", body, reply=True)
    answer = qemu.reply()  # QEMU waits for this one
    assert answer.header.message_type is MessageType.method_return
    assert answer.header.fields[HeaderFields.reply_serial] == serial
    frame = sink.wait_for(lambda f: True, 5)
    assert np.array_equal(frame.pixels, picture)
    assert listener.mode == "map"

    # QEMU draws into the shared memory, then says where
    patch = np.full((10, 20, 4), 200, np.uint8)
    for row in range(10):
        os.pwrite(fd, patch[row].tobytes(), offset + (30 + row) * stride + 40 * 4)
    count = sink.count
    qemu.call(names.IFACE_MAP, "UpdateMap", "iiii", (40, 30, 20, 10), reply=False)
    frame = sink.wait_for(lambda f: True, 5, after=count)
    assert frame.damage == Rect(40, 30, 20, 10)
    assert np.array_equal(frame.pixels[30:40, 40:60], patch)
    assert np.array_equal(frame.pixels[:30], picture[:30])
    os.close(fd)

    # back to the 2D path: a plain Scanout replaces the mapping
    small = np.arange(16 * 8 * 4, dtype=np.uint32).astype(np.uint8).reshape(8, 16, 4)
    count = sink.count
    qemu.call(
        names.IFACE_LISTENER,
        "Scanout",
        "uuuuay",
        (16, 8, 64, px.PIXMAN_X8R8G8B8, small.tobytes()),
        reply=False,
    )
    frame = sink.wait_for(lambda f: True, 5, after=count)
    assert (frame.width, frame.height) == (16, 8) and np.array_equal(frame.pixels, small)
    assert listener.mode == "2d" and display.width == 16


# -- a stand-in for QEMU's display service on a real bus ------------------------------------

# RequestName's flags and answer (the D-Bus specification)
ALLOW_REPLACEMENT = 0x1
REPLACE_EXISTING = 0x2
PRIMARY_OWNER = 1


@dataclass(frozen=True)
class BusCall:
    destination: str
    interface: str
    member: str
    body: tuple[Any, ...]


class BusQemu:
    """Owns ``org.qemu`` on a real bus and answers just enough for a QemuSource to attach.

    It records every method call it gets with the name it was addressed to, and
    plays QEMU's side of each listener connection as far as authentication (it
    draws nothing). Another process of the same user could run exactly this.
    """

    PROPERTIES: ClassVar[dict[tuple[str, str], dict[str, tuple[str, Any]]]] = {
        (names.VM_PATH, names.IFACE_VM): {
            "Name": ("s", "stand-in"),
            "UUID": ("s", "6b0b7a38-9c39-4f4e-9d2f-1b7c5b0b7a38"),
            "ConsoleIDs": ("au", [0]),
        },
        (f"{names.ROOT}/Console_0", names.IFACE_CONSOLE): {
            "Label": ("s", "stand-in"),
            "Type": ("s", "Graphic"),
            "Width": ("u", 640),
            "Height": ("u", 480),
        },
        (f"{names.ROOT}/Console_0", names.IFACE_MOUSE): {"IsAbsolute": ("b", True)},
    }

    def __init__(self, address: str, flags: int, resizable: bool = True) -> None:
        self.resizable = resizable
        """Whether SetUIInfo works (virtio-vga) or is refused as QEMU refuses it (VGA)."""
        self.conn = open_dbus_connection(bus=address, enable_fds=True)
        self.name = str(self.conn.unique_name)
        self.calls: list[BusCall] = []
        self.lock = threading.Lock()
        self.listeners: list[socket.socket] = []
        self.stopping = False
        reply = self.conn.send_and_get_reply(DBus().RequestName(names.BUS_NAME, flags), timeout=5)
        self.request = int(reply.body[0])
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def pressed(self) -> list[int]:
        """The key numbers pressed here."""
        with self.lock:
            return [c.body[0] for c in self.calls if c.interface == names.IFACE_KEYBOARD]

    def members(self) -> list[str]:
        with self.lock:
            return [c.member for c in self.calls]

    def destinations(self) -> set[str]:
        with self.lock:
            return {c.destination for c in self.calls}

    def close(self) -> None:
        self.stopping = True
        self.thread.join(5)
        for sock in self.listeners:
            sock.close()
        self.conn.close()

    def _run(self) -> None:
        while not self.stopping:
            try:
                msg = self.conn.receive(timeout=0.05)
            except TimeoutError:
                continue
            except (OSError, EOFError):
                return  # the bus is gone
            if msg.header.message_type is MessageType.method_call:
                self.conn.send(self._answer(msg))

    def _answer(self, msg: Message) -> Message:
        fields = msg.header.fields
        iface, member = fields.get(HeaderFields.interface, ""), fields[HeaderFields.member]
        call = BusCall(fields.get(HeaderFields.destination, ""), iface, member, tuple(msg.body))
        with self.lock:
            self.calls.append(call)
        if iface == names.IFACE_PROPERTIES and member == "GetAll":
            props = self.PROPERTIES.get((fields[HeaderFields.path], msg.body[0]))
            if props is not None:
                return new_method_return(msg, "a{sv}", (props,))
        elif iface == names.IFACE_CONSOLE and member == "RegisterListener":
            sock = msg.body[0].to_socket()
            FakeQemu(sock).handshake()
            self.listeners.append(sock)
            return new_method_return(msg)
        elif iface in (names.IFACE_KEYBOARD, names.IFACE_MOUSE):
            return new_method_return(msg)
        elif iface == names.IFACE_CONSOLE and member == "SetUIInfo":
            if self.resizable:
                return new_method_return(msg)
            return new_error(msg, UNSUPPORTED_ERROR, "s", ("SetUIInfo is not supported",))
        return new_error(msg, "org.freedesktop.DBus.Error.UnknownMethod", "s", (member,))


def test_input_goes_only_to_the_owner_attached_to(tmp_path: Path) -> None:
    """Keys go to the unique name that owned ``org.qemu`` when Saffron attached.

    On a shared bus a second connection of the same user takes ``org.qemu`` from
    the first (which allows replacement) while the first still runs. It must get
    no key before Saffron has attached to it (registered a listener there), and
    after that the first gets none; every call is addressed by unique name.
    """
    display, _sink, _events = new_display()
    bus = Q.DBusDaemon(tmp_path)
    first = BusQemu(bus.address, ALLOW_REPLACEMENT)
    thief: BusQemu | None = None
    source = Q.open_qemu_source(display, dbus_address=bus.address, reattach=True)
    try:
        assert first.request == PRIMARY_OWNER
        assert source.wait_attached(10)
        display.input.key(0x1E, True)
        assert wait_until(lambda: first.pressed() == [0x1E], 5), (
            "timed out waiting for the key at the first owner"
        )

        thief = BusQemu(bus.address, ALLOW_REPLACEMENT | REPLACE_EXISTING)
        assert thief.request == PRIMARY_OWNER
        display.input.key(0x30, True)  # just after the name changed hands
        assert wait_until(lambda: source.attach_count == 2 or "Press" in thief.members(), 10), (
            "timed out waiting for the source"
        )
        members = thief.members()
        assert "RegisterListener" in members, f"the new owner got a key unasked: {members}"
        assert members.index("RegisterListener") < min(
            (i for i, m in enumerate(members) if m == "Press"), default=len(members)
        )
        assert wait_until(source.attached.is_set, 5), (
            "timed out waiting for attached to the new owner"
        )
        assert source.detach_count == 1
        first.listeners[0].settimeout(5)
        assert not first.listeners[0].recv(1), "the first owner's listener was not dropped"

        display.input.key(0x2E, True)
        assert wait_until(lambda: 0x2E in thief.pressed(), 5), (
            "timed out waiting for the key at the new owner"
        )
        assert 0x2E not in first.pressed() and 0x1E not in thief.pressed()
        assert first.destinations() == {first.name}, "a call was sent to the well-known name"
        assert thief.destinations() == {thief.name}
    finally:
        source.stop()
        for fake in (first, thief):
            if fake is not None:
                fake.close()
        bus.stop()


def test_without_reattach_an_owner_change_closes(tmp_path: Path) -> None:
    """A source that does not reattach lets go when ``org.qemu`` changes hands, and says so."""
    display, _sink, _events = new_display()
    bus = Q.DBusDaemon(tmp_path)
    first = BusQemu(bus.address, ALLOW_REPLACEMENT)
    thief: BusQemu | None = None
    source = Q.open_qemu_source(display, dbus_address=bus.address)
    try:
        assert source.wait_attached(10)
        thief = BusQemu(bus.address, REPLACE_EXISTING)
        assert source.wait_closed(10)
        assert f"org.qemu changed hands ({first.name} → {thief.name})" in source.close_reason
        display.input.key(0x1E, True)
        time.sleep(0.2)
        assert thief.members() == [] and first.pressed() == []
    finally:
        source.stop()
        for fake in (first, thief):
            if fake is not None:
                fake.close()
        bus.stop()


def test_a_restarted_bus_is_not_trusted_by_name(tmp_path: Path) -> None:
    """A new bus daemon hands out the same unique names again: attach anew, by name.

    The bus dies under an attached source (its display connection to the first
    stand-in stays up), and a new daemon starts on the same socket, where the
    first connection, another process, is ``:1.0`` again and takes ``org.qemu``.
    Saffron must not send keys to that name before it has attached there.
    """
    display, _sink, _events = new_display()
    bus = Q.DBusDaemon(tmp_path)
    first = BusQemu(bus.address, 0)
    second: BusQemu | None = None
    kept: list[socket.socket] = []
    # Slow retries: the new daemon's first client is the other process, not us.
    source = Q.QemuSource(display, dbus_address=bus.address, reattach=True, retry_interval=2.0)
    source.start()
    try:
        assert source.wait_attached(10)
        bus.stop()
        kept, first.listeners = first.listeners, []  # its display connection stays up
        first.close()
        bus = Q.DBusDaemon(tmp_path)
        second = BusQemu(bus.address, 0)
        assert second.name == first.name  # the same unique name, another process
        assert wait_until(lambda: source.attach_count == 2, 10), (
            "timed out waiting for attaching on the new bus"
        )
        display.input.key(0x1E, True)
        assert wait_until(lambda: 0x1E in second.pressed(), 5), (
            "timed out waiting for the key at the new owner"
        )
        members = second.members()
        assert members.index("RegisterListener") < members.index("Press"), members
        assert source.detach_count == 1
    finally:
        source.stop()
        for sock in kept:
            sock.close()
        if second is not None:
            second.close()
        bus.stop()


def test_a_flood_of_sizes_makes_one_set_ui_info(tmp_path: Path) -> None:
    """A page sending a new size every millisecond for a second: QEMU is asked once, for
    the last size, once it stood still; a size asked again is not sent again."""
    display, _sink, _events = new_display()
    bus = Q.DBusDaemon(tmp_path)
    qemu = BusQemu(bus.address, ALLOW_REPLACEMENT)
    source = Q.open_qemu_source(display, dbus_address=bus.address)
    try:
        assert source.wait_attached(10)
        began = time.monotonic()
        n = 0
        while time.monotonic() - began < 1.0:
            n += 1
            display.request_size(SizeRequest(800 + n % 300, 600))
            time.sleep(0.001)
        last = (0, 0, 0, 0, 800 + n % 300, 600)
        assert wait_until(lambda: "SetUIInfo" in qemu.members(), 5)
        time.sleep(2 * MIN_INTERVAL_S)
        display.request_size(SizeRequest(800 + n % 300, 600))  # the same again
        time.sleep(2 * MIN_INTERVAL_S)
        calls = [c.body for c in qemu.calls if c.member == "SetUIInfo"]
        assert calls == [last], f"{len(calls)} SetUIInfo calls for {n} requests"
        assert display.resizable is Resizable.YES
        assert source.size_requests_sent == 1
    finally:
        source.stop()
        qemu.close()
        bus.stop()


def test_a_device_that_cannot_resize_is_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """QEMU's answer for plain VGA: the display says NO, the log says why once, and no
    more calls are made for later sizes."""
    display, _sink, _events = new_display()
    bus = Q.DBusDaemon(tmp_path)
    qemu = BusQemu(bus.address, ALLOW_REPLACEMENT, resizable=False)
    source = Q.open_qemu_source(display, dbus_address=bus.address)
    try:
        assert source.wait_attached(10)
        display.request_size(SizeRequest(800, 600))
        assert wait_until(lambda: display.resizable is Resizable.NO, 5)
        for width in (900, 1000):
            display.request_size(SizeRequest(width, 600))
            time.sleep(2 * MIN_INTERVAL_S)
        assert qemu.members().count("SetUIInfo") == 1
        said = [r for r in caplog.records if "cannot follow the viewers' windows" in r.message]
        assert len(said) == 1 and "SetUIInfo is not supported" in said[0].message
    finally:
        source.stop()
        qemu.close()
        bus.stop()
