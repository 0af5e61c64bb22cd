"""The web front end over a real socket: handshake, frames, acks, input, bad input."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from aiohttp import ClientSession, WSMsgType

from saffron.audio import AudioBroadcast, AudioPacket
from saffron.broadcast import KEYFRAME_MIN_INTERVAL
from saffron.display import (
    MAX_GUEST_WIDTH,
    MIN_GUEST_HEIGHT,
    Button,
    PcmFormat,
    Rect,
    SizeRequest,
    now_us,
)
from saffron.encoders.tiles import decode_tile
from saffron.mic import MicInput
from saffron.web.keys import scancode_for
from saffron.web.protocol import (
    HEADER,
    KIND_TILE,
    KIND_VIDEO,
    KIND_VIDEO_DAMAGE,
    ProtocolError,
    pack_audio,
    pack_mic,
    unpack_audio,
    unpack_tile,
    unpack_video,
)
from saffron.web.viewer import WINDOW_FRAMES
from tests.support.harness import WebSite, broken_h264, web_site
from tests.support.mic import TONE_HZ, opus_tone_packets, peak_hz

W, H = 64, 48


class Env:
    def __init__(self, site: WebSite) -> None:
        self.display, self.server, self.url = site.display, site.server, site.url
        self.input = site.input

    def present(self, value: int = 0) -> bool:
        return self.display.present(np.full((H, W, 4), value, np.uint8), owned=True)


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    async with web_site(
        size=(W, H),
        broadcast={"fps": 30, "bitrate_kbps": 500},
        codecs=["h264", "mjpeg"],
        default_codec="h264",
    ) as site:
        yield Env(site)


async def start(session: ClientSession, env: Env, codec: str = "h264") -> Any:
    ws = await session.ws_connect(env.url + "ws")
    hello = json.loads((await ws.receive()).data)
    assert hello["type"] == "hello" and hello["codecs"] == ["h264", "mjpeg"]
    assert (hello["width"], hello["height"]) == (W, H)
    await ws.send_str(json.dumps({"type": "start", "codec": codec}))
    for _ in range(100):
        if env.display.wants_frame:
            break
        await asyncio.sleep(0.01)
    return ws


async def next_video(ws: Any) -> tuple[Any, bytes]:
    while True:
        msg = await asyncio.wait_for(ws.receive(), 10)
        if msg.type == WSMsgType.BINARY:
            return unpack_video(msg.data)
        assert msg.type == WSMsgType.TEXT, msg


async def test_a_still_picture_comes_again_as_exact_tiles(env: Env) -> None:
    """A page that asks for them gets each frame's damage, then the still picture again
    as lossless tiles: put together, they are the source exactly."""
    rng = np.random.default_rng(5)
    picture = rng.integers(0, 256, (H, W, 4), dtype=np.uint8)
    async with ClientSession() as s:
        ws = await s.ws_connect(env.url + "ws")
        assert json.loads((await ws.receive()).data)["type"] == "hello"
        await ws.send_str(json.dumps({"type": "start", "codec": "mjpeg", "sharp": True}))
        await asyncio.sleep(0.05)
        env.display.present(picture.copy(), owned=True)
        kinds: list[int] = []
        shown = np.zeros((H, W, 3), np.uint8)
        covered = np.zeros((H, W), bool)
        damages = []
        sent_second = False
        while not covered.all():
            msg = await asyncio.wait_for(ws.receive(), 10)
            if msg.type == WSMsgType.TEXT:
                continue
            assert msg.type == WSMsgType.BINARY, msg
            kinds.append(msg.data[0])
            if msg.data[0] == KIND_TILE:
                header, data = unpack_tile(msg.data)
                r = header.rect
                assert (header.frame_width, header.frame_height) == (W, H)
                shown[r.y : r.y + r.height, r.x : r.x + r.width] = decode_tile(data)
                covered[r.y : r.y + r.height, r.x : r.x + r.width] = True
                continue
            header, _ = unpack_video(msg.data)
            damages.append(header.damage)
            await ws.send_str(json.dumps({"type": "ack", "frame": header.frame}))
            if not sent_second:
                sent_second = True
                picture[4:8, 10:20] = 255
                env.display.present(picture.copy(), Rect(10, 4, 10, 4), owned=True)
        assert kinds[:2] == [KIND_VIDEO, KIND_VIDEO_DAMAGE]  # the first is all unknown
        assert damages[:2] == [None, Rect(10, 4, 10, 4)]
        assert np.array_equal(shown, picture[..., 2::-1])
        await ws.close()


async def test_no_still_tiles_while_the_producer_draws_on(env: Env) -> None:
    """A page that stops acknowledging (its link is full) is sent nothing more, and the
    picture it has may look still; the producer draws on, so still tiles then would only
    take the link from the video it waits for. Once the producer stops, they come."""
    async with ClientSession() as s:
        ws = await s.ws_connect(env.url + "ws")
        assert json.loads((await ws.receive()).data)["type"] == "hello"
        await ws.send_str(json.dumps({"type": "start", "codec": "mjpeg", "sharp": True}))
        await asyncio.sleep(0.05)
        kinds: list[int] = []

        async def read(seconds: float) -> None:
            end = asyncio.get_running_loop().time() + seconds
            try:
                while KIND_TILE not in kinds:
                    left = end - asyncio.get_running_loop().time()
                    msg = await asyncio.wait_for(ws.receive(), max(left, 0.001))
                    if msg.type == WSMsgType.BINARY:
                        kinds.append(msg.data[0])  # never acknowledged
            except TimeoutError:
                pass

        reader = asyncio.create_task(read(5.0))
        for i in range(60):  # two seconds of a moving picture
            env.present(i)
            await asyncio.sleep(1 / 30)
        assert kinds and KIND_TILE not in kinds, kinds
        await reader  # the picture stands still now: the tiles come
        assert KIND_TILE in kinds
        await ws.close()


async def test_still_tiles_count_as_delivered_for_rate_control(env: Env) -> None:
    """Still tiles go through the link ahead of the next frame: that frame's
    acknowledgement counts their bytes too, or a refresh would read as a link that
    carried only the video's few bytes (and the rate would be cut to them)."""
    rng = np.random.default_rng(7)
    picture = rng.integers(0, 256, (H, W, 4), dtype=np.uint8)
    async with ClientSession() as s:
        ws = await s.ws_connect(env.url + "ws")
        assert json.loads((await ws.receive()).data)["type"] == "hello"
        await ws.send_str(json.dumps({"type": "start", "codec": "mjpeg", "sharp": True}))
        await asyncio.sleep(0.05)
        env.display.present(picture.copy(), owned=True)
        tile_bytes = 0
        while True:  # the refresh: every tile, until none came for a while
            try:
                msg = await asyncio.wait_for(ws.receive(), 10 if tile_bytes == 0 else 0.5)
            except TimeoutError:
                break
            if msg.type != WSMsgType.BINARY:
                continue
            if msg.data[0] == KIND_TILE:
                tile_bytes += len(msg.data)
                continue
            header, _ = unpack_video(msg.data)
            await ws.send_str(json.dumps({"type": "ack", "frame": header.frame}))
        assert tile_bytes > 0
        (viewer,) = env.server.viewers
        env.display.present(picture.copy(), Rect(0, 0, 8, 8), owned=True)
        while True:
            msg = await asyncio.wait_for(ws.receive(), 10)
            if msg.type == WSMsgType.BINARY and msg.data[0] != KIND_TILE:
                header, data = unpack_video(msg.data)
                break
        _, _, counted = viewer._sent[header.frame]
        assert counted >= tile_bytes + len(data)
        await ws.close()


