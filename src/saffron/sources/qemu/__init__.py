"""The QEMU producer: a listener on QEMU's D-Bus display (``-display dbus``).

Read in this order (QEMU's ui/dbus-display1.xml defines the protocol):

- :mod:`.interfaces`: the names of ``org.qemu.Display1``;
- :mod:`.dbus`: a private D-Bus transport on a Unix socket (jeepney's message layer);
- :mod:`.pixels`: QEMU's pixel formats as BGRX frames;
- :mod:`.listener`: the peer-to-peer connection QEMU draws through, the frame path;
- :mod:`.keymap`: viewers' scancodes and buttons as QEMU numbers them;
- :mod:`.input`: keyboard and mouse, queued for QEMU;
- :mod:`.attach`: finding QEMU on its bus, attaching, reattaching;
- :mod:`.process`: starting QEMU with a private bus.

The rest of Saffron needs only what is named here.
"""

from __future__ import annotations

from .attach import QemuSource, open_qemu_source
from .errors import QemuError
from .process import CLIPBOARD_ARGS, DBusDaemon, QemuProcess, start_qemu, with_dbus_display

__all__ = [
    "CLIPBOARD_ARGS",
    "DBusDaemon",
    "QemuError",
    "QemuProcess",
    "QemuSource",
    "open_qemu_source",
    "start_qemu",
    "with_dbus_display",
]
