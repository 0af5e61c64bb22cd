"""A SPICE display channel as a broadcast Viewer: surfaces, the video stream, sharp refreshes.

The video stream covers the whole surface, but each frame is clipped (STREAM_CLIP)
to the area that changed in the last second, so a still part of the picture is
not repainted with lossy video. When the picture stops changing, the area that
did get video is sent again losslessly (DRAW_COPY of 32-bit BITMAPs, in bands so
that motion resuming is not stuck behind megabytes of pixels): still text ends
up sharp, and a blinking caret costs a few hundred bytes, not a full screen.

The changed area comes from the server's :class:`~saffron.spice.damage.DamageLog`,
a frame sink that is never ready and so hears the damage of every frame the
producer presents.

spice-html5 ignores stream clips and shows VP8 in a ``<video>`` above its canvas;
it is recognised by its missing COMPOSITE cap (every spice-gtk has it). For it,
every frame counts as full, and before a refresh a VP8 stream is destroyed so
the canvas underneath can be seen (a keyframe restarts it).

:class:`SpiceViewer` is the SPICE counterpart of the web front end's
``WebViewer``. It sees the server and its connection only through the ports of
:mod:`saffron.spice.ports`: it knows no socket, TLS or WebSocket, and leaves
the message layouts and their order to the display channel's state machine
(:mod:`saffron.spice.protocol.display_channel`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING

from ..display import Frame
from ..display import Rect as Area
from ..encoders.base import Packet
from ..ratecontrol import RateEstimator
from .ports import ConnectionPort, ScreenPort
from .protocol.channel import Acked, Event
from .protocol.display_channel import (
    CODEC_LABELS,
    DisplayChannel,
    PreferredCodecs,
    ReportReceived,
    StreamUnplayable,
    choose_codec,
)
from .protocol.wire import Clip, DisplayCap, Rect, StreamClip, StreamReport
from .session import Session, log_common

if TYPE_CHECKING:
    from ..broadcast import Stream

log = logging.getLogger("saffron.spice")

ACK_WINDOW = 10
"""The client acks every 10 messages and we stop at 20 unacked: a third of a second
of 60 fps video in flight, enough to ride out a hiccup on a LAN, small enough that a
slow link drops frames (and catches up on a keyframe) instead of queueing seconds."""

WRITE_BUFFER_LIMIT = 512 * 1024
"""Bytes waiting in our socket buffer above which the viewer counts as behind:
about 40 ms at 100 Mbit/s, and more than one large keyframe."""

GRANT_S = 0.05
"""How long a yes of ``writable`` holds while no frame has gone out (see there)."""

QUEUE_TARGET_S = 0.02
QUEUE_MIN_BYTES = 8 * 1024
"""Most bytes that may wait unsent (ours and the kernel's) when a new frame is taken:
what the link sends in 20 ms at this viewer's rate, at least 8 KiB. A frame then
waits behind at most that much; newer frames are skipped before they are encoded,
as for a full ACK window (which counts messages, not bytes: on a slow link 20
messages are seconds of video)."""

REFRESH_BAND_BYTES = 256 * 1024
"""A sharp refresh is sent in DRAW_COPY bands of at most this size (and about what
the link sends in 40 ms), each only while the send queue is within its budget, so
video can overtake the rest."""

PUMP_RETRY_S = 0.005
"""How soon the pump looks again while the send queue is above its budget."""

REFRESH_IDLE_S = 0.3
"""How long the picture must stand still (plus the video delay) before the sharp refresh."""

REFRESH_IDLE_OVERLAY_S = 1.0
"""The same for spice-html5 playing VP8, where a refresh means taking the <video> down
and restarting it on a keyframe: a hiccup of a busy producer must not cause that."""

CLIP_WINDOW_S = 1.0
"""How long an area stays in the stream clip after it changed: spice-gtk applies the
clip when it *shows* a frame, which can be a decode time plus the video delay after
it arrived, so the clip must still cover every frame that may be waiting."""

H264_FRAME_END = b"\x00\x00\x00\x01\x09\xf0" * 2
"""Two H.264 access unit delimiters put after every frame. spice-gtk feeds bare
``video/x-h264`` to h264parse, which can only end a frame when it has seen the
*next* complete NAL unit: without help each frame waits a whole frame interval
(33 ms at 30 fps) for the next. The first delimiter marks the frame's end and the
second terminates the first, so the frame is decoded at once. Each picture then
starts in the message before its own, and spice-gtk (which pairs pictures and
messages by timestamp) gives it that message's time: it is due on arrival. A
first message of delimiters only, right after STREAM_CREATE, keeps that pairing
whole, so no picture is left without a message (measured: 35 -> 1.4 ms, 30 fps)."""

MAX_CLIP_RECTS = 8
"""More changed rectangles than this are merged into their bounding box."""

REPORT_LATE_MS = 60
"""A report whose last frame came this much later than the video delay counts as
late for the rate cap below: the delay follows the frames' median trip (see
session.py), so smaller lateness is the ordinary spread of frame sizes."""

REPORT_CAP_FLOOR_KBPS = 500
REPORT_CAP_CUT = 0.8
REPORT_CAP_INTERVAL_S = 3.0
REPORT_CAP_RECOVER = 30
"""Stream reports that keep showing late frames (after the video delay was raised)
cap this viewer's rate at 80% of the stream's bitrate, at most every 3 s; 30 clean
reports in a row lift the cap again. The broadcast's rate control does the rest."""


