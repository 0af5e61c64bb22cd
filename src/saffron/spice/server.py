"""The SPICE server: sockets, WebSockets and sessions around the sans-IO channel machines.

One TCP port carries SPICE (first bytes ``REDQ``) and SPICE over WebSocket for
spice-html5 (first bytes ``GET ``); :meth:`SpiceServer.aiohttp_handler` serves
the same thing from an aiohttp web server on any path. Each connection runs the
link handshake, then one channel. A connection that misbehaves is closed with
a logged reason; the server and every other viewer carry on. Each TCP
connection takes a slot from the shared :class:`~saffron.net.limits.ConnectionLimits`
(the aiohttp path is counted by the web server), on a TLS port before its
handshake, and must link within ``LINK_TIMEOUT_S``.

This is the one module that knows every piece of the SPICE front end: it feeds
the sans-IO machines of :mod:`saffron.spice.protocol` and hands each linked
channel to its handler (:mod:`~saffron.spice.session`,
:mod:`~saffron.spice.viewer`), which see it only through
:mod:`saffron.spice.ports`. It knows nothing of the web front end.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import secrets
import socket
import threading
from collections import deque
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Protocol

from ..display import Cursor, Display
from ..encoders.base import Packet
from ..net.admission import AdmittedConnection, peer_of
from ..net.guesses import GuessThrottle
from ..net.limits import ConnectionLimits
from ..net.origin import HostRule
from ..net.ratelimit import TooManyMessages
from ..net.websocket import WebSocket, open_websocket
from .damage import DamageLog
from .ports import Handler
from .protocol.agent import Agent
from .protocol.cursor_channel import CursorChannel
from .protocol.display_channel import (
    CODEC_LABELS,
    CODEC_TYPES,
    SERVER_DISPLAY_CAPS,
    DisplayChannel,
)
from .protocol.inputs_channel import SERVER_INPUTS_CAPS, InputsChannel
from .protocol.link import LinkEstablished, LinkFailed, LinkState, ServerLink, TicketKey
from .protocol.main_channel import MainChannel
from .protocol.playback_channel import PlaybackChannel
from .protocol.record_channel import RecordChannel
from .protocol.websocket import WebSocketAdapter, looks_like_http
from .protocol.wire import (
    MAX_CLIENT_MESSAGE_SIZE,
    Caps,
    ChannelType,
    LinkErr,
    MainCap,
    ProtocolError,
    RecordCap,
    make_caps,
)
from .session import (
    CursorHandler,
    InputsHandler,
    MainHandler,
    PlaybackHandler,
    RecordHandler,
    Session,
)
from .ticket_keys import KeyPool
from .viewer import WRITE_BUFFER_LIMIT, SpiceViewer

if TYPE_CHECKING:
    from ssl import SSLContext

    from aiohttp import web

    from ..audio import AudioBroadcast
    from ..broadcast import Broadcast
    from ..clipboard import ClipboardBroadcast
    from ..mic import MicInput

log = logging.getLogger("saffron.spice")

LINK_TIMEOUT_S = 30.0
"""A connection that has not linked by then is dropped (spice-html5 itself gives up
after 30 s), so half-open sockets cannot pile up. On a TLS port the handshake has as
long again before that; a WebSocket upgrade on this port counts within it."""

KEEPALIVE_IDLE_S = 60
KEEPALIVE_INTERVAL_S = 10
KEEPALIVE_PROBES = 6
"""TCP keepalive: a client whose machine vanished (power off, cable pulled) is
noticed after about two minutes of silence and its channels closed, instead of
holding its slot for the kernel's default of two hours."""

WEBSOCKET_MAX_MESSAGE = 2 * MAX_CLIENT_MESSAGE_SIZE
"""Largest WebSocket message taken on the aiohttp path: spice-html5 sends one SPICE
message per WebSocket message, and no client message is above 64 KiB."""

NOTSENT_LOWAT = 16 * 1024
"""TCP_NOTSENT_LOWAT: the kernel takes more bytes only while fewer than this are
still unsent. Without it a socket's send buffer grows to megabytes, seconds of
video on a slow link that nobody can take back; with it what waits stays in our
buffer, where the viewer sees it (and stops taking frames, see viewer.py)."""

SIOCOUTQNSD = 0x894B
"""ioctl: bytes the kernel holds for a TCP socket that it has not sent yet."""

