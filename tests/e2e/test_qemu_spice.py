"""A real VM seen and typed into by spice-gtk: `saffron qemu --spice`, QEMU 7.2 and 10.0."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from saffron.bench import guest as build_guest
from saffron.bench.process import free_port
from saffron.bench.qemus import Qemu
from saffron.bench.spice_gtk import SYSTEM_PYTHON, script_env
from saffron.bench.spice_server import GTK_FRAMES
from tests.support.process import run_saffron

BASE = ["-machine", "q35", "-accel", "tcg", "-nodefaults", "-device", "VGA"]


def gtk_viewer(port: int, *args: str) -> dict[str, object]:
    """saffron/bench/gtk_frames.py: spice-gtk through its GObject bindings, with the system
    python3."""
    out = subprocess.run(
        [SYSTEM_PYTHON, str(GTK_FRAMES), "--port", str(port), *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=script_env(),
    )
    assert out.returncode == 0, out.stderr
    report: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return report


def test_seabios_text_reaches_spice_gtk(qemu: Qemu) -> None:
    port = free_port()
    vm = qemu.command(*BASE, "-m", "64")
    with run_saffron("qemu", "--spice", f"127.0.0.1:{port}", "--fps", "30", "--", *vm):
        report = gtk_viewer(port, "--settle", "4", "--seconds", "2")
    assert report["size"] == [720, 400], report


def test_guest_moves_and_spice_gtk_keys_reach_it(qemu: Qemu, tmp_path: Path) -> None:
    guest = build_guest.build_guest()
    serial = tmp_path / "serial.log"
    port = free_port()
    with run_saffron(
        "qemu",
        "--spice",
        f"127.0.0.1:{port}",
        "--fps",
        "30",
        "--",
        *qemu.command(*BASE, "-m", "256", *guest.qemu_args(serial)),
    ):
        deadline = time.monotonic() + 90
        while "saffron-guest: ready" not in serial.read_text(errors="replace"):
            assert time.monotonic() < deadline, "the guest did not boot"
            time.sleep(0.3)
        report = gtk_viewer(port, "--codec", "h264", "--seconds", "8", "--keys", "3")
    assert report["size"] == [build_guest.WIDTH, build_guest.HEIGHT]
    assert isinstance(report["fps"], float) and report["fps"] > 1, "the band must move"
    delays = report["key_delays_ms"]
    assert isinstance(delays, list) and len(delays) >= 2, report
    log = serial.read_text(errors="replace")
    assert "key 2" in log and "key 30" in log  # '1' and 'A', as the guest's evdev saw them