def _merge(rects: list[Area]) -> list[Area]:
    unique = list(dict.fromkeys(r for r in rects if not r.empty))
    if len(unique) <= MAX_CLIP_RECTS:
        return unique
    box = unique[0]
    for r in unique[1:]:
        box = box.union(r)
    return [box]


def _wire(rect: Area) -> Rect:
    return Rect.of(rect.x, rect.y, rect.width, rect.height)


class SpiceViewer:
    """One SPICE client's display channel: a Viewer for the broadcast, with its codec."""

    def __init__(
        self,
        session: Session,
        conn: ConnectionPort,
        channel: DisplayChannel,
        screen: ScreenPort | None = None,
        screen_index: int = 0,
    ) -> None:
        self.session = session
        self.server = session.server
        self.conn = conn
        self.channel = channel
        self.screen: ScreenPort = screen if screen is not None else self.server
        """The producer's screen this channel shows (its display, broadcast and damage)."""
        self.screen_index = screen_index
        self.label = f"{session.label} display" + (f" {screen_index}" if screen_index else "")
        self.display = self.screen.display
        self.codec: str | None = None
        self.stream: Stream | None = None
        self.full_redraw = not channel.has_cap(DisplayCap.COMPOSITE)
        self._unplayable: set[str] = set()
        self._open = False
        self._missed = True
        self._dropped_seen = 0
        self._blocked = False
        self._blocked_at = 0.0
        self._granted_until = 0.0
        """When a frame was last refused: the producer waits for us, the picture may move."""
        self._waiting_key = True
        self._last_seq = 0
        self._history: deque[tuple[float, list[Area] | None]] = deque()
        self._clip: tuple[Area, ...] | None = None
        self._lossy: list[Area] = []
        self._lossy_full = False
        self._last_packet_at = 0.0
        """When the stream last brought a packet, sent or not (one dropped while waiting
        for a keyframe also says the picture moves): the sharp refresh waits from here."""
        self._refresh_timer: asyncio.TimerHandle | None = None
        self._bands: list[tuple[int, int, int, int]] = []
        self._band_frame: Frame | None = None
        self._pump_scheduled = False
        # rate control inputs: ACK round trips, and stream reports
        self.rate = RateEstimator(self.screen.broadcast.bitrate_kbps)
        self._flushes: deque[tuple[int, int, float, bool]] = deque()
        """(messages sent, bytes sent, when, whether the last was video) at each flush."""
        self._acked_bytes = 0
        self.report_cap_kbps: float | None = None
        self.last_report: StreamReport | None = None
        self._late_reports = 0
        self._clean_reports = 0
        self._last_cut = 0.0
        self.frames = 0
        self.bytes = 0
        self.refreshes = 0
        self.last_refresh: list[tuple[int, int, int, int]] = []

    # -- Viewer protocol (broadcast) ------------------------------------------------

    def writable(self, slack: int = 0) -> bool:
        """False while the ACK window or the socket buffer is full. Any thread may ask."""
        ok = self._open and not self.conn.congested and self.channel.window_open(slack)
        if ok and time.monotonic() >= self._granted_until:
            ok = self.conn.buffered() <= self.queue_budget()
            if ok:
                # The broadcast asks again as it takes the frame (and a frame in its
                # pipeline makes no bytes yet): a yes holds until a frame goes out,
                # or a refusal there would cost a keyframe.
                self._granted_until = time.monotonic() + GRANT_S
        if not ok:
            self._blocked = True
            self._blocked_at = time.monotonic()
        return ok

    def queue_budget(self) -> int:
        """Unsent bytes below which this viewer takes another frame (``QUEUE_TARGET_S``)."""
        rate = self.rate_kbps() or self.screen.broadcast.bitrate_kbps
        return max(QUEUE_MIN_BYTES, int(rate * 125 * QUEUE_TARGET_S))

    def rate_kbps(self) -> float | None:
        """What the ACKs say the link carries, capped if stream reports show late frames."""
        rate = self.rate.target_kbps
        cap = self.report_cap_kbps
        return rate if cap is None else min(rate, cap)

    def send_packet(self, packet: Packet) -> None:
        try:
            self._send_packet(packet)
        except Exception:
            log.exception("%s: failed to send a frame", self.label)
            self.conn.close("internal error while sending video", warn=True)

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        self.channel.set_ack(ACK_WINDOW)
        self._open = True
        width, height = self.display.width, self.display.height
        if self.display.enabled and width > 0 and height > 0:
            self._new_surface(width, height, initial=True)
        self._flush()
        self.rejoin()

    def stop(self) -> None:
        self._open = False
        self.screen.broadcast.leave(self)
        self.stream = None
        timer = self._refresh_timer
        if timer is not None:
            timer.cancel()

    def on_drain(self) -> None:
        self._ready_again()
        if self._bands:
            self._pump()

    def receive(self, data: bytes) -> None:
        events = self.channel.receive_data(data)
        log_common(self.label, events)
        self.handle(events)

    def handle(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Acked):
                self._on_ack(event.through)
                self._ready_again()
                if self._bands:
                    self._pump()
            elif isinstance(event, ReportReceived):
                self._on_report(event.report)
            elif isinstance(event, StreamUnplayable):
                log.warning(
                    "%s: the client cannot play %s; choosing another codec",
                    self.label,
                    CODEC_LABELS.get(event.codec, event.codec),
                )
                self._unplayable.add(event.codec)
                self.rejoin()
            elif isinstance(event, PreferredCodecs):
                self.rejoin()
        self._flush()

    def _flush(self, *, video: bool = False) -> None:
        """Send what the channel queued, noting when, for the round trips of ACKs."""
        self.conn.flush()
        count = self.channel.messages_sent
        if not self._flushes or self._flushes[-1][0] != count:
            self._flushes.append((count, self.channel.bytes_sent, time.monotonic(), video))
            if len(self._flushes) > 4 * ACK_WINDOW + 64:
                self._flushes.popleft()

    def _on_ack(self, through: int) -> None:
        """Round trip of the flush that carried the ``through``-th message, for the estimator.

        Only video counts: a sharp refresh's megabytes take their time on purpose,
        and must not look like a queue building up.
        """
        found: tuple[int, int, float, bool] | None = None
        while self._flushes and self._flushes[0][0] < through:
            self._flushes.popleft()
        if self._flushes:
            found = self._flushes[0]  # the flush that carried message number `through`
        if found is None:
            return
        _, total, sent_at, video = found
        size, self._acked_bytes = max(total - self._acked_bytes, 0), max(total, self._acked_bytes)
        if video:
            self.rate.on_ack((time.monotonic() - sent_at) * 1000, size)

    def _ready_again(self) -> None:
        if self._blocked and self.writable():
            self._blocked = False
            self.screen.broadcast.viewer_ready(self)

    # -- codec ------------------------------------------------------------------------------

    def rejoin(self) -> None:
        """Watch the best codec the client plays of those the server still encodes."""
        codecs = [c for c in self.server.codecs if c not in self._unplayable]
        codec = choose_codec(codecs, self.channel.client_caps, self.channel.preferred_codecs)
        if codec is None:
            self.conn.close(
                "the client plays none of the codecs this server still encodes "
                f"({', '.join(self.server.codecs) or 'none left'})",
                warn=True,
            )
            return
        if codec == self.codec:
            return
        if self.channel.stream is not None:
            self.channel.destroy_stream()
            self._flush()
        previous, self.codec = self.codec, codec
        self._waiting_key = True
        self._missed = True
        self._dropped_seen = 0
        self.stream = self.screen.broadcast.join(self, codec)
        client = ", ".join(CODEC_LABELS.get(c, c) for c in self.channel.codecs)
        if previous is None:
            log.info(
                "%s: sending %s video (the client plays %s)",
                self.session.label,
                CODEC_LABELS[codec],
                client,
            )
        else:
            log.info(
                "%s: switching video from %s to %s",
                self.session.label,
                CODEC_LABELS.get(previous, previous),
                CODEC_LABELS[codec],
            )

    # -- surfaces -----------------------------------------------------------------------------

    def on_resize(self, width: int, height: int) -> None:
        if self._open and self.channel.surface != (width, height) and width > 0 and height > 0:
            self._new_surface(width, height)
            self._flush()

    def _new_surface(self, width: int, height: int, *, initial: bool = False) -> None:
        """A primary surface of this size, showing the last frame if it fits, else black."""
        self._bands.clear()
        self.channel.create_surface(width, height)
        self.channel.fill(0, 0, width, height, 0)
        self.channel.mark()
        self._lossy, self._lossy_full = [], True
        frame = self.display.last_frame
        if frame is not None and (frame.width, frame.height) == (width, height):
            # The last picture, losslessly, in bands that the first video frame stops
            # (it paints the whole surface): on a LAN they are through before it comes;
            # on a slow link megabytes of pixels would hold the video back for seconds.
            self._start_bands(frame, [Area(0, 0, width, height)])
            self.server.loop.call_soon(self._pump)
        self._missed = True
        self._history.clear()
        self._clip = None
        if not initial:
            which = f" {self.screen_index}" if self.screen_index else ""
            log.info("%s: screen%s is now %dx%d", self.session.label, which, width, height)

    def _send_area(self, frame: Frame, x: int, y: int, width: int, height: int) -> None:
        rows = max(1, REFRESH_BAND_BYTES // max(width * 4, 1))
        for top in range(y, y + height, rows):
            h = min(rows, y + height - top)
            data = frame.pixels[top : top + h, x : x + width].tobytes()
            self.channel.draw_bitmap(x, top, width, h, data)

    # -- video ----------------------------------------------------------------------------------

    def _send_packet(self, packet: Packet) -> None:
        if not self._open or packet.codec != self.codec:
            return
        self._last_packet_at = time.monotonic()
        size = (packet.width, packet.height)
        if self.display.enabled and size != (self.display.width, self.display.height):
            # An old-size frame still in flight after a resize: never flip back to it.
            # The new size comes with a new encoder, which starts with a keyframe.
            self._drop(ask=False)
            return
        if self.channel.surface != size:
            self._new_surface(*size)
        stream = self.channel.stream
        fresh = False
        if stream is None or (stream.width, stream.height) != size or stream.codec != packet.codec:
            if not packet.keyframe:
                self._drop()
                return
            self.channel.create_stream(packet.codec, *size)
            self._clip = None  # a new stream starts unclipped
            if packet.codec == "h264":
                self.channel.stream_frame(H264_FRAME_END, self.session.mm_now())
            fresh = True
        if self._waiting_key and not packet.keyframe:
            self._drop()
            return
        self._waiting_key = False
        withheld = self._withheld()  # always: it also notes the count for next time
        full = fresh or self._missed or withheld
        self._missed = False
        now = time.monotonic()
        self._update_clip(packet, full, now)
        self._last_seq = max(self._last_seq, packet.seq)
        data = packet.data
        if packet.codec == "h264":
            data += H264_FRAME_END
        stamp = self.channel.stream_frame(data, self.session.mm_now())
        self._granted_until = 0.0
        self.frames += 1
        self.bytes += len(packet.data)
        if self._bands:  # motion again: stop the refresh; what it did not send stays lossy
            left = [Area(x, y, w, h) for x, y, w, h in self._bands]
            self._lossy = _merge([*self._lossy, *left])
            self._bands.clear()
        self._arm_refresh()
        self._flush(video=True)
        for listener in self.server.frame_listeners:
            listener(self.session.label, packet, stamp)

    def _withheld(self) -> bool:
        """Whether the broadcast kept packets from this viewer since the last one it sent.

        Those packets' changes were never drawn here, so the next frame is drawn whole.
        """
        seat = self.stream.seats.get(self) if self.stream is not None else None
        if seat is None:
            return True
        withheld, self._dropped_seen = seat.dropped != self._dropped_seen, seat.dropped
        return withheld

    def _drop(self, *, ask: bool = True) -> None:
        """A packet this client cannot use: wait for a keyframe, and ask for one."""
        self._missed = True
        self._waiting_key = True
        if ask and self.stream is not None:
            self.stream.request_keyframe()

    def _update_clip(self, packet: Packet, full: bool, now: float) -> None:
        """Clip the stream to what changed lately; remember what got lossy pixels."""
        if self.full_redraw:
            self._lossy_full = True
            return
        changed: list[Area] | None = None
        if not full:
            changed = self.screen.damage_log.between(self._last_seq, packet.seq - 1)
        self._history.append((now, changed))
        window = max(CLIP_WINDOW_S, 3 * self.session.latency_ms / 1000)
        while self._history and self._history[0][0] < now - window:
            self._history.popleft()
        rects: list[Area] = []
        clip: tuple[Area, ...] | None = ()
        for _, entry in self._history:
            if entry is None:
                clip = None
                break
            rects.extend(entry)
        if clip is not None:
            width, height = packet.width, packet.height
            clip = tuple(_merge([r.clip(width, height) for r in rects]))
        stream = self.channel.stream
        if clip != self._clip and stream is not None:
            wire_clip = Clip(None if clip is None else tuple(_wire(r) for r in clip))
            self.channel.send(StreamClip(stream.id, wire_clip))
            self._clip = clip
        if clip is None:
            self._lossy_full = True
        elif not self._lossy_full:
            self._lossy = _merge([*self._lossy, *clip])

    # -- the sharp refresh ---------------------------------------------------------------------

    def _idle_time(self) -> float:
        overlay = self.full_redraw and self.codec == "vp8"
        base = REFRESH_IDLE_OVERLAY_S if overlay else REFRESH_IDLE_S
        return base + self.session.latency_ms / 1000

    def _arm_refresh(self) -> None:
        if self._refresh_timer is None:
            self._refresh_timer = self.server.loop.call_later(self._idle_time(), self._refresh)

    def _refresh(self) -> None:
        self._refresh_timer = None
        if not self._open or not (self._lossy or self._lossy_full):
            return
        idle = self._idle_time()
        waited = time.monotonic() - max(self._last_packet_at, self._blocked_at)
        seat = self.stream.seats.get(self) if self.stream is not None else None
        if seat is not None and seat.dropped != self._dropped_seen:
            waited = 0.0  # the stream moves on without us (we wait for a keyframe): not still
        if waited < idle:
            self._refresh_timer = self.server.loop.call_later(idle - waited, self._refresh)
            return
        frame = self.display.last_frame
        surface = self.channel.surface
        if frame is None or surface is None or (frame.width, frame.height) != surface:
            return
        width, height = surface
        areas = [Area(0, 0, width, height)] if self._lossy_full else self._lossy
        stream = self.channel.stream
        if self.full_redraw and stream is not None and stream.codec == "vp8":
            # spice-html5 plays VP8 in a <video> over the canvas: take it away first.
            self.channel.destroy_stream()
            self._waiting_key = True
            self._flush()
        self._start_bands(frame, areas)
        self.refreshes += 1
        self.last_refresh = [(a.x, a.y, a.width, a.height) for a in areas]
        log.debug(
            "%s: sharp refresh of %s (%d bands, %d KiB)",
            self.label,
            ", ".join(f"{a.width}x{a.height}+{a.x}+{a.y}" for a in areas),
            len(self._bands),
            sum(w * h * 4 for _, _, w, h in self._bands) // 1024,
        )
        self._pump()

    def _start_bands(self, frame: Frame, areas: list[Area]) -> None:
        """Queue ``areas`` of ``frame`` as DRAW_COPY bands for the pump; they count as sharp."""
        self._band_frame = frame
        self._bands = []
        band_bytes = min(REFRESH_BAND_BYTES, max(QUEUE_MIN_BYTES, 2 * self.queue_budget()))
        for area in areas:
            area = area.clip(frame.width, frame.height)
            if area.empty:
                continue
            rows = max(1, band_bytes // (area.width * 4))
            for top in range(area.y, area.y + area.height, rows):
                h = min(rows, area.y + area.height - top)
                self._bands.append((area.x, top, area.width, h))
        self._lossy, self._lossy_full = [], False

    def _pump(self) -> None:
        """Send refresh bands while the socket and the ACK window have room to spare.

        Waiting for an ACK is only safe once everything counted as unacked has been
        sent: the client acks every ``window`` messages *received*.
        """
        self._pump_scheduled = False
        self._flush()
        frame = self._band_frame
        while self._bands and frame is not None and self._open:
            window = self.channel.ack_window
            if self.conn.buffered() > self.queue_budget() or (
                window and self.channel.unacked >= window
            ):
                if not self._pump_scheduled:
                    self._pump_scheduled = True
                    self.server.loop.call_later(PUMP_RETRY_S, self._pump)
                return
            x, y, w, h = self._bands.pop(0)
            self._send_area(frame, x, y, w, h)
            self._flush()
        if not self._bands:
            self._band_frame = None

    # -- reports and rate control ----------------------------------------------------------------

    def _on_report(self, report: StreamReport) -> None:
        """Keep the numbers; late frames raise the video delay, then cap this viewer's rate."""
        self.last_report = report
        late = report.last_frame_delay < -REPORT_LATE_MS
        if not self.full_redraw:  # spice-html5 keeps its own clock: moving ours does nothing
            self.session.on_report(report, late_frames_dropped=self.codec == "mjpeg")
        stream = self.stream
        if stream is None:
            return
        now = time.monotonic()
        if late:
            self._clean_reports = 0
            self._late_reports += 1
            if self._late_reports >= 2 and now - self._last_cut >= REPORT_CAP_INTERVAL_S:
                cap = max(REPORT_CAP_FLOOR_KBPS, stream.bitrate_kbps * REPORT_CAP_CUT)
                if self.report_cap_kbps is None or cap < self.report_cap_kbps:
                    log.info(
                        "%s: frames keep arriving late; asking for %d kbit/s or less",
                        self.session.label,
                        cap,
                    )
                    self.report_cap_kbps = cap
                self._last_cut = now
        else:
            self._late_reports = 0
            self._clean_reports += 1
            if self._clean_reports >= REPORT_CAP_RECOVER and self.report_cap_kbps is not None:
                self.report_cap_kbps = None
                self._clean_reports = 0

    def stats(self) -> dict[str, object]:
        report = self.last_report
        return {
            "codec": self.codec,
            "frames": self.frames,
            "bytes": self.bytes,
            "refreshes": self.refreshes,
            "last_refresh": self.last_refresh,
            "surface": self.channel.surface,
            "latency_ms": self.session.latency_ms,
            "rate_kbps": self.rate_kbps(),
            "bitrate_kbps": self.stream.bitrate_kbps if self.stream else None,
            "report": None
            if report is None
            else {
                "frames": report.num_frames,
                "drops": report.num_drops,
                "last_frame_delay": report.last_frame_delay,
            },
        }