async def test_page_and_health(env: Env) -> None:
    async with ClientSession() as s:
        async with s.get(env.url) as r:
            assert r.status == 200 and "static/app.js" in await r.text()
        async with s.get(env.url + "static/app.js") as r:
            assert r.status == 200 and "VideoDecoder" in await r.text()
        async with s.get(env.url + "static/../server.py") as r:
            assert r.status == 404
        async with s.get(env.url + "healthz") as r:
            assert (await r.json())["ok"] is True
        async with s.get(env.url + "metrics") as r:
            assert "saffron_viewers" in await r.text()


async def test_frames_flow_within_the_ack_window(env: Env) -> None:
    async with ClientSession() as s:
        ws = await start(s, env)
        headers = []
        for i in range(WINDOW_FRAMES + 3):
            env.present(i * 10)
            await asyncio.sleep(0.05)
        while True:
            try:
                header, data = await asyncio.wait_for(next_video(ws), 1)
            except TimeoutError:
                break
            headers.append(header)
            assert data[:4] == b"\0\0\0\1", "H.264 travels as Annex B"
        assert headers[0].keyframe and headers[0].codec == "h264"
        assert (headers[0].width, headers[0].height) == (W, H)
        assert [h.frame for h in headers] == list(range(len(headers)))
        assert len(headers) == WINDOW_FRAMES, "no more than the window without acks"
        assert not env.display.wants_frame
        await ws.send_str(json.dumps({"type": "ack", "frame": headers[-1].frame}))
        await asyncio.sleep(0.1)
        assert env.display.wants_frame
        env.present(200)
        header, _ = await next_video(ws)
        assert header.frame == WINDOW_FRAMES
        await ws.close()


