"""One browser page as a viewer of the broadcast: its frames out, its input and acks in.

Its send window is counted in frames the page has not yet acknowledged as decoded,
so a page on a slow link (or a slow decoder) simply stops being offered frames
until it catches up, and never builds a queue.

A page that says so (``"sharp": true`` in its ``start``) gets each frame's damage
and, once part of its picture has stood still for ``REFRESH_IDLE_S``, that part
again as still tiles at full quality (see saffron.still): encoded once for all
pages in the broadcast's worker threads, paced at this page's rate and sent only
while no video waits, so the next frame never queues behind more than one tile.

It knows the page's wire format
(web/protocol.py) and what it needs of its server (:class:`PageServer`), not HTTP.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

from aiohttp import WSMsgType, web

from ..audio import AudioBroadcast, AudioPacket
from ..broadcast import Broadcast, Stream
from ..clipboard import ClipboardBroadcast, ClipboardTooBig
from ..display import Button, Display, Frame, Rect, SizeRequest
from ..encoders.base import Packet
from ..mic import MicInput
from ..net.ratelimit import TokenBucket, TooManyMessages, message_cost
from ..ratecontrol import RateEstimator
from ..still import StillRegions, Tile
from .client import client_of
from .keys import scancode_for
from .protocol import (
    CLIPBOARD_PREFIX,
    CLIPBOARD_RATE,
    MAX_CLIPBOARD_MESSAGE,
    MAX_TEXT_MESSAGE,
    ProtocolError,
    pack_audio,
    pack_tile,
    pack_video,
    unpack_mic,
)

log = logging.getLogger("saffron.web")

WINDOW_FRAMES = 3
"""Frames sent but not yet decoded by the page. Three cover a LAN round trip at
60 fps; more would only let a queue (latency) build up on a slow link."""

WINDOW_BYTES = 4 << 20
"""Bytes waiting in the socket's buffer beyond which the page counts as behind,
whatever it has acknowledged: a guard against a page that acks but cannot read."""

STATS_INTERVAL = 1.0

REFRESH_IDLE_S = 0.15
"""How long a lossy tile must stand still before it is sent again at full quality: longer
than the gaps of motion (33 ms at 30 fps, a key repeat), short enough that the refresh
is drawn within half a second of the picture stopping."""

REFRESH_BUDGET_S = 0.25
"""A refresh is lossless if it fits this much of the page's rate; beyond, the tiles
PNG saves least on go as JPEG q98 4:4:4 (saffron.still.choose_formats)."""

TILE_BUFFER_BYTES = 16 * 1024
"""A still tile is sent only while the socket's buffer holds less than this."""

TILE_BURST_S = 0.05
"""Still tiles are paced at the page's rate with a burst of this many seconds of it."""

AUDIO_BUFFER_BYTES = 64 * 1024
"""A sound packet is dropped, never queued, while this much waits in the socket's buffer
(video and tiles included): sound that waited behind a full link would come ever later."""

MAX_PENDING_MESSAGES = 256
"""JSON messages queued for a page that is not reading them (pongs it asked for,
cursor shapes): past this the page is closed rather than let memory grow."""


class PageServer(Protocol):
    """What a page's viewer uses of the web server."""

    display: Display
    broadcast: Broadcast
    audio: AudioBroadcast | None
    mic: MicInput | None
    clipboard: ClipboardBroadcast | None
    view_only: bool

    @property
    def codecs(self) -> list[str]: ...

    def hello(self, viewer: WebViewer | None = None) -> dict[str, Any]: ...

    def screen(self, index: int) -> tuple[Display, Broadcast]:
        """Screen ``index``'s display and broadcast (0: ``display``, ``broadcast``)."""
        ...


