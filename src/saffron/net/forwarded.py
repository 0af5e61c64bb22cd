"""Who a request comes from when a reverse proxy stands in front: the X-Forwarded headers.

Behind nginx (or Caddy, Traefik, Apache) every connection comes from the proxy,
so the proxy says in headers what it saw: ``X-Forwarded-For`` the client's
address, ``X-Forwarded-Proto`` the scheme the browser used (``https`` makes
the session cookie Secure), ``X-Forwarded-Host`` the host the browser asked
for (for the Host and Origin check) and ``X-Forwarded-Prefix`` the path under
which the proxy publishes this Saffron (for the cookie's path).

Anyone can send those headers, so they are believed only from the peer
addresses given with ``--trusted-proxy`` (IP addresses or networks). From any
other peer they are ignored, and the peer's own address is what the connection
caps and the password-guess throttle count: a client cannot dodge either by
writing another address into ``X-Forwarded-For``.

``X-Forwarded-For`` lists the addresses a request came through, each proxy
appending the one it got it from: the client is the right-most address that is
not a trusted proxy (anything left of it the client may have written itself).

A malformed header from a trusted proxy is ignored (the request goes on as if
it had not come) with a log line, summed up if it repeats; it never closes the
connection. This module only reads headers (sans-IO): the web front end applies
what it finds.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .limits import Summary
from .origin import PLAIN_HOST

log = logging.getLogger("saffron.proxy")

FOR = "x-forwarded-for"
PROTO = "x-forwarded-proto"
HOST = "x-forwarded-host"
PREFIX = "x-forwarded-prefix"
HEADERS = (FOR, PROTO, HOST, PREFIX)

MAX_HOPS = 32
"""Addresses of ``X-Forwarded-For`` looked at, from the right: more proxies than any real
chain has; past them the header is treated as malformed (no walking a megabyte of it)."""

SHOWN = 80
"""Characters of a malformed header quoted in the log."""

PATH_PREFIX = re.compile(r"(?:/[A-Za-z0-9._~%@:+-]+)*/?")
"""A path prefix fit for a cookie's Path: segments of plain URL characters, nothing
that could end the cookie's attribute (``;``) or its header (``..`` is refused apart)."""

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Forwarded:
    """What a trusted proxy said about one request; None where it said nothing usable."""

    client: str | None = None
    """The client's IP address (``X-Forwarded-For``)."""
    proto: str | None = None
    """``http`` or ``https`` (``X-Forwarded-Proto``)."""
    host: str | None = None
    """The ``Host`` the browser sent to the proxy (``X-Forwarded-Host``)."""
    prefix: str | None = None
    """The path prefix the proxy publishes Saffron under, ending in ``/``."""


NOTHING = Forwarded()


