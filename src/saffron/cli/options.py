"""The serve options on the command line, shared by ``saffron serve`` and ``saffron qemu``:
their argparse types, flags and help, and the :class:`~saffron.app.Options` they make.

It owns how a user writes an option (``HOST:PORT``, ``WxH``, a channel list) and what
it means; it starts nothing and prints nothing (that is :mod:`.serve`'s).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from ..app import Options, StartupError
from ..encoders.base import CODECS
from ..net.forwarded import base_path, proxy_network
from ..net.limits import DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PER_ADDRESS


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


def _whip_url(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"{text!r} is not an http:// or https:// URL")
    return text


def _base_path(text: str) -> str:
    try:
        return base_path(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _proxy(text: str) -> str:
    try:
        proxy_network(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


SPICE_CHANNELS = ("main", "display", "inputs", "cursor")


def _channels(text: str) -> tuple[str, ...]:
    names = SPICE_CHANNELS if text == "all" else tuple(n.strip() for n in text.split(","))
    unknown = [n for n in names if n not in SPICE_CHANNELS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown channel {', '.join(unknown)}: choose from {', '.join(SPICE_CHANNELS)} or all"
        )
    return names


ALL_CONSOLES = -1
"""``--console all``: every screen QEMU has, each its own SPICE display channel and page."""


def console_choice(text: str) -> int:
    """``--console``: a console number, or ``all`` (:data:`ALL_CONSOLES`)."""
    if text == "all":
        return ALL_CONSOLES
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a console number or 'all': {text}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"not a console number: {text}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be above zero")
    return value


def add_serve_options(p: argparse.ArgumentParser) -> None:
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
    p.add_argument(
        "--base-path",
        type=_base_path,
        default="/",
        metavar="PATH",
        help="serve the page (and its WebSocket, /spice and spice-html5) under PATH, e.g. "
        "/vm/NAME/ behind a reverse proxy that passes paths unchanged (default /)",
    )
    p.add_argument(
        "--trusted-proxy",
        type=_proxy,
        action="append",
        default=[],
        metavar="ADDR",
        dest="trusted_proxies",
        help="a reverse proxy's address or network (repeatable, e.g. 127.0.0.1 or 10.0.0.0/8): "
        "only from it are X-Forwarded-For/-Proto/-Host/-Prefix believed, for the connection "
        "limits per address, the sign-in throttle, the Host check and the Secure cookie",
    )
    p.add_argument(
        "--publish-whip",
        type=_whip_url,
        default=None,
        metavar="URL",
        help="also publish the picture (view only) to a WebRTC media server's WHIP endpoint, "
        "e.g. MediaMTX's http://HOST:8889/NAME/whip or simple-whip-server's for Janus",
    )
    p.add_argument(
        "--whip-token",
        default=None,
        metavar="TOKEN",
        help="the WHIP endpoint's Bearer token (or set SAFFRON_WHIP_TOKEN)",
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log (-vv: debug)")


SIGNALS_HELP = (
    "signals: SIGHUP makes new token links (printed again) and ends every session made "
    "from the old ones, closing their pages' WebSockets; sessions signed in with the "
    "password stay. A page's own 'sign out' button ends just its session. "
    "SIGINT or SIGTERM stop Saffron."
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


def options(args: argparse.Namespace) -> Options:
    """The serve options of ``args`` (``saffron qemu`` has no ``--source``: it is QEMU)."""
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
        publish_whip=args.publish_whip,
        whip_token=args.whip_token or os.environ.get("SAFFRON_WHIP_TOKEN") or None,
        base_path=args.base_path,
        trusted_proxies=tuple(args.trusted_proxies),
    )
