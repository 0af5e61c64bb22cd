"""The bus side: find QEMU's display on a bus, attach a listener, send input, reattach.

:class:`QemuSource` owns a connection to the bus QEMU is on. Its thread finds
``org.qemu``'s owner and from then on talks only to that connection's unique
name (another process that takes the name later gets nothing; when the name
changes hands it attaches anew). It reads the VM's name and UUID, registers a
:class:`~.listener.QemuListener` on console N, sends keyboard and mouse
events, and follows the console's properties (size, absolute mouse). With
``reattach=True`` it keeps waiting for QEMU and registers again each time QEMU
comes back. Starting QEMU is :mod:`.process`'s job, not this one's.

Instead of a bus address it may be given a ``locate`` function, asked before every
connection where QEMU's display is now: a bus address, or a :class:`Peer`, a
peer-to-peer D-Bus connection straight to QEMU (libvirt's ``p2p='yes'``): there is no
bus daemon on it, so no ``Hello``, no name owner, and losing it means QEMU is gone.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import select
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from jeepney.bus_messages import DBus
from jeepney.low_level import HeaderFields, MessageType
from jeepney.wrappers import DBusAddress, new_method_call

from ...display import Display, Resizable, SizeRequest
from .audio import PeerListener, QemuAudioListener
from .clipboard import QemuClipboard, guest_text
from .dbus import Incoming, Waker, Wire, connect_bus, connect_peer, error_reply
from .errors import DBusError, NotThere, QemuError, Refused
from .input import InputCall, QemuInput
from .interfaces import (
    AUDIO_PATH,
    BUS_NAME,
    CALL_TIMEOUT,
    CLIPBOARD_PATH,
    IFACE_AUDIO,
    IFACE_CONSOLE,
    IFACE_MOUSE,
    IFACE_PROPERTIES,
    IFACE_VM,
    REGISTER_TIMEOUT,
    ROOT,
    VM_PATH,
)
from .listener import ListenerStats, QemuListener
from .mic import QemuMicListener
from .uiinfo import UNSUPPORTED_ERROR, SizeDebounce

log = logging.getLogger("saffron.qemu")

_Listener = TypeVar("_Listener", bound=PeerListener)


@dataclass(frozen=True, slots=True)
class Peer:
    """A peer-to-peer D-Bus connection to QEMU's display, not yet authenticated."""

    sock: socket.socket
    where: str
    """What it is, for the log (e.g. "libvirt domain 'vm1' (p2p)")."""


Locate = Callable[[], "str | Peer"]
"""Where QEMU's display is now: a bus address or a :class:`Peer`; raises
:class:`~.errors.NotThere` when it is not there yet, QemuError when it cannot be used."""


@dataclass(frozen=True, slots=True)
class ListenerClosed:
    """The listener's connection ended (QEMU went away, or it was closed)."""

    listener: QemuListener
    reason: str


@dataclass(frozen=True, slots=True)
class OwnerChanged:
    """``org.qemu`` moved from the connection we attached to to another one."""

    old: str
    new: str


@dataclass(frozen=True, slots=True)
class SizeInDoubt:
    """An Update outgrew the framebuffer: ask QEMU for the console's size."""


Event = ListenerClosed | OwnerChanged | SizeInDoubt
"""What other threads (and the bus) tell the source's thread."""


