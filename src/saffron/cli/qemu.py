"""``saffron qemu -- qemu-system-x86_64 ...``: run a VM and serve its screen.

QEMU gets a private D-Bus bus and ``-display dbus`` on it; Saffron attaches as
the display's listener. When Saffron stops, QEMU is stopped; when QEMU exits,
viewers are told and Saffron exits with QEMU's status.

QEMU's stderr passes through Saffron, held back until QEMU's display is up: a
QEMU that fails at startup (a missing disk, a bad option) ends Saffron with
one line that carries QEMU's own complaint, and exit status 2.

It owns QEMU's process as a command sees it (its stderr, how its end reads, its
status); it serves through :mod:`.serve`'s loop, as QEMU's :class:`~.serve.Lifetime`,
and knows nothing of the D-Bus display (that is :mod:`saffron.sources.qemu`'s).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import signal
import subprocess
import sys
import threading
import time
from typing import IO, TextIO

from ..app import Options, StartupError
from ..display import Display
from ..sources.qemu import QemuError, QemuProcess, QemuSource, start_qemu
from .options import ALL_CONSOLES, options
from .serve import Ending, Lifetime, run

log = logging.getLogger("saffron.qemu")

HOLD_S = 10.0
"""Longest that QEMU's stderr is held back (and the URL not yet shown) while its
display is not up: long enough for QEMU to fail at startup, short enough not to
hide what a slow QEMU says."""

POLL_S = 0.2
"""How often the main loop looks at QEMU's process."""