WRITE_BUFFER_LOW = WRITE_BUFFER_LIMIT // 4
"""Below this the viewer counts as caught up again."""

WEBSOCKET_CHUNK = 256 * 1024
"""Most bytes put in one WebSocket frame by the aiohttp path."""

DEFAULT_CODEC_ORDER = ("h264", "vp9", "vp8", "mjpeg")


def channel_list(
    screens: int, *, playback: bool = False, record: bool = False
) -> tuple[tuple[int, int], ...]:
    """What a session's main channel lists: a display and a cursor channel per screen, id k
    for screen k, as spice-server gives each QXL device its own (remote-viewer opens a
    window per display channel), one inputs channel, playback when there is sound and
    record when the producer has a capture voice."""
    listed = [(int(ChannelType.DISPLAY), k) for k in range(screens)]
    listed.append((int(ChannelType.INPUTS), 0))
    listed += [(int(ChannelType.CURSOR), k) for k in range(screens)]
    if playback:
        listed.append((int(ChannelType.PLAYBACK), 0))
    if record:
        listed.append((int(ChannelType.RECORD), 0))
    return tuple(listed)


def offered_channels(screens: int) -> dict[tuple[int, int], Caps]:
    """The channels a link may ask for, with the caps offered on each (see channel_list)."""
    offered: dict[tuple[int, int], Caps] = {
        (ChannelType.MAIN, 0): make_caps([MainCap.NAME_AND_UUID]),
        (ChannelType.INPUTS, 0): SERVER_INPUTS_CAPS,
        (ChannelType.PLAYBACK, 0): (),
        (ChannelType.RECORD, 0): make_caps([RecordCap.OPUS]),
    }
    for k in range(screens):
        offered[(ChannelType.DISPLAY, k)] = SERVER_DISPLAY_CAPS
        offered[(ChannelType.CURSOR, k)] = ()
    return offered


def default_codecs() -> list[str]:
    """H.264 > VP9 > VP8 > MJPEG, keeping those this host can encode."""
    from ..encoders.registry import available_codecs

    working = set(available_codecs())
    return [c for c in DEFAULT_CODEC_ORDER if c in working]


def _addresses(server: asyncio.Server) -> list[tuple[str, int]]:
    return [(str(s.getsockname()[0]), int(s.getsockname()[1])) for s in server.sockets]


def _channel_name(channel_type: int | None) -> str:
    try:
        return ChannelType(channel_type).name.lower() if channel_type is not None else "new"
    except ValueError:
        return f"type-{channel_type}"


class Output(Protocol):
    """Where a connection's bytes go: a TCP transport (maybe via WebSocket) or aiohttp."""

    @property
    def congested(self) -> bool: ...

    @property
    def address(self) -> str:
        """The client's IP address (guesses are counted by it)."""
        ...

    def authenticated(self) -> None:
        """The link is established: the connection no longer waits to authenticate."""
        ...

    def write(self, data: bytes) -> None: ...

    def buffered(self) -> int: ...

    def close(self) -> None: ...


