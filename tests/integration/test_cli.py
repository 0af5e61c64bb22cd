"""What ``saffron serve`` tells a user on start."""

from __future__ import annotations

import asyncio
import re
import urllib.request

from saffron.bench.spice_client import PyClient
from saffron.spice.protocol.wire import ChannelType
from tests.support.process import run_saffron


def test_port_zero_announces_the_ports_the_system_chose() -> None:
    """``--web HOST:0`` and ``--spice HOST:0`` listen on free ports; the lines a user
    copies name those ports, and both answer."""
    args = ("serve", "--source", "pattern", "--web", "127.0.0.1:0", "--spice", "127.0.0.1:0")
    with run_saffron(*args, ready="remote-viewer spice://") as saffron:
        out = saffron.output()
        web = re.search(r"open http://127\.0\.0\.1:(\d+)/", out)
        spice = re.search(r"remote-viewer spice://127\.0\.0\.1:(\d+)", out)
        assert web and spice, out
        web_port, spice_port = int(web.group(1)), int(spice.group(1))
        assert web_port != 0 and spice_port != 0, out
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/", timeout=10) as page:
            assert page.status == 200 and b"<canvas" in page.read()

        async def link() -> None:
            main = await PyClient.open(spice_port, ChannelType.MAIN)
            assert main.ok, main.link
            main.close()

        asyncio.run(link())