async def test_input_reaches_the_producer(env: Env) -> None:
    async with ClientSession() as s:
        ws = await start(s, env)
        for msg in (
            {"type": "key", "code": "KeyA", "down": True},
            {"type": "key", "code": "ArrowUp", "down": False},
            {"type": "pointer", "x": 10, "y": 5000},
            {"type": "button", "button": 1, "down": True},
            {"type": "wheel", "dy": 120},
        ):
            await ws.send_str(json.dumps(msg))
        for _ in range(100):
            if len(env.input.events) >= 6:
                break
            await asyncio.sleep(0.01)
        assert env.input.events == [
            ("key", 0x1E, True),
            ("key", 0xE048, False),
            ("pointer", 10, H - 1),
            ("button", Button.LEFT, True),
            ("button", Button.WHEEL_DOWN, True),
            ("button", Button.WHEEL_DOWN, False),
        ]
        await ws.close()


async def test_a_viewport_asks_the_producer_for_a_screen_of_its_size(env: Env) -> None:
    """ "resize guest" on: the page's window size reaches the producer, clamped; the page
    hears with its statistics whether the producer can; a view-only page cannot ask."""
    asked: list[SizeRequest] = []
    env.display.resize_hook = asked.append
    async with ClientSession() as s:
        ws = await start(s, env)
        await ws.send_str(json.dumps({"type": "viewport", "width": 1280, "height": 720}))
        await ws.send_str(json.dumps({"type": "viewport", "width": 99999, "height": 7}))
        for _ in range(100):
            if len(asked) == 2:
                break
            await asyncio.sleep(0.01)
        assert asked == [SizeRequest(1280, 720), SizeRequest(MAX_GUEST_WIDTH, MIN_GUEST_HEIGHT)]
        env.display.resize_hook = None
        await ws.send_str(json.dumps({"type": "viewport", "width": 800, "height": 600}))
        while True:  # a producer without a hook cannot: the next statistics say so
            msg = json.loads((await asyncio.wait_for(ws.receive(), 5)).data)
            if msg.get("type") == "stats" and msg["resizable"] == "no":
                break
        await ws.close()
    env.display.resize_hook = asked.append
    env.server.view_only = True
    async with ClientSession() as s:
        ws = await start(s, env)
        await ws.send_str(json.dumps({"type": "viewport", "width": 640, "height": 480}))
        await ws.send_str(json.dumps({"type": "ping", "t0": 1}))
        while json.loads((await asyncio.wait_for(ws.receive(), 5)).data)["type"] != "pong":
            pass  # the viewport was read before the ping
        assert len(asked) == 2
        await ws.close()


@pytest.mark.parametrize(
    "bad",
    [
        '{"type": "viewport", "width": -5, "height": 600}',
        '{"type": "viewport", "width": "wide"}',
        "not json",
        "[1, 2]",
        '{"type": "launch-missiles"}',
        '{"type": "ack"}',
        '{"type": "start", "codec": "theora"}',
        '{"type": "button", "button": 99, "down": 1}',
        "x" * 10000,
    ],
)
async def test_malformed_message_closes_only_that_connection(env: Env, bad: str) -> None:
    async with ClientSession() as s:
        good = await start(s, env)
        evil = await start(s, env)
        await evil.send_str(bad)
        msg = await asyncio.wait_for(evil.receive(), 10)
        while msg.type == WSMsgType.BINARY or msg.type == WSMsgType.TEXT:
            msg = await asyncio.wait_for(evil.receive(), 10)
        assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING)
        assert evil.close_code in (1008, 1009)
        env.present(1)
        header, _ = await next_video(good)  # the other viewer carries on
        assert header.codec == "h264"
        await good.close()


async def test_binary_from_the_page_is_refused(env: Env) -> None:
    async with ClientSession() as s:
        ws = await start(s, env)
        await ws.send_bytes(b"\x01\x02")
        while (await asyncio.wait_for(ws.receive(), 10)).type in (
            WSMsgType.TEXT,
            WSMsgType.BINARY,
        ):
            pass
        assert ws.close_code == 1008


