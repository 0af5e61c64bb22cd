"""Password guessing, by real clients on loopback: SPICE links with a wrong ticket and
web logins with a wrong password, many in parallel from one address, get only a
handful checked (the rest are refused unchecked), in a few summed-up log lines;
another address signs in as usual. (The throttle's own rules: tests/unit/test_guesses.py.)

Bounds are counts, not times: after ``FREE_GUESSES`` (5) wrong ones the waits are 1,
2, 4, 8, 16, 32 s, so a test shorter than a minute sees at most 5 + 6 checked.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator

import aiohttp
import pytest

from saffron.bench.spice_client import PyClient, open_session
from saffron.spice.protocol import link as link_module
from saffron.spice.protocol import wire as w
from tests.support.harness import Running, saffron
from tests.support.wait import Clock

PASSWORD = "correct horse"
ATTEMPTS = 200
PARALLEL = 8
MOST_CHECKED = 5 + 6
"""Wrong guesses from one address checked in under a minute (see above)."""


@pytest.fixture
def guarded() -> Iterator[Running]:
    with saffron(web=("127.0.0.1", 0), spice=("127.0.0.1", 0), password=PASSWORD) as s:
        yield s


@pytest.fixture
def spice_checks(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The tickets the SPICE port compared with the password."""
    checked: list[bytes] = []
    match = link_module.passwords_match

    def counting(given: bytes, expected: str) -> bool:
        checked.append(given)
        return match(given, expected)

    monkeypatch.setattr(link_module, "passwords_match", counting)
    return checked


async def spice_guesses(port: int, attempts: int, source: str = "127.0.0.1") -> list[int]:
    """``attempts`` links with a wrong ticket, ``PARALLEL`` at a time: their link results."""
    results: list[int] = []

    async def guesser(count: int) -> None:
        for _ in range(count):
            client = await PyClient.open(port, w.ChannelType.MAIN, password="wrong", source=source)
            client.close()
            assert client.link is not None
            results.append(client.link.error)

    await asyncio.gather(*(guesser(attempts // PARALLEL) for _ in range(PARALLEL)))
    return results


async def web_logins(
    port: int, attempts: int, password: str = "wrong", source: str = "127.0.0.1"
) -> list[tuple[int, str, str | None]]:
    """``attempts`` POST /login, ``PARALLEL`` at a time: (status, page, Retry-After)."""
    connector = aiohttp.TCPConnector(limit=PARALLEL, local_addr=(source, 0))
    answers: list[tuple[int, str, str | None]] = []
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            url = f"http://127.0.0.1:{port}/login"
            async with session.post(url, data={"password": password}, allow_redirects=False) as r:
                answers.append((r.status, await r.text(), r.headers.get("Retry-After")))

        await asyncio.gather(*(one() for _ in range(attempts)))
    return answers


def summed_up(s: Running, words: str) -> tuple[int, int]:
    """Warnings that mention ``words``: (lines, guesses they account for)."""
    s.loop.call_soon_threadsafe(s.server.limits.flush_log)
    guesses = getattr(s.server, "guesses", None)
    if guesses is not None:
        s.loop.call_soon_threadsafe(guesses.flush_log)
    s.run(asyncio.sleep(0.1))
    lines = [t for t in s.records.texts(logging.WARNING) if words in t]
    counted = 0
    for line in lines:
        more = re.search(r" (\d+) more ", line)
        counted += int(more.group(1)) if more else 1
    return len(lines), counted


def test_spice_guesses_are_refused_unchecked(guarded: Running, spice_checks: list[bytes]) -> None:
    """8 clients linking with wrong tickets as fast as they can: every link is refused
    (PERMISSION_DENIED), but only a handful of tickets are checked, and the log has a
    few lines that count them all. Another address then links with the right one."""
    results = asyncio.run(spice_guesses(guarded.spice_port, ATTEMPTS))
    assert results == [w.LinkErr.PERMISSION_DENIED] * ATTEMPTS
    assert len(spice_checks) <= MOST_CHECKED, f"{len(spice_checks)} of {ATTEMPTS} checked"
    lines, wrong = summed_up(guarded, "wrong password (SPICE)")
    assert wrong == len(spice_checks) and lines <= 3, guarded.records.texts(logging.WARNING)
    lines, waited = summed_up(guarded, "too many wrong passwords (SPICE)")
    assert waited == ATTEMPTS - len(spice_checks) and lines <= 3, lines

    async def right_from_elsewhere() -> None:
        main, _ = await open_session(guarded.spice_port, password=PASSWORD, source="127.0.0.2")
        main.close()

    asyncio.run(right_from_elsewhere())


def test_web_guesses_are_refused_unchecked(guarded: Running) -> None:
    """Parallel POST /login with a wrong password: a handful answered "Wrong password"
    (checked), the rest 429 with Retry-After and the login page saying how long to
    wait; a right password from another address signs in."""
    answers = asyncio.run(web_logins(guarded.web_port, ATTEMPTS))
    checked = [a for a in answers if a[0] == 403]
    waited = [a for a in answers if a[0] == 429]
    assert len(checked) + len(waited) == ATTEMPTS, {a[0] for a in answers}
    assert len(checked) <= MOST_CHECKED, f"{len(checked)} of {ATTEMPTS} checked"
    assert all("Wrong password." in page for _, page, _ in checked)
    for _, page, retry in waited:
        assert retry is not None and int(retry) >= 1
        assert f"Too many wrong passwords, try again in {retry} s." in page
    lines, wrong = summed_up(guarded, "wrong password (web)")
    assert wrong == len(checked) and lines <= 3, guarded.records.texts(logging.WARNING)

    signed_in = asyncio.run(web_logins(guarded.web_port, 1, PASSWORD, source="127.0.0.2"))
    assert signed_in[0][0] == 303, signed_in


def test_one_count_for_both_ports(guarded: Running, spice_checks: list[bytes]) -> None:
    """Wrong web passwords make SPICE wait too: while its address waits, even the right
    password is refused unchecked, on both ports; a right one from elsewhere works, and
    once the wait is over the right one clears the count."""
    from saffron.net import guesses as g

    clock = Clock()  # stopped: the wait lasts until the test moves it on
    guarded.server.guesses.clock = clock
    web = asyncio.run(web_logins(guarded.web_port, g.FREE_GUESSES + 1))
    assert [status for status, _, _ in web] == [403] * (g.FREE_GUESSES + 1)

    async def link(password: str, source: str = "127.0.0.1") -> int:
        client = await PyClient.open(
            guarded.spice_port, w.ChannelType.MAIN, password=password, source=source
        )
        client.close()
        assert client.link is not None
        return client.link.error

    assert asyncio.run(link(PASSWORD)) == w.LinkErr.PERMISSION_DENIED and not spice_checks
    assert asyncio.run(web_logins(guarded.web_port, 1, PASSWORD))[0][0] == 429
    assert asyncio.run(link(PASSWORD, "127.0.0.2")) == w.LinkErr.OK

    clock.now += g.FIRST_WAIT_S
    assert asyncio.run(link(PASSWORD)) == w.LinkErr.OK
    assert asyncio.run(web_logins(guarded.web_port, 1))[0][0] == 403, "counted afresh"
