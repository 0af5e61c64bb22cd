"""The SPICE port's own WebSocket refuses pages from other web sites and rebinding names.

Any page a browser shows may open ``ws://127.0.0.1:PORT/``; without a password
it would link main, then inputs with the session id MAIN_INIT gave it, and type
into the VM. These tests are that page, as a real WebSocket client on loopback.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from saffron.bench.spice_client import PyClient, WebSocketRefused, open_session
from saffron.net.origin import HostRule
from saffron.spice.protocol import wire as w
from tests.support.harness import SpiceRunning, spice_server
from tests.support.streams import run
from tests.support.wait import wait_until

KEY = w.KeyDown(0x1E)


def hostile(port: int) -> list[tuple[str, str | None]]:
    """(Host, Origin) pairs a hostile page brings: another site, and DNS rebinding."""
    return [
        (f"127.0.0.1:{port}", "https://evil.example"),
        (f"evil.example:{port}", f"http://evil.example:{port}"),
        (f"evil.example:{port}", None),
    ]


def open_connections(srv: SpiceRunning) -> int:
    return srv.call(lambda: len(srv.server.connections))


def test_foreign_pages_are_refused(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="saffron.spice")
    with spice_server() as (srv, scene):
        assert scene is not None
        scene.pause()

        async def go() -> None:
            # A legitimate viewer is connected: its session id is what a page would use.
            main, init = await open_session(srv.port)
            channels = [(w.ChannelType.MAIN, 0), (w.ChannelType.INPUTS, init.session_id)]
            for host, origin in hostile(srv.port):
                for channel, session in channels:
                    with pytest.raises(WebSocketRefused) as refused:
                        await PyClient.open(
                            srv.port,
                            channel,
                            connection_id=session,
                            websocket=True,
                            host=host,
                            origin=origin,
                        )
                    assert refused.value.status_code == 403
            assert await asyncio.to_thread(wait_until, lambda: open_connections(srv) == 1)
            main.close()

        run(go())
        assert len(srv.call(lambda: srv.server.sessions)) <= 1  # only the viewer's, if still up
        assert scene.recorded() == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("127.0.0.1" in m and "evil.example, another web site" in m for m in warnings)
    assert any("'evil.example'" in m and "--allowed-host" in m for m in warnings)
    assert "connected (session" in caplog.text  # the viewer's session, and no other:
    assert caplog.text.count("connected (session") == 1


@pytest.mark.parametrize("origin", ["http://127.0.0.1:{page}", "http://localhost:{page}", None])
def test_local_pages_and_native_clients_link(origin: str | None) -> None:
    """spice-html5 served from another local port, or a script sending no Origin."""
    with spice_server() as (srv, scene):
        assert scene is not None
        scene.pause()
        page_origin = None if origin is None else origin.format(page=srv.port + 1)

        async def link(channel: int, session: int = 0) -> PyClient:
            client = await PyClient.open(
                srv.port,
                channel,
                connection_id=session,
                websocket=True,
                host=f"127.0.0.1:{srv.port}",
                origin=page_origin,
            )
            assert client.ok
            return client

        async def go() -> None:
            main = await link(w.ChannelType.MAIN)
            init = await main.expect(w.MainInit)
            inputs = await link(w.ChannelType.INPUTS, init.session_id)
            await inputs.expect(w.InputsInit)
            inputs.send(KEY)
            assert await asyncio.to_thread(wait_until, lambda: scene.recorded() != [])
            main.close()

        run(go())
        assert scene.recorded()[0] == ("key", 0x1E, True)


def test_a_given_rule_is_used() -> None:
    """The rule app.py shares (e.g. with --allowed-host) decides, not the default."""
    rule = HostRule(password=False, allowed_hosts=["vm.lan"])
    with spice_server(scene=False, host_rule=rule) as (srv, _):

        async def go() -> None:
            ok = await PyClient.open(
                srv.port,
                w.ChannelType.MAIN,
                websocket=True,
                host=f"vm.lan:{srv.port}",
                origin=f"http://vm.lan:{srv.port}",
            )
            assert ok.ok
            ok.close()

        run(go())