class Watcher:
    """A good page beside a flood: acks every frame and counts frames and keyframes,
    while a producer presents a new picture ten times a second (``--fps 10``)."""

    def __init__(self, env: Env, ws: Any) -> None:
        self.frames = self.keyframes = 0
        self.tasks = [asyncio.create_task(self._watch(ws)), asyncio.create_task(self._produce(env))]

    async def _watch(self, ws: Any) -> None:
        while True:
            header, _ = await next_video(ws)
            self.frames += 1
            self.keyframes += header.keyframe
            await ws.send_str(json.dumps({"type": "ack", "frame": header.frame}))

    async def _produce(self, env: Env) -> None:
        for i in range(1_000_000):
            env.present(i % 250)
            await asyncio.sleep(0.1)

    async def more_frames(self, count: int) -> None:
        until = self.frames + count
        for _ in range(1000):
            if self.frames >= until:
                return
            assert not any(t.done() for t in self.tasks), [t.exception() for t in self.tasks]
            await asyncio.sleep(0.01)
        raise AssertionError(f"the good page stopped at {self.frames} frames")

    def stop(self) -> None:
        for task in self.tasks:
            task.cancel()


@pytest.mark.parametrize("codecs", [["h264"], ["mjpeg", "h264"]], ids=["same", "switching"])
async def test_a_page_that_keeps_starting_does_not_flood_others_with_keyframes(
    env: Env, codecs: list[str]
) -> None:
    """A view-only page re-sending ``start`` every 10 ms (for its codec, or switching back
    and forth) used to make every other page get a keyframe each time."""
    env.server.view_only = True
    async with ClientSession() as s:
        watcher = Watcher(env, await start(s, env))
        flooder = await start(s, env)
        await watcher.more_frames(3)
        before = watcher.keyframes
        began = time.monotonic()
        for i in range(200):
            await flooder.send_str(json.dumps({"type": "start", "codec": codecs[i % len(codecs)]}))
            await asyncio.sleep(0.01)
        elapsed = time.monotonic() - began
        await watcher.more_frames(5)
        watcher.stop()
        flood = watcher.keyframes - before
        # At most one per KEYFRAME_MIN_INTERVAL of the flood and one at its end (before: ~200).
        assert flood <= 1 + elapsed / KEYFRAME_MIN_INTERVAL, f"{flood} keyframes in {elapsed:.1f} s"
        await flooder.close()


