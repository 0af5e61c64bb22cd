"""The SPICE server in-process, driven by the Python test client (no external programs)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from saffron.bench.spice_client import PyClient, open_session
from saffron.display import Cursor
from saffron.spice import server as spice_server_module
from saffron.spice.protocol import wire as w
from tests.support.harness import EXPECTED_INPUT, Scene, SpiceRunning, spice_server
from tests.support.streams import run
from tests.support.wait import wait_until

GTK_DISPLAY = (0x6FBF,)
HTML5_DISPLAY = (0x711,)


async def open_display(
    port: int, session: int, caps: tuple[int, ...] = GTK_DISPLAY, **kw: Any
) -> PyClient:
    display = await PyClient.open(
        port, w.ChannelType.DISPLAY, connection_id=session, channel_caps=caps, **kw
    )
    assert display.ok, display.link
    display.send(w.DisplayInit(1, 1000, 1, 1000))
    return display


async def frames(display: PyClient, count: int, timeout: float = 20) -> list[w.Message]:
    """Read until ``count`` stream frames arrived, acking as a client does."""
    got: list[w.Message] = []
    seen = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while sum(isinstance(m, w.StreamData | w.StreamDataSized) for m in got) < count:
        msg = await display.read(max(deadline - loop.time(), 0.01))
        if isinstance(msg, w.SetAck):
            display.send(w.AckSync(msg.generation))
            seen = 0
            continue
        seen += 1
        if seen % 10 == 0:
            display.send(w.Ack())
        got.append(msg)  # type: ignore[arg-type]
    return got


def test_session_and_display_sequence() -> None:
    with spice_server() as (srv, _):

        async def go() -> None:
            main, init = await open_session(
                srv.port, main_caps=w.make_caps([w.MainCap.NAME_AND_UUID])
            )
            assert init.session_id != 0
            assert (init.supported_mouse_modes, init.current_mouse_mode) == (3, 2)
            assert init.display_channels_hint == 1 and init.agent_connected == 0
            display = await open_display(srv.port, init.session_id)
            first = await display.read()
            assert first == w.SetAck(1, 10)
            display.send(w.AckSync(1))
            kinds = []
            while not isinstance(msg := await display.read(), w.DisplayMark):
                kinds.append(type(msg))
            assert kinds[:2] == [w.SurfaceCreate, w.MonitorsConfig]
            assert kinds[2] in (w.DrawCopy, w.DrawFill)
            create = await display.expect(w.StreamCreate)
            assert create.flags == w.StreamFlags.TOP_DOWN
            assert create.codec_type == w.VideoCodec.H264  # the server's first choice
            assert (create.stream_width, create.stream_height) == (640, 480)
            report = await display.expect(w.StreamActivateReport)
            assert report.stream_id == create.id
            got = await frames(display, 5)
            data = [m for m in got if isinstance(m, w.StreamDataSized)]
            assert data and all(d.multi_media_time != 0 for d in data)
            stamps = [d.multi_media_time for d in data]
            assert stamps == sorted(stamps)
            main.close()
            display.close()

        run(go())


def test_name_and_uuid(caplog: pytest.LogCaptureFixture) -> None:
    with spice_server(scene=False) as (srv, _):

        async def go() -> None:
            main = await PyClient.open(
                srv.port,
                w.ChannelType.MAIN,
                channel_caps=w.make_caps([w.MainCap.NAME_AND_UUID]),
            )
            await main.expect(w.MainInit)
            assert await main.expect(w.MainName) == w.MainName(b"saffron-test")
            assert await main.expect(w.MainUuid) == w.MainUuid(bytes(range(16)))
            main.close()

        run(go())


def test_password(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="saffron.spice")
    with spice_server(scene=False, password="secret") as (srv, _):

        async def go() -> None:
            bad = await PyClient.open(srv.port, w.ChannelType.MAIN, password="guess")
            assert bad.link is not None and bad.link.error == w.LinkErr.PERMISSION_DENIED
            assert await bad.closed()
            good = await PyClient.open(srv.port, w.ChannelType.MAIN, password="secret")
            assert good.ok
            await good.expect(w.MainInit)
            good.close()

        run(go())
    assert "refused" in caplog.text and "wrong password" in caplog.text
    assert "127.0.0.1" in caplog.text


def test_unknown_session_is_a_bad_connection_id() -> None:
    with spice_server(scene=False) as (srv, _):

        async def go() -> None:
            display = await PyClient.open(srv.port, w.ChannelType.DISPLAY, connection_id=1234)
            assert display.link is not None and display.link.error == w.LinkErr.BAD_CONNECTION_ID
            other = await PyClient.open(srv.port, w.ChannelType.SMARTCARD)
            assert other.link is not None
            assert other.link.error == w.LinkErr.CHANNEL_NOT_AVAILABLE

        run(go())


def test_malformed_message_closes_one_connection(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="saffron.spice")
    with spice_server() as (srv, _):

        async def go() -> None:
            main_a, init_a = await open_session(srv.port)
            _main_b, init_b = await open_session(srv.port)
            display_b = await open_display(srv.port, init_b.session_id)
            inputs_a = await PyClient.open(
                srv.port, w.ChannelType.INPUTS, connection_id=init_a.session_id
            )
            await inputs_a.expect(w.InputsInit)
            await frames(display_b, 3)
            # MOUSE_MOTION needs 10 bytes; send 2.
            inputs_a.send_raw(w.pack_header(w.MSGC_INPUTS_MOUSE_MOTION, 2, mini=True) + b"\0\0")
            assert await inputs_a.closed()
            await frames(display_b, 10)  # the other viewer carries on
            main_a.send(w.Pong(1, 1))  # and so does A's main channel
            assert not await main_a.closed(timeout=0.5)

        run(go())
    assert "malformed message" in caplog.text and "inputs channel" in caplog.text


def test_a_message_flood_closes_that_channel(caplog: pytest.LogCaptureFixture) -> None:
    """20,000 mouse motions at once (a script, not a mouse): the inputs channel is closed
    with the reason logged, the other client's video goes on."""
    caplog.set_level(logging.INFO, logger="saffron.spice")
    with spice_server() as (srv, _):

        async def go() -> None:
            _main_a, init_a = await open_session(srv.port)
            _main_b, init_b = await open_session(srv.port)
            display_b = await open_display(srv.port, init_b.session_id)
            inputs_a = await PyClient.open(
                srv.port, w.ChannelType.INPUTS, connection_id=init_a.session_id
            )
            await inputs_a.expect(w.InputsInit)
            await frames(display_b, 3)
            motion = w.frame(w.MouseMotion(1, 1, 0), mini=True, serial=1)
            inputs_a.send_raw(motion * 20_000)
            assert await inputs_a.closed(timeout=10)
            await frames(display_b, 10)  # the other viewer carries on

        run(go())
    assert "messages a second" in caplog.text and "inputs channel" in caplog.text


