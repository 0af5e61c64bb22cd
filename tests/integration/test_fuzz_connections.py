"""Thousands of connections: the per-address and total caps hold, refusals are logged in
a few lines, two good viewers keep watching throughout, and every slot comes back.
(Connections that have not authenticated have a share of their own, and time to
authenticate: tests/integration/test_preauth.py.)

The flood comes from other loopback addresses (127.0.0.2 and up, all of which
reach a server on 127.0.0.1) so the per-address cap can be told from the total.
How many connections were tried, refused and admitted goes to
.cache/test-artifacts/connection-caps.json and to one line of pytest's terminal
summary (the per-address flood is smaller where the open-file limit is low).
"""

from __future__ import annotations

import contextlib
import re
import resource
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from saffron.bench.process import SaffronProcess, free_port
from saffron.bench.spice_client import open_session, watch_spice
from saffron.net import admission as admission_module
from saffron.net import limits as limits_module
from tests.support.artifacts import publish
from tests.support.harness import IO_TIMEOUT, Live, Records, watched_saffron
from tests.support.process import run_saffron
from tests.support.sockets import close_all, closed_by_server, open_many
from tests.support.streams import connect, exchange
from tests.support.wait import wait_until

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


FD_LIMIT = _raise_fd_limit()
FLOOD = min(WANTED, (FD_LIMIT - 2 * TOTAL - 200) // 2)


@pytest.fixture(scope="module")
def flooded() -> Iterator[Live]:
    with watched_saffron(max_connections=TOTAL, max_per_address=PER_ADDRESS) as live:
        yield live


@pytest.fixture(scope="module")
def figures(flooded: Live) -> Iterator[dict[str, Any]]:
    """What the cap tests tried, and how many the server refused and admitted."""
    figures: dict[str, Any] = {}
    yield figures
    parts = []
    if "per_address" in figures:
        f = figures["per_address"]
        shrunk = "" if f["tried"] == WANTED else f" (of {WANTED}: open-file limit {FD_LIMIT})"
        parts.append(
            f"per address (at most {PER_ADDRESS}): {f['tried']} tried from {f['from']}"
            f"{shrunk}, {f['refused']} refused, {f['admitted']} admitted"
        )
    if "total" in figures:
        f = figures["total"]
        parts.append(
            f"total (at most {TOTAL}, {f['watchers']} of them the good viewers'): "
            f"{f['tried']} tried from {f['addresses']} addresses on both ports, "
            f"{f['refused']} refused, {f['admitted']} admitted"
        )
    if parts:
        publish("connection-caps", figures, "connection caps: " + "; ".join(parts))


def authenticated_many(port: int, source: str, count: int) -> list[socket.socket]:
    """``count`` web connections from ``source`` that each had a request answered (which,
    without a password, authenticates them), kept open."""
    socks = open_many(port, source, count)
    for sock in socks:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    for sock in socks:
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(4096)
        head, body = answer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200 "), head
        length = re.search(rb"Content-Length: (\d+)", head, re.I)
        assert length is not None, head
        while len(body) < int(length.group(1)):
            body += sock.recv(4096)
    return socks


def refusals_logged(records: Records, start: int, address: str) -> int:
    """How many refusals of ``address`` the log accounts for (first line + summed lines)."""
    total = 0
    for _, name, text in records.since(start):
        if name != "saffron.limits" or f"from {address}:" not in text:
            continue
        more = re.search(r"refused (\d+) more connection", text)
        total += int(more.group(1)) if more else 1
    return total


def test_per_address_cap(
    flooded: Live, figures: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits_module, "REFUSAL_LOG_INTERVAL_S", 0.2)
    monkeypatch.setattr(admission_module, "AUTH_TIMEOUT_S", IO_TIMEOUT)  # kept until counted
    limits, start = flooded.server.limits, len(flooded.records)
    refused_before = limits.refused
    socks = open_many(flooded.spice_port, "127.0.0.2", FLOOD)
    try:
        refused = wait_until(lambda: limits.refused - refused_before == FLOOD - PER_ADDRESS)
        figures["per_address"] = counted = {
            "from": "127.0.0.2",
            "tried": FLOOD,
            "refused": limits.refused - refused_before,
            "admitted": limits.open_from("127.0.0.2"),
        }
        assert refused and counted["admitted"] == PER_ADDRESS, counted
        assert wait_until(lambda: len(closed_by_server(socks)) == FLOOD - PER_ADDRESS)
        flooded.progress()
        # Another address is not affected: a viewer from 127.0.0.1 links as usual.
        main, _ = flooded.run(open_session(flooded.spice_port))
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
    flooded.progress()


def test_total_cap_over_both_ports(
    flooded: Live, figures: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Authenticated connections on the web port take every slot: then a connection to
    either port is refused, and a browser is told so. (Unauthenticated ones cannot fill
    the total: they have a share of their own, see tests/integration/test_preauth.py.)"""
    monkeypatch.setattr(limits_module, "REFUSAL_LOG_INTERVAL_S", 0.2)
    limits = flooded.server.limits
    refused_before = limits.refused
    admitted = TOTAL - flooded.baseline
    holders = ["127.0.0.3", "127.0.0.5", "127.0.0.7"]
    late = {"127.0.0.4": flooded.spice_port, "127.0.0.6": flooded.web_port}
    socks: dict[str, list[socket.socket]] = {}
    try:
        for i, address in enumerate(holders):
            count = min(PER_ADDRESS, admitted - i * PER_ADDRESS)
            socks[address] = authenticated_many(flooded.web_port, address, count)
        assert limits.total == TOTAL and limits.unauthenticated == 0, limits.total
        for address, port in late.items():
            socks[address] = open_many(port, address, PER_ADDRESS)
        opened = admitted + PER_ADDRESS * len(late)
        refused = wait_until(lambda: limits.refused - refused_before == opened - admitted)
        figures["total"] = counted = {
            "addresses": len(socks),
            "watchers": flooded.baseline,
            "tried": opened,
            "refused": limits.refused - refused_before,
            "admitted": limits.total - flooded.baseline,
        }
        assert refused and limits.total == TOTAL, counted
        everyone = [s for group in socks.values() for s in group]
        assert wait_until(lambda: len(closed_by_server(everyone)) == opened - admitted)
        # A browser that asks while every slot is taken is told so.
        page = flooded.run(connect(flooded.web_port, "127.0.0.8"))
        request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        _, answer = flooded.run(exchange(page, [request], half_close=False))
        assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), answer
        flooded.progress()
        # The first refusal may be summed up with others, and the summing-up may wait
        # for a timer set by an earlier test: write it now.
        assert flooded.server.broadcast is not None
        flooded.server.broadcast.loop.call_soon_threadsafe(limits.flush_log)
        assert wait_until(
            lambda: any("(--max-connections)" in t for _, _, t in flooded.records.since(0))
        ), "the total cap's refusals are logged"
    finally:
        for group in socks.values():
            close_all(group)
    assert wait_until(lambda: limits.total == flooded.baseline)
    flooded.progress()


def test_the_flooded_address_can_watch_again(
    flooded: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once its connections are gone, an address that flooded is served like any other."""
    monkeypatch.setattr(admission_module, "AUTH_TIMEOUT_S", IO_TIMEOUT)  # kept until counted
    over = 20
    socks = open_many(flooded.spice_port, "127.0.0.2", PER_ADDRESS + over)
    try:
        assert wait_until(lambda: len(closed_by_server(socks)) == over)
    finally:
        close_all(socks)
    assert wait_until(lambda: flooded.open_connections == flooded.baseline)
    start = len(flooded.records)
    flooded.run(watch_spice(flooded.spice_port, 3, source="127.0.0.2"))
    said = [text for _, _, text in flooded.records.since(start)]
    assert any(re.match(r"SPICE client 127\.0\.0\.2:\d+ connected", t) for t in said), said


def test_cli_flags() -> None:
    """--max-per-address reaches the server; nonsense values are refused by the parser."""
    bad = subprocess.run(
        [sys.executable, "-m", "saffron.cli", "serve", "--max-connections", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "--max-connections: 0 must be above zero" in bad.stderr

    spice = free_port()
    with saffron_spice_only(spice, "--max-per-address", "2") as saffron:
        socks = open_many(spice, "127.0.0.1", 3)
        try:
            assert wait_until(lambda: len(closed_by_server(socks)) == 1)
            assert wait_until(lambda: "(--max-per-address)" in saffron.output())
        finally:
            close_all(socks)
    text = saffron.output()
    assert "refused a SPICE connection from 127.0.0.1: 2 connections" in text, text
    assert "Traceback" not in text and " ERROR " not in text, text


@contextlib.contextmanager
def saffron_spice_only(spice: int, *args: str) -> Iterator[SaffronProcess]:
    """``saffron serve`` with SPICE only, its log in the test artifacts."""
    with run_saffron(
        *("serve", "--source", "pattern", "--no-web"),
        *("--spice", f"127.0.0.1:{spice}", "--size", "160x96", "--fps", "10", *args),
        ready="remote-viewer spice://",
        log_name=f"saffron-spice-{spice}.log",
        web_port=None,
        spice_port=spice,
    ) as saffron:
        yield saffron
