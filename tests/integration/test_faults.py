"""Faults: viewers killed mid-frame, a producer that stalls, an encoder that raises under
a SPICE viewer, no EGL, no working encoder, the SPICE port in use.

Each must leave a clear message and no traceback, and must not disturb the other
viewers. (QEMU killed under its viewers is tested in tests/e2e/test_qemu_faults.py;
spice-gtk under a broken encoder in tests/e2e/spice/test_gtk_client.py; a broken
encoder under a web page in tests/integration/test_web.py; the web port in use in
tests/integration/test_web_auth.py.)
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from aiohttp import ClientWebSocketResponse

from saffron.bench import clients
from saffron.bench.process import free_port, start_saffron
from saffron.bench.spice_client import GTK_DISPLAY_CAPS, PyClient, open_session, watch_spice
from saffron.display import Display
from saffron.sources.pattern import PatternSource
from saffron.spice import session as spice_session_module
from saffron.spice.protocol import wire as w
from saffron.spice.protocol.display_channel import CODEC_LABELS, CODEC_TYPES
from saffron.web import server as web_server_module
from tests.support.artifacts import ROOT
from tests.support.harness import IO_TIMEOUT, broken_h264, spice_server, watched_saffron
from tests.support.wait import wait_until


class StallingPattern(PatternSource):
    """The pattern, with a switch that makes its thread stop presenting (a hung guest)."""

    def __init__(self, display: Display, width: int, height: int, fps: int) -> None:
        super().__init__(display, width, height, fps)
        self.stalled = threading.Event()

    def tick(self, t: float) -> None:
        if not self.stalled.is_set():
            super().tick(t)


# -- viewers killed mid-frame ----------------------------------------------------------------

VICTIM = textwrap.dedent(
    r"""
    import asyncio, socket, struct, sys, time
    from saffron.bench import clients
    from saffron.bench.spice_client import PyClient
    from saffron.spice.protocol import wire as w

    kind, port = sys.argv[1], int(sys.argv[2])
    UPGRADE = (
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )

    async def spice(half_sent):
        main = await PyClient.open(port, w.ChannelType.MAIN)
        main.auto_ack = True
        session = (await main.expect(w.MainInit)).session_id
        display = await PyClient.open(
            port, w.ChannelType.DISPLAY, connection_id=session,
            channel_caps=clients.SPICE_GTK_DISPLAY_CAPS)
        display.send(w.DisplayInit(1, 1000, 1, 1000))
        await display.stream.read()  # the first bytes of the display channel, then stop reading
        if half_sent:  # half an inputs-like message: a header promising 12 bytes, 3 given
            main.send_raw(struct.pack("<HI", w.Pong.TYPE, 12) + b"abc")
        print("ready", flush=True)
        await asyncio.sleep(3600)

    def web(half_sent):
        import json
        sock = socket.create_connection(("127.0.0.1", port))

        def recv():
            data = sock.recv(4096)
            if not data:
                sys.exit("the server closed the connection")
            return data

        sock.sendall(UPGRADE)
        head = b""
        while b"\r\n\r\n" not in head:
            head += recv()
        start = json.dumps({"type": "start", "codec": "mjpeg"}).encode()
        sock.sendall(bytes([0x81, 0x80 | len(start)]) + bytes(4) + start)
        got = 0
        while got < 8192:  # part of the first frames, then stop reading
            got += len(recv())
        if half_sent:  # half a WebSocket frame: 24 of the 200 bytes it announces
            sock.sendall(bytes([0x81, 0x80 | 126, 0, 200]) + bytes(4) + bytes(24))
        print("ready", flush=True)
        time.sleep(3600)

    if kind.startswith("spice"):
        asyncio.run(spice(kind.endswith("half")))
    else:
        web(kind.endswith("half"))
    """
)


@pytest.mark.parametrize("kind", ["spice", "spice-half", "web", "web-half"])
def test_viewer_killed_mid_frame(kind: str) -> None:
    """SIGKILL a viewer that stopped reading in the middle of the video (and, for the
    half cases, had sent half a message): its connections go, the others carry on."""
    with watched_saffron(size=(640, 360)) as s:
        port = s.spice_port if kind.startswith("spice") else s.web_port
        start = len(s.records)
        victim = subprocess.Popen(
            [sys.executable, "-c", VICTIM, kind, str(port)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        try:
            assert victim.stdout is not None
            assert victim.stdout.readline().strip() == "ready"
            wants = s.baseline + (2 if kind.startswith("spice") else 1)
            assert wait_until(lambda: s.open_connections == wants)
            victim.send_signal(signal.SIGKILL)
            victim.wait(30)
        finally:
            if victim.poll() is None:
                victim.kill()
                victim.wait()
        s.settled()
        s.progress()
        said = [text for _, _, text in s.records.since(start)]
        if kind.startswith("spice"):
            assert any("disconnected (the client closed the connection)" in t for t in said), said
        else:
            assert any(" left (" in t for t in said), said


# -- the producer stalls -------------------------------------------------------------------------


class Counter(logging.Handler):
    """Counts the log records whose message contains ``words``."""

    def __init__(self, words: str) -> None:
        super().__init__(logging.DEBUG)
        self.words = words
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if self.words in record.getMessage():
            self.count += 1


def test_producer_stall_keeps_viewers(monkeypatch: pytest.MonkeyPatch) -> None:
    """No new picture for a while: the viewers get nothing, stay connected (they answer
    the web heartbeat and the SPICE pings), and get frames again when the producer
    comes back."""
    monkeypatch.setattr(web_server_module, "HEARTBEAT_S", 2.0)
    monkeypatch.setattr(spice_session_module, "PING_INTERVAL_S", 2.0)
    web_pongs = 0
    pong = ClientWebSocketResponse.pong

    async def counted_pong(ws: ClientWebSocketResponse, message: bytes = b"") -> None:
        nonlocal web_pongs
        await pong(ws, message)
        web_pongs += 1

    # The good web viewer's aiohttp answers the server's heartbeat pings through this.
    monkeypatch.setattr(ClientWebSocketResponse, "pong", counted_pong)
    spice_pongs = Counter("round trip")  # logged by the server for each pong it gets
    logging.getLogger("saffron.spice").addHandler(spice_pongs)
    try:
        with watched_saffron(producer=StallingPattern, level=logging.DEBUG) as s:
            assert isinstance(s.producer, StallingPattern)

            def frames() -> tuple[int, int]:
                return s.spice_watch.frames, s.web_watch.frames

            def heartbeat() -> None:
                """Both viewers answer one more heartbeat (at least HEARTBEAT_S apart)."""
                web, spice = web_pongs, spice_pongs.count
                assert wait_until(
                    lambda: web_pongs > web and spice_pongs.count > spice, timeout=IO_TIMEOUT
                ), f"heartbeats answered: web {web_pongs}, SPICE {spice_pongs.count}"

            s.producer.stalled.set()
            # What was in flight arrives; a heartbeat later, nothing more.
            last = frames()
            for _ in range(5):
                heartbeat()
                if frames() == last:
                    break
                last = frames()
            else:
                raise AssertionError(f"frames keep coming during the stall: {frames()}")
            heartbeat()
            assert frames() == last, "frames during the stall"
            assert s.open_connections == s.baseline, "a viewer was dropped during the stall"
            s.producer.stalled.clear()
            s.progress()
    finally:
        logging.getLogger("saffron.spice").removeHandler(spice_pongs)


# -- an encoder that raises under a SPICE viewer ------------------------------------------------


def test_spice_viewer_moves_to_another_codec(caplog: pytest.LogCaptureFixture) -> None:
    """H.264 breaks: the SPICE viewer gets the next codec of the server's that it plays
    instead, and keeps watching."""
    caplog.set_level(logging.INFO, "saffron")
    with spice_server(width=160, height=96) as (srv, _):
        srv.broadcast._factory = broken_h264  # before anyone joins: every h264 stream breaks
        codecs = srv.server.codecs
        assert codecs[0] == "h264"
        # The viewer (spice-gtk's caps) plays every codec SPICE carries.
        expected = next(c for c in codecs[1:] if c in CODEC_TYPES)
        got = asyncio.run(watch_spice(srv.port, 5))
    creates = [m for m in got if isinstance(m, w.StreamCreate)]
    assert [c.codec_type for c in creates] == [CODEC_TYPES[expected]], (creates, codecs)
    said = caplog.text
    assert "SPICE: no longer sending H.264 (simulated failure)" in said
    assert f"switching video from H.264 to {CODEC_LABELS[expected]}" in said
    assert "Traceback" not in said


def test_spice_viewer_is_told_when_no_codec_is_left(caplog: pytest.LogCaptureFixture) -> None:
    """A server that encodes only H.264 (--codec h264 where nothing else works) loses it:
    the display channel is closed with the reason, the session stays."""
    caplog.set_level(logging.INFO, "saffron")
    with spice_server(width=160, height=96, codecs=["h264"]) as (srv, _):
        srv.broadcast._factory = broken_h264

        async def watch() -> bool:
            main, init = await open_session(srv.port)
            display = await PyClient.open(
                srv.port,
                w.ChannelType.DISPLAY,
                connection_id=init.session_id,
                channel_caps=GTK_DISPLAY_CAPS,
            )
            display.send(w.DisplayInit(1, 1000, 1, 1000))
            closed = await display.closed(30)
            main.close()
            return closed

        assert asyncio.run(watch())
    assert (
        "closing the display channel: the client plays none of the codecs this server "
        "still encodes (none left)"
    ) in caplog.text
    assert "SPICE: no longer sending H.264 (simulated failure); left: nothing" in caplog.text


# -- what cannot start says why -------------------------------------------------------------------


def _saffron(*args: str, code: str = "") -> list[str]:
    """The command line of ``saffron`` (after ``code``, run first in the same process)."""
    boot = code + "\nimport sys\nfrom saffron.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return [sys.executable, "-c", boot, *args]


def _no_traceback(text: str) -> None:
    assert "Traceback" not in text and " ERROR " not in text, text


def test_no_egl_falls_back_to_numpy(tmp_path: Path) -> None:
    """A host without an EGL driver (glvnd finds no vendor): the demo draws with NumPy,
    says so in one line, and the page gets frames."""
    env = {
        **os.environ,
        "__EGL_VENDOR_LIBRARY_FILENAMES": "/nonexistent/egl-vendor.json",
        "__EGL_VENDOR_LIBRARY_DIRS": "/nonexistent",
    }
    port = free_port()
    argv = _saffron("serve", "--size", "160x96", "--fps", "15", "--web", f"127.0.0.1:{port}")
    saffron = start_saffron(argv, tmp_path / "saffron.log", env=env, web_port=port)
    try:
        tally = clients.Tally()

        async def watch() -> None:
            task = asyncio.ensure_future(clients.web_viewer(saffron.url, tally))
            for _ in range(600):
                if tally.frames >= 3:
                    break
                await asyncio.sleep(0.05)
            task.cancel()

        asyncio.run(watch())
        assert tally.frames >= 3
    finally:
        saffron.stop(signal.SIGINT, wait=30)
    text = saffron.output()
    fallback = [line for line in text.splitlines() if "OpenGL through EGL is not available" in line]
    assert len(fallback) == 1 and fallback[0].rstrip().endswith("drawing with NumPy"), text
    _no_traceback(text)


NO_ENCODERS = """
import dataclasses
import saffron.encoders.registry as registry
from saffron.encoders.base import EncoderError

