"""A small asyncio SPICE client, built on the product's wire layouts (both directions),
for the measuring viewers and the tests.

It speaks raw TCP or, with ``websocket=True``, SPICE inside a WebSocket (through
wsproto, as spice-html5 would). ``raw()`` hands over messages as they come and,
with ``auto_ack``, acknowledges and answers pings as a real client does; ``read()``
parses them into wire dataclasses. ``watch_spice`` links and acks a display channel
as spice-gtk does. It is a client for measuring and testing, not a viewer: it
decodes no video.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl as ssl_module
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    RejectConnection,
    Request,
)

from ..spice.protocol.link import encrypt_ticket
from ..spice.protocol.wire import (
    MAX_SERVER_MESSAGE_SIZE,
    SERVER_MESSAGES,
    Ack,
    AckSync,
    AttachChannels,
    ChannelsList,
    ChannelType,
    CommonCap,
    DisplayInit,
    LinkErr,
    LinkHeader,
    LinkMess,
    LinkReply,
    MainInit,
    Message,
    MessageReader,
    Ping,
    Pong,
    RawMessage,
    SetAck,
    StreamData,
    StreamDataSized,
    frame,
    has_cap,
    make_caps,
    parse,
)

M = TypeVar("M", bound=Message)

CLIENT_COMMON_CAPS = make_caps(
    [CommonCap.PROTOCOL_AUTH_SELECTION, CommonCap.AUTH_SPICE, CommonCap.MINI_HEADER]
)
"""The common caps spice-gtk sends: auth selection, SPICE auth, the mini header."""
CLIENT_COMMON = CLIENT_COMMON_CAPS


class Closed(Exception):
    """The server closed the connection."""


class WebSocketRefused(Exception):
    """The server answered the WebSocket upgrade with an HTTP error."""

    def __init__(self, status_code: int) -> None:
        super().__init__(f"WebSocket refused with HTTP {status_code}")
        self.status_code = status_code


class ByteStream:
    """Raw TCP."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def read(self) -> bytes:
        data = await self.reader.read(65536)
        if not data:
            raise Closed()
        return data

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    def close(self) -> None:
        self.writer.close()


