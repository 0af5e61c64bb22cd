"""The running server: a producer, the broadcast and the front ends, wired together."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlencode

from aiohttp import web

from . import memory
from .audio import AudioBroadcast
from .broadcast import Broadcast
from .clipboard import ClipboardBroadcast
from .display import Display
from .encoders.registry import available_codecs
from .mic import MicInput
from .net.forwarded import ForwardedRule
from .net.guesses import GuessThrottle
from .net.limits import DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PER_ADDRESS, ConnectionLimits
from .net.origin import HostRule
from .net.tls import Certificate, self_signed
from .web.auth import WebAuth
from .web.client import Site, client_of
from .web.server import Handler, WebServer

if TYPE_CHECKING:
    from .spice.server import SpiceServer
    from .whip.viewer import WhipPublisher

log = logging.getLogger("saffron")


class Producer(Protocol):
    """What the Server runs: a source of frames drawing on the Display it was made with
    (``sources/``), started after the front ends listen and stopped before they close."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class StartupError(Exception):
    """Something the user can fix stops Saffron from starting: say it in one line."""


@dataclass
class Options:
    source: str = "demo"
    web: tuple[str, int] | None = ("127.0.0.1", 8080)
    spice: tuple[str, int] | None = None
    codec: str = "auto"
    bitrate_kbps: int = 8000
    fps: int = 60
    size: tuple[int, int] = (1280, 720)
    motion: float = 0.25
    buffering: str = "newest"
    fixed_bitrate: bool = False
    password: str | None = None
    no_auth: bool = False
    view_only: bool = False
    exclusive: bool = False
    tls: str | None = None
    """"auto" for a self-signed certificate kept in the config directory."""
    cert: Path | None = None
    key: Path | None = None
    spice_tls: tuple[str, int] | None = None
    spice_secure_channels: tuple[str, ...] = ()
    """Names (main, display, inputs, cursor) served over TLS only."""
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_per_address: int = DEFAULT_MAX_PER_ADDRESS
    allowed_hosts: tuple[str, ...] = ()
    """Names besides addresses and localhost a browser may reach Saffron by (see net.origin)."""
    publish_whip: str | None = None
    """A WHIP endpoint (a media server) to publish the picture to, view only (see whip/)."""
    whip_token: str | None = None
    base_path: str = "/"
    """The path the web page is served under (``/vm/NAME/`` behind a proxy), see web.client."""
    trusted_proxies: tuple[str, ...] = ()
    """Peer addresses or networks whose X-Forwarded headers are believed (see net.forwarded)."""


def default_codec(codecs: list[str], wanted: str) -> str:
    if wanted == "auto":
        if not codecs:
            raise StartupError("no video encoder works on this host (see 'saffron probe')")
        return codecs[0]
    if wanted not in codecs:
        raise StartupError(
            f"the {wanted} encoder does not work on this host; working: {', '.join(codecs)}"
            " (see 'saffron probe')"
        )
    return wanted


def check_exposure(opts: Options) -> None:
    """Without a password Saffron hands out a keyboard only to this machine."""
    if opts.password or opts.no_auth:
        return
    for what, addr in (("web", opts.web), ("SPICE", opts.spice), ("SPICE TLS", opts.spice_tls)):
        if addr is not None and not _is_loopback(addr[0]):
            raise StartupError(
                f"refusing to serve {what} on {addr[0]} without a password: set one with "
                "--password-file or SAFFRON_PASSWORD, or pass --no-auth to allow anyone"
            )


