"""Thousands of connections: the per-address and total caps hold, refusals are logged in
a few lines, two good viewers keep watching throughout, and every slot comes back.

The flood comes from other loopback addresses (127.0.0.2 and up, all of which
reach a server on 127.0.0.1) so the per-address cap can be told from the total.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import resource
import select
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from saffron import limits as limits_module
from saffron import soak
from saffron.app import Options, Server
from saffron.display import Display
from saffron.limits import ConnectionLimits
from saffron.sources.pattern import PatternSource
from saffron.spice import wire as w
from tests.test_fuzz_net import (
    IO_TIMEOUT,
    Records,
    main_init,
    read_until_closed,
    spice_link,
    stop_watchers,
    wait_until,
)

TOTAL = 300
PER_ADDRESS = 100
WANTED = 1000
"""Connections from one address in the per-address flood (fewer if the open-file
limit cannot be raised that far)."""


def _raise_fd_limit() -> int:
    """Raise this process's open-file limit as far as allowed; the flood fits in it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 8192 if hard == resource.RLIM_INFINITY else min(hard, 8192)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


FLOOD = min(WANTED, (_raise_fd_limit() - 2 * TOTAL - 200) // 2)


@dataclass
class Flooded:
    server: Server
    limits: ConnectionLimits
    web_port: int
    spice_port: int
    records: Records
    spice_watch: soak.Tally
    web_watch: soak.Tally
    baseline: int

    def watchers_progress(self) -> None:
        seen = (self.spice_watch.frames, self.web_watch.frames)
        assert wait_until(
            lambda: self.spice_watch.frames > seen[0] and self.web_watch.frames > seen[1],
            timeout=60,
        ), f"the good viewers stopped: {self.spice_watch}, {self.web_watch}"


@pytest.fixture(scope="module")
def flooded() -> Iterator[Flooded]:
    records = Records()
    logging.getLogger().addHandler(records)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="saffron", daemon=True)
    thread.start()
    display = Display()
    opts = Options(
        source="pattern",
        web=("127.0.0.1", 0),
        spice=("127.0.0.1", 0),
        codec="mjpeg",
        fps=30,
        size=(160, 96),
        max_connections=TOTAL,
        max_per_address=PER_ADDRESS,
    )
    server = Server(opts, display, PatternSource(display, 160, 96, 30))
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(120)
    assert server.web is not None and server.spice is not None
    web_port, spice_port = server.web.addresses[0][1], server.spice.port  # type: ignore[attr-defined]
    watch_loop = asyncio.new_event_loop()
    watch_thread = threading.Thread(target=watch_loop.run_forever, name="watchers", daemon=True)
    watch_thread.start()
    spice_watch, web_watch = soak.Tally(), soak.Tally()
    tasks = [
        asyncio.run_coroutine_threadsafe(
            soak.spice_viewer("127.0.0.1", spice_port, spice_watch), watch_loop
        ),
        asyncio.run_coroutine_threadsafe(
            soak.web_viewer(f"http://127.0.0.1:{web_port}/", web_watch), watch_loop
        ),
    ]
    try:
        assert wait_until(lambda: spice_watch.frames > 0 and web_watch.frames > 0, timeout=60)
        yield Flooded(
            server,
            server.limits,
            web_port,
            spice_port,
            records,
            spice_watch,
            web_watch,
            server.limits.total,
        )
        assert not any(t.done() for t in tasks), [t.exception() for t in tasks if t.done()]
        assert not records.errors()
    finally:
        stop_watchers(watch_loop, tasks)
        watch_thread.join(5)
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        logging.getLogger().removeHandler(records)


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


def refusals_logged(records: Records, start: int, address: str) -> int:
    """How many refusals of ``address`` the log accounts for (first line + summed lines)."""
    total = 0
    for _, name, text in records.since(start):
        if name != "saffron.limits" or f"from {address}:" not in text:
            continue
        more = re.search(r"refused (\d+) more connection", text)
        total += int(more.group(1)) if more else 1
    return total


