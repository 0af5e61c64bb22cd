"""The QEMU producer: a listener on QEMU's D-Bus display (``-display dbus``).

How it fits together (see docs QEMU-DBUS.md for the protocol as measured):

* :class:`QemuSource` owns a connection to the D-Bus bus QEMU is on (a private
  ``dbus-daemon``). Its thread finds ``org.qemu``'s owner and from then on
  talks only to that connection's unique name (another process that takes the
  name later gets nothing; when the name changes hands it attaches anew). It
  reads the VM's name and UUID, registers a listener on console N
  (``RegisterListener`` with one end of a socket pair), sends keyboard and mouse
  events, and follows the console's properties (size, absolute mouse). With
  ``reattach=True`` it keeps waiting for QEMU and registers again each time QEMU
  comes back on the bus.
* :class:`QemuListener` is the peer-to-peer D-Bus connection QEMU draws
  through. Its own thread authenticates as the client, answers
  ``Properties.GetAll`` at once, keeps Saffron's copy of the framebuffer up to
  date from ``Scanout``/``Update`` (and ``ScanoutMap``/``UpdateMap``,
  ``ScanoutDMABUF``/``UpdateDMABUF``) and calls :meth:`Display.present` when a
  burst of updates is over. It is the frame path: nothing on it waits for the
  bus, the viewers or an encoder.
* :func:`start_qemu` starts a private ``dbus-daemon`` and QEMU with
  ``-display dbus,addr=...``; :func:`open_qemu_source` attaches to it (or to any
  QEMU on a D-Bus address, e.g. libvirt's ``<graphics type='dbus'/>``).

Everything speaks D-Bus through jeepney's message layer; the sockets, the
authentication and the reading of the two big messages (``Scanout`` and
``Update``, whose pixels are read straight into the buffer that becomes the
framebuffer) are done here.
"""

from __future__ import annotations

import array
import collections
import contextlib
import fcntl
import logging
import mmap
import os
import select
import shlex
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from jeepney.auth import BEGIN, Authenticator
from jeepney.bus import get_connectable_addresses
from jeepney.bus_messages import DBus
from jeepney.low_level import (
    Endianness,
    Header,
    HeaderFields,
    Message,
    MessageFlag,
    MessageType,
    calc_msg_size,
    padding,
)
from jeepney.wrappers import DBusAddress, new_method_call

from ..display import Cursor, Display, Pixels, Rect, now_us
from .keymap import button_to_qemu, scancode_to_qnum

log = logging.getLogger("saffron.qemu")

BUS_NAME = "org.qemu"
ROOT = "/org/qemu/Display1"
VM_PATH = f"{ROOT}/VM"
LISTENER_PATH = f"{ROOT}/Listener"
IFACE_VM = "org.qemu.Display1.VM"
IFACE_CONSOLE = "org.qemu.Display1.Console"
IFACE_KEYBOARD = "org.qemu.Display1.Keyboard"
IFACE_MOUSE = "org.qemu.Display1.Mouse"
IFACE_LISTENER = "org.qemu.Display1.Listener"
IFACE_MAP = "org.qemu.Display1.Listener.Unix.Map"
IFACE_PROPERTIES = "org.freedesktop.DBus.Properties"
IFACE_INTROSPECTABLE = "org.freedesktop.DBus.Introspectable"
IFACE_PEER = "org.freedesktop.DBus.Peer"

REGISTER_TIMEOUT = 30.0
"""Seconds to wait for RegisterListener's answer (QEMU waits 25 s for our GetAll)."""
CALL_TIMEOUT = 10.0
MAX_MESSAGE = 256 << 20
MAX_FDS = 16

# pixman formats (PIXMAN_FORMAT(bpp, type, a, r, g, b)) and their bytes in memory
PIXMAN_X8R8G8B8 = 0x20020888
PIXMAN_A8R8G8B8 = 0x20028888
PIXMAN_X8B8G8R8 = 0x20030888
PIXMAN_A8B8G8R8 = 0x20038888
PIXMAN_B8G8R8X8 = 0x20080888
PIXMAN_B8G8R8A8 = 0x20088888
PIXMAN_R8G8B8X8 = 0x20090888
PIXMAN_R8G8B8A8 = 0x20098888
PIXMAN_R8G8B8 = 0x18020888
PIXMAN_B8G8R8 = 0x18030888
PIXMAN_R5G6B5 = 0x10020565
PIXMAN_X1R5G5B5 = 0x10020555

_BYTE_ORDER_32: dict[int, tuple[int, int, int]] = {
    # where B, G and R are among a pixel's four bytes (little-endian host)
    PIXMAN_X8R8G8B8: (0, 1, 2),
    PIXMAN_A8R8G8B8: (0, 1, 2),
    PIXMAN_X8B8G8R8: (2, 1, 0),
    PIXMAN_A8B8G8R8: (2, 1, 0),
    PIXMAN_B8G8R8X8: (3, 2, 1),
    PIXMAN_B8G8R8A8: (3, 2, 1),
    PIXMAN_R8G8B8X8: (1, 2, 3),
    PIXMAN_R8G8B8A8: (1, 2, 3),
}
_BYTES_PER_PIXEL = {
    **dict.fromkeys(_BYTE_ORDER_32, 4),
    PIXMAN_R8G8B8: 3,
    PIXMAN_B8G8R8: 3,
    PIXMAN_R5G6B5: 2,
    PIXMAN_X1R5G5B5: 2,
}


def _fourcc(code: str) -> int:
    return int.from_bytes(code.encode(), "little")


DRM_FORMAT_TO_PIXMAN = {
    _fourcc("XR24"): PIXMAN_X8R8G8B8,
    _fourcc("AR24"): PIXMAN_A8R8G8B8,
    _fourcc("XB24"): PIXMAN_X8B8G8R8,
    _fourcc("AB24"): PIXMAN_A8B8G8R8,
    _fourcc("BX24"): PIXMAN_B8G8R8X8,
    _fourcc("BA24"): PIXMAN_B8G8R8A8,
    _fourcc("RX24"): PIXMAN_R8G8B8X8,
    _fourcc("RA24"): PIXMAN_R8G8B8A8,
}
"""DRM fourccs of linear 32-bit dma-bufs, as the pixman format with the same bytes."""
DRM_FORMAT_MOD_LINEAR = 0
DRM_FORMAT_MOD_INVALID = 0x00FFFFFFFFFFFFFF
_DMA_BUF_IOCTL_SYNC = 0x40086200  # _IOW('b', 0, struct dma_buf_sync)
_DMA_BUF_SYNC_READ, _DMA_BUF_SYNC_START, _DMA_BUF_SYNC_END = 1, 0, 4

_LISTENER_XML = f"""<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">
<node>
  <interface name="{IFACE_LISTENER}">
    <method name="Scanout"><arg type="u"/><arg type="u"/><arg type="u"/><arg type="u"/>
      <arg type="ay"/></method>
    <method name="Update"><arg type="i"/><arg type="i"/><arg type="i"/><arg type="i"/>
      <arg type="u"/><arg type="u"/><arg type="ay"/></method>
    <method name="ScanoutDMABUF"><arg type="h"/><arg type="u"/><arg type="u"/><arg type="u"/>
      <arg type="u"/><arg type="t"/><arg type="b"/></method>
    <method name="UpdateDMABUF"><arg type="i"/><arg type="i"/><arg type="i"/><arg type="i"/>
      </method>
    <method name="Disable"/>
    <method name="MouseSet"><arg type="i"/><arg type="i"/><arg type="i"/></method>
    <method name="CursorDefine"><arg type="i"/><arg type="i"/><arg type="i"/><arg type="i"/>
      <arg type="ay"/></method>
    <property name="Interfaces" type="as" access="read"/>
  </interface>
  <interface name="{IFACE_MAP}">
    <method name="ScanoutMap"><arg type="h"/><arg type="u"/><arg type="u"/><arg type="u"/>
      <arg type="u"/><arg type="u"/></method>
    <method name="UpdateMap"><arg type="i"/><arg type="i"/><arg type="i"/><arg type="i"/>
      </method>
  </interface>
</node>
"""


