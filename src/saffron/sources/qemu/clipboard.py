"""The guest's clipboard through QEMU's D-Bus display (``org.qemu.Display1.Clipboard``).

QEMU's clipboard is shared by its peers: the guest's agent (through the
``qemu-vdagent`` chardev with ``clipboard=on``), VNC, and one D-Bus client. That client
calls ``Register`` on QEMU's ``/org/qemu/Display1/Clipboard`` and serves the same
interface at the same path on the same connection, for QEMU to call:
``Register`` (grab serials start again), ``Grab(u selection, u serial, as mimes)``
when the guest copied, ``Release(u selection)``, and ``Request(u selection, as mimes)
-> (s mime, ay data)`` when the guest pastes what the client holds. QEMU's side is
the same: the client calls ``Grab`` when a viewer copies and ``Request`` to fetch what
the guest copied.

Serials order the grabs: QEMU takes a client's grab whose serial is at least the
newest it has seen, so Saffron keeps the highest serial QEMU told it and grabs with
the next one. QEMU calls ``Request`` synchronously (its main loop waits), so Saffron
holds the viewer's text it offered and answers at once; and it asks for the guest's
text as soon as the guest grabs (one request per copy, bounded), so that viewers have
it without a round trip to the guest when they paste. Only UTF-8 text of the clipboard
selection is passed, as QEMU's D-Bus clipboard carries nothing else.

This module holds the state and makes the messages; :mod:`.attach` sends them.
"""

from __future__ import annotations

import logging
from typing import Any

from jeepney.wrappers import DBusAddress, new_method_call

from ...display import CLIPBOARD_MAX_BYTES
from .dbus import Incoming, error_reply, reply
from .interfaces import CLIPBOARD_PATH, IFACE_CLIPBOARD, IFACE_PROPERTIES

log = logging.getLogger("saffron.qemu")

MIME_TEXT = "text/plain;charset=utf-8"
"""The one type QEMU's D-Bus clipboard passes (QEMU_CLIPBOARD_TYPE_TEXT)."""
SELECTION_CLIPBOARD = 0
"""QEMU_CLIPBOARD_SELECTION_CLIPBOARD (1 is X11's primary selection)."""
ERROR_FAILED = "org.qemu.Display1.Error.Failed"
ERROR_UNKNOWN = "org.freedesktop.DBus.Error.UnknownMethod"


class QemuClipboard:
    """The D-Bus client's half of QEMU's clipboard, without I/O."""

    def __init__(self) -> None:
        self.serial = 0
        """The newest grab serial seen or used."""
        self.offered: bytes | None = None
        """A viewer's text, on QEMU's clipboard until the guest copies something else."""
        self.registered = False

    def register(self, owner: str) -> Any:
        return new_method_call(DBusAddress(CLIPBOARD_PATH, owner, IFACE_CLIPBOARD), "Register")

    def grab(self, owner: str, text: str) -> Any:
        """Put a viewer's text on QEMU's clipboard (the guest asks for it when it pastes)."""
        self.serial = (self.serial + 1) & 0xFFFFFFFF
        self.offered = text.encode()
        addr = DBusAddress(CLIPBOARD_PATH, owner, IFACE_CLIPBOARD)
        body = (SELECTION_CLIPBOARD, self.serial, [MIME_TEXT])
        return new_method_call(addr, "Grab", "uuas", body)

    def request(self, owner: str) -> Any:
        """Ask QEMU for the guest's text (QEMU asks the guest's agent)."""
        addr = DBusAddress(CLIPBOARD_PATH, owner, IFACE_CLIPBOARD)
        return new_method_call(addr, "Request", "uas", (SELECTION_CLIPBOARD, [MIME_TEXT]))

    def answer(self, msg: Incoming) -> tuple[Any, bool]:
        """Answer one of QEMU's calls on our object: (the reply, whether the guest just
        copied text, which is then to be asked for)."""
        if msg.interface == IFACE_PROPERTIES:  # QEMU's proxy reads our properties first
            if msg.member == "GetAll":
                return reply(msg, "a{sv}", ({},)), False
            return error_reply(msg, ERROR_UNKNOWN, "no properties"), False
        if msg.interface not in (IFACE_CLIPBOARD, ""):
            return error_reply(msg, ERROR_UNKNOWN, f"no interface {msg.interface}"), False
        member, signature = msg.member, msg.signature
        if member in ("Register", "Unregister") and signature == "":
            self.serial = 0  # QEMU starts its serials again (its agent end does too)
            return reply(msg), False
        if member == "Grab" and signature == "uuas":
            selection, serial, mimes = msg.body()
            self.serial = max(self.serial, int(serial))
            if selection != SELECTION_CLIPBOARD or MIME_TEXT not in mimes:
                return reply(msg), False
            self.offered = None  # the guest's now
            return reply(msg), True
        if member == "Release" and signature == "u":
            return reply(msg), False
        if member == "Request" and signature == "uas":
            selection, mimes = msg.body()
            if selection != SELECTION_CLIPBOARD or self.offered is None or MIME_TEXT not in mimes:
                return error_reply(msg, ERROR_FAILED, "no text on this clipboard"), False
            return reply(msg, "say", (MIME_TEXT, self.offered)), False
        return error_reply(msg, ERROR_UNKNOWN, f"no method {member}({signature})"), False


def guest_text(body: tuple[Any, ...]) -> str | None:
    """The text in QEMU's answer to ``Request``, or None (said why) when it is not taken."""
    if len(body) != 2:
        return None
    mime, data = body
    if mime != MIME_TEXT:
        log.debug("the guest's clipboard came as %s, not text", mime)
        return None
    if len(data) > CLIPBOARD_MAX_BYTES:
        log.warning(
            "the guest copied %d bytes of text, more than the %d passed on: not shared",
            len(data),
            CLIPBOARD_MAX_BYTES,
        )
        return None
    return bytes(data).decode(errors="replace").rstrip("\0")
