"""Several screens of one QEMU (``--console all``): which consoles show a picture, and
one :class:`~.attach.QemuSource` per console run as one producer.

QEMU makes a console per display head (``-device virtio-vga,max_outputs=2`` has two,
``-device VGA -device secondary-vga`` too) and lists them in the VM's ``ConsoleIDs``.
Each console says its ``Type``: only graphic ones are screens (QEMU 7.2 leaves its
text terminals, ``-monitor vc``, out of that list; should one be listed, it is
skipped). Each console has its own listener, keyboard and mouse, so each screen is a
source of its own on a connection of its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from jeepney.bus_messages import DBus
from jeepney.low_level import HeaderFields
from jeepney.wrappers import DBusAddress, new_method_call

from ...display import Display
from .attach import QemuSource
from .dbus import Wire, connect_bus
from .errors import DBusError, QemuError
from .interfaces import (
    BUS_NAME,
    CALL_TIMEOUT,
    IFACE_CONSOLE,
    IFACE_PROPERTIES,
    IFACE_VM,
    ROOT,
    VM_PATH,
)

log = logging.getLogger("saffron.qemu")

POLL_S = 0.1
"""How often to look whether QEMU is on the bus yet."""
NO_OWNER = "org.freedesktop.DBus.Error.NameHasNoOwner"


def graphic_consoles(
    address: str, *, timeout: float = 30.0, gone: Callable[[], bool] | None = None
) -> list[int]:
    """The ids of the consoles with a picture of the QEMU on the bus ``address``,
    waiting up to ``timeout`` seconds for QEMU to get there (or until ``gone()``)."""
    wire, _ = connect_bus(address, CALL_TIMEOUT)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                (owner,) = _call(wire, DBus().GetNameOwner(BUS_NAME))
                break
            except DBusError as exc:
                if exc.name != NO_OWNER:
                    raise
            if time.monotonic() >= deadline or (gone is not None and gone()):
                raise QemuError(f"QEMU did not come on the bus {address} to count its screens")
            time.sleep(POLL_S)
        vm = _get_all(wire, str(owner), VM_PATH, IFACE_VM)
        found = []
        for console in (int(c) for c in vm.get("ConsoleIDs", [])):
            props = _get_all(wire, str(owner), f"{ROOT}/Console_{console}", IFACE_CONSOLE)
            if props.get("Type", "Graphic") == "Graphic":
                found.append(console)
            else:
                log.debug("QEMU's console %d is a text terminal, not a screen", console)
        return found
    finally:
        wire.close()


def _call(wire: Wire, msg: Any) -> tuple[Any, ...]:
    serial = wire.send(msg)
    while True:
        reply = wire.recv()
        if reply.header.fields.get(HeaderFields.reply_serial) != serial:
            reply.close_fds()
            continue  # NameAcquired and the like
        return reply.result()


def _get_all(wire: Wire, owner: str, path: str, interface: str) -> dict[str, Any]:
    addr = DBusAddress(path, owner, IFACE_PROPERTIES)
    (props,) = _call(wire, new_method_call(addr, "GetAll", "s", (interface,)))
    return {str(k): v[1] for k, v in props.items()}


class QemuConsoles:
    """The sources of several consoles, started and stopped together (a Producer)."""

    def __init__(self, sources: Sequence[QemuSource]) -> None:
        self.sources = list(sources)

    def start(self) -> None:
        for source in self.sources:
            source.start()

    def stop(self) -> None:
        for source in self.sources:
            source.stop()

    @property
    def frames(self) -> int:
        """Frames QEMU gave, every screen together (the web server's metrics)."""
        return sum(source.frames for source in self.sources)


def screens(
    address: str,
    *,
    reattach: bool = False,
    gone: Callable[[], bool] | None = None,
    process_exited: Callable[[], bool] | None = None,
) -> tuple[list[Display], QemuConsoles]:
    """A display and a source for every screen of the QEMU on ``address`` (the first
    plays the sound). When QEMU cannot be asked (it failed to start, say), console 0
    alone: its source then says what is wrong as it always does."""
    try:
        ids = graphic_consoles(address, gone=gone)
    except (QemuError, OSError, EOFError) as exc:  # the bus or QEMU went away as we asked
        log.warning("cannot count QEMU's screens (%s); showing console 0", exc)
        ids = []
    if not ids:
        ids = [0]
    log.info("QEMU's screens: console%s %s", "s" if len(ids) > 1 else "", ", ".join(map(str, ids)))
    displays = [Display() for _ in ids]
    sources = [
        QemuSource(
            display,
            dbus_address=address,
            console=console,
            reattach=reattach,
            process_exited=process_exited,
            sound=k == 0,
        )
        for k, (display, console) in enumerate(zip(displays, ids, strict=True))
    ]
    return displays, QemuConsoles(sources)
