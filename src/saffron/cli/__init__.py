"""``saffron serve | qemu | probe``: the command line, and the subcommands plugged into it
(``saffron bench``, see ``COMMANDS``).

Read in this order: :mod:`.options` (the serve options and the Options they make),
:mod:`.serve` (the one serve loop, what it prints, the signals, and ``saffron serve``),
:mod:`.qemu` (``saffron qemu``: QEMU's process on that loop), :mod:`.probe`. This module
only parses and dispatches; it never imports a plugged command (they find it).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points

from ..app import StartupError
from . import probe, serve
from .options import SIGNALS_HELP, add_serve_options, console_choice


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saffron", description="Remote display for 3D-accelerated virtual machines."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve_parser = sub.add_parser(
        "serve", help="serve a producer to browsers and SPICE clients", epilog=SIGNALS_HELP
    )
    serve_parser.add_argument("--source", choices=["demo", "pattern", "qemu"], default="demo")
    serve_parser.add_argument(
        "--still",
        action="store_true",
        help="demo source: no motion of its own, only what input does",
    )
    serve_parser.add_argument(
        "--motion",
        type=float,
        default=0.25,
        help="pattern source: share of the picture that moves (0-1)",
    )
    serve_parser.add_argument(
        "--dbus-address", help="qemu source: the D-Bus address of a running QEMU"
    )
    serve_parser.add_argument(
        "--console",
        type=console_choice,
        default=0,
        help="qemu source: console number, or 'all' for every screen",
    )
    serve_parser.add_argument(
        "--libvirt",
        metavar="DOMAIN",
        help="show the VM libvirt runs as DOMAIN (its <graphics type='dbus'>), across restarts",
    )
    serve_parser.add_argument(
        "--connect",
        metavar="URI",
        default="qemu:///system",
        help="--libvirt: libvirt's connection URI (default qemu:///system)",
    )
    add_serve_options(serve_parser)

    qemu_parser = sub.add_parser(
        "qemu",
        help="start QEMU with its display served by Saffron",
        usage="saffron qemu [options] -- qemu-system-x86_64 [qemu args]",
        epilog=SIGNALS_HELP,
    )
    qemu_parser.add_argument(
        "--console",
        type=console_choice,
        default=0,
        help="console number, or 'all': every screen (SPICE display channel k, page ?screen=k)",
    )
    qemu_parser.add_argument(
        "--audio",
        action="store_true",
        help="play the guest's sound to the viewers: wires QEMU's -audiodev dbus (one is "
        "added, id 'saffron', when the QEMU arguments define none) to its D-Bus display",
    )
    qemu_parser.add_argument(
        "--clipboard",
        action="store_true",
        help="share the guest's clipboard (text) with the viewers: adds QEMU's qemu-vdagent "
        "chardev (clipboard=on) on a virtio-serial port com.redhat.spice.0, which the guest's "
        "spice-vdagent opens",
    )
    qemu_parser.add_argument("qemu_argv", nargs=argparse.REMAINDER, help="the QEMU command line")
    add_serve_options(qemu_parser)

    probe_parser = sub.add_parser("probe", help="list the encoders and whether they work here")
    probe_parser.add_argument("-v", "--verbose", action="count", default=0)

    _add_plugged_commands(sub)
    return parser


COMMANDS = "saffron.commands"
"""The entry-point group of subcommands that live outside the product (``saffron bench``,
in saffron.bench): each entry is a function given the subparsers, which adds its own
parser with a ``handler`` default (a function of the parsed arguments that returns the
exit status). The product finds them by name and never imports them."""


def _add_plugged_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for entry in entry_points(group=COMMANDS):
        try:
            register = entry.load()
        except (ImportError, AttributeError) as exc:  # a stale install: serve still works
            print(f"saffron: no {entry.name!r} command: {exc}", file=sys.stderr)
            continue
        register(sub)


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose < 0 else (logging.INFO, logging.DEBUG)[min(verbose, 1)]
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        if args.command == "serve":
            return serve.command(args)
        if args.command == "probe":
            return probe.command(args)
        handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
        if handler is not None:
            return handler(args)
        if args.command == "qemu":
            from . import qemu  # QEMU's D-Bus side, only when it is asked for

            return qemu.command(args)
    except StartupError as exc:
        print(f"saffron: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2
