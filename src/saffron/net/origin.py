"""Which ``Host`` and ``Origin`` a browser may bring: the rule against other web sites.

A browser lets any page it shows open a WebSocket to any address, loopback
included, and says in ``Origin`` which site the page came from. So a page from
``https://evil.example`` could drive the VM through Saffron on 127.0.0.1 (the
SPICE port has no password by default), and through *DNS rebinding* it could
even look same-origin: ``evil.example`` resolves to 127.0.0.1, the page reaches
Saffron as ``Host: evil.example:PORT`` with a matching ``Origin``.

The rule, for both front ends:

- ``Host``: without a password, only a name Saffron knows it by: an IP address
  (a browser that asked for an address reached the machine that has it, so no
  rebinding is possible), ``localhost``, or a name given with
  ``--allowed-host``. With a password a rebinding page has no session cookie
  (SameSite=Strict, per name), so any ``Host`` may sign in.
- ``Origin`` (when a browser sends one): the page must come from the host the
  request was made to (any port: spice-html5 may be served beside Saffron), or
  from ``localhost``, a loopback address, an address Saffron listens on, or an
  allowed name. ``null`` (a file or a sandboxed frame) is refused.

This module only decides and explains; each front end says no in its own wire.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

LOCAL_NAMES = frozenset({"localhost"})

PLAIN_HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
"""A Host header that is a plain name or address with an optional port: fit to be
written into a policy or believed from a proxy (nothing that could add a directive)."""


def hostname_of(host_header: str) -> str:
    """The host part of a ``Host`` header: ``[::1]:8080`` → ``::1``, lower case."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return None


class HostRule:
    """The ``Host`` and ``Origin`` rule of one Saffron (see the module's docstring)."""

    def __init__(
        self,
        *,
        password: bool,
        allowed_hosts: Iterable[str] = (),
        bound: Iterable[str] = (),
    ) -> None:
        self.password = password
        self.allowed = frozenset(hostname_of(h) for h in allowed_hosts) | LOCAL_NAMES
        """Names (not addresses) a browser may use for Saffron."""
        self.bound = {ip for ip in (_ip(hostname_of(b)) for b in bound) if ip is not None}
        """Addresses Saffron listens on."""

    def host_refusal(self, host_header: str | None) -> str | None:
        """Why a request with this ``Host`` is refused, or None if it may go on."""
        if self.password:
            return None
        if not host_header:
            return None  # HTTP/1.0 tools; a browser always sends Host
        name = hostname_of(host_header)
        if name in self.allowed or _ip(name) is not None:
            return None
        return (
            f"it asked for host {name!r}, a name Saffron does not answer to without a "
            "password (DNS rebinding?); add --allowed-host NAME to use that name"
        )

    def origin_refusal(self, origin: str | None, host_header: str | None) -> str | None:
        """Why a browser page from ``origin`` may not use this connection, or None."""
        if origin is None:
            return None  # not a browser: scripts and native clients send no Origin
        parts = urlsplit(origin.strip())
        name = (parts.hostname or "").rstrip(".")
        if parts.scheme not in ("http", "https") or not name:
            return f"its page has no web origin ({origin[:80]!r})"
        if host_header is not None and name == hostname_of(host_header):
            return None
        if name in self.allowed:
            return None
        ip = _ip(name)
        if ip is not None and (ip.is_loopback or ip in self.bound):
            return None
        return f"its page came from {origin[:80]}, another web site"

    def refusal(self, origin: str | None, host_header: str | None) -> str | None:
        """The first of :meth:`host_refusal` and :meth:`origin_refusal` that says no."""
        return self.host_refusal(host_header) or self.origin_refusal(origin, host_header)
