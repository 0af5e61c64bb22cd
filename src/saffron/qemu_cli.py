"""``saffron qemu -- qemu-system-x86_64 ...``: run a VM and serve its screen.

QEMU gets a private D-Bus bus and ``-display dbus`` on it; Saffron attaches as
the display's listener. When Saffron stops, QEMU is stopped; when QEMU exits,
viewers are told and Saffron exits with QEMU's status.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal

from .app import Options, Server, StartupError
from .display import Display
from .sources.qemu import QemuError, QemuSource, start_qemu

log = logging.getLogger("saffron.qemu")


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


async def _run(opts: Options, args: argparse.Namespace) -> int:
    argv = _argv(args)
    try:
        vm = start_qemu(argv)
    except QemuError as exc:
        raise StartupError(str(exc)) from None
    display = Display()
    source = QemuSource(display, dbus_address=vm.address, console=args.console)
    server = Server(opts, display, source)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
        from .cli import announce

        announce(opts, server)
        while not stop.is_set():
            if vm.returncode is not None:
                status = exit_status(vm.returncode)
                log.info("QEMU exited with status %d; stopping", status)
                display.disable()
                await asyncio.sleep(0.3)  # let the viewers hear it
                return status
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
        log.info("stopping QEMU")
        return 0
    finally:
        await server.close()
        vm.stop()


def run_qemu(args: argparse.Namespace, opts: Options) -> int:
    return asyncio.run(_run(opts, args))