class QemuSource:
    """Shows one console of a QEMU that exports its display on a D-Bus bus.

    ``start()`` runs it in a thread. Without ``reattach`` it waits up to
    ``attach_timeout`` seconds for QEMU to appear, then closes for good when
    QEMU goes away (``closed`` is set, ``close_reason`` says why). With
    ``reattach`` it never gives up: when QEMU goes away the display is disabled
    (viewers see "waiting") and it registers again as soon as QEMU is back on
    the bus.
    """

    def __init__(
        self,
        display: Display,
        *,
        dbus_address: str = "",
        locate: Locate | None = None,
        console: int = 0,
        reattach: bool = False,
        attach_timeout: float = 30.0,
        retry_interval: float = 0.5,
        map_interface: bool = True,
        process_exited: Callable[[], bool] | None = None,
        refused_hint: str = "",
        sound: bool = True,
    ) -> None:
        if not dbus_address and locate is None:
            raise ValueError("QemuSource needs a bus address or a locate function")
        self.display = display
        self.address = dbus_address
        """The bus (or peer connection) last connected to, for the log."""
        self.locate = locate
        self.refused_hint = refused_hint
        """Said after "the bus refused us": what the user can do about it."""
        self.console = console
        self.sound = sound
        """Whether to play the guest's sound (one source of several screens does)."""
        self.reattach = reattach
        self.attach_timeout = attach_timeout
        self.retry_interval = retry_interval
        self.map_interface = map_interface
        self.process_exited = process_exited
        """For a QEMU that Saffron started: whether its process has exited. A display
        that goes with its process is not warned about here; the caller says how QEMU ended."""
        self.console_path = f"{ROOT}/Console_{console}"
        self.input = QemuInput(display, self._queue, lambda: self.mouse_absolute)
        self.stats = ListenerStats()
        self.attached = threading.Event()
        """Set while a listener is registered with QEMU."""
        self.closed = threading.Event()
        """Set when the source has stopped for good."""
        self.close_reason = ""
        self.attach_count = 0
        self.detach_count = 0
        self.mouse_absolute = False
        self.vm_name = ""
        self.console_label = ""
        self.console_size = (0, 0)
        self.on_closed: Callable[[str], None] | None = None
        """Called from the source's thread once it has closed for good."""
        self._listener: QemuListener | None = None
        self._audio: QemuAudioListener | None = None
        """The guest's sound, when QEMU has a D-Bus audiodev (``org.qemu.Display1.Audio``)."""
        self._mic: QemuMicListener | None = None
        """The guest's recording (the viewers' microphone), with the same audiodev."""
        self._bus: Wire | None = None
        self._peer = False
        """Whether ``_bus`` is a peer-to-peer connection to QEMU (no bus daemon)."""
        self._owner = ""
        """The unique name (":1.NN") that owned ``org.qemu`` when we attached, "" when
        detached. Every call goes to it, never to ``org.qemu``: on a shared bus another
        process may take that name, and it must not receive the keys."""
        self._bus_id = ""
        """The bus's id when we attached: after a new connection, the same unique name
        on another bus (a restarted daemon) is another process."""
        self._name_owner = ""
        """Who owns ``org.qemu`` now, as far as the bus has told us."""
        self._inputs: collections.deque[InputCall] = collections.deque(maxlen=4096)
        self._events: collections.deque[Event] = collections.deque()
        self._pending: dict[int, Callable[[Incoming], None]] = {}
        self._size_query = False
        self._next_try = 0.0
        self._stopping = False
        self._waker = Waker()
        self._sizes = SizeDebounce()
        self._size_wanted: SizeRequest | None = None
        """The newest size a viewer asked for, handed from the viewers' thread."""
        self._said_unresizable = False
        self._clipboard = QemuClipboard()
        self._clipboard_wanted: str | None = None
        """The newest text a viewer copied, handed from the viewers' thread."""
        self._thread = threading.Thread(target=self._main, name="saffron-qemu", daemon=True)
        display.input = self.input
        display.refresh_hook = self.request_refresh
        display.resize_hook = self.request_size
        display.clipboard_hook = self.set_clipboard

    # -- public ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Unregister (QEMU keeps running) and stop the thread."""
        self._stopping = True
        self._wake()
        if self._thread.is_alive():
            self._thread.join(timeout)
        elif self._thread.ident is None:  # never started
            self._waker.close()
            self.closed.set()

    def kick(self) -> None:
        """Try to attach now rather than at the next retry (e.g. the VM just started);
        from any thread."""
        self._next_try = 0.0
        self._wake()

    def wait_attached(self, timeout: float | None = None) -> bool:
        return self.attached.wait(timeout)

    def wait_closed(self, timeout: float | None = None) -> bool:
        return self.closed.wait(timeout)

    def request_refresh(self) -> None:
        """The Display's refresh hook: present the whole framebuffer again."""
        listener = self._listener
        if listener is not None:
            listener.request_refresh()

    def request_size(self, request: SizeRequest) -> None:
        """The Display's resize hook (any thread): SetUIInfo soon, debounced."""
        self._size_wanted = request
        self._wake()

    def set_clipboard(self, text: str) -> None:
        """The Display's clipboard hook (any thread): the guest gets ``text`` to paste."""
        self._clipboard_wanted = text
        self._wake()

    @property
    def size_requests_sent(self) -> int:
        """SetUIInfo calls made so far."""
        return self._sizes.calls

    @property
    def listener(self) -> QemuListener | None:
        return self._listener

    @property
    def audio(self) -> QemuAudioListener | None:
        return self._audio

    @property
    def mic(self) -> QemuMicListener | None:
        return self._mic

    @property
    def frames(self) -> int:
        """Frames presented so far (all attachments)."""
        return self.stats.frames

    # -- other threads -> the source's thread -------------------------------------------

    def _wake(self) -> None:
        self._waker.wake()

    def _queue(self, call: InputCall) -> None:
        self._inputs.append(call)
        self._wake()

    def _listener_closed(self, listener: QemuListener, reason: str) -> None:
        self._events.append(ListenerClosed(listener, reason))
        self._wake()

    def _size_doubt(self) -> None:
        self._events.append(SizeInDoubt())
        self._wake()

    # -- the thread ----------------------------------------------------------------------

    def _main(self) -> None:
        deadline = time.monotonic() + self.attach_timeout
        waiting_logged = ""
        reason = "stopped"
        try:
            while not self._stopping:
                now = time.monotonic()
                if self._listener is not None and self._bus is None and now >= self._next_try:
                    try:  # the bus went, the display stayed: input needs the bus back
                        self._ensure_bus()
                        finished = self._check_owner()
                    except QemuError as exc:
                        log.debug("the bus is still gone: %s", exc)
                        self._next_try = now + self.retry_interval
                    else:
                        if finished is not None:
                            reason = finished
                            break
                elif self._listener is None and now >= self._next_try:
                    try:
                        self._attach()
                        waiting_logged = ""
                    except QemuError as exc:
                        if self._stopping:
                            break
                        gave_up = not self.reattach and (self.attach_count > 0 or now >= deadline)
                        if gave_up:
                            # The owner says it, once, from close_reason.
                            reason = f"could not attach to QEMU: {exc}"
                            log.debug("%s", reason)
                            break
                        said = "not there" if isinstance(exc, NotThere) else str(exc)
                        if said != waiting_logged:  # once per wait, or per new problem
                            if isinstance(exc, Refused):
                                log.error("%s%s", exc, self.refused_hint)
                            else:
                                log.info("waiting for QEMU on %s (%s)", self.address, exc)
                            waiting_logged = said
                        self._next_try = now + self.retry_interval
                if self._listener is not None and self._bus is not None:
                    timeout = None
                else:
                    timeout = max(self._next_try - time.monotonic(), 0.0)
                finished = self._service(timeout)
                if finished is not None:
                    reason = finished
                    break
        except Exception as exc:
            reason = f"the QEMU source failed: {exc!r}"
            log.exception("the QEMU source failed")
        finally:
            self._shutdown(reason)

    def _shutdown(self, reason: str) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        self._drop_audio()
        if self._bus is not None:
            self._bus.close()
            self._bus = None
        self.attached.clear()
        self.close_reason = reason
        if self.attach_count == 0:
            self.display.disable()
        self._waker.close()
        self.closed.set()
        if self.on_closed is not None:
            self.on_closed(reason)

    def _service(self, timeout: float | None) -> str | None:
        """Wait for the bus, input or the listener; returns a reason to close, or None."""
        if self._events or self._inputs:
            timeout = 0.0  # queued while we were busy elsewhere
        size_due = self._size_due()
        if size_due is not None:
            timeout = size_due if timeout is None else min(timeout, size_due)
        rlist = [self._waker.fileno()]
        if self._bus is not None:
            rlist.append(self._bus.sock.fileno())
        ready = select.select(rlist, [], [], timeout)[0]
        if self._waker.fileno() in ready:
            self._waker.drain()
        while self._events:
            event = self._events.popleft()
            finished: str | None = None
            if isinstance(event, ListenerClosed):
                if event.listener is self._listener:
                    finished = self._detach(event.reason, owner_changed=False)
            elif isinstance(event, OwnerChanged):
                # only the owner we are attached to matters (we may have moved on)
                if self._listener is not None and event.old == self._owner:
                    why = f"{BUS_NAME} changed hands ({event.old} → {event.new})"
                    finished = self._detach(why, owner_changed=True)
            else:
                self._query_size()
            if finished is not None:
                return finished
        self._send_inputs()
        self._send_size()
        self._send_clipboard()
        if self._bus is not None and self._bus.sock.fileno() in ready:
            try:
                self._dispatch(self._bus.recv())
            except (OSError, EOFError, QemuError) as exc:
                if self._peer and self._listener is not None:
                    # the connection was QEMU itself: it is gone
                    return self._detach(f"lost the connection to QEMU: {exc}", owner_changed=False)
                log.warning("lost the D-Bus connection to %s: %s", self.address, exc)
                self._bus.close()
                self._bus = None
        return "stopped" if self._stopping else None

    def _detach(self, why: str, *, owner_changed: bool) -> str | None:
        """Let go of the listener; returns a reason to close, or None to wait and attach again.

        ``owner_changed``: ``org.qemu`` now belongs to another connection (QEMU
        restarted, or another process took the name) while ours may still be
        drawing: it is dropped here, and attaching again asks the bus who owns the
        name now and sends only there.
        """
        listener, self._listener = self._listener, None
        self._owner = ""
        self.attached.clear()
        self.detach_count += 1
        self._pending.clear()
        self._size_query = False
        self._clipboard.registered = False
        if listener is not None:
            listener.close()  # QEMU forgets it (nothing to do when QEMU ended it)
        self._drop_audio()
        if self._peer and self._bus is not None:
            self._bus.close()  # a peer connection is one QEMU's: the next one gets a new one
            self._bus = None
        if self._stopping:
            return "stopped"
        if owner_changed:
            if not self.reattach:
                log.warning("%s: letting go of QEMU's display", why)
                return why
            log.warning("%s: attaching again", why)
            self._next_try = 0.0
            return None
        if not self.reattach:
            if self.process_exited is not None and self.process_exited():
                log.debug("QEMU's display went with its process: %s", why)
            else:
                log.warning("QEMU's display is gone: %s", why)
            return f"QEMU is gone: {why}"
        log.warning("QEMU's display is gone (%s); waiting for it to come back", why)
        return None

    def _check_owner(self) -> str | None:
        """After a new bus connection while attached: is ``org.qemu`` still ours?

        Owner changes that happened while the bus was away were never signalled to
        us, and a restarted bus daemon hands out the same unique names again.
        Returns a reason to close, or None.
        """
        if self._listener is None:
            return None
        (bus_id,) = self._call(DBus().GetId())
        owner = self._current_owner()
        if str(bus_id) != self._bus_id:
            return self._detach(f"the bus {self.address} was restarted", owner_changed=True)
        if owner != self._owner:
            why = f"{BUS_NAME} changed hands ({self._owner} → {owner or 'nobody'})"
            return self._detach(why, owner_changed=True)
        return None

    def _current_owner(self) -> str:
        """The unique name that owns ``org.qemu`` now, or "" when nobody does."""
        try:
            (owner,) = self._call(DBus().GetNameOwner(BUS_NAME))
        except DBusError as exc:
            if exc.name == "org.freedesktop.DBus.Error.NameHasNoOwner":
                return ""
            raise
        self._name_owner = str(owner)
        return self._name_owner

    # -- the bus --------------------------------------------------------------------------

    def _ensure_bus(self) -> Wire:
        if self._bus is not None:
            return self._bus
        target = self.locate() if self.locate is not None else self.address
        if isinstance(target, Peer):
            self.address = target.where
            self._bus = connect_peer(target.sock, CALL_TIMEOUT)
            self._peer = True
            self._pending.clear()
            log.debug("connected peer to peer to QEMU (%s)", target.where)
            return self._bus
        self.address = target
        wire, name = connect_bus(self.address, CALL_TIMEOUT)
        self._bus = wire
        self._peer = False
        self._pending.clear()
        log.debug("on the bus %s as %s", self.address, name)
        rules = [
            "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
            f"member='NameOwnerChanged',arg0='{BUS_NAME}'",
            f"type='signal',interface='{IFACE_PROPERTIES}',member='PropertiesChanged',"
            f"path='{self.console_path}'",
        ]
        for rule in rules:
            self._call(DBus().AddMatch(rule))
        return wire

    def _call(self, msg: Any, timeout: float = CALL_TIMEOUT) -> tuple[Any, ...]:
        serial = self._ensure_bus().send(msg)
        return self._wait_reply(serial, timeout)

    def _wait_reply(self, serial: int, timeout: float) -> tuple[Any, ...]:
        bus = self._ensure_bus()
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if self._stopping:
                raise QemuError("stopping")
            if left <= 0:
                raise QemuError(f"no answer from the bus in {timeout:.0f} s")
            ready = select.select([bus.sock.fileno(), self._waker.fileno()], [], [], left)[0]
            if bus.sock.fileno() not in ready:
                self._waker.drain()  # woken: look at _stopping (events stay queued)
                continue
            try:
                reply = bus.recv()
            except (OSError, EOFError) as exc:
                bus.close()
                self._bus = None
                raise NotThere(f"lost the bus: {exc}") from exc
            if reply.header.fields.get(HeaderFields.reply_serial) == serial:
                return reply.result()
            self._dispatch(reply)

    def _get_all(self, owner: str, path: str, interface: str) -> dict[str, Any]:
        addr = DBusAddress(path, owner, IFACE_PROPERTIES)
        (props,) = self._call(new_method_call(addr, "GetAll", "s", (interface,)))
        return {str(k): v[1] for k, v in props.items()}

    def _attach(self) -> None:
        """Register a listener with the connection that owns ``org.qemu`` now.

        Every call from here on is addressed to that connection's unique name, so
        nothing reaches a process that takes ``org.qemu`` later.
        """
        self._ensure_bus()
        if self._peer:  # QEMU itself at the other end: no bus id, no name owner
            bus_id, owner = "", BUS_NAME
            self._name_owner = owner
        else:
            (bus_id,) = self._call(DBus().GetId())
            owner = self._current_owner()
        if not owner:
            raise NotThere(f"no {BUS_NAME} on the bus yet")
        vm = self._get_all(owner, VM_PATH, IFACE_VM)
        consoles = [int(c) for c in vm.get("ConsoleIDs", [])]
        if "ConsoleIDs" in vm and self.console not in consoles:
            have = f"it has {consoles}" if consoles else "no display device?"
            raise QemuError(f"QEMU has no console {self.console} ({have})")
        con = self._get_all(owner, self.console_path, IFACE_CONSOLE)
        try:
            mouse = self._get_all(owner, self.console_path, IFACE_MOUSE)
        except DBusError:
            mouse = {}
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        listener = QemuListener(
            self.display,
            ours,
            map_interface=self.map_interface,
            on_closed=self._listener_closed,
            on_size_doubt=self._size_doubt,
            stats=self.stats,
        )
        # QEMU's main loop blocks while it authenticates us and asks for our
        # properties: the listener must be answering before we register.
        listener.start()
        addr = DBusAddress(self.console_path, owner, IFACE_CONSOLE)
        try:
            serial = self._ensure_bus().send(
                new_method_call(addr, "RegisterListener", "h", (theirs,))
            )
            theirs.close()  # else we never see EOF when QEMU goes away
            self._wait_reply(serial, REGISTER_TIMEOUT)
            if self._name_owner != owner:  # signalled while we waited
                now = self._name_owner or "nobody"
                raise NotThere(f"{BUS_NAME} changed hands while attaching ({owner} → {now})")
        except BaseException:
            theirs.close()
            listener.close()
            raise
        self._listener = listener
        self._owner = owner
        self._bus_id = str(bus_id)
        self._inputs.clear()  # typed while no owner was known: dropped, not sent late
        self._sizes.forget_sent()  # a viewer's window size goes to this QEMU too
        self.display.resizable = Resizable.UNKNOWN
        self.attach_count += 1
        self.vm_name = str(vm.get("Name", ""))
        self.console_label = str(con.get("Label", ""))
        self.console_size = (int(con.get("Width", 0)), int(con.get("Height", 0)))
        self.mouse_absolute = bool(mouse.get("IsAbsolute", False))
        self.display.info.name = self.vm_name or "QEMU"
        with contextlib.suppress(ValueError, TypeError):
            self.display.info.uuid = uuid.UUID(str(vm.get("UUID", ""))).bytes
        self.attached.set()
        if self.sound:  # the first console's source speaks for the VM: sound, clipboard
            self._attach_audio(owner)
            self._attach_clipboard(owner)
        log.info(
            "attached to QEMU%s: console %d (%s, %dx%d), %s mouse",
            f" VM '{self.vm_name}'" if self.vm_name else "",
            self.console,
            self.console_label or con.get("Type", "?"),
            *self.console_size,
            "absolute" if self.mouse_absolute else "relative",
        )

    def _attach_audio(self, owner: str) -> None:
        """Register an audio listener when QEMU plays sound over D-Bus; the picture does
        not depend on it, so a failure here is said and the display goes on."""
        try:
            props = self._get_all(owner, AUDIO_PATH, IFACE_AUDIO)
        except DBusError:
            log.debug("QEMU has no D-Bus audio (no -audiodev dbus on its -display dbus)")
            return
        except QemuError as exc:
            log.warning("cannot ask QEMU about its sound: %s", exc)
            return
        if self._peer and "Interfaces" not in props:
            # QEMU before 8.1 (no Interfaces property yet) keys audio listeners by the
            # caller's bus name, which a peer-to-peer connection has none of: 7.2 crashes.
            log.warning(
                "the guest's sound is not played: this QEMU (before 8.1) crashes when sound"
                " is asked for over a peer-to-peer connection (libvirt's p2p='yes'); give"
                " the display a bus (<graphics type='dbus'/> without p2p) to hear it"
            )
            return
        self._audio = self._register(owner, "RegisterOutListener", QemuAudioListener, "sound")
        if self._audio is not None:
            log.info("listening to the guest's sound")
        self._mic = self._register(owner, "RegisterInListener", QemuMicListener, "recording")

    def _register(
        self, owner: str, method: str, kind: type[_Listener], what: str
    ) -> _Listener | None:
        """A peer-to-peer listener of ``kind`` handed to QEMU's ``method``; None if refused."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        listener = kind(self.display, ours, on_closed=self._audio_closed)
        listener.start()  # QEMU authenticates and reads our properties before answering
        addr = DBusAddress(AUDIO_PATH, owner, IFACE_AUDIO)
        try:
            serial = self._ensure_bus().send(new_method_call(addr, method, "h", (theirs,)))
            theirs.close()
            self._wait_reply(serial, REGISTER_TIMEOUT)
        except QemuError as exc:
            theirs.close()
            listener.close()
            log.warning("cannot give QEMU a listener for the guest's %s: %s", what, exc)
            return None
        return listener

    def _attach_clipboard(self, owner: str) -> None:
        """Become QEMU's D-Bus clipboard peer; the picture does not depend on it."""
        self._clipboard.registered = False
        try:
            self._call(self._clipboard.register(owner))
        except DBusError as exc:
            log.info("the guest's clipboard is not shared: QEMU says %s", exc)
            return
        except QemuError as exc:
            log.warning("cannot share the guest's clipboard: %s", exc)
            return
        self._clipboard.registered = True
        log.info("sharing the guest's clipboard (a guest agent on com.redhat.spice.0 passes it)")

    def _send_clipboard(self) -> None:
        text = self._clipboard_wanted
        if text is None or self._bus is None or not self._clipboard.registered:
            return
        self._clipboard_wanted = None
        try:
            serial = self._bus.send(self._clipboard.grab(self._owner, text))
        except OSError as exc:
            log.warning("cannot give the guest the viewer's clipboard: %s", exc)
            return

        def answered(reply: Incoming) -> None:
            if reply.header.message_type is MessageType.error:
                body = reply.body()
                log.warning("QEMU refused the viewer's clipboard: %s", body[0] if body else "")

        self._pending[serial] = answered

    def _on_call(self, msg: Incoming) -> None:
        """QEMU calls the clipboard peer we registered (nothing else is served here)."""
        if self._bus is None:
            return
        sender = msg.header.fields.get(HeaderFields.sender)
        path = msg.header.fields.get(HeaderFields.path)
        from_qemu = sender == self._owner or (self._peer and sender is None)
        if path != CLIPBOARD_PATH or not from_qemu or not self._clipboard.registered:
            self._bus.send(
                error_reply(msg, "org.freedesktop.DBus.Error.UnknownObject", "nothing here")
            )
            return
        answer, guest_copied = self._clipboard.answer(msg)
        self._bus.send(answer)
        if guest_copied:
            serial = self._bus.send(self._clipboard.request(self._owner))

            def answered(reply: Incoming) -> None:
                body = reply.body()
                if reply.header.message_type is MessageType.error:
                    log.debug("QEMU did not give the guest's clipboard: %s", body)
                    return
                text = guest_text(body)
                if text is not None:
                    self.display.clipboard.guest_clipboard(text)

            self._pending[serial] = answered

    def _audio_closed(self, audio: PeerListener, reason: str) -> None:
        if audio in (self._audio, self._mic) and reason != "closing":
            log.debug("an audio connection ended: %s", reason)

    def _drop_audio(self) -> None:
        audio, self._audio = self._audio, None
        mic, self._mic = self._mic, None
        for listener in (audio, mic):
            if listener is not None:
                listener.close()

    def _dispatch(self, msg: Incoming) -> None:
        """A bus message that is not the answer being waited for."""
        try:
            kind = msg.header.message_type
            if kind in (MessageType.method_return, MessageType.error):
                handler = self._pending.pop(msg.header.fields.get(HeaderFields.reply_serial), None)
                if handler is not None:
                    handler(msg)
            elif kind is MessageType.signal:
                self._on_signal(msg)
            elif kind is MessageType.method_call:
                self._on_call(msg)
        finally:
            msg.close_fds()

    def _on_signal(self, msg: Incoming) -> None:
        member = msg.member
        if member == "NameOwnerChanged":
            name, _old, new = msg.body()
            if name != BUS_NAME:
                return
            self._name_owner = new
            if new and self._owner and new != self._owner:
                # Handled before any more input is sent; until then input still goes
                # to the owner we attached to, never to the name's new owner.
                self._events.append(OwnerChanged(self._owner, new))
            elif new:
                log.info("QEMU is on the bus (%s)", new)
                self._next_try = 0.0  # attach now if we wait for it
            else:
                log.info("QEMU left the bus")
            return
        if member != "PropertiesChanged":
            return
        sender = msg.header.fields.get(HeaderFields.sender)
        if not (sender == self._owner or (self._peer and sender is None and self._owner)):
            return
        iface, changed, _invalidated = msg.body()
        values = {str(k): v[1] for k, v in changed.items()}
        if iface == IFACE_CONSOLE and ("Width" in values or "Height" in values):
            w = int(values.get("Width", self.console_size[0]))
            h = int(values.get("Height", self.console_size[1]))
            self._new_console_size(w, h)
        elif iface == IFACE_MOUSE and "IsAbsolute" in values:
            self.mouse_absolute = bool(values["IsAbsolute"])
            log.info("QEMU's mouse is now %s", "absolute" if self.mouse_absolute else "relative")

    def _new_console_size(self, width: int, height: int) -> None:
        self.console_size = (width, height)
        listener = self._listener
        if listener is not None:
            listener.resize_hint(width, height)

    def _query_size(self) -> None:
        """Ask QEMU for the console's size (after an Update outgrew the framebuffer)."""
        if self._size_query or self._bus is None or self._listener is None:
            return
        self._size_query = True
        addr = DBusAddress(self.console_path, self._owner, IFACE_PROPERTIES)
        serial = self._bus.send(new_method_call(addr, "GetAll", "s", (IFACE_CONSOLE,)))

        def answered(reply: Incoming) -> None:
            self._size_query = False
            if reply.header.message_type is MessageType.method_return:
                (props,) = reply.body()
                values = {str(k): v[1] for k, v in props.items()}
                self._new_console_size(int(values.get("Width", 0)), int(values.get("Height", 0)))

        self._pending[serial] = answered

    def _send_inputs(self) -> None:
        while self._inputs:
            call = self._inputs.popleft()
            if self._bus is None or self._listener is None or not self._owner:
                continue  # nobody to send it to: input is never replayed late
            if (
                call.member == "SetAbsPosition"
                and self._inputs
                and self._inputs[0].member == "SetAbsPosition"
            ):
                continue  # a newer position is already queued
            addr = DBusAddress(self.console_path, self._owner, call.interface)
            msg = new_method_call(addr, call.member, call.signature, call.body)
            try:
                serial = self._bus.send(msg)
            except OSError as exc:
                log.warning("cannot send input to QEMU: %s", exc)
                return
            self._pending[serial] = self._input_answered(call)

    # -- the guest's screen size (SetUIInfo) ------------------------------------------------

    def _size_due(self) -> float | None:
        """Seconds until a wanted size should go to QEMU; None when there is none."""
        wanted = self._size_wanted
        now = time.monotonic()
        if wanted is not None:
            self._sizes.want(wanted, now)
        if self._listener is None or self._bus is None or self.display.resizable is Resizable.NO:
            return None
        return self._sizes.due_in(now)

    def _send_size(self) -> None:
        if self._size_due() != 0.0 or self._bus is None:
            return
        request = self._sizes.take(time.monotonic())
        if request is None:
            return
        addr = DBusAddress(self.console_path, self._owner, IFACE_CONSOLE)
        # (width_mm, height_mm, xoff, yoff, width, height): one head, at the origin
        body = (request.width_mm, request.height_mm, 0, 0, request.width, request.height)
        try:
            serial = self._bus.send(new_method_call(addr, "SetUIInfo", "qqiiuu", body))
        except OSError as exc:
            self._sizes.answered()
            log.warning("cannot ask QEMU to resize the guest's screen: %s", exc)
            return
        log.debug("asked QEMU for a %dx%d screen", request.width, request.height)

        def answered(reply: Incoming) -> None:
            self._sizes.answered()
            if reply.header.message_type is MessageType.method_return:
                self.display.resizable = Resizable.YES
                return
            name = str(reply.header.fields.get(HeaderFields.error_name, "error"))
            body = reply.body()
            text = str(body[0]) if body else name
            if name == UNSUPPORTED_ERROR:
                self.display.resizable = Resizable.NO
                if not self._said_unresizable:
                    self._said_unresizable = True
                    log.warning(
                        "the guest's screen cannot follow the viewers' windows: QEMU says "
                        '"%s" (its display device, e.g. plain VGA, cannot resize; use '
                        "virtio-vga); viewers scale the picture instead",
                        text,
                    )
            else:
                log.warning("QEMU refused to resize the guest's screen: %s", text)

        self._pending[serial] = answered

    def _input_answered(self, call: InputCall) -> Callable[[Incoming], None]:
        def answered(reply: Incoming) -> None:
            if reply.header.message_type is MessageType.error:
                body = reply.body()
                log.debug("QEMU refused %s%s: %s", call.member, call.body, body[0] if body else "")
                if call.interface == IFACE_MOUSE and call.member in ("SetAbsPosition", "RelMotion"):
                    self.mouse_absolute = call.member == "RelMotion"

        return answered


def open_qemu_source(
    display: Display,
    *,
    dbus_address: str,
    console: int = 0,
    reattach: bool = False,
    attach_timeout: float = 30.0,
) -> QemuSource:
    """Start showing console ``console`` of the QEMU on ``dbus_address`` on ``display``.

    Returns at once; ``wait_attached()``/``wait_closed()`` tell what happened.
    """
    source = QemuSource(
        display,
        dbus_address=dbus_address,
        console=console,
        reattach=reattach,
        attach_timeout=attach_timeout,
    )
    source.start()
    return source
