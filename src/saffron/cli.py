"""``saffron serve | qemu | probe``: the command line, and the subcommands plugged into it
(``saffron bench``, see ``COMMANDS``)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path

from .app import SPICE_HTML5, Options, Server, StartupError
from .display import Display
from .encoders.base import CODECS
from .net.limits import DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PER_ADDRESS

log = logging.getLogger("saffron")


def _hostport() -> Callable[[str], tuple[str, int]]:
    def parse(text: str) -> tuple[str, int]:
        host, sep, port = text.rpartition(":")
        if not sep:
            host, port = "127.0.0.1", text
        host = host.strip("[]") or "127.0.0.1"
        try:
            value = int(port)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT") from None
        if not 0 <= value <= 65535:
            raise argparse.ArgumentTypeError(f"port {value} is out of range")
        return host, value

    return parse


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT") from None
    if not (16 <= w <= 7680 and 16 <= h <= 4320) or w % 2 or h % 2:
        raise argparse.ArgumentTypeError(f"size {text} must be even and within 16x16..7680x4320")
    return w, h


SPICE_CHANNELS = ("main", "display", "inputs", "cursor")


def _channels(text: str) -> tuple[str, ...]:
    names = SPICE_CHANNELS if text == "all" else tuple(n.strip() for n in text.split(","))
    unknown = [n for n in names if n not in SPICE_CHANNELS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown channel {', '.join(unknown)}: choose from {', '.join(SPICE_CHANNELS)} or all"
        )
    return names


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be above zero")
    return value


def _add_serve_options(p: argparse.ArgumentParser) -> None:
    hp = _hostport()
    p.add_argument(
        "--web",
        type=hp,
        default=("127.0.0.1", 8080),
        metavar="HOST:PORT",
        help="where the web page listens (default 127.0.0.1:8080)",
    )
    p.add_argument("--no-web", action="store_true", help="do not serve the web page")
    p.add_argument(
        "--spice",
        type=hp,
        default=None,
        metavar="HOST:PORT",
        help="serve SPICE clients here (e.g. 127.0.0.1:5900)",
    )
    p.add_argument(
        "--spice-tls",
        type=hp,
        default=None,
        metavar="HOST:PORT",
        help="serve SPICE clients over TLS here (needs --tls auto or --cert/--key)",
    )
    p.add_argument(
        "--spice-secure-channels",
        type=_channels,
        default=(),
        metavar="LIST",
        help="SPICE channels served over TLS only, e.g. main,inputs or all; on the plain "
        "port they answer NEED_SECURED and remote-viewer moves them to --spice-tls",
    )
    p.add_argument(
        "--codec",
        choices=["auto", *CODECS],
        default="auto",
        help="the codec to prefer (default: the best that works here)",
    )
    p.add_argument(
        "--bitrate",
        type=_positive,
        default=8000,
        metavar="KBPS",
        help="target video bitrate in kbit/s (default 8000)",
    )
    p.add_argument("--fps", type=_positive, default=60, help="frames per second (default 60)")
    p.add_argument(
        "--size",
        type=_size,
        default=(1280, 720),
        metavar="WxH",
        help="picture size of the demo and pattern sources (default 1280x720)",
    )
    p.add_argument(
        "--buffering",
        choices=["newest", "fifo"],
        default="newest",
        help="newest-wins (default) or a plain queue, only for comparisons",
    )
    p.add_argument(
        "--fixed-bitrate",
        action="store_true",
        help="keep --bitrate whatever the viewers' links carry (for comparisons)",
    )
    p.add_argument(
        "--password-file",
        type=Path,
        metavar="FILE",
        help="the password viewers must give (or set SAFFRON_PASSWORD)",
    )
    p.add_argument(
        "--no-auth",
        action="store_true",
        help="allow serving beyond this machine without a password",
    )
    p.add_argument("--view-only", action="store_true", help="ignore viewers' keyboard and mouse")
    p.add_argument(
        "--tls",
        choices=["auto"],
        default=None,
        help="HTTPS with a self-signed certificate kept in ~/.config/saffron",
    )
    p.add_argument("--cert", type=Path, help="TLS certificate (PEM) for HTTPS and SPICE TLS")
    p.add_argument("--key", type=Path, help="the certificate's private key (PEM)")
    p.add_argument(
        "--exclusive",
        action="store_true",
        help="a new SPICE client disconnects the previous one, as spice-server does",
    )
    p.add_argument(
        "--max-connections",
        type=_positive,
        default=DEFAULT_MAX_CONNECTIONS,
        metavar="N",
        help=f"open connections, web and SPICE together (default {DEFAULT_MAX_CONNECTIONS})",
    )
    p.add_argument(
        "--max-per-address",
        type=_positive,
        default=DEFAULT_MAX_PER_ADDRESS,
        metavar="N",
        help=f"open connections from one IP address (default {DEFAULT_MAX_PER_ADDRESS})",
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        dest="allowed_hosts",
        help="a host name browsers may use for Saffron besides its addresses and localhost "
        "(repeatable); without a password other names are refused (DNS rebinding)",
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log (-vv: debug)")


SIGNALS_HELP = (
    "signals: SIGHUP makes new token links (printed again) and ends every session made "
    "from the old ones, closing their pages' WebSockets; sessions signed in with the "
    "password stay. A page's own 'sign out' button ends just its session. "
    "SIGINT or SIGTERM stop Saffron."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saffron", description="Remote display for 3D-accelerated virtual machines."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve", help="serve a producer to browsers and SPICE clients", epilog=SIGNALS_HELP
    )
    serve.add_argument("--source", choices=["demo", "pattern", "qemu"], default="demo")
    serve.add_argument(
        "--still",
        action="store_true",
        help="demo source: no motion of its own, only what input does",
    )
    serve.add_argument(
        "--motion",
        type=float,
        default=0.25,
        help="pattern source: share of the picture that moves (0-1)",
    )
    serve.add_argument("--dbus-address", help="qemu source: the D-Bus address of a running QEMU")
    serve.add_argument("--console", type=int, default=0, help="qemu source: console number")
    _add_serve_options(serve)

    qemu = sub.add_parser(
        "qemu",
        help="start QEMU with its display served by Saffron",
        usage="saffron qemu [options] -- qemu-system-x86_64 [qemu args]",
        epilog=SIGNALS_HELP,
    )
    qemu.add_argument("--console", type=int, default=0, help="console number")
    qemu.add_argument("qemu_argv", nargs=argparse.REMAINDER, help="the QEMU command line")
    _add_serve_options(qemu)

    probe = sub.add_parser("probe", help="list the encoders and whether they work here")
    probe.add_argument("-v", "--verbose", action="count", default=0)

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


def _password(args: argparse.Namespace) -> str | None:
    if args.password_file is not None:
        try:
            path: Path = args.password_file
            text = path.read_text().strip("\r\n")
        except OSError as exc:
            raise StartupError(f"cannot read the password file: {exc}") from None
        if not text:
            raise StartupError(f"the password file {args.password_file} is empty")
        return text
    return os.environ.get("SAFFRON_PASSWORD") or None


def _options(args: argparse.Namespace) -> Options:
    return Options(
        source=getattr(args, "source", "qemu"),
        web=None if args.no_web else args.web,
        spice=args.spice,
        codec=args.codec,
        bitrate_kbps=args.bitrate,
        fps=args.fps,
        size=args.size,
        motion=getattr(args, "motion", 0.25),
        buffering=args.buffering,
        fixed_bitrate=args.fixed_bitrate,
        password=_password(args),
        no_auth=args.no_auth,
        view_only=args.view_only,
        exclusive=args.exclusive,
        tls=args.tls,
        spice_tls=args.spice_tls,
        spice_secure_channels=args.spice_secure_channels,
        cert=args.cert,
        key=args.key,
        max_connections=args.max_connections,
        max_per_address=args.max_per_address,
        allowed_hosts=tuple(args.allowed_hosts),
    )


def _producer(opts: Options, args: argparse.Namespace, display: Display) -> object:
    w, h = opts.size
    if opts.source == "demo":
        from .sources.demo import DemoSource

        return DemoSource(display, w, h, opts.fps, still=bool(getattr(args, "still", False)))
    if opts.source == "pattern":
        from .sources.pattern import PatternSource

        return PatternSource(display, w, h, opts.fps, opts.motion)
    if opts.source == "qemu":
        if not args.dbus_address:
            raise StartupError("--source qemu needs --dbus-address (the bus QEMU's display is on)")
        from .sources.qemu import QemuSource

        # Attached to a QEMU someone else runs: outlive it, and show it again when it is back.
        return QemuSource(
            display, dbus_address=args.dbus_address, console=args.console, reattach=True
        )
    raise StartupError(f"unknown source {opts.source}")


def _shown(host: str) -> str:
    """The address a user types for a wildcard listener."""
    return "127.0.0.1" if host in ("0.0.0.0", "::") else host


def _bound(asked: tuple[str, int] | None, bound: list[tuple[str, int]]) -> tuple[str, int] | None:
    """The address to show: the one asked for, with the port the system chose for port 0."""
    if asked is None or asked[1] != 0 or not bound:
        return asked
    return asked[0], bound[0][1]


def announce(opts: Options, server: Server | None = None) -> None:
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
        base = f"{scheme}://{web}/"
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
        host, port = _shown(opts.web[0]), opts.web[1]
        page = f"spice-html5/spice_auto.html?host={host}&port={port}&path=spice"
        print(f"Saffron: or spice-html5 at {scheme}://{host}:{port}/{page}", flush=True)


def _token_links(base: str, server: Server) -> str:
    auth = server.auth
    return f"{base}?token={auth.full_token}  (view only: ?token={auth.view_token})"


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
        base = f"{scheme}://{_shown(web[0])}:{web[1]}/"
        print(f"Saffron: new links  {_token_links(base, server)}", flush=True)


async def _serve(opts: Options, display: Display, producer: object) -> int:
    server = Server(opts, display, producer)  # type: ignore[arg-type]
    stop = asyncio.Event()
    handle_signals(server, stop)
    try:
        await server.start()
        announce(opts, server)
        await stop.wait()
        log.info("stopping")
    finally:
        await server.close()
    return 0


def serve(args: argparse.Namespace) -> int:
    opts = _options(args)
    display = Display()
    producer = _producer(opts, args, display)
    return asyncio.run(_serve(opts, display, producer))


def probe(args: argparse.Namespace) -> int:
    from .encoders.registry import probe as run_probe
    from .table import print_table

    results = run_probe()
    rows = [
        (
            r.backend.codec,
            r.backend.name,
            "hardware" if r.backend.hardware else "software",
            "works" if r.works else f"no: {r.reason}"[:100],
        )
        for r in results
    ]
    print_table(rows, header=("codec", "backend", "kind", "status"))
    return 0 if any(r.works for r in results) else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        if args.command == "serve":
            return serve(args)
        if args.command == "probe":
            return probe(args)
        handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
        if handler is not None:
            return handler(args)
        if args.command == "qemu":
            from .qemu_cli import run_qemu

            return run_qemu(args, _options(args))
    except StartupError as exc:
        print(f"saffron: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
