"""The serve loop, one for ``saffron serve`` and ``saffron qemu``, and ``saffron serve`` itself.

:func:`run` starts the :class:`~saffron.app.Server`, prints where to point a viewer
(:func:`announce`), takes the signals (SIGINT and SIGTERM stop, SIGHUP makes new token
links), waits for a signal or for the producer to end, closes with a reason for the
viewers and gives the exit status. What differs between producers, when the addresses
may be printed and how a producer's end becomes Saffron's, is a :class:`Lifetime`: the
default is a producer that lives as long as Saffron; ``saffron qemu`` gives QEMU's
(:mod:`.qemu`).

It knows no producer's insides: :func:`producer` only picks one by ``--source``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import signal
from collections.abc import Sequence

from ..app import SPICE_HTML5, Options, Producer, Server, StartupError
from ..display import Display
from .options import ALL_CONSOLES, options

log = logging.getLogger("saffron")


@dataclasses.dataclass(frozen=True)
class Ending:
    """The producer has ended, and Saffron ends with it."""

    reason: str
    """What the viewers are told."""
    status: int
    """Saffron's exit status."""


class Lifetime:
    """How long a producer serves besides the signals, and when its addresses are printed.

    This default is a producer that lives as long as Saffron (``saffron serve``'s): the
    addresses are printed at once, and only SIGINT or SIGTERM end serving.
    """

    poll_s: float | None = None
    """How often :meth:`ended` is asked; None: once, and then only a signal ends serving."""

    def ready(self) -> bool:
        """Whether the addresses may be printed now; asked until it says yes."""
        return True

    async def ended(self) -> Ending | None:
        """None while the producer runs; once it has ended, how Saffron ends. Raises
        :class:`StartupError` for a producer that never came up."""
        return None

    def stopped(self) -> None:
        """A signal stopped serving."""
        log.info("stopping")

    def close(self) -> None:
        """After the server has closed: whatever the producer leaves behind."""


async def run(
    opts: Options,
    display: Display,
    producer: Producer,
    life: Lifetime | None = None,
    more_screens: Sequence[Display] = (),
) -> int:
    """Serve ``producer`` until a signal or its end; the exit status."""
    life = life or Lifetime()
    server = Server(opts, display, producer, more_screens)
    stop = asyncio.Event()
    handle_signals(server, stop)
    try:
        await server.start()
        announced = False
        while not stop.is_set():
            if not announced and life.ready():
                announce(opts, server)
                announced = True
            ending = await life.ended()
            if ending is not None:
                await server.close(ending.reason)
                return ending.status
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), life.poll_s)
        life.stopped()
        return 0
    finally:
        await server.close()
        life.close()


# -- what a user reads --------------------------------------------------------


def _shown(host: str) -> str:
    """The address a user types for a wildcard listener."""
    return "127.0.0.1" if host in ("0.0.0.0", "::") else host


def _bound(asked: tuple[str, int] | None, bound: list[tuple[str, int]]) -> tuple[str, int] | None:
    """The address to show: the one asked for, with the port the system chose for port 0."""
    if asked is None or asked[1] != 0 or not bound:
        return asked
    return asked[0], bound[0][1]


def announce(opts: Options, server: Server | None = None) -> None:
    """Where to point a browser or a SPICE client, one line each, on stdout."""
    cert = server.certificate if server is not None else None
    scheme = "https" if cert is not None else "http"
    if server is not None:
        pages = server.web.addresses if server.web is not None else []
        spice = server.spice.addresses if server.spice is not None else []
        opts = dataclasses.replace(
            opts,
            web=_bound(opts.web, pages),
            spice=_bound(opts.spice, spice[:1]),
            spice_tls=_bound(opts.spice_tls, spice[-1:]),
        )
    if opts.web is not None:
        web = f"{_shown(opts.web[0])}:{opts.web[1]}"
        base = f"{scheme}://{web}{opts.base_path}"
        print(f"Saffron: open {base} in a browser", flush=True)
        if server is not None and server.auth.enabled:
            links = _token_links(base, server)
            print(f"Saffron: sign in with the password, or use  {links}", flush=True)
    if cert is not None:
        print(f"Saffron: certificate {cert.cert} (SHA-256 {cert.fingerprint})", flush=True)
    if opts.spice is not None and not opts.spice_secure_channels:
        shown = f"{_shown(opts.spice[0])}:{opts.spice[1]}"
        print(f"Saffron: or run  remote-viewer spice://{shown}", flush=True)
    if opts.spice_tls is not None and cert is not None:
        # With both ports spice-gtk opens channels plain unless told NEED_SECURED.
        plain = ""
        if opts.spice is not None and opts.spice_secure_channels:
            plain = f"port={opts.spice[1]}&"
        print(
            f"Saffron: or over TLS  remote-viewer --spice-ca-file={cert.cert} "
            f"'spice://{_shown(opts.spice_tls[0])}?{plain}tls-port={opts.spice_tls[1]}'",
            flush=True,
        )
    if opts.web is not None and SPICE_HTML5.is_dir() and (opts.spice or opts.spice_tls):
        host, port, base = _shown(opts.web[0]), opts.web[1], opts.base_path
        page = f"spice-html5/spice_auto.html?host={host}&port={port}&path={base[1:]}spice"
        print(f"Saffron: or spice-html5 at {scheme}://{host}:{port}{base}{page}", flush=True)