def _cannot_open(*args, **kwargs):
    raise EncoderError("cannot open the encoder: no such device")

_real = registry._backends
registry._backends = lambda: [dataclasses.replace(b, factory=_cannot_open) for b in _real()]
"""
"""Every backend fails to open, as on a host whose FFmpeg and libjpeg are unusable."""


def test_no_working_encoder() -> None:
    serve = subprocess.run(
        _saffron(
            "serve",
            "--source",
            "pattern",
            "--web",
            f"127.0.0.1:{free_port()}",
            code=NO_ENCODERS,
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert serve.returncode == 2, serve
    assert serve.stderr.strip().splitlines()[-1] == (
        "saffron: no video encoder works on this host (see 'saffron probe')"
    )
    _no_traceback(serve.stdout + serve.stderr)
    probe = subprocess.run(
        _saffron("probe", code=NO_ENCODERS), capture_output=True, text=True, timeout=120
    )
    assert probe.returncode == 1, probe
    rows = probe.stdout.strip().splitlines()[1:]
    assert rows and all("no: no such device" in row for row in rows), probe.stdout
    _no_traceback(probe.stdout + probe.stderr)


@pytest.mark.parametrize("which", ["--spice", "--spice-tls"])
def test_spice_port_in_use(which: str, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = ["serve", "--source", "pattern", "--no-web", which, f"127.0.0.1:{port}"]
        if which == "--spice-tls":
            args += ["--tls", "auto"]
        r = subprocess.run(
            [sys.executable, "-m", "saffron.cli", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path)},
        )
    tls = " TLS" if which == "--spice-tls" else ""
    assert r.returncode == 2, r
    assert r.stderr.strip().splitlines()[-1] == (
        f"saffron: cannot listen for SPICE{tls} on 127.0.0.1:{port}: Address already in use"
    ), r.stderr
    _no_traceback(r.stdout + r.stderr)