class Connection:
    """One socket: the link handshake, then one channel's handler."""

    def __init__(
        self, server: SpiceServer, output: Output, peer: str, *, secured: bool = False
    ) -> None:
        self.server = server
        self.output = output
        self.peer = peer
        self.secured = secured
        """Over TLS (the TLS port, or a WebSocket from an HTTPS page)."""
        key = server.keys.take()
        self.link = ServerLink(
            key,
            server.password,
            server.offered_channels,
            secured=secured,
            secure_channels=server.secure_channels,
        )
        self.handler: Handler | None = None
        self.session: Session | None = None
        self.channel_type: int | None = None
        self.channel_id = 0
        self.closed = False
        self._timeout: asyncio.TimerHandle | None = server.loop.call_later(
            LINK_TIMEOUT_S, self._link_timeout
        )
        self._key_wait: asyncio.Future[TicketKey] | None = None
        if key is None:
            log.debug("%s: no ticket key ready; the link waits for one", peer)
            self._key_wait = server.keys.take_async()
            self._key_wait.add_done_callback(self._key_made)
        server.connections.add(self)

    # -- ConnectionPort --------------------------------------------------------------

    @property
    def congested(self) -> bool:
        return self.output.congested

    def buffered(self) -> int:
        return self.output.buffered()

    def flush(self) -> None:
        if self.closed:
            return
        data = self.handler.channel.data_to_send() if self.handler else self.link.data_to_send()
        if data:
            self.output.write(data)

    def close(self, reason: str, *, warn: bool = False) -> None:
        """Close this connection once, saying why; a closed main channel ends its session."""
        if self.closed:
            return
        self.closed = True
        if self._timeout is not None:
            self._timeout.cancel()
            self._timeout = None
        if self._key_wait is not None:
            self._key_wait.cancel()  # the worker skips it
        session, channel = self.session, _channel_name(self.channel_type)
        if session is None:
            if warn:
                log.warning("closing SPICE connection from %s: %s", self.peer, reason)
            else:
                log.debug("SPICE connection from %s closed: %s", self.peer, reason)
        elif warn:
            log.warning("%s: closing the %s channel: %s", session.label, channel, reason)
        elif self.channel_type != ChannelType.MAIN:  # the main channel's end is logged below
            log.debug("%s: %s channel closed (%s)", session.label, channel, reason)
        if self.handler is not None:
            try:
                self.handler.stop()
            except Exception:
                log.exception("%s: error while closing the %s channel", self.peer, channel)
        if session is not None and self.channel_type is not None:
            session.detach(self.channel_type, self, self.channel_id)
        self.output.close()
        self.server.connections.discard(self)
        if session is not None and self.channel_type == ChannelType.MAIN:
            self.server.end_session(session, reason)

    # -- input ----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            if self.handler is None:
                self._link_data(data)
            else:
                self.handler.receive(data)
        except ProtocolError as exc:
            self.close(f"malformed message: {exc}", warn=True)
        except TooManyMessages as exc:
            self.close(str(exc), warn=True)
        except Exception as exc:
            log.exception("%s: unexpected error", self.peer)
            self.close(f"internal error ({type(exc).__name__})", warn=True)

    def connection_lost(self) -> None:
        self.close("the client closed the connection")

    def on_drain(self) -> None:
        if self.handler is not None and not self.closed:
            self.handler.on_drain()

    def _key_made(self, future: asyncio.Future[TicketKey]) -> None:
        """The worker made this link's key: go on with what the client sent meanwhile."""
        self._key_wait = None
        if self.closed:
            return
        if future.cancelled():
            self.close("the server is stopping")
            return
        self.link.key = future.result()
        self.data_received(b"")

    def _link_timeout(self) -> None:
        self._timeout = None
        if self.handler is None:
            self.close(f"no SPICE link within {LINK_TIMEOUT_S:.0f} s", warn=True)

    def _link_data(self, data: bytes) -> None:
        if self.link.state in (LinkState.MECHANISM, LinkState.TICKET) and self._must_wait():
            return
        for event in self.link.receive_data(data):
            if isinstance(event, LinkFailed):
                self.flush()
                self._refused(event)
                return
            if isinstance(event, LinkEstablished):
                self._established(event)
                return
        self.flush()

    def _must_wait(self) -> bool:
        """Whether the client's address guessed wrong too often lately: then its ticket is
        refused unread (PERMISSION_DENIED, logged by the throttle) and the link closed."""
        seconds = self.server.guesses.refuse(self.output.address, self.peer, "SPICE")
        if not seconds:
            return False
        self.link.refuse(LinkErr.PERMISSION_DENIED, "too many wrong passwords")
        self.flush()
        self.close(f"too many wrong passwords, the next is checked in {seconds:.0f} s")
        return True

    def _refused(self, event: LinkFailed) -> None:
        if event.error == LinkErr.PERMISSION_DENIED:  # a wrong ticket: counted, summed up
            self.server.guesses.failed(self.output.address, self.peer, "SPICE", event.reason)
            self.close(event.reason)
            return
        mess = self.link.mess
        what = f" {_channel_name(mess.channel_type)} channel" if mess else ""
        # NEED_SECURED is the normal way to send spice-gtk to the TLS port.
        level = logging.INFO if event.error == LinkErr.NEED_SECURED else logging.WARNING
        log.log(
            level,
            "SPICE connection from %s refused%s: %s (%s)",
            self.peer,
            what,
            event.reason,
            event.error.name,
        )
        self.close(event.reason)

    def _established(self, event: LinkEstablished) -> None:
        mess = event.mess
        server = self.server
        if mess.channel_type == ChannelType.MAIN:
            session = server.new_session(self.peer)
        else:
            found = server.sessions.get(mess.connection_id)
            if found is None or found.closed:
                refused = self.link.refuse(
                    LinkErr.BAD_CONNECTION_ID, f"session {mess.connection_id:08x} is not open"
                )
                self.flush()
                self._refused(refused)
                return
            session = found
        self.server.guesses.succeeded(self.output.address)
        self.output.authenticated()
        self.link.accept()
        self.flush()
        if self._timeout is not None:
            self._timeout.cancel()
            self._timeout = None
        self.session = session
        self.channel_type = mess.channel_type
        self.channel_id = mess.channel_id
        handler = self._make_handler(session, event)
        session.attach(mess.channel_type, self, handler, mess.channel_id)
        self.handler = handler
        log.debug(
            "%s: %s channel%s up%s",
            session.label,
            _channel_name(mess.channel_type),
            f" {mess.channel_id}" if mess.channel_id else "",
            " over TLS" if self.secured else "",
        )
        handler.start()
        if self.link.leftover and not self.closed:
            handler.receive(self.link.leftover)

    def _agent(self) -> Agent | None:
        """A stand-in agent where the producer's screen can follow the window (spice-gtk
        sends its window size only to an agent) or the producer has a clipboard."""
        clipboard = self.server.clipboard
        # view-only: the clipboard is neither read nor written
        has_clipboard = clipboard is not None and clipboard.available and not self.server.view_only
        if self.server.display.resize_hook is None and not has_clipboard:
            return None
        return Agent(clipboard=has_clipboard)

    def _make_handler(self, session: Session, event: LinkEstablished) -> Handler:
        caps = event.mess.channel_caps
        mini = event.mini_header
        kind = event.mess.channel_type
        screen = self.server.screens[event.mess.channel_id]  # the link offers no other ids
        if kind == ChannelType.MAIN:
            main = MainHandler(
                session,
                self,
                MainChannel(
                    mini_header=mini,
                    client_caps=caps,
                    session_id=session.id,
                    channels=self.server.channels(),
                    agent=self._agent(),
                ),
            )
            session.main = main
            return main
        if kind == ChannelType.DISPLAY:
            channel = DisplayChannel(mini_header=mini, client_caps=caps)
            return SpiceViewer(session, self, channel, screen, screen.index)
        if kind == ChannelType.INPUTS:
            return InputsHandler(session, self, InputsChannel(mini_header=mini, client_caps=caps))
        if kind == ChannelType.PLAYBACK:
            playback = PlaybackChannel(mini_header=mini, client_caps=caps)
            return PlaybackHandler(session, self, playback)
        if kind == ChannelType.RECORD:
            record = RecordChannel(mini_header=mini, client_caps=caps)
            return RecordHandler(session, self, record)
        cursor_channel = CursorChannel(mini_header=mini, client_caps=caps)
        cursor = CursorHandler(session, self, cursor_channel, screen.display)
        session.cursors[screen.index] = cursor
        return cursor


