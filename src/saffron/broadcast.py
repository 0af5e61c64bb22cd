"""Fan-out: one encode per codec, handed to every viewer of that codec.

Each codec has a :class:`Stream`: a FrameSlot, an encoder and a worker thread.
A stream is *ready* for a frame only while some viewer can take one more, so
when every viewer is behind, frames are skipped before they are copied or
encoded. A viewer that misses a packet other viewers got (it was full when
the packet was published) waits for the next keyframe, which is requested for
it at a limited rate so one slow viewer cannot flood the others with them;
a joining viewer's keyframe is limited the same way, so a viewer that joins
again and again cannot either. A stream nobody watches any more is closed a
while later (``IDLE_STREAM_CLOSE_S``), its encoder and threads with it.

Threads: producers call ``offer``/``damage`` from anywhere; the worker encodes;
everything that touches viewers runs on the asyncio loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from .display import Display, Frame, Rect
from .encoders.base import Encoder, EncoderError, Packet
from .encoders.registry import create_encoder
from .memory import trim
from .ratecontrol import INTERVAL, choose_bitrate, significant
from .slot import FifoSlot, FrameSlot, Handoff
from .still import TileCache

log = logging.getLogger("saffron.broadcast")

BITRATE_CHANGE_INTERVAL = 1.0
"""Seconds between bitrate changes: each reopens the encoder with a keyframe."""

KEYFRAME_MIN_INTERVAL = 0.5
"""Seconds between keyframes asked for by joining or lagging viewers: a keyframe
costs several times a normal frame, so a viewer that keeps falling behind, or one
that joins again and again (any page may, view-only ones too), must not make every
other viewer pay for one on every frame. A request inside the interval is not
dropped: it shares the next keyframe, at the latest when the interval ends, so a
new viewer still sees a picture within half a second."""

IDLE_STREAM_CLOSE_S = 10.0
"""Seconds a stream keeps its encoder and threads after its last viewer left.
Long enough for a page that reloads, a SPICE client that reconnects or a viewer
that switches codecs and back to find the encoder still open (opening one takes
tens of milliseconds, and its first frame is a keyframe); short enough that the
encoders of codecs nobody watches any more (a few MB and several threads each)
are not kept for the life of the process."""


class Viewer(Protocol):
    """What a front end's connection offers the broadcast."""

    label: str

    def writable(self) -> bool:
        """True while one more packet fits in this viewer's send window. Thread-safe."""
        ...

    def send_packet(self, packet: Packet) -> None:
        """Queue a packet for sending; never blocks. Called on the event loop."""
        ...

    def rate_kbps(self) -> float | None:
        """The bitrate this viewer's link sustains, if it knows (see ratecontrol)."""
        ...


@dataclass
class Seat:
    """A viewer's place in a stream."""

    viewer: Viewer
    expected: int = -1
    """Index of the next packet this viewer can decode; -1: waits for a keyframe."""
    sent: int = 0
    dropped: int = 0


EncoderFactory = Callable[[str, int, int, int, int, int], Encoder]


