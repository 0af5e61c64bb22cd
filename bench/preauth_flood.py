"""How long a visitor waits while others hold connections that never sign in.

Runs a Saffron with a password and the default connection limits in-process,
opens 400 half-sent ``POST /login`` requests from 127.0.0.2-5 (100 each), then
asks for the page from 127.0.0.9 until it gets it, and, first, links a
SPICE main channel from 127.0.0.9. Prints one JSON line: the visitor's wait, the answers it
got meanwhile, and how long the SPICE link took.

    PYTHONPATH=src:. python bench/preauth_flood.py
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time

from saffron.app import Options, Server
from saffron.display import Display
from saffron.sources.pattern import PatternSource
from saffron.spice.wire import ChannelType
from tests.spice.pyclient import PyClient

HALF_SENT = (
    b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n"
    b"Content-Type: application/x-www-form-urlencoded\r\n\r\npassword="
)


def half_sent(port: int, source: str, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
        sock.sendall(HALF_SENT)
        socks.append(sock)
    return socks


def visit(port: int) -> int:
    """One GET / from 127.0.0.9: the status line's code (0: closed without one)."""
    with socket.create_connection(
        ("127.0.0.1", port), timeout=30, source_address=("127.0.0.9", 0)
    ) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answer = b""
        try:
            while data := sock.recv(65536):
                answer += data
        except ConnectionResetError:
            pass
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


async def spice_link(port: int) -> int:
    client = await PyClient.open(port, ChannelType.MAIN, password="secret", source="127.0.0.9")
    client.close()
    assert client.link is not None
    return client.link.error


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("saffron").setLevel(logging.ERROR)
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    display = Display()
    opts = Options(
        source="pattern",
        web=("127.0.0.1", 0),
        spice=("127.0.0.1", 0),
        codec="mjpeg",
        fps=10,
        size=(160, 96),
        password="secret",
    )
    server = Server(opts, display, PatternSource(display, 160, 96, 10))
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(120)
    assert server.web is not None and server.spice is not None
    web_port, spice_port = server.web.addresses[0][1], server.spice.port
    flood = [s for i in range(2, 6) for s in half_sent(web_port, f"127.0.0.{i}", 100)]
    try:
        time.sleep(0.5)
        start = time.monotonic()
        try:
            link = asyncio.run(asyncio.wait_for(spice_link(spice_port), 60))
            linked = f"LinkErr {link} in {time.monotonic() - start:.2f} s"
        except Exception as exc:
            linked = f"failed after {time.monotonic() - start:.2f} s: {exc!r}"
        start = time.monotonic()
        answers: dict[int, int] = {}
        while True:
            status = visit(web_port)
            answers[status] = answers.get(status, 0) + 1
            if status == 200 or time.monotonic() - start > 60:
                break
            time.sleep(0.5)
        waited = time.monotonic() - start
        print(
            json.dumps(
                {
                    "flood": len(flood),
                    "visitor_wait_s": round(waited, 2),
                    "visitor_answers": answers,
                    "spice_link": linked,
                }
            )
        )
    finally:
        for sock in flood:
            sock.close()
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(30)


if __name__ == "__main__":
    main()