class _TcpConnection(AdmittedConnection):
    """A TCP socket: raw SPICE, or SPICE inside a WebSocket when it starts with GET."""

    def __init__(self, server: SpiceServer, tls: SSLContext | None = None) -> None:
        super().__init__(server.limits, tls, "SPICE", server.handshakes)
        self.server = server
        self.conn: Connection | None = None
        self.ws: WebSocketAdapter | None = None
        self._sniffing = True
        self._head = b""
        self._request_tail = b""
        self.congested = False
        self._fd = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if not self.admit(transport):
            transport.abort()  # nothing was sent: no reason to linger
            return
        _keepalive(transport)
        self._fd = _small_send_queue(transport)
        self.start(transport, LINK_TIMEOUT_S)

    def connected(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_BUFFER_LIMIT, low=WRITE_BUFFER_LOW)
        secured = transport.get_extra_info("ssl_object") is not None
        self.conn = Connection(self.server, self, self.peer, secured=secured)

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if conn is None or conn.closed:
            return
        if self._sniffing:
            self._head += data
            if len(self._head) < 4:
                return
            self._sniffing = False
            data, self._head = self._head, b""
            if looks_like_http(data):
                self.ws = WebSocketAdapter(self.server.host_rule)
                conn.peer += " (WebSocket)"
        if self.ws is None:
            conn.data_received(data)
            return
        try:
            if self.ws.open:
                payload = self.ws.receive_data(data)
            else:
                # wsproto drops what follows the request in the same read: keep it
                # for the open WebSocket instead of losing the first SPICE bytes.
                request, rest = self._split_request(data)
                payload = self.ws.receive_data(request)
                if rest and self.ws.open:
                    payload += self.ws.receive_data(rest)
        except ProtocolError as exc:
            self._raw(self.ws.data_to_send())
            conn.close(str(exc), warn=True)
            return
        self._raw(self.ws.data_to_send())
        if payload:
            conn.data_received(payload)
        if self.ws.closed:
            conn.close("the client closed the WebSocket")

    def _split_request(self, data: bytes) -> tuple[bytes, bytes]:
        """``data`` cut after the blank line that ends the HTTP request, if it is there."""
        window = self._request_tail + data
        end = window.find(b"\r\n\r\n")
        if end < 0:
            self._request_tail = window[-3:]
            return data, b""
        cut = end + 4 - len(self._request_tail)
        return data[:cut], data[cut:]

    def _raw(self, data: bytes) -> None:
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    # Output
    def write(self, data: bytes) -> None:
        if self.ws is not None:
            data = self.ws.send(data)
        self._raw(data)

    def buffered(self) -> int:
        """Bytes written and not sent yet: in our buffer, and in the kernel's."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return 0
        return transport.get_write_buffer_size() + _unsent(self._fd)

    def close(self) -> None:
        if self.ws is not None:
            self._raw(self.ws.close())
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()
            self.closing()

    def pause_writing(self) -> None:
        self.congested = True

    def resume_writing(self) -> None:
        self.congested = False
        if self.conn is not None:
            self.conn.on_drain()

    def connection_lost(self, exc: Exception | None) -> None:
        self.release()
        if self.conn is not None:
            self.conn.connection_lost()


def _small_send_queue(transport: asyncio.Transport) -> int:
    """Keep the kernel's unsent bytes small (``NOTSENT_LOWAT``); the socket's fd, or -1."""
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return -1
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)
    return int(sock.fileno())


def _unsent(fd: int) -> int:
    """What the kernel has not sent yet of what was written to TCP socket ``fd``. Any
    thread may ask (the broadcast's producer does, through the viewer's ``writable``)."""
    if fd < 0:
        return 0
    try:
        buf = fcntl.ioctl(fd, SIOCOUTQNSD, b"\0\0\0\0")
    except OSError:
        return 0
    return int.from_bytes(buf, "little", signed=True)


def _keepalive(transport: asyncio.Transport) -> None:
    """Turn on TCP keepalive with the short timings above (where the OS has them)."""
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE_S),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
        ("TCP_KEEPCNT", KEEPALIVE_PROBES),
    ):
        if hasattr(socket, name):
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    for level, option, value in options:
        with contextlib.suppress(OSError):
            sock.setsockopt(level, option, value)


class _AiohttpOutput:
    """Bytes for an aiohttp WebSocketResponse, sent by one writer task."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.address = ws.address
        self.conn: Connection | None = None
        self.congested = False
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._closing = False
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def write(self, data: bytes) -> None:
        if self._closing or not data:
            return
        self._queue.append(data)
        self._queued += len(data)
        if self._queued > WRITE_BUFFER_LIMIT:
            self.congested = True
        self._wake.set()

    def buffered(self) -> int:
        return self._queued

    def authenticated(self) -> None:
        self.ws.authenticated()

    def close(self) -> None:
        self._closing = True
        self._wake.set()
        self.ws.closing()  # the writer may wait for a peer that stopped reading

    async def wait(self) -> None:
        await self._task

    async def _run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._queue:
                    parts = [self._queue.popleft()]
                    size = len(parts[0])
                    while self._queue and size + len(self._queue[0]) <= WEBSOCKET_CHUNK:
                        parts.append(self._queue.popleft())
                        size += len(parts[-1])
                    await self.ws.send_bytes(b"".join(parts))
                    self._queued -= size
                    if self.congested and self._queued <= WRITE_BUFFER_LOW:
                        self.congested = False
                        if self.conn is not None:
                            self.conn.on_drain()
                if self._closing:
                    break
        except (ConnectionError, RuntimeError) as exc:
            log.debug("WebSocket writer stopped: %s", exc)
            if self.conn is not None:
                self.conn.close("the WebSocket is gone")
        finally:
            if not self.ws.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await self.ws.close()


