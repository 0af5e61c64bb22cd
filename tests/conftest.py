"""Shared test helpers: a Saffron subprocess, Chromium through Playwright;
and the figures some tests leave in ARTIFACTS, in pytest's terminal summary."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from saffron.bench.process import SaffronProcess, free_port, saffron_command, start_saffron

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


@contextmanager
def run_saffron(
    *args: str, ready: str = "open http", timeout: float = 60
) -> Iterator[SaffronProcess]:
    """``saffron ARGS`` as a subprocess (saffron.bench.process), with a web port of its
    own unless ARGS name one; yields once it printed ``ready``. Its log stays in
    ARTIFACTS."""
    port = free_port()
    argv = list(args)
    if "--web" not in args and "--no-web" not in args:
        argv[1:1] = ["--web", f"127.0.0.1:{port}"]  # after the subcommand, before any "--"
    log = ARTIFACTS / f"saffron-{port}.log"
    with start_saffron(
        saffron_command(*argv), log, ready=ready, timeout=timeout, web_port=port
    ) as saffron:
        yield saffron


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
