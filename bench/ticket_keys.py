"""What a fresh RSA ticket key per SPICE link costs (run from the repo root, PYTHONPATH=src).

Prints RSA-1024 generation time, then the time a Python client takes to link a
main channel (with a password) and the event loop's longest stall meanwhile, for:
``pool`` (Saffron: keys made ahead by the worker), ``no pool`` (each link waits
for the worker to make its key), ``on the loop`` (each link makes its key on the
event loop: the design not taken) and ``one key`` (the old, replayable way).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from saffron.spice import wire as w
from saffron.spice.link import TicketKey
from tests.spice.helpers import Running, spice_server
from tests.spice.pyclient import PyClient

LINKS = 100
PAUSE_S = 0.05
"""Between links, as channels of a few clients arrive; the pool refills meanwhile."""


def summary(values: list[float]) -> str:
    values = sorted(values)
    p95 = values[int(0.95 * (len(values) - 1))]
    median = statistics.median(values)
    return f"median {median:5.2f} ms, p95 {p95:5.2f} ms, max {values[-1]:5.2f} ms"


def generation(n: int = 200) -> None:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        rsa.generate_private_key(65537, 1024)
        times.append((time.perf_counter() - start) * 1000)
    print(f"RSA-1024 generation ({n}):  {summary(times)}")


def links(name: str, setup: Callable[[Running], None]) -> None:
    with spice_server(scene=False, password="secret") as (srv, _):
        srv.call(lambda: setup(srv))
        lag: list[float] = []

        async def ticker() -> None:  # on the server's loop: how late does it wake?
            while True:
                start = time.perf_counter()
                await asyncio.sleep(0.001)
                lag.append((time.perf_counter() - start) * 1000 - 1)

        task = srv.call(lambda: srv.loop.create_task(ticker()))

        async def go() -> list[float]:
            times = []
            for _ in range(LINKS):
                await asyncio.sleep(PAUSE_S)
                start = time.perf_counter()
                client = await PyClient.open(srv.port, w.ChannelType.MAIN, password="secret")
                times.append((time.perf_counter() - start) * 1000)
                assert client.ok
                client.close()
            return times

        times = asyncio.run(go())
        srv.call(task.cancel)
        print(f"link, {name:12}  {summary(times)}; loop stall max {max(lag):5.2f} ms")


def no_pool(srv: Running) -> None:
    srv.server.keys.size = 0
    while srv.server.keys.take() is not None:
        pass


def on_the_loop(srv: Running) -> None:
    setattr(srv.server.keys, "take", TicketKey)  # noqa: B010 (a test double)


def one_key(srv: Running) -> None:
    key = TicketKey()
    setattr(srv.server.keys, "take", lambda: key)  # noqa: B010


if __name__ == "__main__":
    generation()
    links("pool", lambda srv: None)
    links("no pool", no_pool)
    links("on the loop", on_the_loop)
    links("one key", one_key)
