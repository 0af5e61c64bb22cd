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
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import ClientError, ClientSession, WSMsgType

from ..spice.protocol.wire import (
    ChannelType,
    DisplayCap,
    DisplayInit,
    LinkErr,
    MainInit,
    StreamData,
    StreamDataSized,
    make_caps,
)
from ..web.protocol import VideoHeader, unpack_video
from .spice_client import Closed, PyClient

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


async def spice_viewer(
    host: str,
    port: int,
    tally: Tally,
    *,
    display_caps: tuple[int, ...] = SPICE_GTK_DISPLAY_CAPS,
    password: str | None = None,
) -> None:
    """Watch until cancelled (or the server closes): a main and a display channel,
    acknowledged and ponged as spice-gtk does."""
    opened: list[PyClient] = []
    try:
        main = await _link(host, port, ChannelType.MAIN, password, opened)
        try:
            session_id = (await main.expect(MainInit, timeout=LINK_WAIT_S)).session_id
        except (Closed, TimeoutError):
            raise ViewerError("the server closed the main channel before MAIN_INIT") from None
        display = await _link(
            host, port, ChannelType.DISPLAY, password, opened, session_id, display_caps
        )
        display.send(DisplayInit(1, 1000, 1, 1000))
        tally.connects += 1
        drain = asyncio.ensure_future(_drain(main))
        try:
            while True:
                raw = await display.raw(timeout=None)
                if raw.type in (StreamData.TYPE, StreamDataSized.TYPE):
                    tally.frames += 1
        except Closed:
            return
        finally:
            drain.cancel()
    finally:
        for client in opened:
            client.close()


LINK_WAIT_S = 30.0
"""How long a measuring viewer waits for the server's first answers (as spice-html5)."""


async def _link(
    host: str,
    port: int,
    channel_type: int,
    password: str | None,
    opened: list[PyClient],
    connection_id: int = 0,
    channel_caps: tuple[int, ...] = (),
) -> PyClient:
    """A linked channel that acks as spice-gtk does, or ViewerError saying why not."""
    try:
        client = await PyClient.open(
            port,
            channel_type,
            server=host,
            password=password,
            connection_id=connection_id,
            channel_caps=channel_caps,
        )
    except (OSError, Closed, asyncio.IncompleteReadError) as exc:
        raise ViewerError(f"link failed: {exc!r}") from None
    opened.append(client)
    if not client.ok:
        error = client.link.error if client.link is not None else LinkErr.ERROR
        raise ViewerError(f"link refused: {LinkErr(error).name}")
    client.auto_ack = True
    return client


async def _drain(channel: PyClient) -> None:
    with contextlib.suppress(Closed):
        while True:
            await channel.raw(timeout=None)


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
