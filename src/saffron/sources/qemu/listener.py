"""The listener: QEMU's peer-to-peer connection that draws, Saffron's frame path.

QEMU calls ``Scanout``/``Update`` (pixels in the message), ``ScanoutMap``/
``UpdateMap`` (shared memory) or ``ScanoutDMABUF``/``UpdateDMABUF`` on a listener
object Saffron exports on one end of a socket pair; this module keeps the
framebuffer up to date from them and calls :meth:`Display.present` when a burst
of updates is over. It never waits for the bus, a viewer or an encoder, and
knows nothing of attaching: :mod:`.attach` hands it a connected socket.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import logging
import mmap
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from jeepney.low_level import MessageFlag, MessageType

from ...display import Cursor, Display, Pixels, Rect, now_us
from .dbus import Incoming, Waker, Wire, error_reply, reply
from .errors import QemuError
from .interfaces import (
    IFACE_INTROSPECTABLE,
    IFACE_LISTENER,
    IFACE_MAP,
    IFACE_PEER,
    IFACE_PROPERTIES,
)
from .pixels import (
    DMA_BUF_IOCTL_SYNC,
    DMA_BUF_SYNC_END,
    DMA_BUF_SYNC_READ,
    DMA_BUF_SYNC_START,
    DRM_FORMAT_MOD_INVALID,
    DRM_FORMAT_MOD_LINEAR,
    DRM_FORMAT_TO_PIXMAN,
    PIXMAN_A8R8G8B8,
    PIXMAN_X8R8G8B8,
    pixels_to_bgrx,
)

log = logging.getLogger("saffron.qemu")

LISTENER_XML = f"""<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"
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


@dataclass(frozen=True, slots=True)
class Refresh:
    """A viewer joined: present the whole framebuffer again."""


@dataclass(frozen=True, slots=True)
class SizeHint:
    """QEMU's console says the surface is this size (its Width/Height properties)."""

    width: int
    height: int


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
                fcntl.ioctl(self.dmabuf_fd, DMA_BUF_IOCTL_SYNC, struct.pack("<Q", flags))

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
        self._wire = Wire(sock)
        self._on_closed = on_closed
        self._on_size_doubt = on_size_doubt
        self._waker = Waker()
        self._requests: collections.deque[Refresh | SizeHint] = collections.deque()
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
        self._request(Refresh())

    def resize_hint(self, width: int, height: int) -> None:
        """QEMU's console says the surface is this size (its Width/Height properties)."""
        self._request(SizeHint(width, height))

    def _request(self, request: Refresh | SizeHint) -> None:
        self._requests.append(request)
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
            request = self._requests.popleft()
            if isinstance(request, SizeHint):
                self._apply_size(request.width, request.height)
            elif self.fb is not None and not self._disabled:
                h, w = self.fb.shape[:2]
                self._add_damage(Rect(0, 0, w, h), time.perf_counter_ns(), now_us())

    def _send(self, msg: Any) -> None:
        self._wire.send(msg)

    def _answer(self, msg: Incoming, signature: str | None = None, *body: Any) -> None:
        if not msg.header.flags & MessageFlag.no_reply_expected:
            self._send(reply(msg, signature, tuple(body)))

    def _fail(self, msg: Incoming, name: str, text: str) -> None:
        if not msg.header.flags & MessageFlag.no_reply_expected:
            self._send(error_reply(msg, name, text))

    def _warn_once(self, key: str, text: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(text, *args)

    def _handle(self, msg: Incoming) -> None:
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

    def _on_properties(self, msg: Incoming) -> None:
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

    def _on_introspect(self, msg: Incoming) -> None:
        self._answer(msg, "s", LISTENER_XML)

    def _on_ping(self, msg: Incoming) -> None:
        self._answer(msg)

    # -- 2D: Scanout / Update ---------------------------------------------------------------

    def _on_scanout(self, msg: Incoming) -> None:
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

    def _on_update(self, msg: Incoming) -> None:
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

    def _on_scanout_map(self, msg: Incoming) -> None:
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

    def _on_update_map(self, msg: Incoming) -> None:
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

    def _on_scanout_dmabuf(self, msg: Incoming) -> None:
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

    def _on_update_dmabuf(self, msg: Incoming) -> None:
        """Copy the damaged part out of the dma-buf, answer (QEMU's GL waits), then present."""
        self.stats.updates += 1
        x, y, w, h = msg.body()
        mapping = self._map
        if mapping is None or self.fb is None or self.mode != "dmabuf":
            return self._answer(msg)
        rect = Rect(x, y, w, h).clip(mapping.width, mapping.height)
        if not rect.empty:
            mapping.sync(DMA_BUF_SYNC_START | DMA_BUF_SYNC_READ)
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
                mapping.sync(DMA_BUF_SYNC_END | DMA_BUF_SYNC_READ)
        self._answer(msg)  # the frame is ours now: let QEMU render the next one
        if not rect.empty:
            self._add_damage(rect, msg.arrival_ns, msg.arrival_us)
            self._flush()

    # -- the rest ---------------------------------------------------------------------------

    def _on_disable(self, msg: Incoming) -> None:
        self._answer(msg)
        self._damage = None
        self._disabled = True
        log.debug("QEMU disabled the console")
        self.display.disable()

    def _on_mouse_set(self, msg: Incoming) -> None:
        x, y, on = msg.body()
        self._answer(msg)
        self.display.move_cursor(int(x), int(y), bool(on))

    def _on_cursor_define(self, msg: Incoming) -> None:
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


_Handler = Callable[[QemuListener, Incoming], None]
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
