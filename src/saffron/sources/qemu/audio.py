"""The audio listener: QEMU's peer-to-peer connection that plays the guest's sound.

With ``-audiodev dbus`` wired to ``-display dbus,audiodev=…``, QEMU exports
``org.qemu.Display1.Audio``; ``RegisterOutListener`` hands it one end of a socket
pair, and on the other end this module exports ``org.qemu.Display1.AudioOutListener``.
QEMU calls ``Init`` for each of its voices (one per sound device), ``SetEnabled``
when a voice starts or stops playing, and ``Write`` with PCM at the pace the
guest plays it. Each chunk goes to ``display.audio`` stamped with its arrival
time, the clock video frames carry, and nothing here waits for a viewer.

:class:`PeerListener` is what every such peer-to-peer listener shares (the
microphone's, ``saffron.sources.qemu.mic``, too).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any, ClassVar, Self

from jeepney.low_level import MessageFlag, MessageType

from ...display import Display, PcmFormat
from .dbus import Incoming, Wire, error_reply, reply
from .errors import QemuError
from .interfaces import (
    IFACE_AUDIO_OUT_LISTENER,
    IFACE_INTROSPECTABLE,
    IFACE_PEER,
    IFACE_PROPERTIES,
)

log = logging.getLogger("saffron.qemu")

AUDIO_LISTENER_XML = (
    ('<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"\n')
    + f""" "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">
<node>
  <interface name="{IFACE_AUDIO_OUT_LISTENER}">
    <method name="Init"><arg type="t"/><arg type="y"/><arg type="b"/><arg type="b"/>
      <arg type="u"/><arg type="y"/><arg type="u"/><arg type="u"/><arg type="b"/></method>
    <method name="Fini"><arg type="t"/></method>
    <method name="SetEnabled"><arg type="t"/><arg type="b"/></method>
    <method name="SetVolume"><arg type="t"/><arg type="b"/><arg type="ay"/></method>
    <method name="Write"><arg type="t"/><arg type="ay"/></method>
    <property name="Interfaces" type="as" access="read"/>
  </interface>
</node>
"""
)

WRITE_HEAD = struct.Struct("<QI")
"""A little-endian ``Write`` body: the voice id (t), then the data's length (ay)."""

PLAYABLE_BITS = (8, 16, 32)
"""Sample sizes the fan-out converts (QEMU's mixer uses 8, 16 and 32 bits, or float)."""