def test_oversized_message_is_refused_without_reading_it() -> None:
    with spice_server(scene=False) as (srv, _):

        async def go() -> None:
            main, _ = await open_session(srv.port)
            main.send_raw(w.pack_header(w.MSGC_MAIN_AGENT_DATA, 0xFFFFFFFF, mini=True))
            assert await main.closed()

        run(go())


def test_several_clients_each_with_its_own_codec() -> None:
    with spice_server() as (srv, _):

        async def go() -> None:
            main_a, a = await open_session(srv.port)
            main_b, b = await open_session(srv.port)
            display_a = await open_display(srv.port, a.session_id)
            display_b = await open_display(srv.port, b.session_id, HTML5_DISPLAY)
            got_a = await frames(display_a, 5)
            got_b = await frames(display_b, 5)
            codec = {type(m) for m in got_a}
            assert w.StreamDataSized in codec
            create_a = next(m for m in got_a if isinstance(m, w.StreamCreate))
            create_b = next(m for m in got_b if isinstance(m, w.StreamCreate))
            assert create_a.codec_type == w.VideoCodec.H264
            assert create_b.codec_type == w.VideoCodec.VP8
            main_a.close()
            main_b.close()

        run(go())
        assert set(srv.broadcast.streams) == {"h264", "vp8"}


