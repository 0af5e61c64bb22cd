"""Saffron as a subprocess, for the tests that check what the command itself does and
says: a thin layer over saffron.bench.process (which starts it, waits for its ports and
its ready line, stops it and keeps its log), with a free web port and the log in
ARTIFACTS. In-process servers are tests/support/harness.py's."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from saffron.bench.process import SaffronProcess, free_port, saffron_command, start_saffron
from saffron.net.forwarded import base_path
from tests.support.artifacts import ARTIFACTS


@contextmanager
def run_saffron(
    *args: str, ready: str = "open http", timeout: float = 60, log_name: str = "", **kwargs: Any
) -> Iterator[SaffronProcess]:
    """``saffron ARGS`` as a subprocess, with a web port of its own unless ARGS name one
    (or ``--no-web``); yields once it printed ``ready``. Its log stays in ARTIFACTS
    (``log_name``, or saffron-PORT.log); ``kwargs`` go to start_saffron."""
    port = free_port()
    argv = list(args)
    if "--web" not in args and "--no-web" not in args:
        argv[1:1] = ["--web", f"127.0.0.1:{port}"]  # after the subcommand, before any "--"
    log = ARTIFACTS / (log_name or f"saffron-{port}.log")
    kwargs.setdefault("web_port", port)
    if "--base-path" in argv:
        kwargs.setdefault("base_path", base_path(argv[argv.index("--base-path") + 1]))
    with start_saffron(
        saffron_command(*argv), log, ready=ready, timeout=timeout, **kwargs
    ) as saffron:
        yield saffron