class WebSocketStream(ByteStream):
    """SPICE bytes in binary WebSocket frames, as spice-html5 sends them."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.subprotocol: str | None = None

    async def handshake(
        self, path: str = "/websockify", host: str = "127.0.0.1", origin: str | None = None
    ) -> None:
        """Upgrade, as a browser page from ``origin`` (None: not a browser) would."""
        headers = [] if origin is None else [(b"Origin", origin.encode())]
        self.writer.write(
            self.ws.send(
                Request(host=host, target=path, subprotocols=["binary"], extra_headers=headers)
            )
        )
        while True:
            data = await self.reader.read(65536)
            if not data:
                raise Closed()
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, AcceptConnection):
                    self.subprotocol = event.subprotocol
                    return
                if isinstance(event, RejectConnection):
                    raise WebSocketRefused(event.status_code)
                raise AssertionError(f"WebSocket refused: {event}")

    async def read(self) -> bytes:
        while True:
            data = await self.reader.read(65536)
            if not data:
                raise Closed()
            self.ws.receive_data(data)
            out = bytearray()
            for event in self.ws.events():
                if isinstance(event, BytesMessage):
                    out += event.data
                elif isinstance(event, CloseConnection):
                    raise Closed()
            if out:
                return bytes(out)

    def write(self, data: bytes) -> None:
        self.writer.write(self.ws.send(BytesMessage(data=data)))


@dataclass
class LinkResult:
    error: int
    reply: LinkReply | None
    ticket: bytes = b""
    """The encrypted ticket sent (what someone watching the wire could replay)."""


class PyClient:
    def __init__(self, stream: ByteStream, channel_type: int) -> None:
        self.stream = stream
        self.channel_type = channel_type
        self._buf = bytearray()
        self.reader: MessageReader | None = None
        self.mini = True
        self.link: LinkResult | None = None
        self.table = SERVER_MESSAGES.get(channel_type, {})
        self.auto_ack: str | bool = False
        """Ack as a client does: True (or "gtk") like spice-gtk, "html5" like spice-html5."""
        self._window = 0
        self._received = 0

    @classmethod
    async def open(
        cls,
        port: int,
        channel_type: int,
        *,
        connection_id: int = 0,
        password: str | None = "",
        common_caps: Sequence[int] = CLIENT_COMMON,
        channel_caps: Sequence[int] = (),
        websocket: bool = False,
        path: str = "/websockify",
        ticket: bytes | None = None,
        mechanism: int = CommonCap.AUTH_SPICE,
        source: str | None = None,
        host: str = "127.0.0.1",
        origin: str | None = None,
        ssl: ssl_module.SSLContext | None = None,
        server: str = "127.0.0.1",
    ) -> PyClient:
        """Connect to ``server``:``port`` (from ``source``, another 127.x.y.z, if given;
        over TLS with ``ssl``) and link a channel. ``host`` and ``origin`` are the
        WebSocket's Host and Origin."""
        local = (source, 0) if source else None
        reader, writer = await asyncio.open_connection(
            server,
            port,
            local_addr=local,
            ssl=ssl,
            server_hostname=server if ssl is not None else None,
        )
        stream: ByteStream
        if websocket:
            ws = WebSocketStream(reader, writer)
            await ws.handshake(path, host, origin)
            stream = ws
        else:
            stream = ByteStream(reader, writer)
        client = cls(stream, channel_type)
        client.link = await client._link(
            connection_id, password, tuple(common_caps), tuple(channel_caps), ticket, mechanism
        )
        return client

    async def _exactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._buf += await self.stream.read()
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    async def _link(
        self,
        connection_id: int,
        password: str | None,
        common: tuple[int, ...],
        channel: tuple[int, ...],
        ticket: bytes | None,
        mechanism: int,
    ) -> LinkResult:
        body = LinkMess(connection_id, self.channel_type, 0, common, channel).pack()
        self.stream.write(LinkHeader(2, 2, len(body)).pack() + body)
        header = LinkHeader.unpack(await self._exactly(16))
        reply = LinkReply.unpack(await self._exactly(header.size))
        if reply.error != LinkErr.OK:
            return LinkResult(reply.error, reply)
        selection = has_cap(common, CommonCap.PROTOCOL_AUTH_SELECTION) and has_cap(
            reply.common_caps, CommonCap.PROTOCOL_AUTH_SELECTION
        )
        if ticket is None:
            ticket = encrypt_ticket(reply.pub_key, password or "")
        out = struct.pack("<I", mechanism) if selection else b""
        self.stream.write(out + ticket)
        (error,) = struct.unpack("<I", await self._exactly(4))
        self.mini = has_cap(common, CommonCap.MINI_HEADER) and has_cap(
            reply.common_caps, CommonCap.MINI_HEADER
        )
        self.reader = MessageReader(mini=self.mini, limit=MAX_SERVER_MESSAGE_SIZE)
        if self._buf:
            self.reader.feed(bytes(self._buf))
            self._buf.clear()
        return LinkResult(error, reply, ticket)

    @property
    def ok(self) -> bool:
        return self.link is not None and self.link.error == LinkErr.OK

    def send(self, message: Message) -> None:
        self.stream.write(frame(message, mini=self.mini, serial=1))

    def send_raw(self, data: bytes) -> None:
        self.stream.write(data)

    async def raw(self, timeout: float | None = 10) -> RawMessage:
        assert self.reader is not None, "the link failed"

        async def get() -> RawMessage:
            assert self.reader is not None
            while (msg := self.reader.next()) is None:
                self.reader.feed(await self.stream.read())
            return msg

        raw = await asyncio.wait_for(get(), timeout)
        if self.auto_ack:
            self._answer(raw)
        return raw

    def _answer(self, raw: RawMessage) -> None:
        """As spice-gtk does: ACK_SYNC at once, then an ACK every `window` messages
        received, not counting the SET_ACK itself; a PONG for each PING."""
        if raw.type == SetAck.TYPE:
            ack = SetAck.unpack(raw.body)
            self.send(AckSync(ack.generation))
            # spice-html5 counts the SET_ACK as well, and acks one message earlier.
            self._window, self._received = ack.window, int(self.auto_ack == "html5")
            return
        if raw.type == Ping.TYPE:
            ping = Ping.unpack(raw.body)
            self.send(Pong(ping.id, ping.timestamp))
        if self._window:
            self._received += 1
            if self._received % self._window == 0:
                self.send(Ack())

    async def read(self, timeout: float = 10) -> Message | RawMessage:
        raw = await self.raw(timeout)
        parsed = parse(self.table, raw.type, raw.body)
        return raw if parsed is None else parsed

    async def expect(self, kind: type[M], timeout: float = 10) -> M:
        """Read until a message of this class arrives (others are skipped)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            msg = await self.read(max(deadline - loop.time(), 0.01))
            if isinstance(msg, kind):
                return msg

    async def collect(self, seconds: float) -> list[Any]:
        """Every message that arrives within ``seconds``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        out: list[Any] = []
        while True:
            left = deadline - loop.time()
            if left <= 0:
                return out
            try:
                out.append(await self.read(left))
            except TimeoutError:
                return out

    async def closed(self, timeout: float = 10) -> bool:
        """Whether the server closes the connection within ``timeout`` (data is discarded).
        A reset counts: a server that closes with the client's data unread resets."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await self.stream.read()
        except (Closed, ConnectionResetError):
            return True
        except (TimeoutError, ConnectionError):
            return False

    def close(self) -> None:
        self.stream.close()


async def open_session(
    port: int,
    *,
    password: str | None = "",
    websocket: bool = False,
    path: str = "/websockify",
    main_caps: Sequence[int] = (),
    source: str | None = None,
) -> tuple[PyClient, MainInit]:
    """A main channel that got MAIN_INIT and the channel list."""
    main = await PyClient.open(
        port,
        ChannelType.MAIN,
        password=password,
        websocket=websocket,
        path=path,
        channel_caps=main_caps,
        source=source,
    )
    assert main.ok, f"link failed: {main.link}"
    init = await main.expect(MainInit)
    main.send(AttachChannels())
    await main.expect(ChannelsList)
    return main, init


GTK_DISPLAY_CAPS = (0x6FBF,)
"""The display channel capabilities spice-gtk sends (MULTI_CODEC, every codec)."""


async def watch_spice(
    port: int,
    frames: int,
    *,
    source: str | None = None,
    timeout: float = 60.0,
) -> list[Message | RawMessage]:
    """A SPICE viewer (as spice-gtk links and acks) from ``source``: what its display
    channel received until ``frames`` stream frames had come."""
    with contextlib.ExitStack() as opened:
        main, init = await open_session(port, source=source)
        opened.callback(main.close)
        display = await PyClient.open(
            port,
            ChannelType.DISPLAY,
            connection_id=init.session_id,
            channel_caps=GTK_DISPLAY_CAPS,
            source=source,
        )
        opened.callback(display.close)
        display.auto_ack = True
        display.send(DisplayInit(1, 1000, 1, 1000))
        got: list[Message | RawMessage] = []
        async with asyncio.timeout(timeout):
            while sum(isinstance(m, StreamData | StreamDataSized) for m in got) < frames:
                got.append(await display.read(timeout))
        return got
