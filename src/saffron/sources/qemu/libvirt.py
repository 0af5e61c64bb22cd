"""A VM that libvirt runs: find its D-Bus display, and follow it across restarts.

:class:`LibvirtSource` is a :class:`~.attach.QemuSource` whose ``locate`` asks libvirt,
before every connection, where the domain's display is now:

- ``<graphics type='dbus' p2p='yes'/>``: ``virDomainOpenGraphicsFD`` hands us a
  peer-to-peer D-Bus connection to QEMU (any libvirt client with a read-write
  connection may have one; no bus daemon, no user check);
- ``<graphics type='dbus'/>``: libvirt starts a bus per VM, whose address is in the
  running domain's XML (``unix:path=/run/libvirt/qemu/dbus/<id>-<name>-dbus.sock``, new
  at every start). That bus takes only the domain's QEMU user: Saffron must run as it.

libvirt's lifecycle events (on libvirt's default event loop, run by one thread for the
process) tell when the domain starts, so Saffron attaches at once rather than at the
next retry; when it stops, the listener's connection ends, the display is disabled
(viewers see "waiting for the VM") and the picture comes back on the next start.

The parts without libvirt (reading the domain XML, the words said) are plain functions
at the top, for the unit tests.
"""

from __future__ import annotations

import contextlib
import logging
import pwd
import re
import socket
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from ...display import Display
from .attach import Peer, QemuSource
from .errors import NotThere, QemuError

log = logging.getLogger("saffron.libvirt")

DEFAULT_URI = "qemu:///system"

P2P_XML = "<graphics type='dbus' p2p='yes'/>"
BUS_XML = "<graphics type='dbus'/>"


class DomainError(QemuError):
    """The domain cannot be shown (does not exist, has no D-Bus display, ...)."""


# -- the domain XML (pure) ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Graphics:
    """What a domain's XML says about its D-Bus display."""

    dbus: bool
    """Whether it has ``<graphics type='dbus'>``."""
    p2p: bool = False
    address: str = ""
    """The bus address (a running domain's live XML, without p2p)."""
    others: tuple[str, ...] = ()
    """The types of its other ``<graphics>`` (spice, vnc...), for the words."""
    qemu_user: str = ""
    """The user QEMU runs as, from the DAC seclabel ("+999:+995" -> its name), if known."""


def parse_graphics(xml: str) -> Graphics:
    """The D-Bus display of a domain, from ``virsh dumpxml``'s text."""
    root = ET.fromstring(xml)
    dbus = None
    others: list[str] = []
    for g in root.iterfind("./devices/graphics"):
        kind = g.get("type", "")
        if kind == "dbus" and dbus is None:
            dbus = g
        else:
            others.append(kind)
    user = ""
    for label in root.iterfind("./seclabel[@model='dac']/label"):
        user = _user_name((label.text or "").split(":")[0])
    if dbus is None:
        return Graphics(False, others=tuple(others), qemu_user=user)
    return Graphics(
        True,
        p2p=dbus.get("p2p", "no") == "yes",
        address=dbus.get("address", ""),
        others=tuple(others),
        qemu_user=user,
    )


def _user_name(text: str) -> str:
    """A DAC label's user part ("+999" or "libvirt-qemu") as a name where one exists."""
    text = text.strip()
    if re.fullmatch(r"\+?\d+", text):
        uid = int(text.lstrip("+"))
        try:
            return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
        except KeyError:
            return f"uid {uid}"
    return text


def no_dbus_words(name: str, graphics: Graphics) -> str:
    have = ", ".join(graphics.others) if graphics.others else "none"
    return (
        f"the libvirt domain '{name}' has no D-Bus display (its graphics: {have}); "
        f"add {P2P_XML} (or {BUS_XML}) to its <devices>"
    )


def refused_words(graphics: Graphics | None) -> str:
    """What to do when the VM's bus refuses us (said after the refusal)."""
    user = graphics.qemu_user if graphics is not None and graphics.qemu_user else ""
    who = f"the domain's QEMU user, {user}" if user else "the domain's QEMU user"
    return f": run Saffron as {who}, or give the domain {P2P_XML}"


# -- libvirt's event loop: one thread per process ---------------------------------------------

_loop_lock = threading.Lock()
_loop_thread: threading.Thread | None = None


def _libvirt() -> Any:
    try:
        import libvirt
    except ImportError as exc:
        raise DomainError(
            "--libvirt needs libvirt's Python bindings (pip install libvirt-python, "
            "or the system's python3-libvirt)"
        ) from exc
    return libvirt


def _start_event_loop(lv: Any) -> None:
    """Register libvirt's default event loop (before any connection) and run it."""
    global _loop_thread
    with _loop_lock:
        if _loop_thread is not None:
            return
        lv.virEventRegisterDefaultImpl()
        # libvirt prints every error on stderr by default; ours are raised and said once
        lv.registerErrorHandler(lambda _ctx, _err: None, None)

        def run() -> None:
            while True:
                if lv.virEventRunDefaultImpl() < 0:
                    log.warning("libvirt's event loop failed")

        _loop_thread = threading.Thread(target=run, name="saffron-libvirt-events", daemon=True)
        _loop_thread.start()


# -- the domain ------------------------------------------------------------------------------


