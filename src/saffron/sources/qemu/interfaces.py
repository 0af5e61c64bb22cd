"""The names of QEMU's D-Bus display (``org.qemu.Display1``) and how long calls may take.

Only names and numbers: no module of the package needs more to agree with QEMU.
"""

from __future__ import annotations

BUS_NAME = "org.qemu"
ROOT = "/org/qemu/Display1"
VM_PATH = f"{ROOT}/VM"
LISTENER_PATH = f"{ROOT}/Listener"
IFACE_VM = "org.qemu.Display1.VM"
IFACE_CONSOLE = "org.qemu.Display1.Console"
IFACE_KEYBOARD = "org.qemu.Display1.Keyboard"
IFACE_MOUSE = "org.qemu.Display1.Mouse"
IFACE_LISTENER = "org.qemu.Display1.Listener"
IFACE_MAP = "org.qemu.Display1.Listener.Unix.Map"
AUDIO_PATH = f"{ROOT}/Audio"
AUDIO_OUT_LISTENER_PATH = f"{ROOT}/AudioOutListener"
IFACE_AUDIO = "org.qemu.Display1.Audio"
IFACE_AUDIO_OUT_LISTENER = "org.qemu.Display1.AudioOutListener"
IFACE_AUDIO_IN_LISTENER = "org.qemu.Display1.AudioInListener"
IFACE_PROPERTIES = "org.freedesktop.DBus.Properties"
IFACE_INTROSPECTABLE = "org.freedesktop.DBus.Introspectable"
IFACE_PEER = "org.freedesktop.DBus.Peer"

REGISTER_TIMEOUT = 30.0
"""Seconds to wait for RegisterListener's answer (QEMU waits 25 s for our GetAll)."""
CALL_TIMEOUT = 10.0
CLIPBOARD_PATH = f"{ROOT}/Clipboard"
IFACE_CLIPBOARD = "org.qemu.Display1.Clipboard"
