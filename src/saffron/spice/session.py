"""A SPICE client's session: its main, inputs and cursor channels, and its video clock.

A session starts with a main channel and has a random id; the client opens its
other channels with that id. The session keeps the client's video clock: the
client's multimedia time runs ``latency_ms`` behind Saffron's millisecond clock,
frames are stamped with Saffron's clock when sent, so spice-gtk shows each frame
about ``latency_ms`` after it was sent (spice-server uses 400 ms). Saffron starts
at 20 ms and from then on follows the frames' measured trip (each stream report
tells how early or late its last frame came): up at once when they come late,
down as soon as they come early again.

The handlers here see the server and their connection only through the ports
of :mod:`saffron.spice.ports`: they know no socket, TLS or WebSocket, and not
the display channel's viewer (:mod:`saffron.spice.viewer`), which builds on this.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..clipboard import ClipboardTooBig
from ..display import SizeRequest
from .ports import ConnectionPort, Handler, ServerPort
from .protocol.agent import (
    AgentCapabilities,
    AgentIgnored,
    AgentType,
    ClipboardGrabbed,
    ClipboardReceived,
    ClipboardType,
    MonitorsConfigured,
)
from .protocol.channel import ClientClosing, Event, PongReceived, Unhandled
from .protocol.cursor_channel import CursorChannel, default_arrow
from .protocol.inputs_channel import (
    ButtonEvent,
    InputsChannel,
    KeyEvent,
    PointerMotion,
    PointerMoved,
)
from .protocol.main_channel import (
    ChannelsAttached,
    MainChannel,
    MouseModeChanged,
    MouseModeRefused,
)
from .protocol.playback_channel import PlaybackChannel
from .protocol.record_channel import RECORD_CHANNELS, RECORD_RATE, RecordChannel, Recorded
from .protocol.wire import MouseMode, StreamReport, describe

if TYPE_CHECKING:
    from ..audio import AudioPacket
    from ..display import Cursor, Display

log = logging.getLogger("saffron.spice")

INITIAL_LATENCY_MS = 20
"""The video delay a client starts with: enough for a frame's trip on a LAN and a
little jitter; every millisecond of it is added to what the user sees."""
MAX_LATENCY_MS = 400
"""Never more than spice-server's fixed delay."""
LATENCY_MARGIN_MS = 10
"""Added to the measured trip: jitter of a few ms must not make frames late."""
LATENCY_HYSTERESIS_MS = 5
"""Smaller changes of the delay are not worth a MULTI_MEDIA_TIME."""
TRIP_WINDOW_S = 2.0
"""Frame trips of the last this many seconds decide the delay."""
LATENCY_CHANGE_INTERVAL_S = 0.5
"""At most one change this often (raising it reschedules spice-gtk's queued frames)."""
PING_INTERVAL_S = 10.0


AUDIO_BUFFER_LIMIT = 4 * 1024
"""Bytes of sound waiting in a playback connection beyond which packets are dropped:
about 0.35 s of it (a 10 ms packet is about 110 bytes with its header at 80 kbit/s).
Sound is never queued behind a full link (its delay would grow without end); the
client's decoder conceals the gap."""