async def serve_aiohttp_websocket(
    ws: WebSocket,
    server: SpiceServer,
    peer: str = "web client",
    *,
    secured: bool = False,
) -> None:
    """Run one SPICE channel over a prepared WebSocket until it closes.

    Prepare ``ws`` with ``protocols=("binary",)``: spice-html5 insists on it. (The
    web server's WebSocket: it is cut off when its peer stops reading as it closes.)
    """
    from aiohttp import WSMsgType

    server.attach()
    output = _AiohttpOutput(ws)
    conn = Connection(server, output, f"{peer} (WebSocket)", secured=secured)
    output.conn = conn
    try:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                conn.data_received(msg.data)
            elif msg.type == WSMsgType.TEXT:
                conn.close("a text frame: SPICE over WebSocket is binary only", warn=True)
            elif msg.type == WSMsgType.ERROR:
                conn.close(f"broken WebSocket: {ws.exception() or msg.data}", warn=True)
            if conn.closed:
                break
    finally:
        conn.connection_lost()
        output.close()
        await output.wait()


class SpiceScreen:
    """One of the producer's screens as SPICE serves it: display channel ``index`` and
    cursor channel ``index`` show it, from its own broadcast. It hears its display
    (a DisplayListener, any thread) and tells the viewers and cursors of its channels."""

    def __init__(
        self, server: SpiceServer, index: int, display: Display, broadcast: Broadcast
    ) -> None:
        self.server = server
        self.index = index
        self.display = display
        self.broadcast = broadcast
        self.damage_log = DamageLog(display)
        self._move: tuple[int, int, bool] | None = None
        self._move_lock = threading.Lock()

    def attach(self) -> None:
        self.display.add_listener(self)
        self.display.add_sink(self.damage_log)

    def detach(self) -> None:
        self.display.remove_listener(self)
        self.display.remove_sink(self.damage_log)

    def viewers(self) -> list[SpiceViewer]:
        return [v for v in self.server.viewers() if v.screen is self]

    def cursors(self) -> list[CursorHandler]:
        found = (s.cursors.get(self.index) for s in list(self.server.sessions.values()))
        return [c for c in found if c is not None]

    # -- DisplayListener (any thread) -----------------------------------------------------

    def _soon(self, fn: Callable[..., None], *args: object) -> None:
        if self.server.attached:  # before that there is nobody to tell
            self.broadcast.call_soon(fn, *args)

    def on_resize(self, width: int, height: int) -> None:
        self._soon(self._resize, width, height)

    def on_cursor(self, cursor: Cursor | None) -> None:
        self._soon(self._cursor, cursor)

    def on_cursor_move(self, x: int, y: int, visible: bool) -> None:
        with self._move_lock:
            pending = self._move is not None
            self._move = (x, y, visible)
        if not pending:  # one callback carries the newest position, however many came
            self._soon(self._cursor_move)

    def on_disable(self) -> None:
        which = f" screen {self.index}" if self.server.screens[1:] else ""
        log.info("SPICE: the producer has no picture%s now", which)

    def _resize(self, width: int, height: int) -> None:
        for viewer in self.viewers():
            viewer.on_resize(width, height)

    def _cursor(self, cursor: Cursor | None) -> None:
        for handler in self.cursors():
            handler.on_cursor(cursor)

    def _cursor_move(self) -> None:
        with self._move_lock:
            move, self._move = self._move, None
        if move is None:
            return
        for handler in self.cursors():
            handler.on_cursor_move(*move)


