"""The page's clipboard messages over a real socket: text both ways through the fan-out,
the size limit (at it: passed; past it: that page closed with the reason), view-only."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import ClientSession, WSMsgType

from saffron.clipboard import ClipboardBroadcast
from saffron.display import CLIPBOARD_MAX_BYTES
from tests.support.harness import web_site


async def text_message(ws: Any, kind: str, timeout: float = 5) -> dict[str, Any]:
    while True:
        msg = await asyncio.wait_for(ws.receive(), timeout)
        assert msg.type in (WSMsgType.TEXT, WSMsgType.BINARY), msg
        if msg.type == WSMsgType.TEXT:
            obj = json.loads(msg.data)
            if obj["type"] == kind:
                return obj


async def closed(ws: Any) -> int:
    while True:
        msg = await asyncio.wait_for(ws.receive(), 10)
        if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            return int(ws.close_code)


async def test_clipboard_text_goes_both_ways_and_is_bounded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    async with web_site(codecs=["mjpeg"], default_codec="mjpeg") as site:
        hub = ClipboardBroadcast(site.display, loop)
        site.server.clipboard = hub
        given: list[str] = []
        site.display.clipboard_hook = given.append
        async with ClientSession() as s:
            one = await s.ws_connect(site.url + "ws", max_msg_size=0)
            two = await s.ws_connect(site.url + "ws", max_msg_size=0)
            for ws in (one, two):
                assert (await text_message(ws, "hello"))["clipboard"] is True
            # the guest copies: every page hears of it
            site.display.clipboard.guest_clipboard("from the guest ✓")
            for ws in (one, two):
                assert (await text_message(ws, "clipboard"))["text"] == "from the guest ✓"
            # a page pastes (JSON.stringify's key order): the guest and the other page get it
            big = "\n" * (CLIPBOARD_MAX_BYTES // 4) + "é" * (CLIPBOARD_MAX_BYTES * 3 // 8)  # 1 MiB
            await one.send_str(
                json.dumps(
                    {"type": "clipboard", "text": big}, ensure_ascii=False, separators=(",", ":")
                )
            )
            assert (await text_message(two, "clipboard", 10))["text"] == big
            assert given == [big]
            # one byte over the limit: that page is closed, with the reason in the log
            over = "x" * (CLIPBOARD_MAX_BYTES + 1)
            await one.send_str(
                json.dumps({"type": "clipboard", "text": over}, separators=(",", ":"))
            )
            assert await closed(one) == 1008
            assert "clipboard text of 1048577 bytes" in caplog.text
            # an ordinary message that long is refused as before
            await two.send_str(json.dumps({"type": "ping", "t0": 1, "pad": "x" * 5000}))
            assert await closed(two) == 1008
            assert given == [big]


async def test_a_view_only_page_neither_reads_nor_writes_the_clipboard() -> None:
    loop = asyncio.get_running_loop()
    async with web_site(codecs=["mjpeg"], default_codec="mjpeg", view_only=True) as site:
        hub = ClipboardBroadcast(site.display, loop)
        site.server.clipboard = hub
        given: list[str] = []
        site.display.clipboard_hook = given.append
        async with ClientSession() as s:
            ws = await s.ws_connect(site.url + "ws")
            await text_message(ws, "hello")
            await ws.send_str(json.dumps({"type": "clipboard", "text": "nope"}))
            site.display.clipboard.guest_clipboard("secret")
            await asyncio.sleep(0.2)
            assert given == [] and not hub.viewers
            await ws.close()