def _is_loopback(host: str) -> bool:
    """Whether every address ``host`` stands for is this machine's loopback.

    Addresses are checked, not spellings: ``127.attacker.example`` is a name like
    any other, and ``localhost`` could be made to mean something else."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False
    return bool(infos) and all(
        ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]).is_loopback for info in infos
    )


class Server:
    """Starts and stops everything for one display."""

    def __init__(
        self,
        opts: Options,
        display: Display,
        producer: Producer | None,
        more_screens: Sequence[Display] = (),
    ) -> None:
        self.opts = opts
        self.display = display
        self.more_screens = list(more_screens)
        """The producer's other screens (``--console all``): SPICE display channels 1, 2...
        and the page's ``?screen=1``, 2..., each with a broadcast of its own."""
        self.producer = producer
        self.broadcast: Broadcast | None = None
        self.more_broadcasts: list[Broadcast] = []
        self.audio: AudioBroadcast | None = None
        self.mic: MicInput | None = None
        self.clipboard: ClipboardBroadcast | None = None
        self.web: WebServer | None = None
        self.spice: SpiceServer | None = None
        self.whip: WhipPublisher | None = None
        self._closed = False
        self.certificate: Certificate | None = None
        self.guesses = GuessThrottle()
        """Wrong passwords by address, web and SPICE together: one pace for guessing."""
        self.auth = WebAuth(
            opts.password,
            secure=opts.tls is not None or opts.cert is not None,
            guesses=self.guesses,
        )
        self.limits = ConnectionLimits(opts.max_connections, opts.max_per_address)
        bound = [addr[0] for addr in (opts.web, opts.spice, opts.spice_tls) if addr is not None]
        self.host_rule = HostRule(
            password=opts.password is not None, allowed_hosts=opts.allowed_hosts, bound=bound
        )
        """Which Host and Origin browsers may bring, on the web port and SPICE's WebSocket."""
        try:
            proxies = ForwardedRule(opts.trusted_proxies)
        except ValueError as exc:
            raise StartupError(f"--trusted-proxy: {exc}") from None
        self.site = Site(opts.base_path, proxies)
        """Where the page is published, and which proxies say who their clients are."""
        self._trimmer: asyncio.Task[None] | None = None

    def resolve_certificate(self) -> Certificate | None:
        opts = self.opts
        if opts.cert is not None or opts.key is not None:
            if opts.cert is None or opts.key is None:
                raise StartupError("--cert and --key go together")
            for path in (opts.cert, opts.key):
                if not path.is_file():
                    raise StartupError(f"cannot read {path}")
            return Certificate(opts.cert, opts.key)
        if opts.tls == "auto":
            return self_signed()
        return None

    async def start(self) -> None:
        opts = self.opts
        loop = asyncio.get_running_loop()
        check_exposure(opts)
        self.certificate = self.resolve_certificate()
        try:
            ssl_context = self.certificate.server_context() if self.certificate else None
        except (OSError, ValueError) as exc:
            raise StartupError(f"cannot use the certificate: {exc}") from None
        codecs = await loop.run_in_executor(None, available_codecs)
        first = default_codec(codecs, opts.codec)
        preferred = [first, *[c for c in codecs if c != first]]
        self.broadcast = Broadcast(
            self.display,
            loop,
            fps=opts.fps,
            bitrate_kbps=opts.bitrate_kbps,
            fifo=opts.buffering == "fifo",
            adapt=not opts.fixed_bitrate,
        )
        self.more_broadcasts = [
            Broadcast(
                screen,
                loop,
                fps=opts.fps,
                bitrate_kbps=opts.bitrate_kbps,
                fifo=opts.buffering == "fifo",
                adapt=not opts.fixed_bitrate,
            )
            for screen in self.more_screens
        ]
        more_screens = list(zip(self.more_screens, self.more_broadcasts, strict=True))
        self.audio = AudioBroadcast(loop)
        self.display.audio = self.audio
        self.mic = MicInput()
        self.display.mic = self.mic
        self.clipboard = ClipboardBroadcast(self.display, loop)
        routes: dict[str, Handler] = {}
        if opts.spice_tls is not None and ssl_context is None:
            raise StartupError("--spice-tls needs a certificate: --tls auto, or --cert and --key")
        if opts.spice_secure_channels and opts.spice_tls is None:
            raise StartupError("--spice-secure-channels needs a TLS port: add --spice-tls")
        if opts.spice is not None or opts.spice_tls is not None:
            from .spice.protocol.wire import ChannelType
            from .spice.server import SpiceServer

            spice = SpiceServer(
                self.display,
                self.broadcast,
                password=opts.password,
                codecs=preferred if opts.codec != "auto" else None,
                exclusive=opts.exclusive,
                view_only=opts.view_only,
                limits=self.limits,
                secure_channels=[ChannelType[n.upper()] for n in opts.spice_secure_channels],
                host_rule=self.host_rule,
                guesses=self.guesses,
                audio=self.audio,
                mic=self.mic,
                clipboard=self.clipboard,
                more_screens=more_screens,
            )
            self.spice = spice
            ports: list[tuple[tuple[str, int], ssl.SSLContext | None]] = []
            if opts.spice is not None:
                ports.append((opts.spice, None))
            if opts.spice_tls is not None:
                ports.append((opts.spice_tls, ssl_context))
            for addr, tls in ports:
                try:
                    await spice.start(*addr, ssl=tls)
                except OSError as exc:
                    raise StartupError(
                        f"cannot listen for SPICE{' TLS' if tls else ''} on {_addr(addr)}: "
                        f"{_why(exc)}"
                    ) from None
            routes["/spice"] = spice.aiohttp_handler
            if SPICE_HTML5.is_dir():
                routes["/spice-html5/{name:.*}"] = _spice_html5
        if opts.web is not None:
            self.web = WebServer(
                self.display,
                self.broadcast,
                codecs=preferred,
                default_codec=first,
                view_only=opts.view_only,
                extra_routes=routes,
                producer=self.producer,
                auth=self.auth,
                ssl_context=ssl_context,
                limits=self.limits,
                host_rule=self.host_rule,
                site=self.site,
                audio=self.audio,
                mic=self.mic,
                clipboard=self.clipboard,
                more_screens=more_screens,
            )
            if self.site.proxies and not opts.password:
                log.warning(
                    "trusting a proxy (--trusted-proxy) without a password: anyone the proxy "
                    "lets in has the keyboard and mouse; set one with --password-file"
                )
            try:
                await self.web.start(*opts.web)
            except OSError as exc:
                raise StartupError(
                    f"cannot listen for the web page on {_addr(opts.web)}: {_why(exc)}"
                ) from None
        if opts.publish_whip is not None:
            from .whip.viewer import WhipError, WhipPublisher

            try:
                self.whip = WhipPublisher(
                    self.broadcast, opts.publish_whip, opts.whip_token, preferred
                )
            except WhipError as exc:
                raise StartupError(str(exc)) from None
            self.whip.start()
        if self.producer is not None:
            self.producer.start()
        self._trimmer = asyncio.create_task(memory.trim_periodically())

    async def close(self, reason: str = "Saffron stopped") -> None:
        """Stop everything once; each viewer is told ``reason``."""
        if self._closed:
            return
        self._closed = True
        if self._trimmer is not None:
            self._trimmer.cancel()
        if self.producer is not None:
            self.producer.stop()
        if self.whip is not None:
            await self.whip.close()  # DELETEs the WHIP resource
        if self.web is not None:
            await self.web.close(reason)
        if self.spice is not None:
            await self.spice.close(reason)
            await asyncio.sleep(0.1)  # closed transports flush on the loop: let them
        if self.broadcast is not None:
            self.broadcast.close()
        for broadcast in self.more_broadcasts:
            broadcast.close()
        if self.audio is not None:
            self.audio.close()
        self.limits.flush_log()  # refusals still being summed up, and its timer
        self.guesses.flush_log()
        self.site.proxies.flush_log()


SPICE_HTML5 = Path("/usr/share/spice-html5")
"""Debian's spice-html5, served by the web port so a browser needs nothing else."""


async def _spice_html5(request: web.Request) -> web.StreamResponse:
    """Debian's spice-html5 files. ``spice-html5/`` itself leads to its page told where
    SPICE is: this port's ``spice`` under the page's own path prefix (``path`` is from the
    root: spice_auto.html puts it after the host and port it was served from); the rest
    of the query (``password=``) goes along."""
    name = request.match_info["name"]
    if not name:
        query = {"path": client_of(request).prefix[1:] + "spice", **request.query}
        raise web.HTTPFound("spice_auto.html?" + urlencode(query, safe="/"))
    path = (SPICE_HTML5 / name).resolve()
    if not path.is_relative_to(SPICE_HTML5.resolve()) or not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(path)


def _why(exc: OSError) -> str:
    """The OS's own words ("Address already in use"), not asyncio's long version."""
    return os.strerror(exc.errno) if exc.errno else str(exc)


def _addr(addr: tuple[str, int]) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
