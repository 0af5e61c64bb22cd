"""QEMU faults under `saffron qemu`: killed while viewers watch, failing at startup.

Either way Saffron must say what happened in one plain line, tell its viewers,
exit by itself with a status that mirrors QEMU's, and print no traceback and no
ERROR line. The viewers are the light ones from saffron.bench.clients (they acknowledge
frames without decoding them); the VM is SeaBIOS with no disk, whose text
screen is on the display a moment after QEMU starts.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from saffron.bench import clients
from saffron.bench.process import free_port
from saffron.bench.qemus import Qemu
from tests.support.artifacts import ARTIFACTS
from tests.support.process import run_saffron

BASE = ["-machine", "q35", "-accel", "tcg", "-nodefaults", "-device", "VGA"]

TIMEOUT = 60.0
"""Generous: for the first frames on a loaded machine, and for Saffron to exit by itself."""


def qemu_child(saffron_pid: int) -> int:
    """The pid of the QEMU that the Saffron process started (its bus is a child too)."""
    for task in Path(f"/proc/{saffron_pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                argv0 = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[0]
            except FileNotFoundError:
                continue
            if os.path.basename(argv0).startswith(b"qemu-system-"):
                return int(child)
    raise AssertionError(f"no QEMU child of {saffron_pid}")


def problems(output: str) -> list[str]:
    return [line for line in output.splitlines() if "Traceback" in line or " ERROR " in line]


async def _watch_then_kill(
    saffron_pid: int, web_port: int, spice_port: int
) -> tuple[clients.Tally, clients.Tally, list[BaseException | None]]:
    web, spice = clients.Tally(), clients.Tally()
    tasks = [
        asyncio.ensure_future(clients.web_viewer(f"http://127.0.0.1:{web_port}/", web)),
        asyncio.ensure_future(clients.spice_viewer("127.0.0.1", spice_port, spice)),
    ]
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (web.frames > 0 and spice.frames > 0):
            assert time.monotonic() < deadline, f"no frames: web {web}, SPICE {spice}"
            for t in tasks:
                if t.done():
                    raise AssertionError(f"a viewer ended before the kill: {t.exception()!r}")
            await asyncio.sleep(0.1)
        os.kill(qemu_child(saffron_pid), signal.SIGKILL)
        # The viewers are not stopped by the test: the server must close them.
        _, pending = await asyncio.wait(tasks, timeout=TIMEOUT)
        assert not pending, "a viewer's connection stayed open after QEMU was killed"
        return web, spice, [t.exception() for t in tasks]
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def test_qemu_killed_under_web_and_spice_viewers(qemu: Qemu) -> None:
    spice_port = free_port()
    with run_saffron(
        "qemu",
        "--spice",
        f"127.0.0.1:{spice_port}",
        "--codec",
        "mjpeg",
        "--fps",
        "30",
        "--",
        *qemu.command(*BASE, "-m", "64", "-name", "e2e-fault"),
        timeout=TIMEOUT,
    ) as saffron:
        web, spice, errors = asyncio.run(
            _watch_then_kill(saffron.proc.pid, saffron.web_port, spice_port)
        )
        try:
            status = saffron.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"saffron did not exit:\n{saffron.output()}") from None
        out = saffron.output()
    assert status == 128 + signal.SIGKILL, out
    assert not problems(out), problems(out)
    # One plain line says what happened (and with which status Saffron leaves) ...
    ended = [
        line for line in out.splitlines() if "QEMU exited" in line or "display is gone" in line
    ]
    assert len(ended) == 1, out
    assert ended[0].endswith("QEMU exited with status 137 (killed by signal 9, SIGKILL); stopping")
    # ... each viewer's connection was closed by the server, saying why.
    assert errors == [None, None], errors
    assert web.connects == 1 and spice.connects == 1
    told = [line for line in out.splitlines() if "(QEMU was killed by signal 9 (SIGKILL))" in line]
    assert any("web viewer" in line for line in told), out
    assert any("SPICE client" in line for line in told), out


def test_qemu_that_fails_at_startup(qemu: Qemu, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-disk.img"
    log = ARTIFACTS / f"saffron-{qemu.id}-bad-drive.log"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "saffron.cli",
                "qemu",
                "--web",
                f"127.0.0.1:{free_port()}",
                "--",
                *qemu.command(*BASE, "-m", "64", "-drive", f"file={missing},format=raw"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=TIMEOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    text = log.read_text()
    assert proc.returncode == 2, text
    assert not problems(text), problems(text)
    said = [line for line in text.splitlines() if "Could not open" in line]
    assert len(said) == 1, f"QEMU's complaint once, in Saffron's error line:\n{text}"
    assert said[0].startswith("saffron: QEMU did not start (exit status 1): qemu-system-x86_64: ")
    assert str(missing) in said[0]
    assert "open http" not in text, "no URL for a VM that never started"