class WebViewer:
    """One browser page: a Viewer for the broadcast and the page's input."""

    def __init__(
        self,
        server: PageServer,
        ws: web.WebSocketResponse,
        request: web.Request,
        view_only: bool,
        screen: int = 0,
    ) -> None:
        self.server = server
        self.screen = screen
        """Which of the producer's screens this page shows (``?screen=N``)."""
        self.display, self.broadcast = server.screen(screen)
        self.view_only = view_only or server.view_only
        self.ws = ws
        self.transport = request.transport
        peername = self.transport.get_extra_info("peername") if self.transport else request.remote
        client = client_of(request)
        self.label = f"web viewer {client.peer}" + (f" (screen {screen})" if screen else "")
        self.host = client.address
        self.port = peername[1] if isinstance(peername, tuple) and len(peername) > 1 else "?"
        self.codec = ""
        self.stream: Stream | None = None
        self.closed = False
        self._next = 0
        self._acked = -1
        self._queue: asyncio.Queue[tuple[bytes, str]] = asyncio.Queue()
        """Messages for the send loop: (data, "video", "tile" or "audio")."""
        self._videos_queued = 0
        self._tile_bytes_queued = 0
        self._tile_bytes_since_frame = 0
        self._refused_at = 0.0
        """When this page last could not take a frame (its window or socket full)."""
        self._sent: dict[int, tuple[int, float, int]] = {}
        """Frame number -> (capture time, send time, size), until acknowledged."""
        self.rate = RateEstimator(self.broadcast.bitrate_kbps)
        self.latency_ms = 0.0
        self.frames_acked = 0
        self.page_stats: dict[str, Any] = {}
        self._tasks: set[asyncio.Future[None]] = set()
        self._messages = TokenBucket()
        """What the page may still send (see net.ratelimit): past it, it is closed."""
        self._clipboard_chars = TokenBucket(
            rate=CLIPBOARD_RATE, burst=MAX_CLIPBOARD_MESSAGE, first=MAX_CLIPBOARD_MESSAGE
        )
        """Clipboard text the page may still send (apart from the messages' bucket)."""
        self.end = ""
        """Why the server closed this page's socket, if it did."""
        self._backend_told = ""
        """The encoder the page was last told of: a new one is told with its first frame,
        not up to a second later (a still picture's page would show "encoder –")."""
        self.sharp = False
        """The page draws still tiles over its video (it said so in ``start``)."""
        self.still = StillRegions()
        self._fresh = True
        self._dropped_seen = 0
        self._last_seq = -1
        self._refresh_timer: asyncio.TimerHandle | None = None
        self._refreshing: asyncio.Future[None] | None = None
        self._tiles: deque[tuple[tuple[int, int], int, Tile]] = deque()
        self._tiles_size = (0, 0)
        """The picture size the queued tiles belong to."""
        self._pump_timer: asyncio.TimerHandle | None = None
        self._tokens = 0.0
        self._tokens_at = time.monotonic()
        self.tiles_sent = 0
        self.tile_bytes = 0
        self.refreshes = 0
        self.listening = False
        """The page turned its sound on (it is one of the sound's viewers)."""
        self.audio_sent = 0
        self.audio_bytes = 0
        self.speaking = False
        """The page's microphone is on (its packets go to the guest while it records)."""
        self.mic_refused = 0
        self.mic_lost = 0
        self._last_mic_seq = -1

    # -- Viewer ---------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return self._next - 1 - self._acked

    def writable(self) -> bool:
        transport = self.transport
        ok = not self.closed and self.in_flight < WINDOW_FRAMES
        ok = ok and (transport is None or transport.get_write_buffer_size() < WINDOW_BYTES)
        if not ok:
            self._refused_at = time.monotonic()  # any thread: the producer asks too
        return ok

    def rate_kbps(self) -> float | None:
        return self.rate.target_kbps

    def send_packet(self, packet: Packet) -> None:
        n = self._next
        self._next += 1
        now = time.monotonic()
        # The tiles queued since the last frame go through the link ahead of this one:
        # its acknowledgement says they were delivered too (else a refresh would read
        # as a link carrying only the video's few bytes, and cut the rate to them).
        size = len(packet.data) + self._tile_bytes_since_frame
        self._tile_bytes_since_frame = 0
        self._sent[n] = (packet.capture_us, now, size)
        self._spend(len(packet.data), now)
        if self.stream is not None and self.stream.backend != self._backend_told:
            stats = self._stats()
            if stats is not None:
                self.notify(stats)
        if not self.sharp:
            self._put_video(pack_video(packet, n))
            return
        seat = self.stream.seats.get(self) if self.stream is not None else None
        dropped = seat.dropped if seat is not None else -1
        # Frames this page missed changed what nobody told it about: all of it is unknown.
        known = not self._fresh and dropped == self._dropped_seen
        self._fresh, self._dropped_seen = False, dropped
        damage = packet.damage if known else None
        self.still.on_video(damage, packet.width, packet.height, now)
        self._last_seq = packet.seq
        self._put_video(pack_video(packet, n, damage))
        self._arm_refresh()

    def _put_video(self, data: bytes) -> None:
        self._videos_queued += 1
        self._queue.put_nowait((data, "video"))

    # -- AudioViewer --------------------------------------------------------------

    def audio_writable(self) -> bool:
        if self.closed:
            return False
        transport = self.transport
        buffered = transport.get_write_buffer_size() if transport is not None else 0
        return buffered + self._tile_bytes_queued < AUDIO_BUFFER_BYTES

    def send_audio(self, packet: AudioPacket) -> None:
        self.audio_sent += 1
        self.audio_bytes += len(packet.data)
        self._queue.put_nowait((pack_audio(packet), "audio"))

    def audio_playing(self, playing: bool) -> None:
        self.notify({"type": "audio", "playing": playing})

    # -- ClipboardViewer --------------------------------------------------------------

    def clipboard_changed(self, text: str) -> None:
        self.notify({"type": "clipboard", "text": text})

    # -- the connection -------------------------------------------------------

    async def run(self) -> None:
        sender = asyncio.create_task(self._send_loop())
        ticker = asyncio.create_task(self._stats_loop())
        try:
            await self._send_json(self.server.hello(self))
            clipboard = self.server.clipboard
            if clipboard is not None and clipboard.available and not self.view_only:
                clipboard.add_viewer(self)  # view-only: neither reads nor writes it
            async for msg in self.ws:
                if msg.type == WSMsgType.TEXT:
                    self._handle(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    self._on_binary(msg.data)
                elif msg.type == WSMsgType.ERROR:
                    self.end = f"broken WebSocket: {self.ws.exception() or msg.data}"
                    log.warning("closing %s: %s", self.label, self.end)
                    break
        except (ProtocolError, TooManyMessages) as exc:
            self.end = str(exc)
            log.warning("closing %s: %s", self.label, exc)
            if isinstance(exc, TooManyMessages) and self.transport is not None:
                # Nothing more of a flood is read, not even while the close handshake
                # waits (until CLOSE_GRACE_S): here it stops costing the other viewers.
                self.transport.pause_reading()
            await self.ws.close(code=1008, message=str(exc)[:120].encode())
        finally:
            self.closed = True
            self._stop_refresh()
            sender.cancel()
            ticker.cancel()
            for task in list(self._tasks):
                task.cancel()
            self.broadcast.leave(self)
            if self.server.audio is not None:
                self.server.audio.remove_viewer(self)
            if self.server.mic is not None:
                self.server.mic.release(self)
            if self.server.clipboard is not None:
                self.server.clipboard.remove_viewer(self)

    async def _send_loop(self) -> None:
        while True:
            data, kind = await self._queue.get()
            try:
                await self.ws.send_bytes(data)
            except (ConnectionError, RuntimeError):
                self.closed = True
                return
            if kind == "tile":
                self._tile_bytes_queued -= len(data)
            elif kind == "video":
                self._videos_queued -= 1
            if self._tiles and self._pump_timer is None:
                self._pump()

    async def _send_json(self, obj: dict[str, Any]) -> None:
        if not self.ws.closed:
            try:
                await self.ws.send_str(json.dumps(obj))
            except (ConnectionError, RuntimeError):
                self.closed = True  # the page went away meanwhile; run() ends it

    def notify(self, obj: dict[str, Any]) -> None:
        """Queue a JSON message from a synchronous context on the loop."""
        if self.closed:
            return
        if len(self._tasks) >= MAX_PENDING_MESSAGES:
            self.closed = True
            self.end = f"it does not read what it is sent ({len(self._tasks)} messages waiting)"
            log.warning("closing %s: %s", self.label, self.end)
            task = asyncio.ensure_future(self._close(1008, "not reading"))
        else:
            task = asyncio.ensure_future(self._send_json(obj))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close(self, code: int, reason: str) -> None:
        await self.ws.close(code=code, message=reason.encode())

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            stats = self._stats()
            if stats is not None:
                await self._send_json(stats)

    def _stats(self) -> dict[str, Any] | None:
        stream = self.stream
        if stream is None:
            return None
        seat = stream.seats.get(self)
        encoded = max(stream.frames_encoded, 1)
        self._backend_told = stream.backend
        return {
            "type": "stats",
            "dropped": seat.dropped if seat else 0,
            "backend": stream.backend,
            "targetKbps": stream.bitrate_kbps,
            "encodeMs": round(stream.encode_ms_total / encoded, 2),
            "serverLatencyMs": round(self.latency_ms, 1),
            "stillTiles": self.tiles_sent,
            "stillBytes": self.tile_bytes,
            "resizable": self.display.resizable.value,
        }

    # -- messages from the page -----------------------------------------------

    def _handle(self, text: str) -> None:
        if len(text) > MAX_TEXT_MESSAGE:
            if not text.startswith(CLIPBOARD_PREFIX):
                raise ProtocolError(f"message of {len(text)} characters is too long")
            if len(text) > MAX_CLIPBOARD_MESSAGE:
                raise ProtocolError(f"clipboard message of {len(text)} characters is too long")
            if not self._clipboard_chars.take(len(text)):
                raise TooManyMessages(
                    f"it pasted more than {CLIPBOARD_RATE:.0f} characters a second"
                )
        if not self._messages.take(message_cost(min(len(text), MAX_TEXT_MESSAGE))):
            raise TooManyMessages(self._messages.exceeded())
        try:
            msg = json.loads(text)
        except ValueError as exc:
            raise ProtocolError(f"message is not JSON: {exc}") from None
        if not isinstance(msg, dict):
            raise ProtocolError("message is not a JSON object")
        kind = msg.get("type")
        handler = self._HANDLERS.get(kind) if isinstance(kind, str) else None
        if handler is None:
            raise ProtocolError(f"unknown message type {kind!r}")
        try:
            handler(self, msg)
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"bad {kind} message: {exc!r}") from None

    def _on_start(self, msg: dict[str, Any]) -> None:
        codec = str(msg["codec"])
        if codec not in self.server.codecs:
            raise ProtocolError(f"codec {codec!r} is not offered here ({self.server.codecs})")
        if codec == self.codec and self.broadcast.stream_of(self) is not None:
            return  # already watching it: a repeated start must not cost everyone a keyframe
        self.codec = codec
        self.sharp = msg.get("sharp") is True
        self._stop_refresh()
        self.still.reset(0, 0)
        self._fresh = True
        self._next, self._acked = 0, -1
        self._sent.clear()
        self.stream = self.broadcast.join(self, codec)
        log.info("web viewer %s watches %s (port %s)", self.host, codec, self.port)

    # -- the sharp refresh (see saffron.still) --------------------------------------------

    def _stop_refresh(self) -> None:
        for handle in (self._refresh_timer, self._pump_timer, self._refreshing):
            if handle is not None:
                handle.cancel()
        self._refresh_timer = self._pump_timer = self._refreshing = None
        self._tiles.clear()

    def _arm_refresh(self, delay: float = REFRESH_IDLE_S) -> None:
        if self._refresh_timer is None and self._refreshing is None and not self.closed:
            loop = asyncio.get_running_loop()
            self._refresh_timer = loop.call_later(max(delay, 0.005), self._refresh)

    def _refresh(self) -> None:
        """Encode the tiles that stood still since they got lossy video, in a worker."""
        self._refresh_timer = None
        stream = self.stream
        if self.closed or not self.sharp or stream is None:
            return
        now = time.monotonic()
        cells = self.still.due(now, REFRESH_IDLE_S)
        if not cells:
            due = self.still.next_due(REFRESH_IDLE_S)
            if due is not None:
                self._arm_refresh(due - now)
            return
        frame = stream.last_frame
        if frame is None or frame.seq != self._last_seq:
            self._arm_refresh()  # this page has not had the newest frame yet: still moving
            return
        # A page whose link is full is offered no frames while the picture moves on: its
        # picture only looks still. (Not the producer's last drawing: a blinking cursor
        # must not hold back the rest of the screen.)
        refused = self._refused_at + REFRESH_IDLE_S - now
        if refused > 0:
            self._arm_refresh(refused)
            return
        if (frame.width, frame.height) != (self.still.width, self.still.height):
            return
        gens = [self.still.take(c) for c in cells]
        rects = [self.still.rect(c) for c in cells]
        budget = int(self._rate_bytes() * REFRESH_BUDGET_S)
        self.refreshes += 1
        log.debug(
            "%s: %d still tiles of frame %d, idle since %.0f ms, budget %d KiB",
            self.label,
            len(cells),
            frame.seq,
            (now - self.still.last_change) * 1000,
            budget // 1024,
        )
        self._refreshing = asyncio.ensure_future(self._encode(frame, cells, gens, rects, budget))

    async def _encode(
        self,
        frame: Frame,
        cells: list[tuple[int, int]],
        gens: list[int],
        rects: list[Rect],
        budget: int,
    ) -> None:
        began = time.monotonic()
        try:
            tiles = await self.broadcast.tiles.encode_async(frame, rects, budget)
            log.debug(
                "%s: still tiles encoded in %.0f ms, %d KiB",
                self.label,
                (time.monotonic() - began) * 1000,
                sum(len(t.data) for t in tiles) // 1024,
            )
        except Exception as exc:  # a broken tile must not take the page down
            log.warning("%s: still tiles failed: %r", self.label, exc)
            tiles = []
        finally:
            self._refreshing = None
        if self.closed:
            return
        if (frame.width, frame.height) == (self.still.width, self.still.height):
            # else the picture changed size meanwhile (a guest resize): its grid is new
            for cell, gen in zip(cells, gens, strict=True):
                if len(tiles) < len(cells):
                    self.still.give_back(cell, gen)
            self._tiles.extend(zip(cells, gens, tiles, strict=True))
            self._tiles_size = (frame.width, frame.height)
        self._pump()
        due = self.still.next_due(REFRESH_IDLE_S)
        if due is not None:
            self._arm_refresh(due - time.monotonic())

    def _rate_bytes(self) -> float:
        """This page's rate budget in bytes per second."""
        return (self.rate_kbps() or self.broadcast.bitrate_kbps) * 125

    def _spend(self, size: int, now: float) -> None:
        rate = self._rate_bytes()
        burst = rate * TILE_BURST_S
        self._tokens = min(self._tokens + rate * (now - self._tokens_at), burst) - size
        self._tokens_at = now

    def _pump(self) -> None:
        """Send waiting still tiles while no video waits, the socket is nearly empty and
        the page's rate allows; a tile damaged since it was encoded is dropped."""
        self._pump_timer = None
        loop = asyncio.get_running_loop()
        transport = self.transport
        if self._tiles_size != (self.still.width, self.still.height):
            self._tiles.clear()  # tiles of a picture size that is gone
        while self._tiles and not self.closed:
            cell, gen, tile = self._tiles[0]
            if self.still.generation(cell) != gen:
                self._tiles.popleft()
                continue
            now = time.monotonic()
            self._spend(0, now)
            buffered = transport.get_write_buffer_size() if transport is not None else 0
            busy = self._videos_queued > 0 or buffered + self._tile_bytes_queued > TILE_BUFFER_BYTES
            rate = self._rate_bytes()
            short = min(len(tile.data), rate * TILE_BURST_S) - self._tokens
            if busy or short > 0:
                wait = 0.005 if busy else short / max(rate, 1.0)
                self._pump_timer = loop.call_later(max(wait, 0.002), self._pump)
                return
            self._tiles.popleft()
            self._spend(len(tile.data), now)
            size = (self.still.width, self.still.height)
            data = pack_tile(tile.fmt, tile.rect, size, self._next - 1) + tile.data
            self._tile_bytes_queued += len(data)
            self._tile_bytes_since_frame += len(data)
            self._queue.put_nowait((data, "tile"))
            self.tiles_sent += 1
            self.tile_bytes += len(tile.data)
            if not self._tiles:
                log.debug("%s: last still tile queued to send", self.label)

    def _on_ack(self, msg: dict[str, Any]) -> None:
        frame = int(msg["frame"])
        if not self._acked < frame < self._next:
            return  # a stale ack from before a codec switch
        was_full = not self.writable()
        now = time.monotonic()
        for n in range(self._acked + 1, frame + 1):
            sent = self._sent.pop(n, None)
            if sent is None:
                continue
            capture, sent_at, size = sent
            self.rate.on_ack((now - sent_at) * 1000, size)
            if n == frame:
                self.latency_ms = (time.time_ns() // 1000 - capture) / 1000
        self.frames_acked += frame - self._acked
        self._acked = frame
        if was_full and self.writable():
            self.broadcast.viewer_ready(self)

    def _on_audio(self, msg: dict[str, Any]) -> None:
        """The page turned its sound on (a user's click: browsers want one) or off."""
        on, audio = bool(msg["on"]), self.server.audio
        if audio is None or on == self.listening:
            return
        self.listening = on
        if on:
            audio.add_viewer(self)
            log.info("web viewer %s listens to the sound (port %s)", self.host, self.port)
        else:
            audio.remove_viewer(self)

    def _on_binary(self, data: bytes) -> None:
        """A microphone packet (the only binary message a page sends)."""
        if not self._messages.take(message_cost(len(data))):
            raise TooManyMessages(self._messages.exceeded())
        packet = unpack_mic(data)
        mic = self.server.mic
        if mic is None or not self.speaking or not self._input_allowed():
            self.mic_refused += 1
            return
        if self._last_mic_seq >= 0 and packet.seq > self._last_mic_seq + 1:
            self.mic_lost += packet.seq - self._last_mic_seq - 1
        self._last_mic_seq = packet.seq
        mic.push_opus(self, packet.data, packet.channels)

    def _on_mic(self, msg: dict[str, Any]) -> None:
        """The page turned its microphone on (the user allowed it) or off."""
        on, mic = bool(msg["on"]), self.server.mic
        if mic is None or on == self.speaking or not self._input_allowed():
            return
        self.speaking = on
        self._last_mic_seq = -1
        if on:
            log.info("web viewer %s turned its microphone on (port %s)", self.host, self.port)
        else:
            mic.release(self)

    def _on_clipboard(self, msg: dict[str, Any]) -> None:
        """The page's clipboard text (the user pasted into the VM): to the guest."""
        text = msg["text"]
        if not isinstance(text, str):
            raise ValueError("clipboard text is not a string")
        clipboard = self.server.clipboard
        if clipboard is None or self.view_only:
            return
        try:
            clipboard.viewer_copied(text, self)
        except ClipboardTooBig as exc:
            raise ProtocolError(str(exc)) from None

    def _on_ping(self, msg: dict[str, Any]) -> None:
        self.notify({"type": "pong", "t0": float(msg["t0"]), "server": time.time() * 1000})

    def _on_page_stats(self, msg: dict[str, Any]) -> None:
        self.page_stats = {k: v for k, v in msg.items() if isinstance(v, int | float | str)}

    def _input_allowed(self) -> bool:
        return not self.view_only

    def _on_key(self, msg: dict[str, Any]) -> None:
        scancode = scancode_for(str(msg["code"]))
        if scancode is not None and self._input_allowed():
            self.display.input.key(scancode, bool(msg["down"]))

    def _on_pointer(self, msg: dict[str, Any]) -> None:
        if self._input_allowed():
            d = self.display
            x = min(max(int(msg["x"]), 0), max(d.width - 1, 0))
            y = min(max(int(msg["y"]), 0), max(d.height - 1, 0))
            d.input.pointer(x, y)

    def _on_button(self, msg: dict[str, Any]) -> None:
        if self._input_allowed():
            self.display.input.button(Button(int(msg["button"])), bool(msg["down"]))

    def _on_wheel(self, msg: dict[str, Any]) -> None:
        if self._input_allowed():
            button = Button.WHEEL_DOWN if float(msg["dy"]) > 0 else Button.WHEEL_UP
            self.display.input.button(button, True)
            self.display.input.button(button, False)

    def _on_viewport(self, msg: dict[str, Any]) -> None:
        """The page's "resize guest" is on and its window is this many device pixels:
        the guest's screen should follow (the Display clamps, the producer debounces)."""
        width, height = int(msg["width"]), int(msg["height"])
        if width <= 0 or height <= 0:
            raise ValueError(f"a {width}x{height} window")
        if self._input_allowed():
            self.display.request_size(SizeRequest(width, height))

    _HANDLERS: ClassVar[dict[str, Callable[[WebViewer, dict[str, Any]], None]]] = {
        "start": _on_start,
        "clipboard": _on_clipboard,
        "ack": _on_ack,
        "ping": _on_ping,
        "audio": _on_audio,
        "mic": _on_mic,
        "stats": _on_page_stats,
        "key": _on_key,
        "pointer": _on_pointer,
        "button": _on_button,
        "wheel": _on_wheel,
        "viewport": _on_viewport,
    }
