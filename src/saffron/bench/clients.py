"""The measuring clients: a web viewer and a light SPICE viewer, written once for the
benches and the tests.

Both acknowledge what they receive, as a real viewer does (so the server keeps
sending), and decode nothing themselves: what a frame holds is up to the caller
(``watch_web`` hands each one over before acknowledging it). The fuzz and fault
tests use them to check that a good viewer keeps getting frames while bad ones
are thrown out; the soak uses them as its coming and going viewers.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from aiohttp import ClientError, ClientSession, WSMsgType

from ..spice.protocol.link import encrypt_ticket
from ..spice.protocol.wire import (
    MAX_SERVER_MESSAGE_SIZE,
    Ack,
    AckSync,
    ChannelType,
    CommonCap,
    DisplayCap,
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
)
from ..web.protocol import VideoHeader, unpack_video

CLIENT_COMMON_CAPS = make_caps(
    [CommonCap.PROTOCOL_AUTH_SELECTION, CommonCap.AUTH_SPICE, CommonCap.MINI_HEADER]
)
SPICE_GTK_DISPLAY_CAPS = make_caps(
    [
        DisplayCap.SIZED_STREAM,
        DisplayCap.MONITORS_CONFIG,
        DisplayCap.COMPOSITE,
        DisplayCap.STREAM_REPORT,
        DisplayCap.MULTI_CODEC,
        DisplayCap.CODEC_MJPEG,
        DisplayCap.CODEC_VP8,
        DisplayCap.CODEC_H264,
        DisplayCap.CODEC_VP9,
    ]
)
"""What spice-gtk 0.42 offers for the display channel, minus GL and LZ4."""


class ViewerError(Exception):
    """A viewer could not connect or was refused."""


@dataclass
class Tally:
    """What one viewer (or several) saw."""

    frames: int = 0
    connects: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        self.frames += other.frames
        self.connects += other.connects
        self.errors += other.errors


# -- a SPICE viewer -------------------------------------------------------------------


async def spice_link(
    host: str,
    port: int,
    channel_type: int,
    *,
    connection_id: int = 0,
    channel_caps: tuple[int, ...] = (),
    password: str | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
    """Open and link one channel as spice-gtk does; returns its streams and the mini header."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        body = LinkMess(connection_id, channel_type, 0, CLIENT_COMMON_CAPS, channel_caps).pack()
        writer.write(LinkHeader(2, 2, len(body)).pack() + body)
        header = LinkHeader.unpack(await reader.readexactly(LinkHeader.SIZE))
        reply = LinkReply.unpack(await reader.readexactly(header.size))
        if reply.error != LinkErr.OK:
            raise ViewerError(f"link refused: {LinkErr(reply.error).name}")
        selection = has_cap(reply.common_caps, CommonCap.PROTOCOL_AUTH_SELECTION)
        mechanism = struct.pack("<I", CommonCap.AUTH_SPICE) if selection else b""
        writer.write(mechanism + encrypt_ticket(reply.pub_key, password or ""))
        (result,) = struct.unpack("<I", await reader.readexactly(4))
        if result != LinkErr.OK:
            raise ViewerError(f"link refused: {LinkErr(result).name}")
    except (OSError, asyncio.IncompleteReadError) as exc:
        writer.close()
        raise ViewerError(f"link failed: {exc!r}") from None
    except BaseException:
        writer.close()
        raise
    return reader, writer, has_cap(reply.common_caps, CommonCap.MINI_HEADER)