class Stream:
    """One codec's encoder, fed by the display, read by its viewers."""

    def __init__(
        self,
        codec: str,
        display: Display,
        loop: asyncio.AbstractEventLoop,
        *,
        fps: int,
        bitrate_kbps: int,
        fifo: bool = False,
        adapt: bool = True,
        encoder_factory: EncoderFactory = create_encoder,
        on_failure: Callable[[Stream, str], None] | None = None,
    ) -> None:
        self.codec = codec
        self.display = display
        self.loop = loop
        self.fps = fps
        self.max_kbps = bitrate_kbps
        self.bitrate_kbps = bitrate_kbps
        self._last_rate_change = 0.0
        self.slot: FrameSlot = FifoSlot() if fifo else FrameSlot()
        self.seats: dict[Viewer, Seat] = {}
        self._viewers: tuple[Viewer, ...] = ()  # a snapshot the producer's thread can read
        self.encoder: Encoder | None = None
        self.backend = ""
        self._factory = encoder_factory
        self._fallbacks = 0
        self._on_failure = on_failure
        self._index = 0
        self._want_key = True
        self._last_key_request = -KEYFRAME_MIN_INTERVAL
        self._key_timer: asyncio.TimerHandle | None = None
        """The one pending retry of a keyframe request (requests meanwhile share it)."""
        self._last_frame: Frame | None = None
        self._closed = False
        # statistics
        self.frames_encoded = 0
        self.bytes_encoded = 0
        self.encode_ms_total = 0.0
        self._admitted: dict[int, frozenset[Viewer]] = {}
        self._admitted_lock = threading.Lock()
        self._handoff = Handoff()
        self._thread = threading.Thread(target=self._run, name=f"encode-{codec}", daemon=True)
        self._thread.start()
        self._converter = threading.Thread(
            target=self._convert, name=f"convert-{codec}", daemon=True
        )
        self._converter.start()
        self.adapt = adapt
        self._adapt_handle = loop.call_later(INTERVAL, self._adapt)

    # -- FrameSink (producer side, any thread) ---------------------------------

    @property
    def ready(self) -> bool:
        if self._closed:
            return False
        if self.slot.fifo:
            return bool(self._viewers)
        return any(viewer.writable() for viewer in self._viewers)

    def offer(self, frame: Frame) -> None:
        # Who could take this frame now: they get it even if their window fills
        # while it is converted and encoded (up to three frames later).
        admitted = frozenset(v for v in self._viewers if v.writable())
        with self._admitted_lock:
            self._admitted[frame.seq] = admitted
        self.slot.put(frame)

    def damage(self, rect: Rect) -> None:
        self.slot.add_damage(rect)

    # -- viewers (event loop) --------------------------------------------------

    def add(self, viewer: Viewer) -> None:
        self.seats[viewer] = Seat(viewer)
        self._viewers = tuple(self.seats)
        if self.adapt and self.frames_encoded == 0:
            # A new stream starts at what its viewers' links are thought to carry (their
            # estimates start low, see ratecontrol), not at the maximum: its first
            # keyframe must not take seconds on a slow link.
            rates = [r for v in self._viewers if (r := v.rate_kbps()) is not None]
            self.set_bitrate(choose_bitrate(rates, self.max_kbps))
        self.request_keyframe()

    def remove(self, viewer: Viewer) -> None:
        self.seats.pop(viewer, None)
        self._viewers = tuple(self.seats)

    def viewer_ready(self, viewer: Viewer) -> None:
        """A viewer's window opened again: if it lost its place, get it a keyframe."""
        seat = self.seats.get(viewer)
        if seat is not None and seat.expected < 0:
            self.request_keyframe()

    def request_keyframe(self) -> None:
        """A keyframe now, or if one was asked for within ``KEYFRAME_MIN_INTERVAL``, when
        that ends (unless one came meanwhile): joins and lagging viewers are coalesced."""
        if self._closed:
            return
        now = time.monotonic()
        wait = self._last_key_request + KEYFRAME_MIN_INTERVAL - now
        if wait > 0:
            self._retry_in(wait)
            return
        self._last_key_request = now
        self._want_key = True
        # A still picture produces no new frame to carry the keyframe: re-encode
        # the last one, and ask the producer for a fresh full picture as well.
        if not self.slot.pending and self._last_frame is not None:
            self.slot.put(self._last_frame)
        self.display.request_refresh()

    def _retry_in(self, delay: float) -> None:
        if self._key_timer is None:
            self._key_timer = self.loop.call_later(delay, self._retry_keyframe)

    def _retry_keyframe(self) -> None:
        """Only for a waiting viewer that can take the keyframe now: one that cannot (a
        page that stopped acknowledging) would make everyone else pay for one every
        interval; it asks again through ``viewer_ready`` when it can."""
        self._key_timer = None
        if any(s.expected < 0 and s.viewer.writable() for s in self.seats.values()):
            self.request_keyframe()

    def set_bitrate(self, kbps: int) -> None:
        self.bitrate_kbps = kbps
        encoder = self.encoder
        if encoder is not None:
            encoder.set_bitrate(kbps)

    def _adapt(self) -> None:
        """Follow the viewers' links (see ratecontrol), a change at most every second."""
        if self._closed:
            return
        self._adapt_handle = self.loop.call_later(INTERVAL, self._adapt)
        if not self.adapt:
            return
        rates = [r for v in self._viewers if (r := v.rate_kbps()) is not None]
        target = choose_bitrate(rates, self.max_kbps)
        now = time.monotonic()
        if (
            significant(self.bitrate_kbps, target)
            and now - self._last_rate_change >= BITRATE_CHANGE_INTERVAL
        ):
            log.debug("%s bitrate %d -> %d kbit/s", self.codec, self.bitrate_kbps, target)
            self._last_rate_change = now
            self.set_bitrate(target)

    def _publish(self, packet: Packet, index: int) -> None:
        with self._admitted_lock:
            admitted = self._admitted.pop(packet.seq, frozenset())
            for seq in [s for s in self._admitted if s < packet.seq]:
                del self._admitted[seq]  # frames replaced before they were encoded
        for seat in list(self.seats.values()):
            if not packet.keyframe and seat.expected != index:
                seat.dropped += 1
                continue
            # A plain FIFO, for comparison only, queues everything for everyone.
            fits = self.slot.fifo or seat.viewer in admitted or seat.viewer.writable()
            if not fits:
                seat.dropped += 1
                seat.expected = -1
                continue
            seat.viewer.send_packet(packet)
            seat.sent += 1
            seat.expected = index + 1
        if any(seat.expected < 0 for seat in self.seats.values()):
            self._retry_in(KEYFRAME_MIN_INTERVAL)

    # -- the worker thread -----------------------------------------------------

    def _convert(self) -> None:
        """Stage one: take the newest frame and convert it while the last one encodes."""
        while not self._closed:
            frame = self.slot.take(0.5)
            if frame is None:
                continue
            prepared: object = None
            enc = self.encoder
            if enc is not None and (enc.width, enc.height) == (frame.width, frame.height):
                try:
                    prepared = enc.prepare(frame)
                except Exception:  # the encoder may be replaced meanwhile; encode() redoes it
                    prepared = None
            if not self._handoff.put((frame, prepared)):
                return

    def _run(self) -> None:
        """Stage two: encode and publish."""
        while not self._closed:
            item = self._handoff.take(0.5)
            if item is None:
                continue
            frame, prepared = item
            try:
                packet = dataclasses.replace(self._encode(frame, prepared), damage=frame.damage)
            except EncoderError as exc:
                self._fail(str(exc))
                continue
            index = self._index
            self._index += 1
            self._last_frame = frame
            self.frames_encoded += 1
            self.bytes_encoded += len(packet.data)
            self.encode_ms_total += packet.encode_ms
            try:
                self.loop.call_soon_threadsafe(self._publish, packet, index)
            except RuntimeError:  # the loop is closed: we are shutting down
                return

    def _encode(self, frame: Frame, prepared: object = None) -> Packet:
        enc = self.encoder
        if enc is None or (enc.width, enc.height) != (frame.width, frame.height):
            prepared = None
            if enc is not None:
                enc.close()
            enc = self._factory(
                self.codec, frame.width, frame.height, self.fps, self.bitrate_kbps, self._fallbacks
            )
            self.encoder, self.backend = enc, enc.backend
            log.info(
                "encoding %s at %dx%d with %s", self.codec, frame.width, frame.height, enc.backend
            )
            self._want_key = True
        key, self._want_key = self._want_key, False
        return enc.encode(frame, keyframe=key, prepared=prepared)

    def _fail(self, reason: str) -> None:
        """An encoder broke: try the next backend of the codec, else give up the stream."""
        if self._closed:
            return  # closed under a frame being encoded: not the codec's fault
        log.warning("%s encoder failed: %s", self.codec, reason)
        if self.encoder is not None:
            self.encoder.close()
        self.encoder = None
        self._fallbacks += 1
        try:
            probe_frame = self._last_frame
            if probe_frame is not None:
                self._encode(probe_frame)
                return
        except EncoderError:
            pass
        self._closed = True
        if self._on_failure is not None:
            self.loop.call_soon_threadsafe(self._on_failure, self, reason)

    def close(self) -> None:
        self.stop()
        self.finish()

    def stop(self) -> None:
        """Take no more frames and wake the worker threads; on the event loop, never waits."""
        self._closed = True
        self._adapt_handle.cancel()
        if self._key_timer is not None:
            self._key_timer.cancel()
            self._key_timer = None
        self.slot.close()
        self._handoff.close()

    def finish(self) -> None:
        """After ``stop``: wait for the worker threads and free the encoder (any thread)."""
        self._converter.join(timeout=2)
        self._thread.join(timeout=2)
        if self.encoder is not None:
            self.encoder.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def last_frame(self) -> Frame | None:
        """The frame of the last packet encoded (what a still picture's viewers show)."""
        return self._last_frame