class PeerListener:
    """A listener object QEMU calls on a connected peer-to-peer socket, in its own thread.

    :meth:`start` runs it until QEMU closes the connection (or :meth:`close`), then
    :meth:`_ended` lets the subclass say its voices stopped and ``on_closed(reason)`` is
    called. Subclasses name their interface, introspection XML and method handlers.
    """

    INTERFACE: ClassVar[str]
    XML: ClassVar[str]
    METHODS: ClassVar[dict[str, Callable[[Any, Incoming], None]]]
    THREAD_NAME: ClassVar[str] = "saffron-qemu-peer"

    def __init__(
        self,
        display: Display,
        sock: socket.socket,
        *,
        on_closed: Callable[[Any, str], None] | None = None,
    ) -> None:
        self.display = display
        self._wire = Wire(sock)
        self._on_closed = on_closed
        self.voices: dict[int, PcmFormat] = {}
        self.closed = threading.Event()
        self.close_reason = ""
        self._closing = False
        self._warned: set[str] = set()
        self._thread = threading.Thread(target=self._run, name=self.THREAD_NAME, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        self._closing = True
        with contextlib.suppress(OSError):
            self._wire.sock.shutdown(socket.SHUT_RDWR)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        reason = "closed"
        try:
            self._wire.sock.settimeout(None)
            self._wire.authenticate()
            while True:
                msg = self._wire.recv()
                try:
                    self._handle(msg)
                except (ValueError, TypeError, IndexError, KeyError, struct.error) as exc:
                    self._warn_once(msg.member, "cannot use QEMU's audio %s: %r", msg.member, exc)
                finally:
                    msg.close_fds()
        except EOFError:
            reason = "closing" if self._closing else "QEMU closed the audio connection"
        except (OSError, ValueError, QemuError) as exc:
            reason = "closing" if self._closing else f"audio connection failed: {exc}"
        except Exception as exc:  # a bug here must not take the picture with it
            log.exception("the QEMU audio listener failed")
            reason = f"audio listener failed: {exc!r}"
        finally:
            self.close_reason = reason
            for voice in list(self.voices):
                self._voice_gone(voice)
            self.voices.clear()
            self._wire.close()
            self.closed.set()
            if self._on_closed is not None:
                self._on_closed(self, reason)

    def _voice_gone(self, voice: int) -> None:
        """QEMU's connection ended with this voice open."""

    def _warn_once(self, key: str, text: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(text, *args)

    def _answer(self, msg: Incoming, signature: str | None = None, *body: Any) -> None:
        if not msg.header.flags & MessageFlag.no_reply_expected:
            self._wire.send(reply(msg, signature, tuple(body)))

    def _fail(self, msg: Incoming, name: str, text: str) -> None:
        if not msg.header.flags & MessageFlag.no_reply_expected:
            self._wire.send(error_reply(msg, name, text))

    def _handle(self, msg: Incoming) -> None:
        if msg.header.message_type is not MessageType.method_call:
            return
        member, iface = msg.member, msg.interface
        if iface == self.INTERFACE or (not iface and member in self.METHODS):
            handler = self.METHODS.get(member)
            if handler is not None:
                return handler(self, msg)
        elif iface == IFACE_PROPERTIES:
            return self._on_properties(msg)
        elif iface == IFACE_INTROSPECTABLE and member == "Introspect":
            return self._answer(msg, "s", self.XML)
        elif iface == IFACE_PEER and member == "Ping":
            return self._answer(msg)
        log.debug("QEMU called %s.%s, which the audio listener does not know", iface, member)
        self._fail(msg, "org.freedesktop.DBus.Error.UnknownMethod", f"no method {iface}.{member}")

    def _on_properties(self, msg: Incoming) -> None:
        body = msg.body()
        if msg.member == "GetAll":
            props: dict[str, tuple[str, Any]] = {}
            if body and body[0] == self.INTERFACE:
                props["Interfaces"] = ("as", [])
            self._answer(msg, "a{sv}", props)
        elif msg.member == "Get" and tuple(body) == (self.INTERFACE, "Interfaces"):
            self._answer(msg, "v", ("as", []))
        else:
            self._fail(msg, "org.freedesktop.DBus.Error.UnknownProperty", "no such property")

    def _format(self, msg: Incoming, what: str) -> tuple[int, PcmFormat] | None:
        """An ``Init``'s voice and format (answered), or None if Saffron cannot use it."""
        voice, bits, signed, floating, freq, channels, per_frame, _per_s, be = msg.body()
        self._answer(msg)
        fmt = PcmFormat(int(freq), int(channels), int(bits), bool(signed), bool(floating), bool(be))
        if (
            bits not in PLAYABLE_BITS
            or not 0 < channels <= 8
            or not 1000 <= freq <= 192000
            or per_frame != fmt.bytes_per_frame
        ):
            self._warn_once(
                f"fmt{fmt}", "QEMU's %s format is not one Saffron can use: %s", what, fmt
            )
            return None
        return int(voice), fmt


class QemuAudioListener(PeerListener):
    """One ``org.qemu.Display1.AudioOutListener``: the guest's sound to ``display.audio``."""

    INTERFACE = IFACE_AUDIO_OUT_LISTENER
    XML = AUDIO_LISTENER_XML
    THREAD_NAME = "saffron-qemu-audio"

    def __init__(
        self,
        display: Display,
        sock: socket.socket,
        *,
        on_closed: Callable[[QemuAudioListener, str], None] | None = None,
    ) -> None:
        super().__init__(display, sock, on_closed=on_closed)
        self.writes = 0
        self.bytes = 0

    def _voice_gone(self, voice: int) -> None:
        self.display.audio.pcm_stop(voice)

    def _on_init(self, msg: Incoming) -> None:
        init = self._format(msg, "sound")
        if init is None:
            return
        voice, fmt = init
        log.info(
            "the guest's sound device %d plays %d Hz, %d channel(s), %d-bit%s",
            voice,
            fmt.rate,
            fmt.channels,
            fmt.bits,
            " float" if fmt.floating else "",
        )
        self.voices[voice] = fmt
        self.display.audio.pcm_start(voice, fmt)

    def _on_fini(self, msg: Incoming) -> None:
        (voice,) = msg.body()
        self._answer(msg)
        if self.voices.pop(voice, None) is not None:
            self.display.audio.pcm_stop(voice)

    def _on_set_enabled(self, msg: Incoming) -> None:
        voice, enabled = msg.body()
        self._answer(msg)
        if voice in self.voices:
            self.display.audio.pcm_enable(voice, bool(enabled))

    def _on_set_volume(self, msg: Incoming) -> None:
        self._answer(msg)  # the guest's mixer already applied it to the samples

    def _on_write(self, msg: Incoming) -> None:
        if msg.signature != "tay":
            return self._fail(msg, "org.freedesktop.DBus.Error.InvalidArgs", "bad signature")
        if msg.little:
            voice, size = WRITE_HEAD.unpack_from(msg.buf, msg.body_pos)
            start = msg.body_pos + WRITE_HEAD.size
            data = bytes(msg.buf[start : start + size])
        else:
            voice, raw = msg.body()
            data = bytes(raw)
        self._answer(msg)
        self.writes += 1
        self.bytes += len(data)
        if voice in self.voices:
            self.display.audio.pcm_write(voice, data, msg.arrival_us)


QemuAudioListener.METHODS = {
    "Init": QemuAudioListener._on_init,
    "Fini": QemuAudioListener._on_fini,
    "SetEnabled": QemuAudioListener._on_set_enabled,
    "SetVolume": QemuAudioListener._on_set_volume,
    "Write": QemuAudioListener._on_write,
}
