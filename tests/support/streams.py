"""Raw client connections for the tests that send bytes a good client would not: asyncio
streams from any loopback address, WebSocket handshakes and frames as a client sends
them, SPICE link messages, handshakes left half-sent, a connection that sends and reads
until the server closes; and ``run``, a client coroutine with a time bound.

It knows the wire formats' bytes; it does not start servers (tests/support/harness.py).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import struct
from collections.abc import Coroutine
from typing import Any

from saffron.bench.spice_client import CLIENT_COMMON_CAPS
from saffron.spice.protocol import wire as w

IO_TIMEOUT = 60.0
"""Safety net only: how long a client waits for the server before the test fails."""

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def run(coro: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
    """Run a client coroutine on a new loop, failing it after ``timeout`` seconds."""

    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def connect(port: int, source: str = "127.0.0.1") -> Streams:
    """A TCP connection to 127.0.0.1:``port`` from ``source`` (any 127.x.y.z)."""
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


def local_port(streams: Streams) -> int:
    return int(streams[1].get_extra_info("sockname")[1])


UPGRADE = (
    "GET {path} HTTP/1.1\r\n"
    "Host: 127.0.0.1\r\n"
    "Upgrade: websocket\r\n"
    "Connection: Upgrade\r\n"
    "Sec-WebSocket-Key: {key}\r\n"
    "Sec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Protocol: binary\r\n"
    "\r\n"
)


def upgrade(path: str) -> bytes:
    """A WebSocket handshake request for ``path``."""
    return UPGRADE.format(path=path, key=base64.b64encode(bytes(16)).decode()).encode()


def ws_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = b"\x11\x22\x33\x44",
    length: int | None = None,
) -> bytes:
    """One WebSocket frame as a client sends it (masked), with any length field."""
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | (rsv & 7) << 4 | (opcode & 15)
    bit = 0x80 if mask is not None else 0
    if n < 126:
        head = bytes([first, bit | n])
    elif n < 1 << 16:
        head = bytes([first, bit | 126]) + struct.pack(">H", n)
    else:
        head = bytes([first, bit | 127]) + struct.pack(">Q", n)
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def link_mess(channel: int = 1) -> bytes:
    """A SPICE link message for ``channel`` (the main channel by default), no ticket."""
    body = w.LinkMess(0, channel, 0, CLIENT_COMMON_CAPS, ()).pack()
    return w.LinkHeader(2, 2, len(body)).pack() + body


HALF_SENT: dict[str, tuple[str, bytes, str]] = {
    "spice-half-header": ("spice", w.MAGIC + b"\x02\0", "no SPICE link within"),
    "spice-half-link": ("spice", link_mess()[:20], "no SPICE link within"),
    "spice-no-ticket": ("spice", link_mess(), "no SPICE link within"),
    "spice-port-half-upgrade": ("spice", b"GET / HTTP/1.1\r\nHost:", "no SPICE link within"),
    "spice-port-upgraded-only": ("spice", upgrade("/"), "no SPICE link within"),
    "web-half-request": ("web", b"GET / HTTP/1.1\r\nHost: 127.0", "no complete request"),
    "web-half-body": (
        "web",
        b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n\r\npassword=",
        "no complete request",
    ),
    "web-half-upgrade": ("web", upgrade("/ws")[:40], "no complete request"),
    "web-spice-upgraded-only": ("web", upgrade("/spice"), "no SPICE link within"),
}
"""Handshakes sent in part, then left waiting: port ("spice" or "web"), the bytes, and
words of the warning the server closes them with."""


async def exchange(streams: Streams, chunks: list[bytes], *, half_close: bool) -> tuple[int, bytes]:
    """Read all the server sends until it closes (a reset counts as closing), while
    sending the chunks (stopping where the server closed meanwhile) and then, if told
    to, half-closing; returns the bytes sent and the server's answer. Fails if the
    server keeps the connection open for ``IO_TIMEOUT``."""
    reader, writer = streams
    answer = bytearray()

    async def read() -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(1 << 16):
                answer.extend(data)

    reading = asyncio.ensure_future(read())
    sent = 0
    try:
        with contextlib.suppress(OSError):  # a reset, a broken pipe, not connected
            for chunk in chunks:
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
            if half_close:
                writer.write_eof()
        try:
            await asyncio.wait_for(reading, IO_TIMEOUT)
        except TimeoutError:
            raise AssertionError(
                f"the server kept the connection open ({len(answer)} bytes answered)"
            ) from None
    finally:
        reading.cancel()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return sent, bytes(answer)
