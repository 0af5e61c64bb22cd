"""spice-gtk 0.42 (the library inside remote-viewer) against Saffron, through its GObject API.

tests/support/gtk_client.py runs under the system python3 and prints JSON; these tests
start the server in-process, run it, and check what it saw: the surface size, the
frames it showed for each codec, the exact pixels once the picture stands still,
the keys and mouse it sent reaching the producer, the password check, and an H.264
stream that breaks under it.
"""

from __future__ import annotations

import json
import logging
import statistics
from typing import Any

import numpy as np
import pytest

from saffron.bench.stats import percentile
from tests.support.artifacts import ARTIFACTS
from tests.support.gtk import run_gtk_client
from tests.support.harness import EXPECTED_INPUT, broken_h264, spice_server
from tests.support.wait import wait_until

FPS = 30


def delays_ms(report: dict[str, Any], sent: dict[int, float]) -> dict[str, float | None]:
    """Median capture-to-show and send-to-show times, from the stamps the client read."""
    shown = report.get("shown", [])
    capture = [(t - stamp / 1e6) * 1000 for stamp, t in shown]
    send = [(t - sent[stamp]) * 1000 for stamp, t in shown if stamp in sent]
    return {
        "capture_to_show_ms": statistics.median(capture) if capture else None,
        "send_to_show_ms": statistics.median(send) if send else None,
        "send_to_show_p90_ms": percentile(send, 90) if send else None,
    }


@pytest.mark.parametrize("codec", ["mjpeg", "vp8", "h264"])
def test_frames_and_exact_still_picture(codec: str, tmp_path: Any) -> None:
    dump = tmp_path / "surface.npy"
    with spice_server(fps=FPS) as (srv, scene):
        assert scene is not None
        report = run_gtk_client(
            srv.port,
            "--codec",
            codec,
            "--settle",
            "2",
            "--seconds",
            "4",
            "--still",
            "--dump",
            str(dump),
            on_phase={"measured": scene.pause},
        )
        assert not report["errors"], report
        assert (report["width"], report["height"]) == (640, 480)
        assert srv.codecs_sent.get(codec, 0) > 0, srv.codecs_sent
        # Frames shown while measuring, against what the producer offered: generous,
        # the machine may be busy, but a stalled stream shows up as nothing.
        assert report["frames"] >= 0.3 * FPS * report["seconds"], report
        frame = srv.display.last_frame
        assert frame is not None
        shown = np.load(dump)
        assert shown.shape == (480, 640, 4)
        # Once still, the picture is sent losslessly: every pixel as the producer drew it.
        assert np.array_equal(shown[..., :3], frame.pixels[..., :3])
        numbers = {"codec": codec, "fps": report["fps"], "frames": report["frames"]}
        stream = srv.broadcast.streams.get(codec)
        if stream is not None and stream.frames_encoded:
            numbers["encode_ms"] = stream.encode_ms_total / stream.frames_encoded
            numbers["encoded"] = stream.frames_encoded
            numbers["bitrate_kbps"] = stream.bitrate_kbps
        numbers.update(delays_ms(report, srv.sent))
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / f"spice-gtk-{codec}.json").write_text(json.dumps(numbers, indent=1))
        print(json.dumps(numbers))


def test_second_still_refresh_covers_only_what_moved(tmp_path: Any) -> None:
    """After one sharp refresh, motion in a strip, then stillness: only the strip is
    sent again, and the whole picture is still exact (the stream clip kept the rest)."""
    dump = tmp_path / "surface.npy"
    with spice_server(fps=FPS) as (srv, scene):
        assert scene is not None

        def move_a_little() -> None:
            scene.resume()
            wait_until(lambda: False, timeout=1.5)
            scene.pause()

        report = run_gtk_client(
            srv.port,
            "--codec",
            "h264",
            "--seconds",
            "2",
            "--still",
            "--cycles",
            "2",
            "--dump",
            str(dump),
            on_phase={"measured": scene.pause, "still-1": move_a_little},
        )
        assert not report["errors"], report
        frame = srv.display.last_frame
        assert frame is not None
        assert np.array_equal(np.load(dump)[..., :3], frame.pixels[..., :3])