class SpiceServer:
    """Serves a Display to SPICE clients, with video from a shared Broadcast.

    ``codecs`` is the server's order of preference (default H.264 > VP9 > VP8 >
    MJPEG, limited to what this host encodes); a client's stated preference
    (PREFERRED_VIDEO_CODEC_TYPE) wins among those its caps allow. With
    ``exclusive`` a new client disconnects the others, as spice-server does;
    ``view_only`` ignores keyboard and mouse. ``secure_channels`` (channel types)
    are served over TLS only: on a plain port they answer NEED_SECURED.
    ``host_rule`` decides which Host and Origin a browser may bring to this port's
    WebSocket (default: the rule for this password and no ``--allowed-host``).
    ``more_screens`` are the producer's other screens (a VM's second head...), each a
    display with its broadcast: display channel k shows screen k, ``display`` being 0.
    """

    def __init__(
        self,
        display: Display,
        broadcast: Broadcast,
        *,
        password: str | None,
        codecs: list[str] | None = None,
        exclusive: bool = False,
        view_only: bool = False,
        limits: ConnectionLimits | None = None,
        secure_channels: Collection[int] = (),
        host_rule: HostRule | None = None,
        guesses: GuessThrottle | None = None,
        audio: AudioBroadcast | None = None,
        mic: MicInput | None = None,
        clipboard: ClipboardBroadcast | None = None,
        more_screens: Sequence[tuple[Display, Broadcast]] = (),
    ) -> None:
        self.display = display
        self.broadcast = broadcast
        self.screens = [
            SpiceScreen(self, k, d, b) for k, (d, b) in enumerate([(display, broadcast)])
        ]
        self.screens += [
            SpiceScreen(self, k, d, b) for k, (d, b) in enumerate(more_screens, start=1)
        ]
        self.offered_channels = offered_channels(len(self.screens))
        self.audio = audio
        """The producer's sound for playback channels; None: none is offered."""
        self.mic = mic
        """Where record channels' sound goes (the guest's recording); None: none offered."""
        self.clipboard = clipboard
        """The shared clipboard for the stand-in agent; None: no clipboard is offered."""
        self.password = password
        self.limits = limits if limits is not None else ConnectionLimits()
        """Shared with the web front end in a full Saffron; the aiohttp path is counted there."""
        self.host_rule = (
            host_rule if host_rule is not None else HostRule(password=password is not None)
        )
        """Shared with the web front end; the aiohttp path (``/spice``) is checked there."""
        self.guesses = guesses if guesses is not None else GuessThrottle()
        """Wrong tickets by address; shared with the web front end in a full Saffron."""
        self.handshakes: set[asyncio.Task[None]] = set()
        """TLS handshakes under way, cancelled on close (a socket waiting for one is not
        closed with the listener)."""
        chosen = default_codecs() if codecs is None else list(codecs)
        dropped = [c for c in chosen if c not in CODEC_TYPES]
        if dropped:
            log.info("SPICE has no codec type for %s; not offered there", ", ".join(dropped))
        self.offered = [c for c in chosen if c in CODEC_TYPES]
        """The codecs offered, in the order of preference (see :attr:`codecs`)."""
        self.exclusive = exclusive
        self.view_only = view_only
        self.secure_channels = frozenset(secure_channels)
        self.keys = KeyPool()
        """A fresh ticket key for every link: a ticket seen once cannot link again."""
        self.sessions: dict[int, Session] = {}
        self.connections: set[Connection] = set()
        self.damage_log = self.screens[0].damage_log
        self.frame_listeners: list[Callable[[str, Packet, int], None]] = []
        """Called on the loop after each frame is sent: (client label, packet, mm stamp)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._servers: list[asyncio.Server] = []
        self._attached = False
        for screen in self.screens:
            screen.broadcast.failure_listeners.append(self._stream_failed)

    @property
    def codecs(self) -> list[str]:
        """The offered codecs whose encoder still works, best first."""
        return self.broadcast.working(self.offered)

    def channels(self) -> tuple[tuple[int, int], ...]:
        """What a new session's main channel lists: playback too once the producer has sound,
        record once it has a capture voice."""
        playback = self.audio is not None and self.audio.available
        record = self.mic is not None and self.mic.available
        return channel_list(len(self.screens), playback=playback, record=record)

    def display_of(self, screen: int) -> Display | None:
        return self.screens[screen].display if 0 <= screen < len(self.screens) else None

    @property
    def attached(self) -> bool:
        """Whether the server listens to its displays (from start or the web path on)."""
        return self._attached

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop if self._loop is not None else self.broadcast.loop

    def attach(self) -> None:
        """Start listening to the display (once; called by start and the web path)."""
        if self._attached:
            return
        self._attached = True
        self._loop = asyncio.get_running_loop()
        self.keys.start()
        for screen in self.screens:
            screen.attach()

    async def start(
        self, host: str = "127.0.0.1", port: int = 5900, *, ssl: SSLContext | None = None
    ) -> None:
        """Listen on ``host:port``; with ``ssl``, as a TLS port (spice-gtk's ``tls-port``,
        or ``wss://`` for spice-html5). May be called twice, for a plain and a TLS port."""
        self.attach()
        server = await self.loop.create_server(lambda: _TcpConnection(self, ssl), host, port)
        self._servers.append(server)
        codecs = ", ".join(CODEC_LABELS.get(c, c) for c in self.codecs)
        mode = " exclusive," if self.exclusive else ""
        mode += " view-only," if self.view_only else ""
        where = ", ".join(f"{h}:{p}" for h, p in _addresses(server))
        secure = sorted(ChannelType(t).name.lower() for t in self.secure_channels)
        if ssl is None and secure:
            mode += f" {', '.join(secure)} over TLS only,"
        log.info(
            "SPICE%s on %s (spice-html5 too),%s %s, video %s",
            " with TLS" if ssl is not None else "",
            where,
            mode,
            "password required" if self.password is not None else "no password",
            codecs or "none",
        )

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Every (host, port) the server listens on, in the order start() was called."""
        return [addr for server in self._servers for addr in _addresses(server)]

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    async def close(self, reason: str = "Saffron stopped") -> None:
        """Stop listening and end every session, logging ``reason`` as why."""
        for server in self._servers:
            server.close()
        for task in list(self.handshakes):
            task.cancel()
        for session in list(self.sessions.values()):
            self.end_session(session, reason)
        for conn in list(self.connections):
            conn.close(reason)
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        if self._attached:
            for screen in self.screens:
                screen.detach()
            self._attached = False
            self.keys.close()
        for screen in self.screens:
            with contextlib.suppress(ValueError):
                screen.broadcast.failure_listeners.remove(self._stream_failed)

    async def aiohttp_handler(self, request: web.Request) -> web.StreamResponse:
        """An aiohttp handler: ``app.router.add_get("/spice", server.aiohttp_handler)``."""
        ws = WebSocket(protocols=("binary",), compress=False, max_msg_size=WEBSOCKET_MAX_MESSAGE)
        refused = await open_websocket(ws, request, "SPICE WebSocket")
        if refused is not None:
            return refused
        peer = peer_of(request.transport)[1]
        await serve_aiohttp_websocket(ws, self, peer=peer, secured=request.secure)
        return ws

    # -- sessions ----------------------------------------------------------------------

    def new_session(self, peer: str) -> Session:
        session_id = 0
        while session_id == 0 or session_id in self.sessions:
            session_id = secrets.randbits(32)
        session = Session(self, session_id, peer)
        if self.exclusive:
            for other in list(self.sessions.values()):
                log.info(
                    "%s: disconnected, %s took over (exclusive mode)", other.label, session.label
                )
                self.end_session(other, f"{session.label} connected (exclusive mode)")
        self.sessions[session_id] = session
        log.info("%s connected (session %08x)", session.label, session_id)
        return session

    def end_session(self, session: Session, reason: str) -> None:
        if self.sessions.get(session.id) is not session:
            return
        del self.sessions[session.id]
        log.info("%s disconnected (%s)", session.label, reason)
        session.close(reason)

    def _stream_failed(self, codec: str, reason: str, news: bool) -> None:
        """A codec's every encoder broke: its viewers move to another codec they can play.

        Viewers are moved even when the codec was dropped already: one may have
        joined a new stream of it before this news arrived.
        """
        if news and codec in self.offered:
            log.warning(
                "SPICE: no longer sending %s (%s); left: %s",
                CODEC_LABELS.get(codec, codec),
                reason,
                ", ".join(CODEC_LABELS.get(c, c) for c in self.codecs) or "nothing",
            )
        for viewer in self.viewers():
            if viewer.codec == codec:
                viewer.rejoin()  # picks the best codec left and says so in the log

    def viewers(self) -> list[SpiceViewer]:
        found: list[SpiceViewer] = []
        for session in self.sessions.values():
            for handler in session.handlers.values():
                if isinstance(handler, SpiceViewer):
                    found.append(handler)
        return found

    def stats(self) -> list[dict[str, object]]:
        out = []
        for session in self.sessions.values():
            entry: dict[str, object] = {
                "client": session.peer,
                "session": f"{session.id:08x}",
                "rtt_ms": session.rtt_ms,
                "latency_ms": session.latency_ms,
            }
            for handler in session.handlers.values():
                if isinstance(handler, SpiceViewer):
                    index = handler.screen_index
                    entry["display" if index == 0 else f"display {index}"] = handler.stats()
            out.append(entry)
        return out