class LibvirtDomain:
    """One libvirt domain by name: where its display is, and when it starts."""

    def __init__(self, name: str, uri: str = DEFAULT_URI) -> None:
        self.name = name
        self.uri = uri
        self.where = f"libvirt domain '{name}' on {uri}"
        self.on_started: Any = None
        """Called (from libvirt's event thread) when the domain has started."""
        self.graphics: Graphics | None = None
        """What the last look at the domain found."""
        self._lv = _libvirt()
        self._conn: Any = None
        self._callback: int | None = None
        self._read_only = False
        self._lock = threading.Lock()

    # -- the connection --

    def _connect(self) -> Any:
        """libvirt's connection, opened (again, after libvirtd went) with events on."""
        lv = self._lv
        with self._lock:
            if self._conn is not None:
                try:
                    if self._conn.isAlive():
                        return self._conn
                except lv.libvirtError:
                    pass
                self._drop()
            _start_event_loop(lv)
            try:
                conn = lv.open(self.uri)
                self._read_only = False
            except lv.libvirtError as exc:
                # Not allowed to manage VMs (another user than root): a read-only
                # connection still finds a bus address, not a p2p connection.
                try:
                    conn = lv.openReadOnly(self.uri)
                except lv.libvirtError:
                    why = _text(exc)
                    raise NotThere(f"cannot connect to libvirt at {self.uri}: {why}") from None
                self._read_only = True
                log.info(
                    "libvirt at %s: a read-only connection (enough for a bus display, not "
                    "for p2p; read-write was refused: %s)",
                    self.uri,
                    _text(exc),
                )
            with contextlib.suppress(lv.libvirtError):
                conn.setKeepAlive(5, 3)
            self._callback = conn.domainEventRegisterAny(
                None, lv.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle, None
            )
            self._conn = conn
            return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if self._callback is not None:
                conn.domainEventDeregisterAny(self._callback)
            conn.close()
        except self._lv.libvirtError:
            pass
        self._callback = None

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _lifecycle(self, _conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
        lv = self._lv
        try:
            if dom.name() != self.name:
                return
        except lv.libvirtError:
            return
        if event == lv.VIR_DOMAIN_EVENT_STARTED:
            log.info("the %s has started", self.where)
            if self.on_started is not None:
                self.on_started()
        elif event == lv.VIR_DOMAIN_EVENT_STOPPED:
            log.info("the %s has stopped; waiting for it to start again", self.where)
        elif event == lv.VIR_DOMAIN_EVENT_UNDEFINED:
            log.warning("the %s was undefined", self.where)

    # -- the domain --

    def _lookup(self) -> Any:
        conn = self._connect()
        try:
            return conn.lookupByName(self.name)
        except self._lv.libvirtError as exc:
            if exc.get_error_code() == self._lv.VIR_ERR_NO_DOMAIN:
                missing = f"there is no libvirt domain '{self.name}' on {self.uri}"
                raise DomainError(missing) from None
            raise NotThere(f"libvirt: {_text(exc)}") from None

    def check(self) -> str:
        """At start: raises DomainError when the domain does not exist or has no D-Bus
        display; otherwise says in words what state it is in."""
        dom = self._lookup()
        graphics = parse_graphics(dom.XMLDesc(0))
        self.graphics = graphics
        if not graphics.dbus:
            raise DomainError(no_dbus_words(self.name, graphics))
        mode = "peer to peer" if graphics.p2p else "through its own bus"
        if graphics.p2p and self._read_only:
            raise DomainError(
                f"the {self.where} shows its display peer to peer, which needs a read-write "
                f"libvirt connection, and {self.uri} gave Saffron a read-only one"
            )
        running = dom.isActive()
        state = "running" if running else "not running: waiting for it to start"
        return f"the {self.where} is {state} (D-Bus display {mode})"

    def locate(self) -> str | Peer:
        """Where its display is now (:data:`~.attach.Locate`)."""
        dom = self._lookup()
        lv = self._lv
        try:
            if not dom.isActive():
                raise NotThere(f"the domain '{self.name}' is not running")
            graphics = parse_graphics(dom.XMLDesc(0))
        except lv.libvirtError as exc:
            raise NotThere(f"libvirt: {_text(exc)}") from None
        self.graphics = graphics
        if not graphics.dbus:
            raise DomainError(no_dbus_words(self.name, graphics))
        if graphics.p2p:
            try:
                fd = dom.openGraphicsFD(0, 0)
            except lv.libvirtError as exc:
                raise NotThere(f"libvirt gave no display connection: {_text(exc)}") from None
            return Peer(socket.socket(fileno=fd), f"{self.where} (p2p)")
        if not graphics.address:
            raise NotThere(f"the domain '{self.name}' shows no D-Bus address yet")
        return graphics.address


def _text(exc: Any) -> str:
    msg = exc.get_error_message() if hasattr(exc, "get_error_message") else None
    return str(msg or exc)


class LibvirtSource(QemuSource):
    """The console of a libvirt domain, shown across its restarts (``serve --libvirt``)."""

    def __init__(
        self,
        display: Display,
        domain: str,
        *,
        uri: str = DEFAULT_URI,
        console: int = 0,
        retry_interval: float = 1.0,
    ) -> None:
        self.domain = LibvirtDomain(domain, uri)
        super().__init__(
            display,
            locate=self._locate,
            console=console,
            reattach=True,
            retry_interval=retry_interval,
        )
        self.address = self.domain.where
        self.domain.on_started = self.kick

    def _locate(self) -> str | Peer:
        try:
            return self.domain.locate()
        finally:
            self.refused_hint = refused_words(self.domain.graphics)

    def check(self) -> str:
        """Raises DomainError for a domain that cannot be shown; else its state in words."""
        said = self.domain.check()
        self.refused_hint = refused_words(self.domain.graphics)
        return said

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        self.domain.close()