def _finish(stream: Stream) -> None:
    """Free a stopped stream's encoder, and give its memory back to the system now rather
    than at the next periodic trim (an encoder's buffers are tens of MB at 1280x720)."""
    stream.finish()
    trim()


class Broadcast:
    """All streams of one display: the front ends' single entry point."""

    def __init__(
        self,
        display: Display,
        loop: asyncio.AbstractEventLoop,
        *,
        fps: int = 60,
        bitrate_kbps: int = 8000,
        fifo: bool = False,
        adapt: bool = True,
        encoder_factory: EncoderFactory = create_encoder,
    ) -> None:
        self.display = display
        self.adapt = adapt
        self.loop = loop
        self.fps = fps
        self.bitrate_kbps = bitrate_kbps
        self.fifo = fifo
        self.streams: dict[str, Stream] = {}
        self._factory = encoder_factory
        self._where: dict[Viewer, Stream] = {}
        self._idle: dict[Stream, asyncio.TimerHandle] = {}
        """Streams without viewers, each with the timer that closes it."""
        self._closers: list[threading.Thread] = []
        self.failure_listeners: list[Callable[[str, str, bool], None]] = []
        """Told (on the loop) when a codec's encoder broke: (codec, reason, whether it is
        news: a viewer may have joined a new stream of a codec already broken)."""
        self.failed: dict[str, str] = {}
        """Codecs whose encoder broke, with why: the one record every front end reads."""
        self.tiles = TileCache()
        """Still tiles for the sharp refresh (see still.py), encoded once for every viewer."""

    def working(self, codecs: Sequence[str]) -> list[str]:
        """``codecs``, in their order, less those whose encoder broke."""
        return [c for c in codecs if c not in self.failed]

    def call_soon(self, fn: Callable[..., None], *args: object) -> None:
        """Run ``fn(*args)`` on the loop, from any thread (a producer's); nothing once the
        loop has closed (Saffron is stopping and nobody is left to tell)."""
        if self.loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            self.loop.call_soon_threadsafe(fn, *args)

    def join(self, viewer: Viewer, codec: str) -> Stream:
        stream = self.streams.get(codec)
        if stream is None or stream.closed:
            stream = Stream(
                codec,
                self.display,
                self.loop,
                fps=self.fps,
                bitrate_kbps=self.bitrate_kbps,
                fifo=self.fifo,
                adapt=self.adapt,
                encoder_factory=self._factory,
                on_failure=self._stream_failed,
            )
            self.streams[codec] = stream
            self.display.add_sink(stream)
        self.leave(viewer)
        idle = self._idle.pop(stream, None)
        if idle is not None:
            idle.cancel()  # a viewer came back in time: the encoder stays
        stream.add(viewer)
        self._where[viewer] = stream
        return stream

    def leave(self, viewer: Viewer) -> None:
        stream = self._where.pop(viewer, None)
        if stream is not None:
            stream.remove(viewer)
            if not stream.seats and stream not in self._idle:
                self._idle[stream] = self.loop.call_later(
                    IDLE_STREAM_CLOSE_S, self._close_idle, stream
                )

    def _close_idle(self, stream: Stream) -> None:
        """Nobody came back: close the stream's encoder and threads (in a thread of its own,
        as a worker may be in the middle of a frame)."""
        self._idle.pop(stream, None)
        if stream.seats:
            return
        if self.streams.get(stream.codec) is stream:
            del self.streams[stream.codec]
        self.display.remove_sink(stream)
        stream.stop()
        log.info(
            "closing the %s encoder: nobody watched it for %.0f s",
            stream.codec,
            IDLE_STREAM_CLOSE_S,
        )
        self._closers = [t for t in self._closers if t.is_alive()]
        closer = threading.Thread(
            target=_finish, args=(stream,), name=f"close-{stream.codec}", daemon=True
        )
        closer.start()
        self._closers.append(closer)

    def viewer_ready(self, viewer: Viewer) -> None:
        stream = self._where.get(viewer)
        if stream is not None:
            stream.viewer_ready(viewer)

    def stream_of(self, viewer: Viewer) -> Stream | None:
        return self._where.get(viewer)

    def _stream_failed(self, stream: Stream, reason: str) -> None:
        self.display.remove_sink(stream)
        idle = self._idle.pop(stream, None)
        if idle is not None:
            idle.cancel()
        if self.streams.get(stream.codec) is stream:
            del self.streams[stream.codec]
        news = stream.codec not in self.failed
        self.failed.setdefault(stream.codec, reason)
        for listener in list(self.failure_listeners):
            listener(stream.codec, reason, news)

    def close(self) -> None:
        for idle in self._idle.values():
            idle.cancel()
        self._idle.clear()
        for stream in self.streams.values():
            self.display.remove_sink(stream)
            stream.close()
        self.streams.clear()
        for closer in self._closers:
            closer.join(timeout=5)
        self._closers.clear()
        self.tiles.close()
