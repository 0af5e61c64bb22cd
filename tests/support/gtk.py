"""spice-gtk as a test client: ``run_gtk_client`` runs tests/support/gtk_client.py (a
headless client on spice-gtk's GObject bindings) with the system Python, answers its
progress phases, and returns its JSON report."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from saffron.bench.spice_gtk import SYSTEM_PYTHON, script_env

GTK_CLIENT = Path(__file__).resolve().parent / "gtk_client.py"


def run_gtk_client(
    port: int,
    *args: str,
    timeout: float = 60,
    on_phase: dict[str, Callable[[], None]] | None = None,
) -> dict[str, Any]:
    """Run tests/support/gtk_client.py with the system Python; returns its JSON report.

    ``on_phase`` maps a progress phase the client prints to a function run when it
    does; after the "measured" and "still-N" phases the client waits for a line on
    stdin, which is sent once that phase's function returned.
    """
    proc = subprocess.Popen(
        [SYSTEM_PYTHON, str(GTK_CLIENT), "--port", str(port), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=script_env(),
    )
    err_lines: list[str] = []
    reader = threading.Thread(
        target=lambda: err_lines.extend(proc.stderr or []), name="gtk-stderr", daemon=True
    )
    reader.start()
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    result: dict[str, Any] | None = None
    try:
        assert proc.stdout is not None and proc.stdin is not None
        for line in proc.stdout:
            if not line.startswith("{"):
                continue
            obj = json.loads(line)
            phase = obj.get("phase")
            if phase is None:
                result = obj
                continue
            if on_phase and phase in on_phase:
                on_phase[phase]()
            if phase == "measured" or phase.startswith("still-"):
                proc.stdin.write("go\n")
                proc.stdin.flush()
        proc.wait(10)
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(5)
    stderr = "".join(err_lines)
    if result is None:
        raise AssertionError(f"gtk_client printed no report (exit {proc.returncode}):\n{stderr}")
    result["_stderr"] = stderr[-4000:]
    return result
