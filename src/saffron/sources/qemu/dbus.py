"""A private D-Bus transport over a Unix socket: authentication, framing, passed fds.

jeepney gives the message layer; the socket, the SASL exchange and the reading of
big messages are done here, so that ``Scanout`` and ``Update`` pixels are read
straight into the buffer that becomes the framebuffer (no copy). It knows
nothing of QEMU's display interfaces.
"""

from __future__ import annotations

import array
import contextlib
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from jeepney.auth import BEGIN, Authenticator
from jeepney.bus import get_connectable_addresses
from jeepney.bus_messages import DBus
from jeepney.low_level import (
    Endianness,
    Header,
    HeaderFields,
    Message,
    MessageType,
    calc_msg_size,
    padding,
)

from ...display import now_us
from .errors import DBusError, NotThere, QemuError, Refused

log = logging.getLogger("saffron.qemu")

MAX_MESSAGE = 256 << 20
"""Largest message read: a 4K BGRX Scanout is 33 MiB; past this the peer is broken."""
MAX_FDS = 16
"""File descriptors taken with one read: QEMU passes one (a dma-buf or a memfd)."""


@dataclass(slots=True)
class Incoming:
    """One received message, its bytes kept so big bodies need not be copied again."""

    header: Any  # jeepney Header
    buf: bytearray
    body_pos: int
    fds: list[int]
    arrival_ns: int
    arrival_us: int

    @property
    def member(self) -> str:
        return str(self.header.fields.get(HeaderFields.member, ""))

    @property
    def interface(self) -> str:
        return str(self.header.fields.get(HeaderFields.interface, ""))

    @property
    def signature(self) -> str:
        return str(self.header.fields.get(HeaderFields.signature, ""))

    @property
    def little(self) -> bool:
        return bool(self.header.endianness is Endianness.little)

    def body(self) -> tuple[Any, ...]:
        """The body, parsed by jeepney (fds appear as ints; they stay in ``fds``)."""
        body = Message.from_buffer(self.buf, fds=self.fds).body
        return tuple(body)

    def result(self) -> tuple[Any, ...]:
        """A reply's body, its fds closed; an error reply raises :class:`DBusError`."""
        try:
            body = self.body()
        finally:
            self.close_fds()
        if self.header.message_type is MessageType.error:
            name = str(self.header.fields.get(HeaderFields.error_name, "error"))
            raise DBusError(name, str(body[0]) if body else "")
        return body

    def close_fds(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []


class Wire:
    """One D-Bus connection on a connected Unix stream socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._serial = 0
        self._wlock = threading.Lock()

    def authenticate(self) -> None:
        """SASL EXTERNAL as the client, with Unix fd passing, then BEGIN."""
        self.sock.sendall(b"\0")
        auth = Authenticator(enable_fds=True, inc_null_byte=False)
        for line in auth:
            if line:
                self.sock.sendall(line)
            data = self.sock.recv(1024)
            if not data:
                raise EOFError("connection closed during authentication")
            auth.feed(data)
        self.sock.sendall(BEGIN)

    def send(self, msg: Any) -> int:
        """Send a jeepney Message (fds in its body are passed along); returns its serial."""
        with self._wlock:
            self._serial += 1
            serial = self._serial
            fds = array.array("i")
            data = msg.serialise(serial=serial, fds=fds)
            if fds:
                anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())]
                sent = self.sock.sendmsg([data], anc)
                if sent < len(data):
                    self.sock.sendall(data[sent:])
            else:
                self.sock.sendall(data)
            return serial

    def _read_into(self, view: memoryview, fds: list[int]) -> None:
        got = 0
        anc_size = socket.CMSG_SPACE(MAX_FDS * 4)
        while got < len(view):
            n, anc, flags, _ = self.sock.recvmsg_into([view[got:]], anc_size)
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    got_fds = array.array("i")
                    got_fds.frombytes(data[: len(data) - len(data) % 4])
                    fds.extend(got_fds)
            if flags & socket.MSG_CTRUNC:
                log.warning("some file descriptors sent by QEMU were lost (too many at once)")
            if n == 0:
                raise EOFError("connection closed")
            got += n

    def recv(self) -> Incoming:
        """Read exactly one message (blocking)."""
        fds: list[int] = []
        prefix = bytearray(16)
        self._read_into(memoryview(prefix), fds)
        if prefix[0] not in b"lB":
            raise QemuError("the peer does not speak D-Bus (bad first byte)")
        total = int(calc_msg_size(prefix))
        if total > MAX_MESSAGE:
            raise QemuError(f"a {total}-byte D-Bus message is too big")
        buf = bytearray(total)
        buf[:16] = prefix
        self._read_into(memoryview(buf)[16:], fds)
        header, pos = Header.from_buffer(buf)
        body_pos = pos + padding(pos, 8)
        return Incoming(header, buf, body_pos, fds, time.perf_counter_ns(), now_us())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class Waker:
    """A pipe that wakes a thread out of select(); safe to poke after it is closed."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._lock = threading.Lock()

    def fileno(self) -> int:
        return self._r

    def wake(self) -> None:
        with self._lock:
            if self._w >= 0:
                with contextlib.suppress(OSError):  # full: it is awake already
                    os.write(self._w, b"\0")

    def drain(self) -> None:
        with contextlib.suppress(OSError):
            os.read(self._r, 4096)

    def close(self) -> None:
        with self._lock:
            if self._w >= 0:
                os.close(self._r)
                os.close(self._w)
                self._r = self._w = -1


def _new_header(kind: MessageType, fields: dict[Any, Any]) -> Any:
    return Header(Endianness.little, kind, 0, 1, 0, 0, fields)


def reply(to: Incoming, signature: str | None = None, body: tuple[Any, ...] = ()) -> Any:
    fields: dict[Any, Any] = {HeaderFields.reply_serial: to.header.serial}
    sender = to.header.fields.get(HeaderFields.sender)
    if sender is not None:
        fields[HeaderFields.destination] = sender
    if signature:
        fields[HeaderFields.signature] = signature
    return Message(_new_header(MessageType.method_return, fields), body)


def error_reply(to: Incoming, name: str, text: str) -> Any:
    fields: dict[Any, Any] = {
        HeaderFields.reply_serial: to.header.serial,
        HeaderFields.error_name: name,
        HeaderFields.signature: "s",
    }
    sender = to.header.fields.get(HeaderFields.sender)
    if sender is not None:
        fields[HeaderFields.destination] = sender
    return Message(_new_header(MessageType.error, fields), (text,))


def connect_peer(sock: socket.socket, timeout: float) -> Wire:
    """Authenticate on a peer-to-peer D-Bus connection straight to QEMU (one libvirt's
    ``virDomainOpenGraphicsFD`` handed over): no bus daemon, so no ``Hello``."""
    sock.settimeout(timeout)
    wire = Wire(sock)
    try:
        wire.authenticate()
    except (OSError, EOFError, ValueError) as exc:
        wire.close()
        raise NotThere(f"QEMU's peer-to-peer D-Bus connection failed: {exc}") from exc
    return wire


def connect_bus(address: str, timeout: float) -> tuple[Wire, str]:
    """Connect, authenticate and say Hello on a bus; returns the wire and our unique name.

    Raises :class:`Refused` when a bus is listening but shuts us out before answering
    Hello (a bus that takes only other users, such as libvirt's per-VM buses).
    """
    errors: list[str] = []
    for path in get_connectable_addresses(address):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            errors.append(f"{path.lstrip(chr(0))}: {exc}")
            continue
        wire = Wire(sock)
        try:
            wire.authenticate()
            serial = wire.send(DBus().Hello())
            while True:
                msg = wire.recv()
                if msg.header.fields.get(HeaderFields.reply_serial) == serial:
                    body = msg.body()
                    if msg.header.message_type is MessageType.error:
                        raise QemuError(f"the bus refused Hello: {body}")
                    return wire, str(body[0])
        except TimeoutError as exc:
            sock.close()
            errors.append(f"{path.lstrip(chr(0))}: no answer in {timeout:.0f} s ({exc})")
        except (OSError, EOFError, ValueError) as exc:
            sock.close()
            log.debug("the bus %s shut us out: %s", address, exc)
            raise Refused(
                f"the bus {address} shut Saffron (uid {os.getuid()}) out at authentication"
            ) from exc
    raise NotThere("cannot connect to the D-Bus bus (" + "; ".join(errors) + ")")