def test_keys_and_mouse_reach_the_producer() -> None:
    with spice_server(fps=FPS) as (srv, scene):
        assert scene is not None
        report = run_gtk_client(srv.port, "--inputs", "--settle", "1", "--seconds", "1")
        assert report.get("inputs_sent"), report
        assert wait_until(lambda: len(scene.recorded()) >= len(EXPECTED_INPUT), timeout=10)
        assert scene.recorded()[: len(EXPECTED_INPUT)] == EXPECTED_INPUT


def test_view_only_ignores_the_client() -> None:
    with spice_server(fps=FPS, view_only=True) as (srv, scene):
        assert scene is not None
        report = run_gtk_client(srv.port, "--inputs", "--settle", "1", "--seconds", "1")
        assert report.get("inputs_sent") and report["frames"] > 0, report
        assert scene.recorded() == []


def test_password() -> None:
    with spice_server(fps=FPS, password="s3cret") as (srv, _):
        wrong = run_gtk_client(srv.port, "--password", "guess", "--timeout", "20")
        assert wrong.get("auth_failed"), wrong
        assert "width" not in wrong
        right = run_gtk_client(srv.port, "--password", "s3cret", "--settle", "1", "--seconds", "1")
        assert not right.get("auth_failed") and right["width"] == 640, right
        assert right["frames"] > 0


def test_tls_port(tmp_path: Any) -> None:
    """A TLS listener: spice-gtk with ``tls-port`` and the certificate as its CA."""
    from saffron.net.tls import self_signed

    cert = self_signed(tmp_path, hosts=["127.0.0.1"])
    with spice_server(fps=FPS, password="pw") as (srv, _):
        srv.run(srv.server.start("127.0.0.1", 0, ssl=cert.server_context()))
        tls_port = srv.server.addresses[-1][1]
        report = run_gtk_client(
            tls_port,
            "--ca-file",
            str(cert.cert),
            "--password",
            "pw",
            "--settle",
            "1",
            "--seconds",
            "1",
        )
        assert not report["errors"] and report["width"] == 640 and report["frames"] > 0, report


def test_secure_channels_move_to_the_tls_port(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """spice-gtk given both ports opens each channel plain; those Saffron keeps for
    TLS answer NEED_SECURED, and spice-gtk opens them again on the TLS port."""
    from saffron.net.tls import self_signed
    from saffron.spice.protocol.wire import ChannelType

    cert = self_signed(tmp_path, hosts=["127.0.0.1"])
    secure = {ChannelType.DISPLAY, ChannelType.INPUTS}
    caplog.set_level(logging.DEBUG, logger="saffron")
    with spice_server(fps=FPS, secure_channels=secure) as (srv, scene):
        assert scene is not None
        srv.run(srv.server.start("127.0.0.1", 0, ssl=cert.server_context()))
        tls_port = srv.server.addresses[-1][1]
        report = run_gtk_client(
            srv.port,
            "--tls-port",
            str(tls_port),
            "--ca-file",
            str(cert.cert),
            "--inputs",
            "--settle",
            "1",
            "--seconds",
            "1",
        )
        assert not report["errors"] and report["frames"] > 0, report
        assert report.get("inputs_sent") and scene.recorded(), "keys over the TLS inputs channel"
    up = [r.getMessage() for r in caplog.records if "channel up" in r.getMessage()]
    assert any(m.endswith("main channel up") for m in up), up  # not listed: stays plain
    for name in ("display", "inputs"):
        assert any(m.endswith(f"{name} channel up over TLS") for m in up), up
        assert not any(m.endswith(f"{name} channel up") for m in up), up
    refused = [r.getMessage() for r in caplog.records if "NEED_SECURED" in r.getMessage()]
    assert any("display channel" in m for m in refused), refused
    assert any("inputs channel" in m for m in refused), refused


def test_spice_gtk_keeps_watching_when_h264_breaks() -> None:
    """spice-gtk itself: its H.264 stream is replaced by another codec it plays, and it
    goes on showing frames."""
    with spice_server(fps=30) as (srv, _):
        srv.broadcast._factory = broken_h264
        report = run_gtk_client(srv.port, "--settle", "2", "--seconds", "3")
        assert not report["errors"], report
        assert report["frames"] > 0, report
        assert "h264" not in srv.codecs_sent and sum(srv.codecs_sent.values()) > 0, srv.codecs_sent
