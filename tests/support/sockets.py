"""Blocking client sockets for the tests of the connection guards: one connection or many
from a given loopback address, an HTTP request line, reading until the server closes,
and which of many sockets the server has closed. Asyncio clients are
tests/support/streams.py's."""

from __future__ import annotations

import select
import socket

from tests.support.streams import IO_TIMEOUT

CONNECT_TIMEOUT = 30.0
"""Safety net only: how long ``connect``'s socket waits for the server."""


def connect(port: int, *, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(CONNECT_TIMEOUT)
    sock.connect(("127.0.0.1", port))
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; ConnectionResetError if it resets."""
    out = bytearray()
    while data := sock.recv(1 << 16):
        out += data
    return bytes(out)


def get(path: str, port: int) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()


def open_many(port: int, source: str, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.settimeout(IO_TIMEOUT)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        socks.append(sock)
    return socks


def closed_by_server(socks: list[socket.socket]) -> list[socket.socket]:
    """The sockets the server has closed (readable with nothing, or reset), or refused
    with a 503."""
    poller = select.poll()
    by_fd = {sock.fileno(): sock for sock in socks}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    found = []
    for fd, _ in poller.poll(0):
        sock = by_fd[fd]
        try:
            data = sock.recv(4096, socket.MSG_PEEK)
        except ConnectionResetError:
            found.append(sock)
            continue
        if not data or data.startswith(b"HTTP/1.1 503"):
            found.append(sock)
    return found


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()
