"""A fresh RSA key per link, so a ticket seen on the wire cannot be sent again.

With one key per process, the 128 encrypted bytes of one client's ticket linked
again on any later connection, for someone who never knew the password: on the
same port, and from the plain port (where the display channel's ticket travels
in clear) to the TLS port with ``--spice-secure-channels main,inputs``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path

import pytest

from saffron.bench.spice_client import PyClient, open_session
from saffron.net.tls import self_signed
from saffron.spice.protocol import wire as w
from saffron.spice.protocol.link import LinkState, ServerLink, TicketKey
from saffron.spice.ticket_keys import KeyPool
from tests.support.harness import saffron as running_saffron
from tests.support.harness import spice_server
from tests.support.spice_link import OFFERED, hello, read_reply
from tests.support.streams import run
from tests.support.wait import wait_until


def test_a_recorded_ticket_does_not_link_again() -> None:
    with spice_server(scene=False, password="secret") as (srv, _):

        async def go() -> None:
            viewer = await PyClient.open(srv.port, w.ChannelType.MAIN, password="secret")
            assert viewer.ok and viewer.link is not None
            recorded = viewer.link.ticket
            init = await viewer.expect(w.MainInit)
            for channel, session in (
                (w.ChannelType.MAIN, 0),
                (w.ChannelType.INPUTS, init.session_id),
            ):
                replay = await PyClient.open(
                    srv.port, channel, connection_id=session, ticket=recorded
                )
                assert replay.link is not None
                assert replay.link.error == w.LinkErr.PERMISSION_DENIED
                assert await replay.closed()
            viewer.close()

        run(go())


def test_each_link_gets_its_own_key() -> None:
    with spice_server(scene=False, password="secret") as (srv, _):

        async def go() -> list[bytes]:
            keys = []
            for _ in range(3):
                client = await PyClient.open(srv.port, w.ChannelType.MAIN, password="secret")
                assert client.ok and client.link is not None and client.link.reply is not None
                keys.append(client.link.reply.pub_key)
                client.close()
            return keys

        keys = run(go())
        assert len(set(keys)) == 3


def test_plain_port_ticket_does_not_open_the_tls_port(tmp_path: Path) -> None:
    cert = self_signed(tmp_path, hosts=["127.0.0.1"])
    with running_saffron(
        spice=("127.0.0.1", 0),
        spice_tls=("127.0.0.1", 0),
        cert=cert.cert,
        key=cert.key,
        password="pw",
        spice_secure_channels=("main", "inputs"),
    ) as s:
        plain, tls_port = s.server.spice.addresses[0][1], s.spice_port
        context = ssl.create_default_context(cafile=str(cert.cert))

        async def go() -> None:
            main = await PyClient.open(tls_port, w.ChannelType.MAIN, password="pw", ssl=context)
            assert main.ok
            init = await main.expect(w.MainInit)
            display = await PyClient.open(
                plain, w.ChannelType.DISPLAY, connection_id=init.session_id, password="pw"
            )
            assert display.ok and display.link is not None
            seen = display.link.ticket  # crossed the plain port
            for channel, session in (
                (w.ChannelType.MAIN, 0),
                (w.ChannelType.INPUTS, init.session_id),
            ):
                replay = await PyClient.open(
                    tls_port, channel, connection_id=session, ticket=seen, ssl=context
                )
                assert replay.link is not None
                assert replay.link.error == w.LinkErr.PERMISSION_DENIED
            main.close()

        run(go())


def test_pool_refills_and_never_gives_a_key_twice() -> None:
    pool = KeyPool(size=3)

    async def go() -> list[TicketKey]:
        pool.start()
        taken: list[TicketKey] = []
        for _ in range(2):
            assert await asyncio.to_thread(wait_until, lambda: pool.ready() == 3)
            await asyncio.sleep(0.05)
            assert pool.ready() == 3  # full: the worker stops there
            for _ in range(3):
                key = pool.take()
                assert key is not None
                taken.append(key)
            # Empty (or refilling): waiting links get the next keys made.
            taken += await asyncio.gather(pool.take_async(), pool.take_async())
        return taken

    try:
        keys = run(go())
    finally:
        pool.close()
    assert len({id(k) for k in keys}) == len({k.public_der for k in keys}) == 10


def test_closing_the_pool_cancels_waiting_links() -> None:
    pool = KeyPool(size=0)

    async def go() -> bool:
        pool.start()
        pool.close()
        waiting = pool.take_async()
        await asyncio.sleep(0)
        return waiting.cancelled()

    assert run(go())


def test_a_link_without_a_key_waits_for_one() -> None:
    link = ServerLink(None, "secret", OFFERED)
    assert link.receive_data(hello()) == []
    assert link.data_to_send() == b"" and link.state is LinkState.MESS
    key = TicketKey()
    link.key = key
    assert link.receive_data(b"") == []
    reply, _ = read_reply(link.data_to_send())
    assert reply.pub_key == key.public_der and link.state is LinkState.MECHANISM


def test_links_wait_for_the_worker_when_no_key_is_ready(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="saffron.spice")
    with spice_server(scene=False, password="secret") as (srv, _):

        def drain() -> None:
            srv.server.keys.size = 0  # the worker makes keys only for waiting links
            while srv.server.keys.take() is not None:
                pass

        srv.call(drain)

        async def go() -> None:
            main, init = await open_session(srv.port, password="secret")
            display = await PyClient.open(
                srv.port, w.ChannelType.DISPLAY, connection_id=init.session_id, password="secret"
            )
            assert display.ok
            main.close()

        run(go())
        assert srv.server.keys.ready() == 0
    assert caplog.text.count("no ticket key ready") == 2