def mm_clock() -> int:
    """Saffron's multimedia clock: monotonic milliseconds as a wrapping u32."""
    return (time.monotonic_ns() // 1_000_000) & 0xFFFFFFFF


def mm_of_capture(capture_us: int) -> int:
    """The multimedia time of something captured at ``capture_us`` (display.now_us)."""
    age_ms = max(time.time_ns() // 1000 - capture_us, 0) // 1000
    return (mm_clock() - age_ms) & 0xFFFFFFFF


def log_common(label: str, events: list[Event]) -> None:
    for event in events:
        if isinstance(event, Unhandled):
            log.debug("%s: ignored message type %d (%d bytes)", label, event.type, event.size)
        elif isinstance(event, ClientClosing):
            log.debug("%s: the client says it is disconnecting (%d)", label, event.reason)


def _agent_type(value: int) -> AgentType | int:
    try:
        return AgentType(value)
    except ValueError:
        return value


class Session:
    def __init__(self, server: ServerPort, session_id: int, peer: str) -> None:
        self.server = server
        self.id = session_id
        self.peer = peer
        self.label = f"SPICE client {peer}"
        self.latency_ms = INITIAL_LATENCY_MS
        self.rtt_ms: float | None = None
        self.mouse_mode = MouseMode.CLIENT
        self.connections: dict[tuple[int, int], ConnectionPort] = {}
        self.handlers: dict[tuple[int, int], Handler] = {}
        """By channel type and id (display and cursor channel k show screen k)."""
        self.main: MainHandler | None = None
        self.cursors: dict[int, CursorHandler] = {}
        """The cursor channel of each screen, by its id."""
        self.closed = False
        self._last_latency_change = 0.0
        self._trips: deque[tuple[float, int]] = deque()
        """(when, ms): how long frames took from being stamped to reaching the client."""

    # -- the video clock ---------------------------------------------------------------

    def mm_now(self) -> int:
        return mm_clock()

    def client_clock(self) -> int:
        return (mm_clock() - self.latency_ms) & 0xFFFFFFFF

    def set_latency(self, ms: int, why: str) -> None:
        if ms == self.latency_ms:
            return
        self.latency_ms = ms
        self._last_latency_change = time.monotonic()
        log.debug("%s: video delay now %d ms (%s)", self.label, ms, why)
        if self.main is not None:
            self.main.channel.set_mm_time(self.client_clock())
            self.main.conn.flush()

    def on_report(self, report: StreamReport, *, late_frames_dropped: bool = False) -> None:
        """Follow the frames' trip time: the delay a client needs to show them on time.

        A report's ``last_frame_delay`` is the delay minus its last frame's trip. The
        delay becomes the trips of the last ``TRIP_WINDOW_S`` plus a margin: all of them
        where a late frame is dropped (spice-gtk's MJPEG), their median where it is
        shown at once anyway (its GStreamer codecs), so one slow keyframe does not hold
        every frame after it back. Up at once, down as soon as frames are early.
        """
        now = time.monotonic()
        trip = self.latency_ms - report.last_frame_delay
        self._trips.append((now, trip))
        while self._trips and self._trips[0][0] < now - TRIP_WINDOW_S:
            self._trips.popleft()
        trips = sorted(t for _, t in self._trips)
        needed = trips[-1] if late_frames_dropped else trips[(len(trips) - 1) // 2]
        ms = min(MAX_LATENCY_MS, max(INITIAL_LATENCY_MS, needed + LATENCY_MARGIN_MS))
        late = report.num_drops > 0 or report.last_frame_delay < 0
        if abs(ms - self.latency_ms) <= LATENCY_HYSTERESIS_MS:
            return
        if ms > self.latency_ms and late_frames_dropped and late:
            pass  # frames are being lost: no waiting
        elif now - self._last_latency_change < LATENCY_CHANGE_INTERVAL_S:
            return
        why = "frames arrived late" if ms > self.latency_ms else "frames arrive early"
        self.set_latency(ms, why)

    # -- channels ----------------------------------------------------------------------

    def attach(
        self, channel_type: int, conn: ConnectionPort, handler: Handler, channel_id: int = 0
    ) -> None:
        """A channel joined; one of the same type and id that was there before is closed."""
        key = (channel_type, channel_id)
        old = self.connections.get(key)
        if old is not None and old is not conn:
            old.close("replaced by a new connection of the same channel")
        self.connections[key] = conn
        self.handlers[key] = handler

    def detach(self, channel_type: int, conn: ConnectionPort, channel_id: int = 0) -> None:
        key = (channel_type, channel_id)
        if self.connections.get(key) is conn:
            del self.connections[key]
            handler = self.handlers.pop(key)
            if self.cursors.get(channel_id) is handler:
                del self.cursors[channel_id]

    def close(self, reason: str) -> None:
        """Close every channel of the session (the main channel last)."""
        if self.closed:
            return
        self.closed = True
        for conn in list(self.connections.values()):
            conn.close(reason)


class MainHandler:
    def __init__(self, session: Session, conn: ConnectionPort, channel: MainChannel) -> None:
        self.session = session
        self.conn = conn
        self.channel = channel
        self.label = f"{session.label} main"
        self._timer: asyncio.TimerHandle | None = None
        self._ping_id = 0

    def start(self) -> None:
        info = self.session.server.display.info
        self.channel.start(self.session.client_clock(), info.name, info.uuid)
        self.conn.flush()
        clipboard = self.session.server.clipboard
        if self.channel.agent is not None and self.channel.agent.clipboard and clipboard:
            clipboard.add_viewer(self)
        self._timer = self.session.server.loop.call_later(1.0, self._ping)

    def _ping(self) -> None:
        self._ping_id += 1
        self.channel.ping(self._ping_id, time.monotonic_ns())
        self.conn.flush()
        self._timer = self.session.server.loop.call_later(PING_INTERVAL_S, self._ping)

    def receive(self, data: bytes) -> None:
        events = self.channel.receive_data(data)
        log_common(self.label, events)
        for event in events:
            if isinstance(event, PongReceived):
                rtt = (time.monotonic_ns() - event.timestamp) / 1e6
                if 0 <= rtt < 60_000:
                    self.session.rtt_ms = rtt
                    log.debug("%s: round trip %.1f ms", self.session.label, rtt)
            elif isinstance(event, MouseModeChanged):
                self.session.mouse_mode = event.mode
                mode = (
                    "client (absolute)" if event.mode == MouseMode.CLIENT else "server (relative)"
                )
                log.info("%s: mouse mode %s", self.session.label, mode)
            elif isinstance(event, MouseModeRefused):
                log.info("%s: refused unknown mouse mode %d", self.session.label, event.mode)
            elif isinstance(event, ChannelsAttached):
                log.debug("%s: asked for the channel list", self.session.label)
            elif isinstance(event, MonitorsConfigured):
                self._monitors(event)
            elif isinstance(event, AgentCapabilities):
                log.debug("%s: agent capabilities %s", self.session.label, sorted(event.caps))
            elif isinstance(event, ClipboardReceived):
                self._clipboard(event)
            elif isinstance(event, ClipboardGrabbed):
                log.debug("%s: the client copied %s", self.label, list(event.types))
            elif isinstance(event, AgentIgnored):
                log.debug(
                    "%s: ignored agent message %s (%d bytes)",
                    self.session.label,
                    describe(_agent_type(event.type)),
                    event.size,
                )
        self.conn.flush()

    def _clipboard(self, event: ClipboardReceived) -> None:
        """The client's clipboard text (asked for when it copied): to the guest."""
        clipboard = self.session.server.clipboard
        if clipboard is None or event.type != ClipboardType.UTF8_TEXT:
            return
        if self.session.server.view_only:
            return
        text = event.data.decode(errors="replace").rstrip("\0")  # some clients end with a NUL
        log.debug("%s: the client copied %d characters", self.label, len(text))
        try:
            clipboard.viewer_copied(text, self)
        except ClipboardTooBig as exc:
            self.conn.close(str(exc), warn=True)

    def clipboard_changed(self, text: str) -> None:
        """The guest (or another viewer) copied ``text``: offered to the client."""
        agent = self.channel.agent
        if agent is None:
            return
        agent.offer_text(text)
        self.channel.flush_agent()
        self.conn.flush()

    def _monitors(self, event: MonitorsConfigured) -> None:
        """The client's windows: the guest's screens follow. Monitor k is display channel
        k's window (spice-gtk lists one per display channel, in their order); a disabled
        one (0x0) is left alone, and those beyond the producer's screens are ignored."""
        server = self.session.server
        if server.view_only:
            return
        for k, m in enumerate(event.monitors):
            if m.width <= 0 or m.height <= 0:
                continue
            display = server.display_of(k)
            if display is None:
                log.debug("%s: monitor %d asked for; there are %d screens", self.label, k, k)
                break
            log.debug("%s: the client's window %d is %dx%d", self.label, k, m.width, m.height)
            display.request_size(SizeRequest(m.width, m.height, m.width_mm, m.height_mm))

    def on_drain(self) -> None:
        pass

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        clipboard = self.session.server.clipboard
        if clipboard is not None:
            clipboard.remove_viewer(self)


class InputsHandler:
    def __init__(self, session: Session, conn: ConnectionPort, channel: InputsChannel) -> None:
        self.session = session
        self.conn = conn
        self.channel = channel
        self.label = f"{session.label} inputs"
        self.screen = 0
        """The screen the pointer was last on: keys and buttons go to its display."""
        self._told_view_only = False
        self._failed = False

    def start(self) -> None:
        self.channel.start(0)
        self.conn.flush()

    def receive(self, data: bytes) -> None:
        events = self.channel.receive_data(data)
        log_common(self.label, events)
        self.conn.flush()  # motion acks
        server = self.session.server
        for event in events:
            if not isinstance(event, KeyEvent | PointerMoved | PointerMotion | ButtonEvent):
                continue
            if server.view_only:
                if not self._told_view_only:
                    self._told_view_only = True
                    log.info("%s: keyboard and mouse ignored (view-only)", self.session.label)
                continue
            self._deliver(event)

    def _deliver(self, event: Event) -> None:
        server = self.session.server
        if isinstance(event, PointerMoved) and server.display_of(event.display_id) is not None:
            self.screen = event.display_id
        display = server.display_of(self.screen) or server.display
        handler = display.input
        call: Callable[[], None]
        if isinstance(event, KeyEvent):
            call = lambda: handler.key(event.scancode, event.down)  # noqa: E731
        elif isinstance(event, PointerMoved):
            call = lambda: handler.pointer(event.x, event.y)  # noqa: E731
        elif isinstance(event, PointerMotion):
            call = lambda: handler.motion(event.dx, event.dy)  # noqa: E731
        elif isinstance(event, ButtonEvent):
            call = lambda: handler.button(event.button, event.down)  # noqa: E731
        else:
            return
        try:
            call()
        except Exception:
            if not self._failed:
                self._failed = True
                log.exception("%s: the producer failed to take an input event", self.label)

    def on_drain(self) -> None:
        pass

    def stop(self) -> None:
        pass


class CursorHandler:
    """A cursor channel: the pointer of one screen (``display``, default the first)."""

    def __init__(
        self,
        session: Session,
        conn: ConnectionPort,
        channel: CursorChannel,
        display: Display | None = None,
    ) -> None:
        self.session = session
        self.conn = conn
        self.channel = channel
        self.display = display if display is not None else session.server.display

    def start(self) -> None:
        cursor = self.display.cursor
        x, y, visible = self.display.cursor_pos
        if cursor is None:
            cursor, visible = default_arrow(), True
        elif (x, y, visible) == (0, 0, False):
            visible = True  # the producer set an image but never placed it
        self.channel.start(cursor, x, y, visible)
        self.conn.flush()

    def on_cursor(self, cursor: Cursor | None) -> None:
        x, y, visible = self.display.cursor_pos
        if cursor is None:
            self.channel.set(None, x, y, False)
        else:
            self.channel.set(cursor, x, y, visible or (x, y) == (0, 0))
        self.conn.flush()

    def on_cursor_move(self, x: int, y: int, visible: bool) -> None:
        if not visible:
            self.channel.hide()
        elif not self.channel.visible:
            cursor = self.display.cursor or default_arrow()
            self.channel.set(cursor, x, y, True)
        else:
            self.channel.move(x, y)
        self.conn.flush()

    def receive(self, data: bytes) -> None:
        log_common(f"{self.session.label} cursor", self.channel.receive_data(data))

    def on_drain(self) -> None:
        pass

    def stop(self) -> None:
        pass


class PlaybackHandler:
    """A playback channel: the producer's sound from the audio fan-out, as it comes."""

    def __init__(self, session: Session, conn: ConnectionPort, channel: PlaybackChannel) -> None:
        self.session = session
        self.conn = conn
        self.channel = channel
        self.label = f"{session.label} playback"
        self.sent = 0

    def start(self) -> None:
        audio = self.session.server.audio
        self.channel.start(self.session.mm_now())
        self.conn.flush()
        if not self.channel.opus:
            log.info("%s: the client does not play Opus; it gets no sound", self.session.label)
            return
        if audio is not None:
            audio.add_viewer(self)

    # -- AudioViewer -----------------------------------------------------------------------

    def audio_writable(self) -> bool:
        return self.conn.buffered() < AUDIO_BUFFER_LIMIT and not self.conn.congested

    def audio_playing(self, playing: bool) -> None:
        if playing:
            self.channel.play(self.session.mm_now())
        else:
            self.channel.stop()
        self.conn.flush()

    def send_audio(self, packet: AudioPacket) -> None:
        if not self.channel.playing:
            self.channel.play(mm_of_capture(packet.capture_us))
        self.channel.data(mm_of_capture(packet.capture_us), packet.data)
        self.sent += 1
        self.conn.flush()

    # -- Handler -----------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        log_common(self.label, self.channel.receive_data(data))

    def on_drain(self) -> None:
        pass

    def stop(self) -> None:
        audio = self.session.server.audio
        if audio is not None:
            audio.remove_viewer(self)


class RecordHandler:
    """A record channel: the client's microphone to ``server.mic`` while the guest records."""

    def __init__(self, session: Session, conn: ConnectionPort, channel: RecordChannel) -> None:
        self.session = session
        self.conn = conn
        self.channel = channel
        self.label = f"{session.label} record"
        self.received = 0
        self.refused = 0
        self._stopped = False

    def start(self) -> None:
        mic = self.session.server.mic
        if mic is None:
            return
        mic.watch(self._recording)
        if mic.recording:
            self._set_recording(True)

    def _recording(self, recording: bool) -> None:
        """The guest started or stopped recording (from the producer's thread)."""
        loop = self.session.server.loop
        with contextlib.suppress(RuntimeError):  # the loop is closed: Saffron is stopping
            loop.call_soon_threadsafe(self._set_recording, recording)

    def _set_recording(self, recording: bool) -> None:
        if self._stopped:
            return
        if recording:
            self.channel.start()
        else:
            self.channel.stop()
        self.conn.flush()

    # -- Handler -----------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        events = self.channel.receive_data(data)
        mic = self.session.server.mic
        for event in events:
            if not isinstance(event, Recorded):
                continue
            if mic is None or self.session.server.view_only:
                self.refused += 1
                continue
            if event.opus:
                used = mic.push_opus(self, event.data, RECORD_CHANNELS)
            else:
                used = mic.push_pcm(self, event.data, RECORD_CHANNELS, RECORD_RATE)
            self.received += used
            self.refused += not used
        log_common(self.label, events)

    def on_drain(self) -> None:
        pass

    def stop(self) -> None:
        self._stopped = True
        mic = self.session.server.mic
        if mic is not None:
            mic.unwatch(self._recording)
            mic.release(self)