async def test_a_message_flood_is_closed_and_others_keep_watching(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """4 KB messages as fast as the socket takes them: the page is closed with the reason
    logged, the other page keeps getting frames."""
    caplog.set_level(logging.WARNING, logger="saffron.web")
    big = json.dumps({"type": "stats", "pad": "x" * 4000})
    async with ClientSession() as s:
        watcher = Watcher(env, await start(s, env))
        flooder = await start(s, env)
        await watcher.more_frames(2)
        with contextlib.suppress(ConnectionError):
            for _ in range(5000):  # 20 MB; more than twenty seconds' worth of the limit
                await flooder.send_str(big)

        async def until_closed() -> None:
            async for _ in flooder:
                pass

        await asyncio.wait_for(until_closed(), 30)
        # 1006 when the close frame is lost: the server stopped reading, so the unread
        # flood in its buffers makes the socket close with a reset.
        assert flooder.close_code in (1006, 1008)
        await watcher.more_frames(5)
        watcher.stop()
    assert "it sends more than 2000 messages a second" in caplog.text


def test_video_header_layout() -> None:
    assert HEADER.size == 24
    raw = HEADER.pack(1, 4, 1, 0, 1280, 720, 7, 1_700_000_000_000_000, 1500) + b"JPEG"
    header, data = unpack_video(raw)
    assert (header.codec, header.keyframe, header.width, header.height) == (
        "mjpeg",
        True,
        1280,
        720,
    )
    assert (header.frame, header.capture_us, header.encode_us, data) == (
        7,
        1_700_000_000_000_000,
        1500,
        b"JPEG",
    )
    with pytest.raises(ProtocolError):
        unpack_video(raw[:10])
    with pytest.raises(ProtocolError):
        unpack_video(b"\x02" + raw[1:])


def test_key_codes() -> None:
    assert scancode_for("KeyA") == 0x1E
    assert scancode_for("Escape") == 0x01
    assert scancode_for("ArrowUp") == 0xE048
    assert scancode_for("NoSuchKey") is None


async def test_a_broken_encoder_moves_the_page_to_the_next_codec() -> None:
    """x264 raising on every frame must not leave the page without a picture."""

    async with web_site(
        size=(W, H),
        broadcast={"encoder_factory": broken_h264},
        codecs=["h264", "mjpeg"],
        default_codec="h264",
    ) as site:
        env = Env(site)
        display = site.display
        async with ClientSession() as s:
            ws = await start(s, env)
            env.present(1)
            switch = None
            while switch is None:
                msg = await asyncio.wait_for(ws.receive(), 10)
                if msg.type == WSMsgType.TEXT and json.loads(msg.data)["type"] == "switch":
                    switch = json.loads(msg.data)
            assert switch["codecs"] == ["mjpeg"] and "simulated failure" in switch["reason"]
            await ws.send_str(json.dumps({"type": "start", "codec": "mjpeg"}))
            for _ in range(100):
                if display.wants_frame:
                    break
                await asyncio.sleep(0.01)
            env.present(2)
            header, data = await next_video(ws)
            assert header.codec == "mjpeg" and data[:2] == b"\xff\xd8"
            await ws.close()


async def test_a_page_gets_sound_only_after_it_turns_it_on() -> None:
    loop = asyncio.get_running_loop()
    audio = AudioBroadcast(loop)
    async with web_site(codecs=["mjpeg"], default_codec="mjpeg", audio=audio) as site:
        site.display.audio = audio
        fmt = PcmFormat(rate=48000, channels=2)
        audio.pcm_start(1, fmt)
        audio.pcm_enable(1, True)
        chunk = np.zeros((480 * 4, 2), "<i2").tobytes()  # 40 ms of silence

        async def play(n: int) -> None:
            for _ in range(n):
                audio.pcm_write(1, chunk, now_us())
                await asyncio.sleep(0.01)

        async with ClientSession() as s:
            ws = await s.ws_connect(site.url + "ws")
            hello = json.loads((await ws.receive()).data)
            assert hello["audio"] is True
            await play(5)
            with pytest.raises(TimeoutError):  # not turned on: nothing
                await asyncio.wait_for(ws.receive(), 0.3)
            await ws.send_str(json.dumps({"type": "audio", "on": True}))
            await asyncio.sleep(0.05)
            await play(5)
            packets = []
            while len(packets) < 20:
                msg = await asyncio.wait_for(ws.receive(), 5)
                if msg.type == WSMsgType.BINARY:
                    packet, samples = unpack_audio(msg.data)
                    assert samples == 480 and packet.data
                    packets.append(packet)
            seqs = [p.seq for p in packets]
            assert seqs == sorted(seqs)
            assert abs(packets[0].capture_us - now_us()) < 5_000_000
            await ws.send_str(json.dumps({"type": "audio", "on": False}))
            await asyncio.sleep(0.05)
            assert not audio.seats
            await ws.close()


def test_audio_header_layout() -> None:
    packet = AudioPacket(b"\xfc\x01", capture_us=0x0102030405060708, seq=9)
    data = pack_audio(packet)
    assert data[:16] == b"\x04\x00\xe0\x01\x09\0\0\0" + (0x0102030405060708).to_bytes(8, "little")
    assert unpack_audio(data) == (packet, 480)
    with pytest.raises(ProtocolError):
        unpack_audio(data[:10])


async def test_a_pages_microphone_reaches_the_guest_only_while_it_is_on() -> None:
    mic = MicInput()
    fmt = PcmFormat(rate=44100, channels=2)
    mic.mic_start(1, fmt)
    mic.mic_enable(1, True)
    packets = opus_tone_packets(TONE_HZ, 0.4)
    async with (
        web_site(codecs=["mjpeg"], default_codec="mjpeg", mic=mic) as site,
        ClientSession() as s,
    ):
        ws = await s.ws_connect(site.url + "ws")
        hello = json.loads((await ws.receive()).data)
        assert hello["mic"] is True
        await ws.send_bytes(pack_mic(1, 0, packets[0]))  # not turned on: not heard
        await ws.send_str(json.dumps({"type": "mic", "on": True}))
        for seq, packet in enumerate(packets[1:], 1):
            await ws.send_bytes(pack_mic(1, seq, packet))
        assert await until(lambda: mic.stats.packets == len(packets) - 1)
        viewer = next(iter(site.server.viewers))
        assert viewer.mic_refused == 1
        pcm = np.frombuffer(mic.mic_read(1, 44100 * 4), "<i2").reshape(-1, 2)
        assert peak_hz(pcm[:, 0].astype(float), 44100) == pytest.approx(TONE_HZ, rel=0.02)
        await ws.send_str(json.dumps({"type": "mic", "on": False}))
        await ws.send_bytes(pack_mic(1, 99, packets[0]))
        assert await until(lambda: viewer.mic_refused == 2)
        await ws.send_bytes(b"\x05\x00\x07\x00\0\0\0\0\xfc")  # 7 channels: not ours
        msg = await asyncio.wait_for(ws.receive(), 10)
        while msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
            msg = await asyncio.wait_for(ws.receive(), 10)
        assert ws.close_code == 1008


async def until(cond: Any, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True