def _token_links(base: str, server: Server) -> str:
    auth = server.auth
    return f"{base}?token={auth.full_token}  (view only: ?token={auth.view_token})"


# -- signals --------------------------------------------------------------------


def handle_signals(server: Server, stop: asyncio.Event) -> None:
    """SIGINT and SIGTERM set ``stop``; SIGHUP replaces the token links (SIGNALS_HELP)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _rotate_tokens, server)


def _rotate_tokens(server: Server) -> None:
    """SIGHUP: new token links, printed as at start; the old links' sessions end."""
    if not server.auth.enabled:
        log.warning("SIGHUP: there are no token links to replace without a password")
        return
    server.auth.rotate_tokens()
    web = _bound(server.opts.web, server.web.addresses if server.web is not None else [])
    if web is not None:
        scheme = "https" if server.certificate is not None else "http"
        base = f"{scheme}://{_shown(web[0])}:{web[1]}{server.opts.base_path}"
        print(f"Saffron: new links  {_token_links(base, server)}", flush=True)


# -- saffron serve ----------------------------------------------------------------


def producer(opts: Options, args: argparse.Namespace, display: Display) -> Producer:
    """The producer ``--source`` names, drawing on ``display``."""
    w, h = opts.size
    if getattr(args, "libvirt", None):
        return libvirt_producer(args, display)
    if opts.source == "demo":
        from ..sources.demo import DemoSource

        return DemoSource(display, w, h, opts.fps, still=bool(getattr(args, "still", False)))
    if opts.source == "pattern":
        from ..sources.pattern import PatternSource

        return PatternSource(display, w, h, opts.fps, opts.motion)
    if opts.source == "qemu":
        if not args.dbus_address:
            raise StartupError("--source qemu needs --dbus-address (the bus QEMU's display is on)")
        from ..sources.qemu import QemuSource

        # Attached to a QEMU someone else runs: outlive it, and show it again when it is back.
        return QemuSource(
            display, dbus_address=args.dbus_address, console=args.console, reattach=True
        )
    raise StartupError(f"unknown source {opts.source}")


def libvirt_producer(args: argparse.Namespace, display: Display) -> Producer:
    """``--libvirt DOMAIN``: a VM libvirt runs, followed across its restarts."""
    from ..sources.qemu import QemuError
    from ..sources.qemu.libvirt import LibvirtSource

    try:
        source = LibvirtSource(display, args.libvirt, uri=args.connect, console=args.console)
        log.info("%s", source.check())
    except QemuError as exc:
        raise StartupError(str(exc)) from None
    return source


def command(args: argparse.Namespace) -> int:
    """``saffron serve``: the exit status."""
    opts = options(args)
    if getattr(args, "console", 0) == ALL_CONSOLES:
        if getattr(args, "libvirt", None) or opts.source != "qemu" or not args.dbus_address:
            raise StartupError("--console all is for --source qemu with --dbus-address")
        from ..sources.qemu.consoles import screens

        displays, consoles = screens(args.dbus_address, reattach=True)
        return asyncio.run(run(opts, displays[0], consoles, more_screens=displays[1:]))
    display = Display()
    return asyncio.run(run(opts, display, producer(opts, args, display)))
