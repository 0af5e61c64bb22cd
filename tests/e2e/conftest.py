"""Chromium through Playwright, for the end-to-end tests that open the page; the QEMU
versions the QEMU tests run against."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import pytest

from saffron.bench import guest as build_guest
from saffron.bench import qemus
from saffron.bench.chromium import CHROMIUM, CHROMIUM_ARGS
from saffron.bench.qemus import Qemu


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Chromium for one test module. Not for the whole session: Playwright's sync
    API keeps an event loop running while open, which asyncio tests cannot share."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module", params=qemus.VERSIONS, ids=lambda v: f"qemu{v}")
def qemu(request: pytest.FixtureRequest) -> Qemu:
    """Each QEMU end-to-end test runs against the system's QEMU 7.2 and against 10.0
    (unpacked by `make setup`). One that is missing fails the test, saying how to get it:
    CI installs both, so no skip may hide a missing one."""
    q = qemus.qemu(request.param)
    problem = _problem(q.version)
    if problem:
        pytest.fail(problem, pytrace=False)
    return q


@functools.cache
def _problem(version: str) -> str | None:
    return qemus.qemu(version).problem()


@pytest.fixture
def guest_image() -> build_guest.Guest:
    """The test guest's kernel and initramfs (saffron.bench.guest), built once and cached."""
    missing = build_guest.missing_tools()
    assert not missing, f"building the guest needs {', '.join(missing)}"
    return build_guest.build_guest()