def proxy_network(text: str) -> Network:
    """``--trusted-proxy``: an address (``10.0.0.5``, ``::1``) or a network (``10.0.0.0/8``).
    ValueError, in words, for anything else."""
    try:
        return ipaddress.ip_network(text.strip().strip("[]"), strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address or network (e.g. 10.0.0.0/8)") from None


def base_path(text: str) -> str:
    """``--base-path``: ``/vm/a`` or ``/vm/a/`` → ``/vm/a/``; ValueError, in words, else."""
    path = text.strip()
    if not path.startswith("/"):
        path = "/" + path
    if not path.endswith("/"):
        path += "/"
    if not PATH_PREFIX.fullmatch(path) or "//" in path or "/../" in path or "/./" in path:
        raise ValueError(f"{text!r} is not a path like /vm/NAME/")
    return path


def _address(text: str) -> Address | None:
    """One entry of X-Forwarded-For: ``10.0.0.5``, ``2001:db8::1``, ``[2001:db8::1]:443``
    or ``10.0.0.5:443`` (some proxies add the port); None if it is none of these."""
    entry = text.strip()
    if entry.startswith("["):
        entry = entry[1:].split("]", 1)[0]
    elif entry.count(":") == 1:
        entry = entry.split(":", 1)[0]
    try:
        return ipaddress.ip_address(entry)
    except ValueError:
        return None


class ForwardedRule:
    """The proxies Saffron trusts (``--trusted-proxy``), and how it reads their headers."""

    def __init__(self, trusted: Iterable[str | Network] = ()) -> None:
        self.networks = tuple(
            n if isinstance(n, ipaddress.IPv4Network | ipaddress.IPv6Network) else proxy_network(n)
            for n in trusted
        )
        self.malformed = 0
        """Headers from trusted proxies ignored as malformed, since start (for tests)."""
        self._summary = Summary("ignored", "forwarded header", log)
        self._told_untrusted = False

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, address: str) -> bool:
        """Whether ``address`` (a peer's IP) is a trusted proxy."""
        ip = _address(address)
        if ip is None:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == n.version and ip in n for n in self.networks)

    def read(self, peer: str, headers: Iterable[tuple[str, str]]) -> Forwarded:
        """What the X-Forwarded headers among ``headers`` (name, value pairs, repeats
        allowed) say, if ``peer`` (the socket's address) is a trusted proxy; else nothing."""
        values: dict[str, list[str]] = {}
        for name, value in headers:
            key = name.lower()
            if key in HEADERS:
                values.setdefault(key, []).append(value)
        if not values:
            return NOTHING
        if not self.trusts(peer):
            if not self._told_untrusted:
                self._told_untrusted = True
                log.info(
                    "ignoring X-Forwarded headers from %s: not a trusted proxy (--trusted-proxy)",
                    peer,
                )
            return NOTHING
        return Forwarded(
            client=self._client(peer, values.get(FOR)),
            proto=self._proto(peer, values.get(PROTO)),
            host=self._host(peer, values.get(HOST)),
            prefix=self._prefix(peer, values.get(PREFIX)),
        )

    def _client(self, peer: str, given: list[str] | None) -> str | None:
        if given is None:
            return None
        entries = ",".join(given).split(",")
        client: Address | None = None
        for entry in reversed(entries[-MAX_HOPS:]):
            ip = _address(entry)
            if ip is None:
                return self._ignore(peer, "X-Forwarded-For", ",".join(given), "not an IP address")
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            client = ip
            if not self.trusts(str(ip)):
                return str(ip)
        if len(entries) > MAX_HOPS:
            return self._ignore(peer, "X-Forwarded-For", ",".join(given), "too many addresses")
        return str(client) if client is not None else None  # every hop a trusted proxy

    def _proto(self, peer: str, given: list[str] | None) -> str | None:
        if given is None:
            return None
        last = ",".join(given).split(",")[-1].strip().lower()  # what our proxy itself saw
        if last not in ("http", "https"):
            return self._ignore(peer, "X-Forwarded-Proto", ",".join(given), "not http or https")
        return last

    def _host(self, peer: str, given: list[str] | None) -> str | None:
        if given is None:
            return None
        last = ",".join(given).split(",")[-1].strip()
        if not PLAIN_HOST.fullmatch(last):
            return self._ignore(peer, "X-Forwarded-Host", ",".join(given), "not a host name")
        return last

    def _prefix(self, peer: str, given: list[str] | None) -> str | None:
        if given is None:
            return None
        try:
            if len(given) > 1:
                raise ValueError("more than one")
            return base_path(given[0]) if given[0].strip() not in ("", "/") else "/"
        except ValueError:
            return self._ignore(peer, "X-Forwarded-Prefix", ",".join(given), "not a path")

    def _ignore(self, peer: str, header: str, value: str, why: str) -> str | None:
        """Log (summed up) a malformed header from a trusted proxy; it counts as absent."""
        self.malformed += 1
        reason = f"{header} is {why}"
        self._summary.add(
            peer,
            reason,
            f"ignored {header} {value[:SHOWN]!r} from proxy {peer}: {why}",
        )
        return None

    def flush_log(self) -> None:
        """Write what was summed up since the last line (and stop waiting to)."""
        self._summary.write()