def _argv(args: argparse.Namespace) -> list[str]:
    argv = list(args.qemu_argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise StartupError(
            "give the QEMU command after '--', e.g. "
            "saffron qemu -- qemu-system-x86_64 -m 512 -cdrom disk.iso"
        )
    return argv


def exit_status(returncode: int) -> int:
    """QEMU's status as a shell reports it (128 + N when killed by signal N)."""
    return 128 - returncode if returncode < 0 else returncode


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def how_it_ended(returncode: int) -> str:
    """``exit status 1`` or ``killed by signal 9 (SIGKILL)``."""
    if returncode < 0:
        return f"killed by signal {-returncode} ({_signal_name(-returncode)})"
    return f"exit status {returncode}"


def exit_line(returncode: int) -> str:
    """Saffron's one line when QEMU has exited under it, with the status Saffron exits with:
    ``QEMU exited with status 137 (killed by signal 9, SIGKILL)``."""
    status = exit_status(returncode)
    if returncode < 0:
        return (
            f"QEMU exited with status {status} "
            f"(killed by signal {-returncode}, {_signal_name(-returncode)})"
        )
    return f"QEMU exited with status {status}"


def viewer_reason(returncode: int) -> str:
    """What the viewers are told: ``QEMU was killed by signal 9 (SIGKILL)``."""
    if returncode < 0:
        return f"QEMU was {how_it_ended(returncode)}"
    return f"QEMU exited with status {returncode}"


class QemuStderr:
    """QEMU's stderr, passed on line by line to Saffron's own.

    Until :meth:`release` the lines are held back, so that a QEMU that fails
    before its display is up is reported once, in Saffron's error line.
    """

    MAX_HELD = 200

    def __init__(self, pipe: IO[bytes], out: TextIO | None = None) -> None:
        self._pipe = pipe
        self._out = out
        self._lock = threading.Lock()
        self._held: collections.deque[str] | None = collections.deque(maxlen=self.MAX_HELD)
        self.last: collections.deque[str] = collections.deque(maxlen=8)
        self._thread = threading.Thread(target=self._run, name="saffron-qemu-stderr", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            for raw in iter(self._pipe.readline, b""):
                line = raw.decode(errors="replace").rstrip("\r\n")
                with self._lock:
                    if line.strip():
                        self.last.append(line.strip())
                    if self._held is not None:
                        self._held.append(line)
                        continue
                self._write([line])
        with contextlib.suppress(OSError):
            self._pipe.close()

    def _write(self, lines: list[str]) -> None:
        out = self._out or sys.stderr
        with contextlib.suppress(OSError, ValueError):
            for line in lines:
                out.write(line + "\n")
            out.flush()

    def release(self) -> None:
        """Pass on what was held back, and from now on every line as it comes."""
        with self._lock:
            held, self._held = self._held, None
        if held:
            self._write(list(held))

    def complaint(self, timeout: float = 2.0) -> str:
        """QEMU's last words, once it has exited: its stderr up to the end, on one line."""
        self._thread.join(timeout)
        with self._lock:
            self._held = None  # said in the error line; not passed on as well
            return "; ".join(self.last)


class QemuLifetime(Lifetime):
    """QEMU's life as the serve loop sees it: the addresses wait for its display (or
    ``HOLD_S``), its stderr is held back till then, and its exit ends Saffron with its
    status."""

    poll_s = POLL_S

    def __init__(self, vm: QemuProcess, source: QemuSource, stderr: QemuStderr) -> None:
        self.vm = vm
        self.source = source
        self.stderr = stderr
        self._hold_until: float | None = None
        """``HOLD_S`` from the first time the loop asks, when the server has started."""

    def ready(self) -> bool:
        if self._hold_until is None:
            self._hold_until = time.monotonic() + HOLD_S
        if self.source.attached.is_set() or time.monotonic() >= self._hold_until:
            self.stderr.release()
            return True
        return False

    async def ended(self) -> Ending | None:
        source, vm = self.source, self.vm
        if source.closed.is_set() and vm.returncode is None:
            # The display's socket closes a moment before QEMU can be reaped.
            await asyncio.get_running_loop().run_in_executor(None, _exited, vm, 2.0)
        returncode = vm.returncode
        if returncode is not None:
            return self._qemu_ended(returncode)
        if source.closed.is_set():  # the display went, QEMU stays: nothing to show
            if source.attach_count == 0:
                raise StartupError(source.close_reason)
            log.info("no display from QEMU any more (%s); stopping QEMU", source.close_reason)
            return Ending("the VM's display is gone", 1)
        return None

    def _qemu_ended(self, returncode: int) -> Ending:
        """QEMU has exited: say how, and what to tell the viewers and exit with."""
        if self.source.attach_count == 0 and returncode != 0:
            said = self.stderr.complaint()
            raise StartupError(
                f"QEMU did not start ({how_it_ended(returncode)})" + (f": {said}" if said else "")
            )
        self.stderr.release()
        log.info("%s; stopping", exit_line(returncode))
        return Ending(viewer_reason(returncode), exit_status(returncode))

    def stopped(self) -> None:
        log.info("stopping QEMU")

    def close(self) -> None:
        self.vm.stop()
        self.stderr.release()


async def _run(args: argparse.Namespace, opts: Options) -> int:
    argv = _argv(args)
    try:
        vm = start_qemu(argv, stderr=subprocess.PIPE, audio=args.audio, clipboard=args.clipboard)
    except QemuError as exc:
        raise StartupError(str(exc)) from None
    assert vm.process.stderr is not None
    stderr = QemuStderr(vm.process.stderr)
    if args.console == ALL_CONSOLES:
        from ..sources.qemu.consoles import screens

        loop = asyncio.get_running_loop()
        displays, consoles = await loop.run_in_executor(
            None,
            lambda: screens(
                vm.address,
                gone=lambda: vm.returncode is not None,
                process_exited=lambda: _exited(vm, 1.0),
            ),
        )
        life = QemuLifetime(vm, consoles.sources[0], stderr)
        return await run(opts, displays[0], consoles, life, more_screens=displays[1:])
    display = Display()
    source = QemuSource(
        display,
        dbus_address=vm.address,
        console=args.console,
        process_exited=lambda: _exited(vm, 1.0),
    )
    return await run(opts, display, source, QemuLifetime(vm, source, stderr))


def _exited(vm: QemuProcess, timeout: float) -> bool:
    """Whether QEMU has exited, waiting up to ``timeout`` seconds for it to."""
    try:
        vm.wait(timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


def command(args: argparse.Namespace) -> int:
    """``saffron qemu``: QEMU's exit status, or Saffron's own."""
    return asyncio.run(_run(args, options(args)))