def test_exclusive_pushes_the_old_client_out(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="saffron.spice")
    with spice_server(scene=False, exclusive=True) as (srv, _):

        async def go() -> None:
            old, _ = await open_session(srv.port)
            new, _ = await open_session(srv.port)
            assert await old.closed()
            new.send(w.Pong(1, 1))
            assert not await new.closed(timeout=0.5)

        run(go())
    assert "exclusive" in caplog.text


def test_not_exclusive_keeps_both() -> None:
    with spice_server(scene=False) as (srv, _):

        async def go() -> None:
            old, _ = await open_session(srv.port)
            new, _ = await open_session(srv.port)
            assert not await old.closed(timeout=0.5)
            new.close()

        run(go())


INPUT_MESSAGES = [
    w.KeyDown(0x1E),
    w.KeyUp(0x9E),
    w.KeyScancode(bytes.fromhex("e048e0c8")),
    w.MousePosition(100, 50, 0, 0),
    w.MousePress(1, 1),
    w.MouseRelease(1, 0),
    w.MousePress(4, 8),
    w.MouseRelease(4, 0),
    w.MouseMotion(5, -3, 0),
]


@pytest.mark.parametrize("view_only", [False, True])
def test_inputs_reach_the_producer(view_only: bool) -> None:
    with spice_server(view_only=view_only) as (srv, scene):
        assert scene is not None
        scene.pause()

        async def go() -> None:
            _main, init = await open_session(srv.port)
            inputs = await PyClient.open(
                srv.port, w.ChannelType.INPUTS, connection_id=init.session_id
            )
            assert await inputs.expect(w.InputsInit) == w.InputsInit(0)
            for msg in INPUT_MESSAGES:
                inputs.send(msg)
            for _ in range(7):  # with the two above: 8 motions, 2 acks
                inputs.send(w.MousePosition(1, 1, 0, 0))
            await inputs.expect(w.MouseMotionAck)
            await inputs.expect(w.MouseMotionAck)

        run(go())
        if view_only:
            assert scene.recorded() == []
        else:
            assert wait_until(lambda: len(scene.recorded()) >= len(EXPECTED_INPUT) + 7)
            assert scene.recorded()[: len(EXPECTED_INPUT)] == EXPECTED_INPUT


@pytest.mark.parametrize("via", ["port", "aiohttp"])
def test_websocket(via: str) -> None:
    with spice_server() as (srv, _):
        port = srv.port
        runner = None
        if via == "aiohttp":

            async def web_app() -> tuple[web.AppRunner, int]:
                app = web.Application()
                app.router.add_get("/spice", srv.server.aiohttp_handler)
                runner = web.AppRunner(app)
                await runner.setup()
                site = web.TCPSite(runner, "127.0.0.1", 0)
                await site.start()
                return runner, int(runner.addresses[0][1])

            runner, port = srv.run(web_app())

        path = "/spice" if via == "aiohttp" else "/websockify"

        async def go() -> None:
            _main, init = await open_session(port, websocket=True, path=path)
            display = await open_display(
                port, init.session_id, HTML5_DISPLAY, websocket=True, path=path
            )
            got = await frames(display, 5)
            create = next(m for m in got if isinstance(m, w.StreamCreate))
            assert create.codec_type == w.VideoCodec.VP8

        try:
            run(go())
        finally:
            if runner is not None:
                srv.run(runner.cleanup())


