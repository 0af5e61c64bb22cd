"""Where the web page is published, and who each request comes from: the path prefix
(``--base-path``) and what a trusted reverse proxy says (see saffron.net.forwarded).

One Saffron per VM behind one proxy: each is published under its own path
(``/vm/NAME/``), either because it serves there itself (``--base-path``: the proxy
passes paths unchanged) or because the proxy strips the prefix and names it in
``X-Forwarded-Prefix``. The page only uses relative links, so it works under any
prefix; the prefix matters for the session cookie, whose path (and name) it
makes this Saffron's own: signing in to one VM's page must not sign in to, or
out of, another's on the same host.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from ..net.admission import peer_of
from ..net.forwarded import NOTHING, ForwardedRule
from ..net.limits import peer_label

COOKIE = "saffron_session"
"""The session cookie's name at the root; under a prefix the prefix is added to it."""


@dataclass(frozen=True)
class Client:
    """One request as the browser made it, through any trusted proxy."""

    address: str
    """The client's IP address: what the connection caps and sign-in guesses count."""
    peer: str
    """The client in log lines."""
    secure: bool
    """The browser reached Saffron over HTTPS (here, or at a trusted proxy)."""
    host: str
    """The ``Host`` the browser asked for (a trusted proxy's ``X-Forwarded-Host``)."""
    prefix: str
    """The path the browser reaches this Saffron under: ``/`` or ``/vm/NAME/``."""
    path: str | None
    """The request's path under the prefix (``/ws``); None if it is not under it."""

    @property
    def cookie(self) -> str:
        """The session cookie's name: its own for each prefix, so that a Saffron at the
        root (whose cookie every path gets) cannot shadow one under ``/vm/NAME/``."""
        if self.prefix == "/":
            return COOKIE
        return COOKIE + "_" + "".join(c if c.isalnum() else "_" for c in self.prefix.strip("/"))


class Site:
    """Where this Saffron's pages are: its ``--base-path``, and the proxies it trusts."""

    def __init__(self, base_path: str = "/", proxies: ForwardedRule | None = None) -> None:
        self.base_path = base_path
        self.proxies = proxies if proxies is not None else ForwardedRule()

    def route(self, path: str) -> str:
        """The route for the page's ``path`` (``/ws`` → ``/vm/a/ws``)."""
        return self.base_path[:-1] + path

    def client(self, request: web.BaseRequest) -> Client:
        """Who made ``request``, and how (see :class:`Client`)."""
        transport = request.transport
        peername = transport.get_extra_info("peername") if transport is not None else None
        socket_peer = str(peername[0]) if isinstance(peername, tuple) and peername else ""
        said = (
            self.proxies.read(socket_peer.removeprefix("::ffff:"), request.headers.items())
            if self.proxies
            else NOTHING
        )
        address, peer = peer_of(transport)
        if said.client is not None:
            address, peer = said.client, f"{said.client} (through proxy {peer_label(peername)})"
        path: str | None = request.path
        prefix = self.base_path
        if prefix != "/":
            path = "/" + request.path[len(prefix) :] if request.path.startswith(prefix) else None
        elif said.prefix is not None:
            prefix = said.prefix
        return Client(
            address=address,
            peer=peer,
            secure=request.secure or said.proto == "https",
            host=said.host if said.host is not None else request.headers.get("Host", ""),
            prefix=prefix,
            path=path,
        )


SITE: web.AppKey[Site] = web.AppKey("saffron.site")
"""The app's :class:`Site` (the root, trusting no proxy, when none is set)."""

_CLIENT: web.RequestKey[Client] = web.RequestKey("saffron.client", Client)


def client_of(request: web.Request) -> Client:
    """The request's :class:`Client`, read once per request."""
    if _CLIENT in request:
        return request[_CLIENT]
    site = request.app.get(SITE) or Site()
    client = site.client(request)
    request[_CLIENT] = client
    return client
