"""How fast a client can guess the password, on SPICE and on the web login form.

Runs a Saffron with a password in-process, then, for a few seconds each, 8 SPICE
clients linking with a wrong ticket and 95 web clients posting a wrong password,
all in parallel from 127.0.0.1. Counts the guesses Saffron actually checked (calls
of its password comparisons) and the attempts made, and prints one JSON line.

    PYTHONPATH=src:. python bench/guessing.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import threading
import time
from typing import Any

import aiohttp

from saffron.app import Options, Server
from saffron.display import Display
from saffron.sources.pattern import PatternSource
from saffron.spice import link as link_module
from saffron.spice.wire import ChannelType
from saffron.web import auth as auth_module
from tests.spice.pyclient import PyClient

PASSWORD = "the right one"


class Counted:
    """Calls of the password comparisons, by front end."""

    def __init__(self) -> None:
        self.spice = 0
        self.web = 0
        match = link_module.passwords_match

        def spice(given: bytes, expected: str) -> bool:
            self.spice += 1
            return match(given, expected)

        link_module.passwords_match = spice
        compare = auth_module.hmac.compare_digest

        class Hmac:
            @staticmethod
            def compare_digest(a: Any, b: Any) -> bool:
                self.web += 1
                return compare(a, b)

        auth_module.hmac = Hmac  # type: ignore[assignment]


async def spice_guesses(port: int, seconds: float, clients: int) -> int:
    end = time.monotonic() + seconds
    made = 0

    async def one() -> None:
        nonlocal made
        while time.monotonic() < end:
            client = await PyClient.open(port, ChannelType.MAIN, password="wrong")
            made += 1
            client.close()

    await asyncio.gather(*(one() for _ in range(clients)))
    return made


async def web_guesses(port: int, seconds: float, clients: int) -> dict[int, int]:
    end = time.monotonic() + seconds
    statuses: dict[int, int] = {}
    url = f"http://127.0.0.1:{port}/login"

    async def one(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < end:
            async with session.post(url, data={"password": "wrong"}) as r:
                await r.read()
                statuses[r.status] = statuses.get(r.status, 0) + 1

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(one(session) for _ in range(clients)))
    return statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    counted = Counted()
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
        password=PASSWORD,
    )
    server = Server(opts, display, PatternSource(display, 160, 96, 10))
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(120)
    assert server.web is not None and server.spice is not None
    web_port, spice_port = server.web.addresses[0][1], server.spice.port
    try:
        made = asyncio.run(spice_guesses(spice_port, args.seconds, 8))
        spice = {"attempts": made, "checked": counted.spice}
        guesses = getattr(server, "guesses", None)
        if guesses is not None:  # the web starts afresh: the guess count is shared
            guesses.succeeded("127.0.0.1")
        statuses = asyncio.run(web_guesses(web_port, args.seconds, 95))
        web = {"answers": statuses, "checked": counted.web}
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(30)
    s = args.seconds
    print(
        json.dumps(
            {
                "seconds": s,
                "spice": {**spice, "checked_per_s": round(spice["checked"] / s, 1)},
                "web": {**web, "checked_per_s": round(web["checked"] / s, 1)},
            }
        )
    )


if __name__ == "__main__":
    main()