def test_ack_window_holds_frames_back_until_acked() -> None:
    with spice_server() as (srv, _):

        async def go() -> None:
            _main, init = await open_session(srv.port)
            display = await open_display(srv.port, init.session_id)
            await display.expect(w.SetAck)
            display.send(w.AckSync(1))
            # Never ack: the server stops within 2 x window (+ the broadcast's slack).
            got = await display.collect(3.0)
            held = sum(isinstance(m, w.StreamDataSized) for m in got)
            assert held > 0 and len(got) <= 2 * 10 + 2
            for _ in range(len(got) // 10 + 1):
                display.send(w.Ack())
            more = await frames(display, 5)
            assert sum(isinstance(m, w.StreamDataSized) for m in more) >= 5

        run(go())


def test_preferred_codec_and_unplayable_stream() -> None:
    with spice_server() as (srv, _):

        async def go() -> None:
            _main, init = await open_session(srv.port)
            display = await open_display(srv.port, init.session_id)
            create = await display.expect(w.StreamCreate)
            assert create.codec_type == w.VideoCodec.H264
            display.send(w.PreferredVideoCodecType((w.VideoCodec.MJPEG,)))
            await display.expect(w.StreamDestroy)
            create = await display.expect(w.StreamCreate)
            assert create.codec_type == w.VideoCodec.MJPEG
            report = await display.expect(w.StreamActivateReport)
            # The client cannot play MJPEG after all: the server moves on.
            display.send(
                w.StreamReport(report.stream_id, report.unique_id, 0, 0, 0, 0xFFFFFFFF, 0, 0)
            )
            create = await display.expect(w.StreamCreate)
            assert create.codec_type == w.VideoCodec.H264

        run(go())


def present(srv: SpiceRunning, width: int, height: int, value: int) -> np.ndarray:
    img = np.full((height, width, 4), value, np.uint8)
    img[..., 3] = 255
    srv.display.present(img.copy())
    return img


def test_resize_recreates_the_surface() -> None:
    with spice_server() as (srv, scene):
        assert scene is not None

        async def go() -> None:
            _main, init = await open_session(srv.port)
            display = await open_display(srv.port, init.session_id)
            await frames(display, 3)
            scene.pause()
            await asyncio.sleep(0.2)
            for i in range(30):
                present(srv, 320, 200, i)
                await asyncio.sleep(0.02)
            got = await frames(display, 3)
            kinds = [type(m) for m in got]
            assert w.SurfaceDestroy in kinds
            destroy = kinds.index(w.SurfaceDestroy)
            assert w.StreamDestroy in kinds[:destroy]  # the stream goes before its surface
            create = next(m for m in got if isinstance(m, w.SurfaceCreate))
            assert (create.width, create.height) == (320, 200)
            monitors = next(m for m in got if isinstance(m, w.MonitorsConfig))
            assert (monitors.heads[0].width, monitors.heads[0].height) == (320, 200)
            stream = [m for m in got if isinstance(m, w.StreamCreate)][-1]
            assert (stream.stream_width, stream.stream_height) == (320, 200)

        run(go())


def test_sharp_refresh_after_the_picture_stops() -> None:
    """Motion is clipped to what changes; when it stops, that area comes losslessly."""
    with spice_server() as (srv, scene):
        assert scene is not None

        async def go() -> None:
            _main, init = await open_session(srv.port)
            display = await open_display(srv.port, init.session_id)
            got = await frames(display, 50)  # more than a second: the clip narrows
            clips = [m for m in got if isinstance(m, w.StreamClip)]
            assert clips and clips[-1].clip.rects, "the stream is clipped to the moving strip"
            rows = {(r.top, r.bottom) for r in clips[-1].clip.rects}
            assert all(bottom - top < 480 for top, bottom in rows)
            scene.pause()
            await asyncio.sleep(0.1)
            copies: list[w.DrawCopy] = []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    msg = await display.read(2)
                except TimeoutError:
                    if copies:
                        break
                    continue
                if isinstance(msg, w.DrawCopy):
                    copies.append(msg)
                elif isinstance(msg, w.SetAck):
                    display.send(w.AckSync(msg.generation))
                display.send(w.Ack())
            assert copies, "no lossless refresh came"
            frame = srv.display.last_frame
            assert frame is not None
            for copy in copies:
                box = copy.box
                expect = frame.pixels[box.top : box.bottom, box.left : box.right].tobytes()
                assert copy.image.data == expect
                assert copy.image.flags == w.BitmapFlags.TOP_DOWN

        run(go())


def test_cursor_channel_follows_the_producer() -> None:
    with spice_server(scene=False) as (srv, _):

        async def go() -> None:
            _main, init = await open_session(srv.port)
            cursor = await PyClient.open(
                srv.port, w.ChannelType.CURSOR, connection_id=init.session_id
            )
            first = await cursor.expect(w.CursorInit)
            assert first.visible == 1 and first.cursor.type == w.CursorType.ALPHA
            shape = Cursor(4, 4, 1, 2, bytes(range(64)), serial=5)
            srv.display.set_cursor(shape)
            msg = await cursor.expect(w.CursorSet)
            assert msg.cursor.data == shape.pixels and msg.cursor.hot_spot_y == 2
            for x in range(10):
                srv.display.move_cursor(x, 7)
            move = await cursor.expect(w.CursorMove)
            while move.x != 9:  # moves coalesce: the newest one always arrives
                move = await cursor.expect(w.CursorMove)
            srv.display.move_cursor(9, 7, visible=False)
            await cursor.expect(w.CursorHide)

        run(go())


def test_link_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spice_server_module, "LINK_TIMEOUT_S", 0.3)
    with spice_server(scene=False) as (srv, _):

        async def go() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()

        run(go())