def test_per_address_cap(flooded: Flooded, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits_module, "REFUSAL_LOG_INTERVAL_S", 0.2)
    limits, start = flooded.limits, len(flooded.records)
    refused_before = limits.refused
    socks = open_many(flooded.spice_port, "127.0.0.2", FLOOD)
    try:
        assert wait_until(lambda: limits.refused - refused_before == FLOOD - PER_ADDRESS)
        assert limits.open_from("127.0.0.2") == PER_ADDRESS
        assert wait_until(lambda: len(closed_by_server(socks)) == FLOOD - PER_ADDRESS)
        flooded.watchers_progress()
        # Another address is not affected: a viewer from 127.0.0.1 links as usual.
        main = socket.create_connection(("127.0.0.1", flooded.spice_port), timeout=IO_TIMEOUT)
        main_init(main, spice_link(main, w.ChannelType.MAIN))
        main.close()
        lines = [text for _, name, text in flooded.records.since(start) if name == "saffron.limits"]
        assert lines[0] == (
            "refused a SPICE connection from 127.0.0.2: 100 connections from that address "
            "are open, the most allowed (--max-per-address)"
        ), lines
        assert wait_until(
            lambda: refusals_logged(flooded.records, start, "127.0.0.2") == FLOOD - PER_ADDRESS
        )
        assert len(lines) < 20, "a flood is summed up, not logged line by line"
    finally:
        close_all(socks)
    assert wait_until(lambda: limits.total == flooded.baseline)
    assert limits.open_from("127.0.0.2") == 0
    flooded.watchers_progress()


def test_total_cap_over_both_ports(flooded: Flooded, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits_module, "REFUSAL_LOG_INTERVAL_S", 0.2)
    limits = flooded.limits
    refused_before = limits.refused
    addresses = [f"127.0.0.{i}" for i in range(3, 10)]
    socks: dict[str, list[socket.socket]] = {}
    try:
        for i, address in enumerate(addresses):
            port = flooded.web_port if i % 2 else flooded.spice_port
            socks[address] = open_many(port, address, PER_ADDRESS)
        opened = PER_ADDRESS * len(addresses)
        admitted = TOTAL - flooded.baseline
        assert wait_until(lambda: limits.refused - refused_before == opened - admitted)
        assert limits.total == TOTAL
        everyone = [s for group in socks.values() for s in group]
        assert wait_until(lambda: len(closed_by_server(everyone)) == opened - admitted)
        busy = [s for s in socks[addresses[-1]] if s in closed_by_server(socks[addresses[-1]])]
        if addresses.index(addresses[-1]) % 2:  # a web address: refused with a 503
            assert read_until_closed(busy[0]).startswith(b"HTTP/1.1 503 Service Unavailable")
        flooded.watchers_progress()
        warned = [t for _, n, t in flooded.records.since(0) if "(--max-connections)" in t]
        assert warned, "the total cap's refusals are logged"
    finally:
        for group in socks.values():
            close_all(group)
    assert wait_until(lambda: limits.total == flooded.baseline)
    flooded.watchers_progress()


def test_the_flooded_address_can_watch_again(flooded: Flooded) -> None:
    """Once its connections are gone, an address that flooded is served like any other."""
    tally = soak.Tally()

    async def watch() -> None:
        task = asyncio.ensure_future(soak.spice_viewer("127.0.0.1", flooded.spice_port, tally))
        for _ in range(600):
            if tally.frames >= 3:
                break
            await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(watch())
    assert tally.frames >= 3


def test_cli_flags() -> None:
    """--max-per-address reaches the server; nonsense values are refused by the parser."""
    bad = subprocess.run(
        [sys.executable, "-m", "saffron.cli", "serve", "--max-connections", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "--max-connections: 0 must be above zero" in bad.stderr

    spice = soak.free_port()
    with saffron_spice_only(spice, "--max-per-address", "2") as log:
        socks = open_many(spice, "127.0.0.1", 3)
        try:
            assert wait_until(lambda: len(closed_by_server(socks)) == 1)
            assert wait_until(lambda: "(--max-per-address)" in "".join(log))
        finally:
            close_all(socks)
    text = "".join(log)
    assert "refused a SPICE connection from 127.0.0.1: 2 connections" in text, text
    assert "Traceback" not in text and " ERROR " not in text, text


@contextlib.contextmanager
def saffron_spice_only(spice: int, *args: str) -> Iterator[list[str]]:
    """``saffron serve`` with SPICE only; yields its output lines as they come."""
    cmd = [
        *(sys.executable, "-m", "saffron.cli", "serve", "--source", "pattern", "--no-web"),
        *("--spice", f"127.0.0.1:{spice}", "--size", "160x96", "--fps", "10", *args),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in iter(proc.stdout.readline, ""):
            lines.append(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        assert wait_until(lambda: "remote-viewer spice://" in "".join(lines), timeout=60), lines
        yield lines
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(5)
