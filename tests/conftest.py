"""What every test folder shares: the figures some tests leave in ARTIFACTS
(tests/support/artifacts.py's ``publish``), in pytest's terminal summary. Chromium is
tests/e2e/conftest.py's."""

from __future__ import annotations

import json
import os
import time

import pytest

from tests.support.artifacts import ARTIFACTS, ROOT

SESSION_START = time.time()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line for each file of figures this test process wrote (the fuzzer's, the
    connection caps')."""
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