def test_close_disconnects_clients() -> None:
    with spice_server(scene=False) as (srv, _):

        async def go() -> PyClient:
            main, _ = await open_session(srv.port)
            return main

        async def check(main: PyClient) -> None:
            srv.run(srv.server.close())
            assert await main.closed()

        async def both() -> None:
            main = await go()
            await check(main)

        run(both())


def test_scene_helper_is_sane() -> None:
    # The producer the tests rely on draws what it says.
    from saffron.display import Display
    from saffron.sources.pattern import read_stamp

    scene = Scene(Display(), 320, 240)
    img, damage = scene.frame(3, 123456789)
    assert read_stamp(img) == 123456789 and damage.width == 320


def test_client_without_mini_header_gets_full_headers() -> None:
    with spice_server() as (srv, _):

        async def go() -> None:
            common = w.make_caps([w.CommonCap.PROTOCOL_AUTH_SELECTION, w.CommonCap.AUTH_SPICE])
            main = await PyClient.open(srv.port, w.ChannelType.MAIN, common_caps=common)
            assert main.ok and not main.mini
            init = await main.expect(w.MainInit)
            display = await PyClient.open(
                srv.port,
                w.ChannelType.DISPLAY,
                connection_id=init.session_id,
                common_caps=common,
                channel_caps=GTK_DISPLAY,
            )
            assert not display.mini
            await frames(display, 3)
            main.close()

        run(go())


def test_late_frames_raise_the_video_delay() -> None:
    """Reports of late frames move the client's clock back (MULTI_MEDIA_TIME on main)."""
    with spice_server() as (srv, _):

        async def go() -> None:
            main, init = await open_session(srv.port)
            display = await open_display(srv.port, init.session_id)
            await display.expect(w.StreamCreate)
            report = await display.expect(w.StreamActivateReport)
            before = init.multi_media_time
            display.send(
                w.StreamReport(report.stream_id, report.unique_id, 1, 2, 5, 5, -40, 0xFFFFFFFF)
            )
            moved = await main.expect(w.MultiMediaTime)
            session = srv.call(lambda: next(iter(srv.server.sessions.values())))
            assert session.latency_ms == 20 + 40 + 10
            # The new clock is the old one plus the time that passed, minus the 50 ms added.
            change = ((moved.time - before + 2**31) & 0xFFFFFFFF) - 2**31
            assert -50 <= change < 30_000
            main.close()

        run(go())
