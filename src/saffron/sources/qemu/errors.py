"""What goes wrong with QEMU or its bus, as exceptions the whole package shares."""

from __future__ import annotations


class QemuError(Exception):
    """QEMU or its bus could not be used."""


class DBusError(QemuError):
    """An error reply to one of our calls."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(f"{name}: {text}" if text else name)
        self.name = name


class NotThere(QemuError):
    """QEMU (or its bus) is not there yet: worth trying again later."""


class Refused(QemuError):
    """The bus is there but refused to let us in (its EXTERNAL authentication takes
    other users only): trying again as the same user will not help."""
