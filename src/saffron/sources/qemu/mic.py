"""The microphone listener: QEMU's peer-to-peer connection that asks for the guest's capture.

``RegisterInListener`` hands QEMU one end of a socket pair; on the other end this
module exports ``org.qemu.Display1.AudioInListener``. QEMU calls ``Init`` for each
capture voice (a sound card's line in or microphone), ``SetEnabled`` when the guest
starts or stops recording and, while it records, ``Read(voice, size)`` on every tick
of its audio timer, waiting for the answer in its main loop: the answer is the bytes
the guest records, at most ``size``.

QEMU takes as much as it is given (its D-Bus backend does not pace capture), so the
pace is kept here: each ``Read`` gets what the voice's rate makes due since it was
enabled, never more than ``MAX_CATCHUP_MS`` at once (after QEMU stalled, the guest
does not get a burst). The bytes come from ``display.mic`` (the viewers' microphone,
or silence), which answers at once.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from ...display import Display
from .audio import PeerListener
from .dbus import Incoming
from .interfaces import IFACE_AUDIO_IN_LISTENER

MAX_CATCHUP_MS = 60
"""The most sound one ``Read`` gets beyond the timer's usual 10 ms: QEMU's timer ticks
late under load and catches up, but a guest that was paused is not sent its backlog."""

MIC_LISTENER_XML = (
    ('<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"\n')
    + f""" "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">
<node>
  <interface name="{IFACE_AUDIO_IN_LISTENER}">
    <method name="Init"><arg type="t"/><arg type="y"/><arg type="b"/><arg type="b"/>
      <arg type="u"/><arg type="y"/><arg type="u"/><arg type="u"/><arg type="b"/></method>
    <method name="Fini"><arg type="t"/></method>
    <method name="SetEnabled"><arg type="t"/><arg type="b"/></method>
    <method name="SetVolume"><arg type="t"/><arg type="b"/><arg type="ay"/></method>
    <method name="Read"><arg type="t"/><arg type="t"/><arg type="ay" direction="out"/></method>
    <property name="Interfaces" type="as" access="read"/>
  </interface>
</node>
"""
)


class QemuMicListener(PeerListener):
    """One ``org.qemu.Display1.AudioInListener``: the guest's capture from ``display.mic``."""

    INTERFACE = IFACE_AUDIO_IN_LISTENER
    XML = MIC_LISTENER_XML
    THREAD_NAME = "saffron-qemu-mic"

    def __init__(
        self,
        display: Display,
        sock: socket.socket,
        *,
        on_closed: Callable[[QemuMicListener, str], None] | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        super().__init__(display, sock, on_closed=on_closed)
        self._clock = clock
        self._started: dict[int, tuple[int, int]] = {}
        """Enabled voice -> (clock when enabled, frames given since)."""
        self.reads = 0
        self.bytes = 0

    def _voice_gone(self, voice: int) -> None:
        self.display.mic.mic_stop(voice)

    def due(self, voice: int, size: int) -> int:
        """Bytes of ``voice`` the guest is due now, at most ``size`` (whole frames)."""
        fmt = self.voices.get(voice)
        started = self._started.get(voice)
        if fmt is None or started is None:
            return 0
        at, given = started
        elapsed = self._clock() - at
        frames = elapsed * fmt.rate // 1_000_000_000 - given
        most = fmt.rate * MAX_CATCHUP_MS // 1000
        if frames > most:  # QEMU stalled: what it missed is not sent now
            given += frames - most
            frames = most
        frames = max(0, min(frames, size // fmt.bytes_per_frame))
        self._started[voice] = (at, given + frames)
        return frames * fmt.bytes_per_frame

    def _on_init(self, msg: Incoming) -> None:
        init = self._format(msg, "recording")
        if init is None:
            return
        voice, fmt = init
        self.voices[voice] = fmt
        self.display.mic.mic_start(voice, fmt)

    def _on_fini(self, msg: Incoming) -> None:
        (voice,) = msg.body()
        self._answer(msg)
        self._started.pop(voice, None)
        if self.voices.pop(voice, None) is not None:
            self.display.mic.mic_stop(voice)

    def _on_set_enabled(self, msg: Incoming) -> None:
        voice, enabled = msg.body()
        self._answer(msg)
        if voice not in self.voices:
            return
        if enabled:
            self._started[voice] = (self._clock(), 0)
        else:
            self._started.pop(voice, None)
        self.display.mic.mic_enable(voice, bool(enabled))

    def _on_set_volume(self, msg: Incoming) -> None:
        self._answer(msg)  # the guest's mixer applies it to what it records

    def _on_read(self, msg: Incoming) -> None:
        voice, size = msg.body()
        size = self.due(voice, int(size))
        data = self.display.mic.mic_read(voice, size) if size else b""
        self.reads += 1
        self.bytes += len(data)
        self._answer(msg, "ay", data)


QemuMicListener.METHODS = {
    "Init": QemuMicListener._on_init,
    "Fini": QemuMicListener._on_fini,
    "SetEnabled": QemuMicListener._on_set_enabled,
    "SetVolume": QemuMicListener._on_set_volume,
    "Read": QemuMicListener._on_read,
}
