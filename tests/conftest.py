"""Shared test helpers: free ports, a Saffron subprocess, Chromium through Playwright;
and the figures some tests leave in ARTIFACTS, in pytest's terminal summary."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / ".cache" / "test-artifacts"
SESSION_START = time.time()

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SaffronProcess:
    def __init__(self, proc: subprocess.Popen[str], web_port: int, log: Path) -> None:
        self.proc = proc
        self.web_port = web_port
        self.log = log
        self.url = f"http://127.0.0.1:{web_port}/"

    def metric(self, name: str) -> float:
        """Sum of a metric's samples from /metrics."""
        with urllib.request.urlopen(self.url + "metrics", timeout=10) as r:
            text = r.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def output(self) -> str:
        return self.log.read_text()


@contextmanager
def run_saffron(
    *args: str, ready: str = "open http", timeout: float = 60
) -> Iterator[SaffronProcess]:
    """``saffron serve`` as a subprocess; yields once it printed ``ready``."""
    port = free_port()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = ARTIFACTS / f"saffron-{port}.log"
    cmd = [sys.executable, "-m", "saffron.cli", *args]
    if "--web" not in args and "--no-web" not in args:
        cmd[4:4] = ["--web", f"127.0.0.1:{port}"]  # after the subcommand, before any "--"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    deadline = time.monotonic() + timeout
    try:
        while ready not in log.read_text():
            if proc.poll() is not None:
                raise AssertionError(f"saffron exited early:\n{log.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"saffron did not start:\n{log.read_text()}")
            time.sleep(0.1)
        yield SaffronProcess(proc, port, log)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Chromium for one test module. Not for the whole session: Playwright's sync
    API keeps an event loop running while open, which asyncio tests cannot share."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line for each file of figures this test process wrote (tests/live.py's
    ``publish``: the fuzzer's, the connection caps')."""
    lines = []
    for path in sorted(ARTIFACTS.glob("*.json")):
        if path.stat().st_mtime < SESSION_START:
            continue
        data = json.loads(path.read_text())
        if isinstance(data, dict) and data.get("pid") == os.getpid() and "summary" in data:
            lines.append(f"{data['summary']} ({path.relative_to(ROOT)})")
    if lines:
        terminalreporter.section("figures")
        for line in lines:
            terminalreporter.write_line(line)
