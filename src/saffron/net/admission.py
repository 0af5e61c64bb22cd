"""Admission of every TCP connection, web or SPICE: a slot, then TLS, then its protocol.

The ports listen plain and each connection starts TLS itself
(:class:`AdmittedConnection`) once it has taken its slot from the connection
limits: given to ``create_server``, TLS would hide a connection from its protocol
until the handshake is done, and handshakes left half-done would hold file
descriptors outside the caps. It knows the limits and the handshake, not what
either front end speaks.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from .forwarded import ForwardedRule
from .limits import AUTH_TIMEOUT_S, ConnectionLimits, Slot, abort_later, host_of, peer_label

log = logging.getLogger("saffron.tls")


class _Waiting(asyncio.Protocol):
    """A new TLS transport's protocol until the connection's takes over: the client's
    first request often comes with its last handshake message, before start_tls returns."""

    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[Any, ...]]] = []

    def data_received(self, data: bytes) -> None:
        self.events.append(("data_received", (data,)))

    def eof_received(self) -> None:
        self.events.append(("eof_received", ()))

    def pause_writing(self) -> None:
        self.events.append(("pause_writing", ()))

    def resume_writing(self) -> None:
        self.events.append(("resume_writing", ()))

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append(("connection_lost", (exc,)))

    def hand_over(self, protocol: asyncio.Protocol) -> None:
        for name, args in self.events:
            getattr(protocol, name)(*args)
        self.events.clear()


class AdmittedConnection(asyncio.Protocol):
    """Base of the ports' protocols, from accept to close.

    A connection takes its slot from the limits before anything else (:meth:`admit`),
    on a TLS port then runs its handshake (``loop.start_tls``), and only then is
    :meth:`connected`. It is cut off unless its protocol calls :meth:`authenticated`
    within ``AUTH_TIMEOUT_S``, or earlier if the limits give its slot to a newer
    connection meanwhile. However it ends, :meth:`release` stops its timers and
    gives the slot back.
    """

    def __init__(
        self,
        limits: ConnectionLimits,
        tls: ssl.SSLContext | None,
        what: str,
        handshakes: set[asyncio.Task[None]] | None = None,
        proxies: ForwardedRule | None = None,
    ) -> None:
        self.limits = limits
        self.proxies = proxies
        """The trusted proxies, on a port whose protocol says whom they carry (the web's)."""
        self.proxied = False
        """The peer is a trusted proxy: :meth:`forwarded` moves the slot to its client."""
        self.tls = tls
        self.handshakes = handshakes
        """The port's handshakes under way, which its server cancels when it closes."""
        self.what = what
        """The front end, in log lines: "web", "SPICE"."""
        self.slot: Slot | None = None
        self.peer = "unknown"
        self.transport: asyncio.Transport | None = None
        """The connection's transport once connected (over TLS on a TLS port)."""
        self.address = "unknown"
        """The peer's IP address."""
        self._accepted: asyncio.Transport | None = None
        """The socket's own transport (under the TLS one, on a TLS port)."""
        self._handshake: asyncio.Task[None] | None = None
        self._abort: asyncio.TimerHandle | None = None
        self._auth_timer: asyncio.TimerHandle | None = None

    def admit(self, transport: asyncio.Transport) -> bool:
        """Take a slot for the connection just accepted; False (logged) if over a cap."""
        peername = transport.get_extra_info("peername")
        self.peer = peer_label(peername)
        self.address = host_of(peername)
        self.proxied = self.proxies is not None and self.proxies.trusts(self.address)
        self.slot = self.limits.admit(self.address, self.what, drop=self._cut, proxied=self.proxied)
        if self.slot is None:
            return False
        self._accepted = transport
        loop = asyncio.get_running_loop()
        self._auth_timer = loop.call_later(AUTH_TIMEOUT_S, self._not_authenticated)
        return True

    def forwarded(self, address: str, label: str) -> bool:
        """A request on this connection came from a trusted proxy for ``address`` (its
        X-Forwarded-For): count the connection as that address's from now on, and name it
        ``label`` in the log. False (logged) if that address has its most connections open."""
        if not self.proxied:
            return True
        if not self.limits.move(self.slot, address, self.what):
            return False
        self.address = address
        self.peer = label
        return True

    def authenticated(self) -> None:
        """The client authenticated (see saffron.net.limits): no more hurry, and its slot is
        no longer one a newer connection may take."""
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None
        self.limits.authenticated(self.slot)

    def idle(self) -> bool:
        """Whether the connection waits for nothing from its client (a browser's between
        requests): then being cut off for not authenticating is no warning."""
        return False

    def _not_authenticated(self) -> None:
        self._auth_timer = None
        reason = f"not authenticated within {AUTH_TIMEOUT_S:.0f} s"
        if self.idle():
            log.debug("closing %s: %s", self.label, reason)
        else:
            self.limits.closing(self.slot, self.label, reason)
        self._cut()

    def _cut(self) -> None:
        """Close the connection now (the limits took its slot, or its time is up)."""
        transport = self.transport or self._accepted
        if transport is not None:
            transport.abort()

    @property
    def label(self) -> str:
        """The connection in log lines: "SPICE connection from 10.0.0.2:51234"."""
        return f"{self.what} connection from {self.peer}"

    def start(self, transport: asyncio.Transport, handshake_timeout: float) -> None:
        """Connect an admitted connection: at once, or on a TLS port after its handshake."""
        if self.tls is None:
            self.connected(transport)
            return
        transport.pause_reading()  # the ClientHello waits for the TLS layer
        task = asyncio.get_running_loop().create_task(
            self._secure(transport, self.tls, handshake_timeout)
        )
        self._handshake = task
        if self.handshakes is not None:
            self.handshakes.add(task)
            task.add_done_callback(self.handshakes.discard)

    async def _secure(
        self, transport: asyncio.Transport, context: ssl.SSLContext, timeout: float
    ) -> None:
        """The TLS handshake; then connected() with the TLS transport, and this protocol
        gets its events (and any that came meanwhile). Failed, timed out or cancelled:
        the socket is aborted and the slot given back."""
        waiting = _Waiting()
        tls: asyncio.Transport | None = None
        try:
            tls = await asyncio.get_running_loop().start_tls(
                transport, waiting, context, server_side=True, ssl_handshake_timeout=timeout
            )
        except ConnectionAbortedError:  # what asyncio's handshake timeout raises
            self._failed(f"no TLS handshake within {timeout:.0f} s")
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError) as exc:
            log.debug("%s closed during the TLS handshake (%s)", self.label, type(exc).__name__)
        except ssl.SSLError as exc:
            self._failed(f"TLS handshake failed: {exc.reason or exc}")
        except OSError as exc:
            self._failed(f"TLS handshake failed: {exc}")
        finally:
            self._handshake = None
            if tls is None:
                transport.abort()
                self.release()
        if tls is not None:
            tls.set_protocol(self)
            self.connected(tls)
            waiting.hand_over(self)

    def _failed(self, reason: str) -> None:
        self.limits.closing(self.slot, self.label, reason)

    def connected(self, transport: asyncio.Transport) -> None:
        """The connection is ready for its protocol: set ``self.transport`` and go."""
        raise NotImplementedError

    def closing(self) -> None:
        """The connection is to close: cut it off if it has not within ``CLOSE_GRACE_S``."""
        if self._abort is None and self.transport is not None:
            self._abort = abort_later(self.transport)

    def release(self) -> None:
        """The connection is lost: stop its timers, give its slot back."""
        if self._abort is not None:
            self._abort.cancel()
            self._abort = None
        if self._handshake is not None:
            self._handshake.cancel()
            self._handshake = None
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None
        self.limits.release(self.slot)


def peer_of(transport: asyncio.BaseTransport | None) -> tuple[str, str]:
    """The client of a connection: its IP address (what connections and guesses are
    counted by) and its label for the log. Through a trusted proxy it is the proxy's
    client, once a request has said whom (:meth:`AdmittedConnection.forwarded`)."""
    guard = transport.get_protocol() if transport is not None else None
    if isinstance(guard, AdmittedConnection):
        return guard.address, guard.peer
    peername = transport.get_extra_info("peername") if transport is not None else None
    return host_of(peername), peer_label(peername)