class QemuError(Exception):
    """QEMU or its bus could not be used."""


class DBusError(QemuError):
    """An error reply to one of our calls."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(f"{name}: {text}" if text else name)
        self.name = name


class _NotThere(QemuError):
    """QEMU (or its bus) is not there yet: worth trying again later."""


# --------------------------------------------------------------------------------------
# D-Bus over a Unix socket: authentication, framing, file descriptors


@dataclass(slots=True)
class _Incoming:
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

    def close_fds(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []


class _Wire:
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

    def recv(self) -> _Incoming:
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
        return _Incoming(header, buf, body_pos, fds, time.perf_counter_ns(), now_us())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class _Waker:
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


def _reply(to: _Incoming, signature: str | None = None, body: tuple[Any, ...] = ()) -> Any:
    fields: dict[Any, Any] = {HeaderFields.reply_serial: to.header.serial}
    sender = to.header.fields.get(HeaderFields.sender)
    if sender is not None:
        fields[HeaderFields.destination] = sender
    if signature:
        fields[HeaderFields.signature] = signature
    return Message(_new_header(MessageType.method_return, fields), body)


def _error(to: _Incoming, name: str, text: str) -> Any:
    fields: dict[Any, Any] = {
        HeaderFields.reply_serial: to.header.serial,
        HeaderFields.error_name: name,
        HeaderFields.signature: "s",
    }
    sender = to.header.fields.get(HeaderFields.sender)
    if sender is not None:
        fields[HeaderFields.destination] = sender
    return Message(_new_header(MessageType.error, fields), (text,))


def _connect_bus(address: str, timeout: float) -> tuple[_Wire, str]:
    """Connect, authenticate and say Hello on a bus; returns the wire and our unique name."""
    errors: list[str] = []
    for path in get_connectable_addresses(address):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            wire = _Wire(sock)
            wire.authenticate()
            serial = wire.send(DBus().Hello())
            while True:
                msg = wire.recv()
                if msg.header.fields.get(HeaderFields.reply_serial) == serial:
                    body = msg.body()
                    if msg.header.message_type is MessageType.error:
                        raise QemuError(f"the bus refused Hello: {body}")
                    return wire, str(body[0])
        except (OSError, EOFError, ValueError) as exc:
            sock.close()
            errors.append(f"{path.lstrip(chr(0))}: {exc}")
    raise _NotThere("cannot connect to the D-Bus bus (" + "; ".join(errors) + ")")


# --------------------------------------------------------------------------------------
# pixels


def _rows(buf: Any, offset: int, stride: int, height: int, row_bytes: int) -> Any:
    """A (height, row_bytes) uint8 view of rows ``stride`` bytes apart in ``buf``."""
    return np.ndarray(
        shape=(height, row_bytes), dtype=np.uint8, buffer=buf, offset=offset, strides=(stride, 1)
    )


def pixels_to_bgrx(
    buf: Any, offset: int, width: int, height: int, stride: int, pixman_format: int
) -> Pixels | None:
    """A (height, width, 4) BGRX array of an image in a pixman format; None if unknown.

    For x8r8g8b8 and a8r8g8b8 (what QEMU nearly always sends) this is a view of
    ``buf`` itself, writable if ``buf`` is; other formats are converted.
    """
    bpp = _BYTES_PER_PIXEL.get(pixman_format)
    if bpp is None or width <= 0 or height <= 0:
        return None
    need = offset + stride * (height - 1) + width * bpp
    if stride < width * bpp or need > len(buf):
        raise ValueError(f"{len(buf) - offset} bytes cannot hold {width}x{height} at {stride}")
    rows = _rows(buf, offset, stride, height, width * bpp)
    if bpp == 4:
        px = rows.reshape(height, width, 4)
        b, g, r = _BYTE_ORDER_32[pixman_format]
        if (b, g, r) == (0, 1, 2):
            return px  # type: ignore[no-any-return]
        out = np.empty((height, width, 4), np.uint8)
        out[..., 0], out[..., 1], out[..., 2] = px[..., b], px[..., g], px[..., r]
        out[..., 3] = 255
        return out
    out = np.empty((height, width, 4), np.uint8)
    out[..., 3] = 255
    if bpp == 3:
        px = rows.reshape(height, width, 3)
        out[..., :3] = px if pixman_format == PIXMAN_R8G8B8 else px[..., ::-1]
        return out
    v = rows.view("<u2").astype(np.uint16)
    if pixman_format == PIXMAN_R5G6B5:
        r5, g6, b5 = (v >> 11) & 31, (v >> 5) & 63, v & 31
        out[..., 1] = ((g6 << 2) | (g6 >> 4)).astype(np.uint8)
    else:
        r5, g5, b5 = (v >> 10) & 31, (v >> 5) & 31, v & 31
        out[..., 1] = ((g5 << 3) | (g5 >> 2)).astype(np.uint8)
    out[..., 2] = ((r5 << 3) | (r5 >> 2)).astype(np.uint8)
    out[..., 0] = ((b5 << 3) | (b5 >> 2)).astype(np.uint8)
    return out


@dataclass
class ListenerStats:
    """What the frame path did; latencies are from a message's arrival to present()'s return."""

    messages: int = 0
    updates: int = 0
    scanouts: int = 0
    bytes: int = 0
    frames: int = 0
    frames_taken: int = 0
    unchanged: int = 0
    """Updates that changed no pixel (not presented)."""
    present_us: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=20000)
    )
    frame_times: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=20000)
    )

    def percentile(self, q: float) -> float:
        """The q-th percentile (0..100) of the arrival-to-present time, in microseconds."""
        values = list(self.present_us)  # one C call: safe against the appending thread
        return float(np.percentile(values, q)) if values else 0.0

    def fps(self, window: float = 5.0) -> float:
        """Frames presented per second over the last ``window`` seconds."""
        now = time.monotonic()
        recent = [t for t in list(self.frame_times) if now - t <= window]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max(recent[-1] - recent[0], 1e-6)


# --------------------------------------------------------------------------------------
# the listener: QEMU's peer-to-peer connection, the frame path


@dataclass
class _Mapping:
    """A shared buffer QEMU draws into: a Unix.Map memfd or a (linear) dma-buf."""

    mm: mmap.mmap
    offset: int
    width: int
    height: int
    stride: int
    pixman_format: int
    y0_top: bool = True
    dmabuf_fd: int = -1
    """Kept open for DMA_BUF_IOCTL_SYNC; -1 for a Unix.Map memfd."""

    def view(self) -> Pixels | None:
        return pixels_to_bgrx(
            self.mm, self.offset, self.width, self.height, self.stride, self.pixman_format
        )

    def sync(self, flags: int) -> None:
        if self.dmabuf_fd >= 0:
            with contextlib.suppress(OSError):  # a memfd standing in for a dma-buf has no sync
                fcntl.ioctl(self.dmabuf_fd, _DMA_BUF_IOCTL_SYNC, struct.pack("<Q", flags))

    def close(self) -> None:
        if self.dmabuf_fd >= 0:
            os.close(self.dmabuf_fd)
            self.dmabuf_fd = -1
        with contextlib.suppress(BufferError):  # a view still alive: the GC will unmap it
            self.mm.close()


class QemuListener:
    """One ``org.qemu.Display1.Listener`` on a connected peer-to-peer socket.

    QEMU is the server of the connection; this is the authenticating client and
    exports the listener object. :meth:`start` runs it in its own thread until
    QEMU closes the connection (or :meth:`close`), then calls
    ``display.disable()`` and ``on_closed(reason)``.
    """

    def __init__(
        self,
        display: Display,
        sock: socket.socket,
        *,
        map_interface: bool = True,
        on_closed: Callable[[QemuListener, str], None] | None = None,
        on_size_doubt: Callable[[], None] | None = None,
        stats: ListenerStats | None = None,
    ) -> None:
        self.display = display
        self.stats = stats or ListenerStats()
        self.map_interface = map_interface
        self._wire = _Wire(sock)
        self._on_closed = on_closed
        self._on_size_doubt = on_size_doubt
        self._waker = _Waker()
        self._requests: collections.deque[tuple[str, int, int]] = collections.deque()
        self.fb: Pixels | None = None
        self.mode = "none"
        """'2d' (Scanout/Update), 'map' (Unix.Map), 'dmabuf', or 'none'."""
        self._map: _Mapping | None = None
        self._map_direct = False
        self._damage: Rect | None = None
        self._disabled = False
        self._batch_ns = 0
        self._batch_us = 0
        self._cursor_serial = 0
        self._warned: set[str] = set()
        self.closed = threading.Event()
        self.close_reason = ""
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="saffron-qemu-frames", daemon=True)

    # -- other threads ------------------------------------------------------------------

    def start(self) -> QemuListener:
        self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Drop the connection (QEMU forgets this listener) and wait for the thread."""
        self._closing = True
        with contextlib.suppress(OSError):
            self._wire.sock.shutdown(socket.SHUT_RDWR)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def request_refresh(self) -> None:
        """Present the whole framebuffer again soon (a viewer joined)."""
        self._request("refresh")

    def resize_hint(self, width: int, height: int) -> None:
        """QEMU's console says the surface is this size (its Width/Height properties)."""
        self._request("size", width, height)

    def _request(self, what: str, a: int = 0, b: int = 0) -> None:
        self._requests.append((what, a, b))
        self._waker.wake()

    # -- the thread -----------------------------------------------------------------------

    def _run(self) -> None:
        reason = "closed"
        sock = self._wire.sock
        try:
            self._wire.authenticate()
            log.debug("display connection authenticated")
            while True:
                timeout = None if self._damage is None else 0.0
                ready = select.select([sock.fileno(), self._waker.fileno()], [], [], timeout)[0]
                if not ready:
                    self._flush()
                    continue
                if self._waker.fileno() in ready:
                    self._waker.drain()
                    self._serve_requests()
                if sock.fileno() in ready:
                    msg = self._wire.recv()
                    self.stats.messages += 1
                    self.stats.bytes += len(msg.buf)
                    try:
                        self._handle(msg)
                    except (ValueError, TypeError, IndexError, KeyError, struct.error) as exc:
                        # a message we cannot use costs that message, not the display
                        self._warn_once(
                            f"bad {msg.member}", "cannot use QEMU's %s: %r", msg.member, exc
                        )
                    finally:
                        msg.close_fds()
        except EOFError:
            reason = "closing" if self._closing else "QEMU closed the display connection"
        except (OSError, ValueError, QemuError) as exc:
            reason = "closing" if self._closing else f"display connection failed: {exc}"
        except Exception as exc:  # a bug here must not leave the viewers hanging
            log.exception("the QEMU display listener failed")
            reason = f"listener failed: {exc!r}"
        finally:
            self.close_reason = reason
            self._drop_mapping()
            self._wire.close()
            self._waker.close()
            self.display.disable()
            self.closed.set()
            if self._on_closed is not None:
                self._on_closed(self, reason)

    def _serve_requests(self) -> None:
        while self._requests:
            what, a, b = self._requests.popleft()
            if what == "refresh" and self.fb is not None and not self._disabled:
                h, w = self.fb.shape[:2]
                self._add_damage(Rect(0, 0, w, h), time.perf_counter_ns(), now_us())
            elif what == "size":
                self._apply_size(a, b)

    def _send(self, msg: Any) -> None:
        self._wire.send(msg)

    def _answer(self, msg: _Incoming, signature: str | None = None, *body: Any) -> None:
        if not msg.header.flags & MessageFlag.no_reply_expected:
            self._send(_reply(msg, signature, tuple(body)))

    def _fail(self, msg: _Incoming, name: str, text: str) -> None:
        if not msg.header.flags & MessageFlag.no_reply_expected:
            self._send(_error(msg, name, text))

    def _warn_once(self, key: str, text: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(text, *args)

    def _handle(self, msg: _Incoming) -> None:
        if msg.header.message_type is not MessageType.method_call:
            return
        member, iface = msg.member, msg.interface
        if iface == IFACE_LISTENER or (not iface and member in _LISTENER_METHODS):
            handler = _LISTENER_METHODS.get(member)
        elif iface == IFACE_MAP:
            handler = _MAP_METHODS.get(member)
        elif iface == IFACE_PROPERTIES:
            handler = QemuListener._on_properties
        elif iface == IFACE_INTROSPECTABLE and member == "Introspect":
            handler = QemuListener._on_introspect
        elif iface == IFACE_PEER and member == "Ping":
            handler = QemuListener._on_ping
        else:
            handler = None
        if handler is None:
            log.debug("QEMU called %s.%s, which this listener does not know", iface, member)
            self._fail(
                msg, "org.freedesktop.DBus.Error.UnknownMethod", f"no method {iface}.{member}"
            )
            return
        handler(self, msg)

    # -- properties -----------------------------------------------------------------------

    def _interfaces(self) -> list[str]:
        return [IFACE_MAP] if self.map_interface else []

    def _on_properties(self, msg: _Incoming) -> None:
        body = msg.body()
        if msg.member == "GetAll":
            props: dict[str, tuple[str, Any]] = {}
            if body and body[0] == IFACE_LISTENER:
                props["Interfaces"] = ("as", self._interfaces())
            self._answer(msg, "a{sv}", props)
        elif msg.member == "Get" and tuple(body) == (IFACE_LISTENER, "Interfaces"):
            self._answer(msg, "v", ("as", self._interfaces()))
        else:
            self._fail(msg, "org.freedesktop.DBus.Error.UnknownProperty", "no such property")

    def _on_introspect(self, msg: _Incoming) -> None:
        self._answer(msg, "s", _LISTENER_XML)

    def _on_ping(self, msg: _Incoming) -> None:
        self._answer(msg)

    # -- 2D: Scanout / Update ---------------------------------------------------------------

    def _on_scanout(self, msg: _Incoming) -> None:
        self.stats.scanouts += 1
        if msg.signature != "uuuuay":
            return self._fail(msg, "org.freedesktop.DBus.Error.InvalidArgs", "bad signature")
        if msg.little:
            width, height, stride, fmt, n = struct.unpack_from("<5I", msg.buf, msg.body_pos)
            data_pos = msg.body_pos + 20
            buf: Any = memoryview(msg.buf)[: data_pos + n]
        else:
            width, height, stride, fmt, data = msg.body()
            data_pos, buf = 0, bytearray(data)
        self._answer(msg)  # QEMU owns nothing we read: answer before the work
        try:
            px = pixels_to_bgrx(buf, data_pos, width, height, stride, fmt)
        except ValueError as exc:
            return self._warn_once("scanout", "QEMU sent a bad Scanout (%s)", exc)
        if px is None:
            return self._warn_once(f"fmt{fmt}", "QEMU's pixel format 0x%08x is not known", fmt)
        self._drop_mapping()
        self.mode = "2d"
        self.fb = px  # the message's own buffer becomes the framebuffer: no copy
        self._resized(width, height, "Scanout")
        self._add_damage(Rect(0, 0, width, height), msg.arrival_ns, msg.arrival_us)

    def _on_update(self, msg: _Incoming) -> None:
        self.stats.updates += 1
        if msg.signature != "iiiiuuay":
            return self._fail(msg, "org.freedesktop.DBus.Error.InvalidArgs", "bad signature")
        if msg.little:
            x, y, w, h, stride, fmt, n = struct.unpack_from("<4i3I", msg.buf, msg.body_pos)
            data_pos = msg.body_pos + 28
            buf: Any = memoryview(msg.buf)[: data_pos + n]
        else:
            x, y, w, h, stride, fmt, data = msg.body()
            data_pos, buf = 0, bytearray(data)
        self._answer(msg)
        if w <= 0 or h <= 0 or x < 0 or y < 0:
            return
        try:
            px = pixels_to_bgrx(buf, data_pos, w, h, stride, fmt)
        except ValueError as exc:
            return self._warn_once("update", "QEMU sent a bad Update (%s)", exc)
        if px is None:
            return self._warn_once(f"fmt{fmt}", "QEMU's pixel format 0x%08x is not known", fmt)
        if self.mode != "2d" or self.fb is None or not self.fb.flags.writeable:
            self._to_private_fb(x + w, y + h)
        self._grow(x + w, y + h)
        assert self.fb is not None
        dst = self.fb[y : y + h, x : x + w]
        if np.array_equal(dst, px):
            # QEMU's VGA text mode sends the cursor's cell every refresh, blinking or not
            self.stats.unchanged += 1
            return
        dst[...] = px
        self._add_damage(Rect(x, y, w, h), msg.arrival_ns, msg.arrival_us)

    def _to_private_fb(self, min_w: int, min_h: int) -> None:
        """Leave a shared buffer (or nothing) for a framebuffer of our own."""
        old = self.fb
        self._drop_mapping()
        if old is not None:
            self.fb = old.copy()
        else:
            self.fb = np.zeros((min_h, min_w, 4), np.uint8)
            self._resized(min_w, min_h, "an Update before any Scanout")
        self.mode = "2d"

    def _grow(self, need_w: int, need_h: int) -> None:
        """QEMU 7.2 sends no Scanout when the guest changes mode: grow from the Update."""
        assert self.fb is not None
        height, width = self.fb.shape[:2]
        if need_w <= width and need_h <= height:
            return
        new_w, new_h = max(width, need_w), max(height, need_h)
        self._reshape(new_w, new_h, "an Update outgrew it: QEMU sent no Scanout for the new mode")
        if self._on_size_doubt is not None:
            self._on_size_doubt()

    def _apply_size(self, width: int, height: int) -> None:
        if self.mode != "2d" or self.fb is None or width <= 0 or height <= 0:
            return
        if (self.fb.shape[1], self.fb.shape[0]) != (width, height):
            self._reshape(width, height, "QEMU's console size")

    def _reshape(self, width: int, height: int, why: str) -> None:
        assert self.fb is not None
        old = self.fb
        new = np.zeros((height, width, 4), np.uint8)
        h, w = min(height, old.shape[0]), min(width, old.shape[1])
        new[:h, :w] = old[:h, :w]
        self.fb = new
        self._resized(width, height, why)
        self._add_damage(Rect(0, 0, width, height), time.perf_counter_ns(), now_us())

    def _resized(self, width: int, height: int, why: str) -> None:
        if (self.display.width, self.display.height) != (width, height):
            log.info("the guest's screen is now %dx%d (%s)", width, height, why)
        self.display.scanout(width, height)

    # -- shared memory: Unix.Map and dma-bufs ----------------------------------------------

    def _drop_mapping(self) -> None:
        mapping, self._map = self._map, None
        if mapping is not None:
            if self._map_direct:
                self.fb = None  # a view of the mapping: let it go first
            self._map_direct = False
            mapping.close()

    def _on_scanout_map(self, msg: _Incoming) -> None:
        self.stats.scanouts += 1
        if msg.signature != "huuuuu":
            return self._fail(msg, "org.freedesktop.DBus.Error.InvalidArgs", "bad signature")
        fd, offset, width, height, stride, fmt = msg.body()
        msg.fds.remove(fd)
        try:
            mm = mmap.mmap(fd, offset + stride * height, mmap.MAP_SHARED, mmap.PROT_READ)
        except (OSError, ValueError) as exc:
            os.close(fd)
            log.warning("cannot map QEMU's shared framebuffer: %s", exc)
            return self._fail(msg, "org.freedesktop.DBus.Error.Failed", f"mmap: {exc}")
        os.close(fd)
        self._drop_mapping()
        self._map = _Mapping(mm, offset, width, height, stride, fmt)
        try:
            view = self._map.view()
        except ValueError as exc:
            self._drop_mapping()
            return self._fail(msg, "org.freedesktop.DBus.Error.InvalidArgs", str(exc))
        if view is None:
            self._drop_mapping()
            self._warn_once(f"fmt{fmt}", "QEMU's pixel format 0x%08x is not known", fmt)
            return self._fail(msg, "org.freedesktop.DBus.Error.NotSupported", "pixel format")
        self._answer(msg)  # QEMU waits for this answer before it goes on
        self.mode = "map"
        self._map_direct = fmt in (PIXMAN_X8R8G8B8, PIXMAN_A8R8G8B8)
        self.fb = view if self._map_direct else view.copy()
        log.debug("QEMU shares its framebuffer: %dx%d, stride %d", width, height, stride)
        self._resized(width, height, "ScanoutMap")
        self._add_damage(Rect(0, 0, width, height), msg.arrival_ns, msg.arrival_us)

    def _on_update_map(self, msg: _Incoming) -> None:
        self.stats.updates += 1
        x, y, w, h = msg.body()
        self._answer(msg)
        mapping = self._map
        if mapping is None or self.fb is None or self.mode != "map":
            return
        rect = Rect(x, y, w, h).clip(mapping.width, mapping.height)
        if rect.empty:
            return
        if not self._map_direct:
            view = mapping.view()
            assert view is not None
            sl = (slice(rect.y, rect.y + rect.height), slice(rect.x, rect.x + rect.width))
            self.fb[sl] = view[sl]
        self._add_damage(rect, msg.arrival_ns, msg.arrival_us)

    def _on_scanout_dmabuf(self, msg: _Incoming) -> None:
        self.stats.scanouts += 1
        if msg.signature != "huuuutb":
            return self._fail(msg, "org.freedesktop.DBus.Error.InvalidArgs", "bad signature")
        fd, width, height, stride, fourcc, modifier, y0_top = msg.body()
        msg.fds.remove(fd)
        self._answer(msg)
        self._drop_mapping()
        self.mode = "dmabuf"
        self.fb = None
        fmt = DRM_FORMAT_TO_PIXMAN.get(fourcc)
        name = fourcc.to_bytes(4, "little").decode("ascii", "replace")
        if modifier not in (DRM_FORMAT_MOD_LINEAR, DRM_FORMAT_MOD_INVALID) or fmt is None:
            os.close(fd)
            self._warn_once(
                f"dmabuf{fourcc}/{modifier}",
                "QEMU's GL scanout is a %s dma-buf with modifier 0x%x: only linear 32-bit"
                " dma-bufs can be read here (a tiled one needs an EGL import)",
                name,
                modifier,
            )
            return
        try:
            mm = mmap.mmap(fd, stride * height, mmap.MAP_SHARED, mmap.PROT_READ)
        except (OSError, ValueError) as exc:
            os.close(fd)
            self._warn_once("dmabuf-mmap", "cannot map QEMU's dma-buf: %s", exc)
            return
        self._map = _Mapping(mm, 0, width, height, stride, fmt, bool(y0_top), dmabuf_fd=fd)
        self.fb = np.zeros((height, width, 4), np.uint8)
        log.debug("GL scanout: %dx%d %s dma-buf, stride %d", width, height, name, stride)
        self._resized(width, height, f"ScanoutDMABUF, {name}")

    def _on_update_dmabuf(self, msg: _Incoming) -> None:
        """Copy the damaged part out of the dma-buf, answer (QEMU's GL waits), then present."""
        self.stats.updates += 1
        x, y, w, h = msg.body()
        mapping = self._map
        if mapping is None or self.fb is None or self.mode != "dmabuf":
            return self._answer(msg)
        rect = Rect(x, y, w, h).clip(mapping.width, mapping.height)
        if not rect.empty:
            mapping.sync(_DMA_BUF_SYNC_START | _DMA_BUF_SYNC_READ)
            try:
                # with y0_top false, row 0 of the buffer is the bottom of the picture
                src_y = rect.y if mapping.y0_top else mapping.height - rect.y - rect.height
                px = pixels_to_bgrx(
                    mapping.mm,
                    src_y * mapping.stride + rect.x * 4,
                    rect.width,
                    rect.height,
                    mapping.stride,
                    mapping.pixman_format,
                )
                assert px is not None
                dst = self.fb[rect.y : rect.y + rect.height, rect.x : rect.x + rect.width]
                dst[...] = px if mapping.y0_top else px[::-1]
            finally:
                mapping.sync(_DMA_BUF_SYNC_END | _DMA_BUF_SYNC_READ)
        self._answer(msg)  # the frame is ours now: let QEMU render the next one
        if not rect.empty:
            self._add_damage(rect, msg.arrival_ns, msg.arrival_us)
            self._flush()

    # -- the rest ---------------------------------------------------------------------------

    def _on_disable(self, msg: _Incoming) -> None:
        self._answer(msg)
        self._damage = None
        self._disabled = True
        log.debug("QEMU disabled the console")
        self.display.disable()

    def _on_mouse_set(self, msg: _Incoming) -> None:
        x, y, on = msg.body()
        self._answer(msg)
        self.display.move_cursor(int(x), int(y), bool(on))

    def _on_cursor_define(self, msg: _Incoming) -> None:
        width, height, hot_x, hot_y, data = msg.body()
        self._answer(msg)
        size = width * height * 4
        if width <= 0 or height <= 0 or len(data) < size:
            return
        self._cursor_serial += 1
        # QEMU's cursor is ARGB32 in host order: bytes B, G, R, A, straight alpha
        cursor = Cursor(width, height, hot_x, hot_y, bytes(data[:size]), self._cursor_serial)
        self.display.set_cursor(cursor)

    # -- presenting ---------------------------------------------------------------------------

    def _add_damage(self, rect: Rect, arrival_ns: int, arrival_us: int) -> None:
        self._disabled = False
        if self._damage is None:
            self._damage, self._batch_ns, self._batch_us = rect, arrival_ns, arrival_us
        else:
            self._damage = rect.union(self._damage)

    def _flush(self) -> None:
        """A burst of updates is over: hand the picture to the display."""
        damage, self._damage = self._damage, None
        fb = self.fb
        if damage is None or fb is None:
            return
        taken = self.display.present(fb, damage, owned=False, capture_us=self._batch_us)
        done = time.perf_counter_ns()
        self.stats.frames += 1
        self.stats.frames_taken += int(taken)
        self.stats.present_us.append((done - self._batch_ns) / 1000)
        self.stats.frame_times.append(time.monotonic())


_Handler = Callable[[QemuListener, _Incoming], None]
_LISTENER_METHODS: dict[str, _Handler] = {
    "Scanout": QemuListener._on_scanout,
    "Update": QemuListener._on_update,
    "ScanoutDMABUF": QemuListener._on_scanout_dmabuf,
    "UpdateDMABUF": QemuListener._on_update_dmabuf,
    "Disable": QemuListener._on_disable,
    "MouseSet": QemuListener._on_mouse_set,
    "CursorDefine": QemuListener._on_cursor_define,
}
_MAP_METHODS: dict[str, _Handler] = {
    "ScanoutMap": QemuListener._on_scanout_map,
    "UpdateMap": QemuListener._on_update_map,
}


# --------------------------------------------------------------------------------------
# input: viewers -> QEMU, never blocking the caller


@dataclass(frozen=True, slots=True)
class _InputCall:
    interface: str
    member: str
    signature: str
    body: tuple[int, ...]


class QemuInput:
    """Keyboard and mouse for QEMU (an :class:`~saffron.display.InputHandler`).

    Calls only queue the event and wake the source's thread, which sends it on
    the bus: they return at once whatever QEMU is doing.
    """

    def __init__(self, source: QemuSource) -> None:
        self._source = source
        self._pos: tuple[int, int] | None = None

    def key(self, scancode: int, down: bool) -> None:
        qnum = scancode_to_qnum(scancode)
        if qnum is None:
            log.debug("scancode 0x%x names no key QEMU knows", scancode)
            return
        self._source._queue(
            _InputCall(IFACE_KEYBOARD, "Press" if down else "Release", "u", (qnum,))
        )

    def pointer(self, x: int, y: int) -> None:
        x, y = max(int(x), 0), max(int(y), 0)
        if self._source.mouse_absolute:
            self._source._queue(_InputCall(IFACE_MOUSE, "SetAbsPosition", "uu", (x, y)))
        elif self._pos is not None:
            dx, dy = x - self._pos[0], y - self._pos[1]
            if dx or dy:
                self._source._queue(_InputCall(IFACE_MOUSE, "RelMotion", "ii", (dx, dy)))
        self._pos = (x, y)

    def motion(self, dx: int, dy: int) -> None:
        if not self._source.mouse_absolute:
            self._source._queue(_InputCall(IFACE_MOUSE, "RelMotion", "ii", (int(dx), int(dy))))
            return
        display = self._source.display
        x0, y0 = self._pos or (display.width // 2, display.height // 2)
        x = min(max(x0 + int(dx), 0), max(display.width - 1, 0))
        y = min(max(y0 + int(dy), 0), max(display.height - 1, 0))
        self.pointer(x, y)

    def button(self, button: int, down: bool) -> None:
        number = button_to_qemu(int(button))
        if number is None:
            return
        self._source._queue(_InputCall(IFACE_MOUSE, "Press" if down else "Release", "u", (number,)))


# --------------------------------------------------------------------------------------
# the source: the bus side


class QemuSource:
    """Shows one console of a QEMU that exports its display on a D-Bus bus.

    ``start()`` runs it in a thread. Without ``reattach`` it waits up to
    ``attach_timeout`` seconds for QEMU to appear, then closes for good when
    QEMU goes away (``closed`` is set, ``close_reason`` says why). With
    ``reattach`` it never gives up: when QEMU goes away the display is disabled
    (viewers see "waiting") and it registers again as soon as QEMU is back on
    the bus.
    """

    def __init__(
        self,
        display: Display,
        *,
        dbus_address: str,
        console: int = 0,
        reattach: bool = False,
        attach_timeout: float = 30.0,
        retry_interval: float = 0.5,
        map_interface: bool = True,
        process_exited: Callable[[], bool] | None = None,
    ) -> None:
        self.display = display
        self.address = dbus_address
        self.console = console
        self.reattach = reattach
        self.attach_timeout = attach_timeout
        self.retry_interval = retry_interval
        self.map_interface = map_interface
        self.process_exited = process_exited
        """For a QEMU that Saffron started: whether its process has exited. A display
        that goes with its process is not warned about here; the caller says how QEMU ended."""
        self.console_path = f"{ROOT}/Console_{console}"
        self.input = QemuInput(self)
        self.stats = ListenerStats()
        self.attached = threading.Event()
        """Set while a listener is registered with QEMU."""
        self.closed = threading.Event()
        """Set when the source has stopped for good."""
        self.close_reason = ""
        self.attach_count = 0
        self.detach_count = 0
        self.mouse_absolute = False
        self.vm_name = ""
        self.console_label = ""
        self.console_size = (0, 0)
        self.on_closed: Callable[[str], None] | None = None
        """Called from the source's thread once it has closed for good."""
        self._listener: QemuListener | None = None
        self._bus: _Wire | None = None
        self._owner = ""
        """The unique name (":1.NN") that owned ``org.qemu`` when we attached, "" when
        detached. Every call goes to it, never to ``org.qemu``: on a shared bus another
        process may take that name, and it must not receive the keys."""
        self._bus_id = ""
        """The bus's id when we attached: after a new connection, the same unique name
        on another bus (a restarted daemon) is another process."""
        self._name_owner = ""
        """Who owns ``org.qemu`` now, as far as the bus has told us."""
        self._inputs: collections.deque[_InputCall] = collections.deque(maxlen=4096)
        self._events: collections.deque[tuple[str, Any]] = collections.deque()
        self._pending: dict[int, Callable[[_Incoming], None]] = {}
        self._size_query = False
        self._next_try = 0.0
        self._stopping = False
        self._waker = _Waker()
        self._thread = threading.Thread(target=self._main, name="saffron-qemu", daemon=True)
        display.input = self.input
        display.refresh_hook = self.request_refresh

    # -- public ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Unregister (QEMU keeps running) and stop the thread."""
        self._stopping = True
        self._wake()
        if self._thread.is_alive():
            self._thread.join(timeout)
        elif self._thread.ident is None:  # never started
            self._waker.close()
            self.closed.set()

    def wait_attached(self, timeout: float | None = None) -> bool:
        return self.attached.wait(timeout)

    def wait_closed(self, timeout: float | None = None) -> bool:
        return self.closed.wait(timeout)

    def request_refresh(self) -> None:
        """The Display's refresh hook: present the whole framebuffer again."""
        listener = self._listener
        if listener is not None:
            listener.request_refresh()

    @property
    def listener(self) -> QemuListener | None:
        return self._listener

    @property
    def frames(self) -> int:
        """Frames presented so far (all attachments)."""
        return self.stats.frames

    # -- other threads -> the source's thread -------------------------------------------

    def _wake(self) -> None:
        self._waker.wake()

    def _queue(self, call: _InputCall) -> None:
        self._inputs.append(call)
        self._wake()

    def _listener_closed(self, listener: QemuListener, reason: str) -> None:
        self._events.append(("closed", (listener, reason)))
        self._wake()

    def _size_doubt(self) -> None:
        self._events.append(("size?", None))
        self._wake()

    # -- the thread ----------------------------------------------------------------------

    def _main(self) -> None:
        deadline = time.monotonic() + self.attach_timeout
        waiting_logged = False
        reason = "stopped"
        try:
            while not self._stopping:
                now = time.monotonic()
                if self._listener is not None and self._bus is None and now >= self._next_try:
                    try:  # the bus went, the display stayed: input needs the bus back
                        self._ensure_bus()
                        finished = self._check_owner()
                    except QemuError as exc:
                        log.debug("the bus is still gone: %s", exc)
                        self._next_try = now + self.retry_interval
                    else:
                        if finished is not None:
                            reason = finished
                            break
                elif self._listener is None and now >= self._next_try:
                    try:
                        self._attach()
                        waiting_logged = False
                    except QemuError as exc:
                        if self._stopping:
                            break
                        gave_up = not self.reattach and (self.attach_count > 0 or now >= deadline)
                        if gave_up:
                            # The owner says it, once, from close_reason.
                            reason = f"could not attach to QEMU: {exc}"
                            log.debug("%s", reason)
                            break
                        if not waiting_logged or not isinstance(exc, _NotThere):
                            log.info("waiting for QEMU on %s (%s)", self.address, exc)
                            waiting_logged = True
                        self._next_try = now + self.retry_interval
                if self._listener is not None and self._bus is not None:
                    timeout = None
                else:
                    timeout = max(self._next_try - time.monotonic(), 0.0)
                finished = self._service(timeout)
                if finished is not None:
                    reason = finished
                    break
        except Exception as exc:
            reason = f"the QEMU source failed: {exc!r}"
            log.exception("the QEMU source failed")
        finally:
            self._shutdown(reason)

    def _shutdown(self, reason: str) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        if self._bus is not None:
            self._bus.close()
            self._bus = None
        self.attached.clear()
        self.close_reason = reason
        if self.attach_count == 0:
            self.display.disable()
        self._waker.close()
        self.closed.set()
        if self.on_closed is not None:
            self.on_closed(reason)

    def _service(self, timeout: float | None) -> str | None:
        """Wait for the bus, input or the listener; returns a reason to close, or None."""
        if self._events or self._inputs:
            timeout = 0.0  # queued while we were busy elsewhere
        rlist = [self._waker.fileno()]
        if self._bus is not None:
            rlist.append(self._bus.sock.fileno())
        ready = select.select(rlist, [], [], timeout)[0]
        if self._waker.fileno() in ready:
            self._waker.drain()
        while self._events:
            kind, arg = self._events.popleft()
            if kind == "closed":
                listener, why = arg
                if listener is not self._listener:
                    continue
                finished = self._detach(why, owner_changed=False)
                if finished is not None:
                    return finished
            elif kind == "owner":
                old, new = arg
                if self._listener is None or old != self._owner:
                    continue  # not the owner we are attached to (or no longer attached)
                finished = self._detach(
                    f"{BUS_NAME} changed hands ({old} → {new})", owner_changed=True
                )
                if finished is not None:
                    return finished
            elif kind == "size?":
                self._query_size()
        self._send_inputs()
        if self._bus is not None and self._bus.sock.fileno() in ready:
            try:
                self._dispatch(self._bus.recv())
            except (OSError, EOFError, QemuError) as exc:
                log.warning("lost the D-Bus connection to %s: %s", self.address, exc)
                self._bus.close()
                self._bus = None
        return "stopped" if self._stopping else None

    def _detach(self, why: str, *, owner_changed: bool) -> str | None:
        """Let go of the listener; returns a reason to close, or None to wait and attach again.

        ``owner_changed``: ``org.qemu`` now belongs to another connection (QEMU
        restarted, or another process took the name) while ours may still be
        drawing: it is dropped here, and attaching again asks the bus who owns the
        name now and sends only there.
        """
        listener, self._listener = self._listener, None
        self._owner = ""
        self.attached.clear()
        self.detach_count += 1
        self._pending.clear()
        self._size_query = False
        if listener is not None:
            listener.close()  # QEMU forgets it (nothing to do when QEMU ended it)
        if self._stopping:
            return "stopped"
        if owner_changed:
            if not self.reattach:
                log.warning("%s: letting go of QEMU's display", why)
                return why
            log.warning("%s: attaching again", why)
            self._next_try = 0.0
            return None
        if not self.reattach:
            if self.process_exited is not None and self.process_exited():
                log.debug("QEMU's display went with its process: %s", why)
            else:
                log.warning("QEMU's display is gone: %s", why)
            return f"QEMU is gone: {why}"
        log.warning("QEMU's display is gone (%s); waiting for it to come back", why)
        return None

    def _check_owner(self) -> str | None:
        """After a new bus connection while attached: is ``org.qemu`` still ours?

        Owner changes that happened while the bus was away were never signalled to
        us, and a restarted bus daemon hands out the same unique names again.
        Returns a reason to close, or None.
        """
        if self._listener is None:
            return None
        (bus_id,) = self._call(DBus().GetId())
        owner = self._current_owner()
        if str(bus_id) != self._bus_id:
            return self._detach(f"the bus {self.address} was restarted", owner_changed=True)
        if owner != self._owner:
            why = f"{BUS_NAME} changed hands ({self._owner} → {owner or 'nobody'})"
            return self._detach(why, owner_changed=True)
        return None

    def _current_owner(self) -> str:
        """The unique name that owns ``org.qemu`` now, or "" when nobody does."""
        try:
            (owner,) = self._call(DBus().GetNameOwner(BUS_NAME))
        except DBusError as exc:
            if exc.name == "org.freedesktop.DBus.Error.NameHasNoOwner":
                return ""
            raise
        self._name_owner = str(owner)
        return self._name_owner

    # -- the bus --------------------------------------------------------------------------

    def _ensure_bus(self) -> _Wire:
        if self._bus is not None:
            return self._bus
        wire, name = _connect_bus(self.address, CALL_TIMEOUT)
        self._bus = wire
        self._pending.clear()
        log.debug("on the bus %s as %s", self.address, name)
        rules = [
            "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
            f"member='NameOwnerChanged',arg0='{BUS_NAME}'",
            f"type='signal',interface='{IFACE_PROPERTIES}',member='PropertiesChanged',"
            f"path='{self.console_path}'",
        ]
        for rule in rules:
            self._call(DBus().AddMatch(rule))
        return wire

    def _call(self, msg: Any, timeout: float = CALL_TIMEOUT) -> tuple[Any, ...]:
        serial = self._ensure_bus().send(msg)
        return self._wait_reply(serial, timeout)

    def _wait_reply(self, serial: int, timeout: float) -> tuple[Any, ...]:
        bus = self._ensure_bus()
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if self._stopping:
                raise QemuError("stopping")
            if left <= 0:
                raise QemuError(f"no answer from the bus in {timeout:.0f} s")
            ready = select.select([bus.sock.fileno(), self._waker.fileno()], [], [], left)[0]
            if bus.sock.fileno() not in ready:
                self._waker.drain()  # woken: look at _stopping (events stay queued)
                continue
            try:
                reply = bus.recv()
            except (OSError, EOFError) as exc:
                bus.close()
                self._bus = None
                raise _NotThere(f"lost the bus: {exc}") from exc
            if reply.header.fields.get(HeaderFields.reply_serial) == serial:
                try:
                    body = reply.body()
                finally:
                    reply.close_fds()
                if reply.header.message_type is MessageType.error:
                    name = str(reply.header.fields.get(HeaderFields.error_name, "error"))
                    raise DBusError(name, str(body[0]) if body else "")
                return body
            self._dispatch(reply)

    def _get_all(self, owner: str, path: str, interface: str) -> dict[str, Any]:
        addr = DBusAddress(path, owner, IFACE_PROPERTIES)
        (props,) = self._call(new_method_call(addr, "GetAll", "s", (interface,)))
        return {str(k): v[1] for k, v in props.items()}

    def _attach(self) -> None:
        """Register a listener with the connection that owns ``org.qemu`` now.

        Every call from here on is addressed to that connection's unique name, so
        nothing reaches a process that takes ``org.qemu`` later.
        """
        self._ensure_bus()
        (bus_id,) = self._call(DBus().GetId())
        owner = self._current_owner()
        if not owner:
            raise _NotThere(f"no {BUS_NAME} on the bus yet")
        vm = self._get_all(owner, VM_PATH, IFACE_VM)
        consoles = [int(c) for c in vm.get("ConsoleIDs", [])]
        if "ConsoleIDs" in vm and self.console not in consoles:
            have = f"it has {consoles}" if consoles else "no display device?"
            raise QemuError(f"QEMU has no console {self.console} ({have})")
        con = self._get_all(owner, self.console_path, IFACE_CONSOLE)
        try:
            mouse = self._get_all(owner, self.console_path, IFACE_MOUSE)
        except DBusError:
            mouse = {}
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        listener = QemuListener(
            self.display,
            ours,
            map_interface=self.map_interface,
            on_closed=self._listener_closed,
            on_size_doubt=self._size_doubt,
            stats=self.stats,
        )
        # QEMU's main loop blocks while it authenticates us and asks for our
        # properties: the listener must be answering before we register.
        listener.start()
        addr = DBusAddress(self.console_path, owner, IFACE_CONSOLE)
        try:
            serial = self._ensure_bus().send(
                new_method_call(addr, "RegisterListener", "h", (theirs,))
            )
            theirs.close()  # else we never see EOF when QEMU goes away
            self._wait_reply(serial, REGISTER_TIMEOUT)
            if self._name_owner != owner:  # signalled while we waited
                now = self._name_owner or "nobody"
                raise _NotThere(f"{BUS_NAME} changed hands while attaching ({owner} → {now})")
        except BaseException:
            theirs.close()
            listener.close()
            raise
        self._listener = listener
        self._owner = owner
        self._bus_id = str(bus_id)
        self._inputs.clear()  # typed while no owner was known: dropped, not sent late
        self.attach_count += 1
        self.vm_name = str(vm.get("Name", ""))
        self.console_label = str(con.get("Label", ""))
        self.console_size = (int(con.get("Width", 0)), int(con.get("Height", 0)))
        self.mouse_absolute = bool(mouse.get("IsAbsolute", False))
        self.display.info.name = self.vm_name or "QEMU"
        with contextlib.suppress(ValueError, TypeError):
            self.display.info.uuid = uuid.UUID(str(vm.get("UUID", ""))).bytes
        self.attached.set()
        log.info(
            "attached to QEMU%s: console %d (%s, %dx%d), %s mouse",
            f" VM '{self.vm_name}'" if self.vm_name else "",
            self.console,
            self.console_label or con.get("Type", "?"),
            *self.console_size,
            "absolute" if self.mouse_absolute else "relative",
        )

    def _dispatch(self, msg: _Incoming) -> None:
        """A bus message that is not the answer being waited for."""
        try:
            kind = msg.header.message_type
            if kind in (MessageType.method_return, MessageType.error):
                handler = self._pending.pop(msg.header.fields.get(HeaderFields.reply_serial), None)
                if handler is not None:
                    handler(msg)
            elif kind is MessageType.signal:
                self._on_signal(msg)
        finally:
            msg.close_fds()

    def _on_signal(self, msg: _Incoming) -> None:
        member = msg.member
        if member == "NameOwnerChanged":
            name, _old, new = msg.body()
            if name != BUS_NAME:
                return
            self._name_owner = new
            if new and self._owner and new != self._owner:
                # Handled before any more input is sent; until then input still goes
                # to the owner we attached to, never to the name's new owner.
                self._events.append(("owner", (self._owner, new)))
            elif new:
                log.info("QEMU is on the bus (%s)", new)
                self._next_try = 0.0  # attach now if we wait for it
            else:
                log.info("QEMU left the bus")
            return
        if member != "PropertiesChanged" or msg.header.fields.get(HeaderFields.sender) != (
            self._owner
        ):
            return
        iface, changed, _invalidated = msg.body()
        values = {str(k): v[1] for k, v in changed.items()}
        if iface == IFACE_CONSOLE and ("Width" in values or "Height" in values):
            w = int(values.get("Width", self.console_size[0]))
            h = int(values.get("Height", self.console_size[1]))
            self._new_console_size(w, h)
        elif iface == IFACE_MOUSE and "IsAbsolute" in values:
            self.mouse_absolute = bool(values["IsAbsolute"])
            log.info("QEMU's mouse is now %s", "absolute" if self.mouse_absolute else "relative")

    def _new_console_size(self, width: int, height: int) -> None:
        self.console_size = (width, height)
        listener = self._listener
        if listener is not None:
            listener.resize_hint(width, height)

    def _query_size(self) -> None:
        """Ask QEMU for the console's size (after an Update outgrew the framebuffer)."""
        if self._size_query or self._bus is None or self._listener is None:
            return
        self._size_query = True
        addr = DBusAddress(self.console_path, self._owner, IFACE_PROPERTIES)
        serial = self._bus.send(new_method_call(addr, "GetAll", "s", (IFACE_CONSOLE,)))

        def answered(reply: _Incoming) -> None:
            self._size_query = False
            if reply.header.message_type is MessageType.method_return:
                (props,) = reply.body()
                values = {str(k): v[1] for k, v in props.items()}
                self._new_console_size(int(values.get("Width", 0)), int(values.get("Height", 0)))

        self._pending[serial] = answered

    def _send_inputs(self) -> None:
        while self._inputs:
            call = self._inputs.popleft()
            if self._bus is None or self._listener is None or not self._owner:
                continue  # nobody to send it to: input is never replayed late
            if (
                call.member == "SetAbsPosition"
                and self._inputs
                and self._inputs[0].member == "SetAbsPosition"
            ):
                continue  # a newer position is already queued
            addr = DBusAddress(self.console_path, self._owner, call.interface)
            msg = new_method_call(addr, call.member, call.signature, call.body)
            try:
                serial = self._bus.send(msg)
            except OSError as exc:
                log.warning("cannot send input to QEMU: %s", exc)
                return
            self._pending[serial] = self._input_answered(call)

    def _input_answered(self, call: _InputCall) -> Callable[[_Incoming], None]:
        def answered(reply: _Incoming) -> None:
            if reply.header.message_type is MessageType.error:
                body = reply.body()
                log.debug("QEMU refused %s%s: %s", call.member, call.body, body[0] if body else "")
                if call.interface == IFACE_MOUSE and call.member in ("SetAbsPosition", "RelMotion"):
                    self.mouse_absolute = call.member == "RelMotion"

        return answered


def open_qemu_source(
    display: Display,
    *,
    dbus_address: str,
    console: int = 0,
    reattach: bool = False,
    attach_timeout: float = 30.0,
) -> QemuSource:
    """Start showing console ``console`` of the QEMU on ``dbus_address`` on ``display``.

    Returns at once; ``wait_attached()``/``wait_closed()`` tell what happened.
    """
    source = QemuSource(
        display,
        dbus_address=dbus_address,
        console=console,
        reattach=reattach,
        attach_timeout=attach_timeout,
    )
    source.start()
    return source


# --------------------------------------------------------------------------------------
# starting QEMU with a private bus


def _die_with_us(argv: list[str], enabled: bool) -> list[str]:
    """``argv`` run so that it gets SIGTERM if the thread that started it ends.

    util-linux's ``setpriv --pdeathsig`` sets the parent-death signal and execs
    the program (same pid); without setpriv the command is left as it is.
    """
    setpriv = shutil.which("setpriv") if enabled else None
    return [setpriv, "--pdeathsig", "TERM", "--", *argv] if setpriv else argv


class DBusDaemon:
    """A private ``dbus-daemon`` (session configuration) listening in ``directory``."""

    def __init__(self, directory: Path, timeout: float = 10.0, die_with_us: bool = True) -> None:
        exe = shutil.which("dbus-daemon")
        if exe is None:
            raise QemuError("dbus-daemon is not installed (Debian: apt-get install dbus-daemon)")
        self.directory = directory
        argv = [
            exe,
            "--session",
            "--nofork",
            "--nopidfile",
            "--print-address=1",
            f"--address=unix:path={directory / 'bus.sock'}",
        ]
        self.log_path = directory / "dbus-daemon.log"
        with open(self.log_path, "ab") as errors:
            self.process = subprocess.Popen(
                _die_with_us(argv, die_with_us),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
                process_group=0,  # a Ctrl-C meant for Saffron must not kill the bus first
            )
        assert self.process.stdout is not None
        ready = select.select([self.process.stdout], [], [], timeout)[0]
        line = self.process.stdout.readline().strip() if ready else ""
        if not line:
            self.stop()
            raise QemuError("dbus-daemon did not start")
        self.address = line
        log.debug("private D-Bus bus at %s (pid %d)", line, self.process.pid)

    def stop(self, timeout: float = 5.0) -> None:
        _end_process(self.process, timeout)
        if self.process.stdout is not None:
            self.process.stdout.close()


def _end_process(process: subprocess.Popen[Any], timeout: float) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def with_dbus_display(qemu_argv: Sequence[str], dbus_address: str) -> list[str]:
    """QEMU's command line with ``-display dbus,addr=...`` in place of any other display.

    Options of a ``-display dbus,...`` already there (``gl=on``, ``rendernode=``)
    are kept; ``-nographic`` and ``-daemonize`` are dropped (the first conflicts
    with a display, the second would hide QEMU from us).
    """
    if not qemu_argv:
        raise ValueError("no QEMU command")
    out = [qemu_argv[0]]
    kept: list[str] = []
    args = list(qemu_argv[1:])
    i = 0
    while i < len(args):
        arg = args[i]
        flag = "-" + arg.lstrip("-")
        value: str | None = None
        if flag == "-display" and i + 1 < len(args):
            value, i = args[i + 1], i + 2
        elif flag.startswith("-display="):
            value, i = flag.split("=", 1)[1], i + 1
        elif flag == "-nographic":
            log.warning(
                "dropping QEMU's -nographic: the display goes to Saffron"
                " (add -serial mon:stdio to keep the console on the terminal)"
            )
            i += 1
            continue
        elif flag == "-daemonize":
            log.warning("dropping QEMU's -daemonize: Saffron keeps QEMU as its child")
            i += 1
            continue
        else:
            out.append(arg)
            i += 1
            continue
        kind, _, opts = value.partition(",")
        if kind == "dbus":
            kept += [o for o in opts.split(",") if o and not o.startswith(("addr=", "p2p="))]
        else:
            log.info("replacing QEMU's -display %s with the D-Bus display", value)
    addr = dbus_address.replace(",", ",,")  # QEMU's option syntax doubles commas
    out += ["-display", ",".join(["dbus", f"addr={addr}", *kept])]
    return out


class QemuProcess:
    """A QEMU started by :func:`start_qemu`, with its private bus."""

    def __init__(
        self,
        process: subprocess.Popen[Any],
        address: str,
        argv: list[str],
        bus: DBusDaemon | None = None,
        workdir: Path | None = None,
    ) -> None:
        self.process = process
        self.address = address
        self.argv = argv
        self.bus = bus
        self.workdir = workdir

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        """None while QEMU runs, then its exit status (negative: killed by that signal)."""
        return self.process.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self.process.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """End QEMU (SIGTERM, then SIGKILL) and its bus."""
        _end_process(self.process, timeout)
        if self.bus is not None:
            self.bus.stop(timeout)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> QemuProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_qemu(
    qemu_argv: Sequence[str],
    *,
    dbus_address: str | None = None,
    stdin: int | IO[Any] | None = subprocess.DEVNULL,
    stdout: int | IO[Any] | None = None,
    stderr: int | IO[Any] | None = None,
    env: dict[str, str] | None = None,
    die_with_us: bool = True,
) -> QemuProcess:
    """Run QEMU with its display on D-Bus.

    Without ``dbus_address`` a private ``dbus-daemon`` is started for it (and
    stopped with it); with one, QEMU joins that bus (e.g. to restart a VM on
    the bus a reattaching source watches).

    QEMU and its bus run in their own process group, so a Ctrl-C meant for
    Saffron reaches them only as Saffron's orderly stop. With ``die_with_us``
    they get SIGTERM when the *thread* that called this ends (Linux's
    parent-death signal), so a crashed Saffron leaves no VM behind: call it
    from the main thread or one that lives as long.
    """
    workdir: Path | None = None
    bus: DBusDaemon | None = None
    if dbus_address is None:
        workdir = Path(tempfile.mkdtemp(prefix="saffron-qemu-"))
        try:
            bus = DBusDaemon(workdir, die_with_us=die_with_us)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        dbus_address = bus.address
    argv = with_dbus_display(qemu_argv, dbus_address)
    log.info("starting %s", shlex.join(argv))
    try:
        process = subprocess.Popen(
            _die_with_us(argv, die_with_us),
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=env,
            process_group=0,
        )
    except OSError as exc:
        if bus is not None:
            bus.stop()
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
        raise QemuError(f"cannot run {argv[0]}: {exc}") from exc
    return QemuProcess(process, dbus_address, argv, bus, workdir)
