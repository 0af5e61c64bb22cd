"""A Saffron subprocess for the benches and the tests: start it, wait until it serves,
read its log, its metrics and its CPU, memory and descriptors, stop it.

Its output goes to a log file, never to a pipe: nobody has to drain it while the
process runs, and the log is still there to read after it stopped.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

STOP_WAIT_S = 10.0
"""How long a stopped Saffron may take to close its viewers before it is killed."""

TICKS = os.sysconf("SC_CLK_TCK")
"""Clock ticks per second of /proc/PID/stat's CPU times."""


class StartError(RuntimeError):
    """Saffron exited, or did not say it serves, before the timeout; the log says why."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float, host: str = "127.0.0.1") -> None:
    """Return once something accepts connections on ``host:port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    raise StartError(f"nothing listens on port {port}")


def wait_file(path: Path, text: str, timeout: float) -> None:
    """Return once ``text`` appears in the file at ``path``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise StartError(f"timed out waiting for {text!r} in {path}")


def metric(port: int, name: str, base_path: str = "/") -> float:
    """The sum of a metric's samples on the metrics page of the web port (under its
    ``--base-path``)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{base_path}metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((name + " ", name + "{"))
    )


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmRSS for {pid}")


def open_fds(pid: int) -> int:
    """Open file descriptors of a process."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def saffron_command(*args: str) -> list[str]:
    """``saffron ARGS`` run by this Python (so it imports the Saffron being measured)."""
    return [sys.executable, "-m", "saffron.cli", *args]


@dataclass
class SaffronProcess:
    """A running Saffron: its process, its log, and the ports it was given. As a context
    manager, it is stopped on the way out."""

    proc: subprocess.Popen[bytes]
    log: Path
    web_port: int | None = None
    spice_port: int | None = None
    base_path: str = "/"
    """Its ``--base-path``: where its page and metrics are."""

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        """The page's address."""
        return f"http://127.0.0.1:{self.web_port}{self.base_path}"

    def output(self) -> str:
        """What it printed and logged so far."""
        return self.log.read_text(errors="replace")

    def metric(self, name: str) -> float:
        """The sum of a metric's samples on its /metrics page."""
        if self.web_port is None:
            raise ValueError("this Saffron serves no web page")
        return metric(self.web_port, name, self.base_path)

    def __enter__(self) -> SaffronProcess:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self, sig: int = signal.SIGTERM, wait: float = STOP_WAIT_S) -> None:
        """Send ``sig`` and wait for it to exit; kill it if it takes longer than ``wait``."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_saffron(
    argv: Sequence[str],
    log: Path,
    *,
    ready: str = "open http",
    timeout: float = 60.0,
    env: Mapping[str, str] | None = None,
    web_port: int | None = None,
    spice_port: int | None = None,
    base_path: str = "/",
) -> SaffronProcess:
    """Run ``argv`` (see :func:`saffron_command`) with its output in ``log``; return once
    the log shows ``ready`` (Saffron's announce line: it listens by then).

    Raises :class:`StartError`, with the log, if it exits or is not ready in ``timeout``.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**(env if env is not None else os.environ), "PYTHONUNBUFFERED": "1"},
        )
    p = SaffronProcess(proc, log, web_port, spice_port, base_path)
    deadline = time.monotonic() + timeout
    while ready not in p.output():
        if proc.poll() is not None:
            raise StartError(f"saffron exited early:\n{p.output()}")
        if time.monotonic() > deadline:
            p.stop()
            raise StartError(f"saffron did not start:\n{p.output()}")
        time.sleep(0.1)
    return p