class SpiceChannel:
    """A linked channel's messages, acknowledged and ponged as spice-gtk does."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, mini: bool):
        self.reader, self.writer, self.mini = reader, writer, mini
        self._messages = MessageReader(mini=mini, limit=MAX_SERVER_MESSAGE_SIZE)
        self._window = 0
        self._received = 0

    def send(self, message: Message) -> None:
        self.writer.write(frame(message, mini=self.mini, serial=1))

    async def messages(self) -> AsyncIterator[RawMessage]:
        while True:
            while (raw := self._messages.next()) is not None:
                if raw.type == SetAck.TYPE:
                    ack = SetAck.unpack(raw.body)
                    self.send(AckSync(ack.generation))
                    self._window, self._received = ack.window, 0
                    continue
                if raw.type == Ping.TYPE:
                    ping = Ping.unpack(raw.body)
                    self.send(Pong(ping.id, ping.timestamp))
                if self._window:
                    self._received += 1
                    if self._received % self._window == 0:
                        self.send(Ack())
                yield raw
            data = await self.reader.read(1 << 16)
            if not data:
                return
            self._messages.feed(data)

    def close(self) -> None:
        self.writer.close()


async def spice_viewer(
    host: str,
    port: int,
    tally: Tally,
    *,
    display_caps: tuple[int, ...] = SPICE_GTK_DISPLAY_CAPS,
    password: str | None = None,
) -> None:
    """Watch until cancelled (or the server closes): a main and a display channel."""
    reader, writer, mini = await spice_link(host, port, ChannelType.MAIN, password=password)
    main = SpiceChannel(reader, writer, mini)
    display: SpiceChannel | None = None
    try:
        session_id: int | None = None
        async for raw in main.messages():
            if raw.type == MainInit.TYPE:
                session_id = MainInit.unpack(raw.body).session_id
                break
        if session_id is None:
            raise ViewerError("the server closed the main channel before MAIN_INIT")
        reader, writer, mini = await spice_link(
            host,
            port,
            ChannelType.DISPLAY,
            connection_id=session_id,
            channel_caps=display_caps,
            password=password,
        )
        display = SpiceChannel(reader, writer, mini)
        display.send(DisplayInit(1, 1000, 1, 1000))
        tally.connects += 1
        drain = asyncio.ensure_future(_drain(main))
        try:
            async for raw in display.messages():
                if raw.type in (StreamData.TYPE, StreamDataSized.TYPE):
                    tally.frames += 1
        finally:
            drain.cancel()
    finally:
        main.close()
        if display is not None:
            display.close()


async def _drain(channel: SpiceChannel) -> None:
    async for _ in channel.messages():
        pass


# -- a web viewer -----------------------------------------------------------------------

POLL_S = 1.0
"""A viewer with a deadline looks at the clock at least this often while no frame comes."""


@dataclass(frozen=True)
class WebFrame:
    """One video message of the page's WebSocket."""

    header: VideoHeader
    data: bytes
    """The encoded frame."""
    size: int
    """Bytes of the whole message, header included (what the link carried)."""


async def watch_web(
    url: str,
    on_frame: Callable[[WebFrame], object],
    *,
    codec: str | None = None,
    seconds: float | None = None,
    on_start: Callable[[], object] | None = None,
) -> None:
    """Watch the page at ``url`` as its script does: hello, start, then every frame
    unpacked, handed to ``on_frame`` and acknowledged right after.

    ``codec`` is the one to ask for (default: the server's). ``on_start`` runs once
    the start message is sent; ``seconds`` after that, the viewer leaves. Without
    ``seconds`` it watches until cancelled or the server closes.
    """
    try:
        async with (
            ClientSession() as session,
            session.ws_connect(url.rstrip("/") + "/ws", max_msg_size=0) as ws,
        ):
            hello = json.loads((await ws.receive()).data)
            await ws.send_str(json.dumps({"type": "start", "codec": codec or hello["default"]}))
            if on_start is not None:
                on_start()
            end = None if seconds is None else time.monotonic() + seconds
            while end is None or time.monotonic() < end:
                try:
                    msg = await asyncio.wait_for(ws.receive(), None if end is None else POLL_S)
                except TimeoutError:
                    continue
                if msg.type == WSMsgType.BINARY:
                    header, data = unpack_video(msg.data)
                    on_frame(WebFrame(header, data, len(msg.data)))
                    await ws.send_str(json.dumps({"type": "ack", "frame": header.frame}))
                elif msg.type != WSMsgType.TEXT:
                    break
    except (ClientError, OSError, ValueError, KeyError, TypeError) as exc:
        raise ViewerError(f"web viewer failed: {exc!r}") from None


async def web_viewer(url: str, tally: Tally, *, codec: str | None = None) -> None:
    """Watch the page's WebSocket until cancelled, counting in ``tally``."""

    def counted(_: WebFrame) -> None:
        tally.frames += 1

    def connected() -> None:
        tally.connects += 1

    await watch_web(url, counted, codec=codec, on_start=connected)
