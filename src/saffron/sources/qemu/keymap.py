"""Key and button numbers between Saffron's viewers and QEMU's D-Bus input interfaces.

Viewers hand Saffron PC set-1 scancodes with the 0xE0 prefix in the high byte
(0xE048 is Up), as SPICE carries them. QEMU's ``org.qemu.Display1.Keyboard``
takes a "QEMU key number" (``qnum``: "xtkbd + special re-encoding of high bit"
in QEMU's ``ui/dbus-display1.xml``), which QEMU turns into its own key code with
``qemu_input_key_number_to_qcode``. The qnum of a plain set-1 key is its make
code (0x01..0x7F); an 0xE0-prefixed key is its make code with the high bit set
(Up, E0 48, is 0xC8). The high bit is the set-1 *break* bit, so press and
release are told by the D-Bus method, never by the number.

Checked on a real guest (QEMU 7.2, Linux's atkbd driver): 0x1E gives evdev
KEY_A (30), 0xE048 KEY_UP (103), 0xE01C KEY_KPENTER (96), 0xE01D KEY_RIGHTCTRL
(97), 0xE053 KEY_DELETE (111), 0xE05B KEY_LEFTMETA (125); the guest's own
MSC_SCAN reports 0xC8 for Up.

Mouse buttons: QEMU's D-Bus numbering (``InputButton``) is left 0, middle 1,
right 2, wheel-up 3, wheel-down 4, side 5, extra 6; SPICE's is the same plus one.

QEMU's own: it knows nothing of how a viewer names a key (the browser's names are
``web/keys.py``'s).
"""

from __future__ import annotations

PAUSE_QNUM = 0xC6
"""Pause/Break: QEMU's qnum for the key whose set-1 make sequence is E1 1D 45."""

_FAKE_SHIFTS = frozenset({0xE02A, 0xE0AA, 0xE036, 0xE0B6})
"""The 'fake shift' codes a PC keyboard wraps around some E0 keys: no key of their own."""


def scancode_to_qnum(scancode: int) -> int | None:
    """The QEMU key number of a set-1 scancode, or None if it names no key.

    Accepts a make code (0x1E), an E0-prefixed code in the high byte (0xE048),
    and Pause as 0xE11D45 or 0xE11D. The byte order of SPICE's wire (the prefix
    in the low byte: 0x48E0, 0x451DE1) is taken too. A break bit (0x80) in the
    code is ignored: whether the key goes down or up is a separate argument.
    """
    if scancode in (0xE11D45, 0xE11D, 0xE1, 0x451DE1, 0x1DE1):
        return PAUSE_QNUM
    if scancode > 0xFF and scancode & 0xFF == 0xE0:  # SPICE's byte order: E0 first
        scancode = 0xE000 | (scancode >> 8) & 0xFF
    if scancode in _FAKE_SHIFTS or scancode < 0:
        return None
    prefix, code = scancode >> 8, scancode & 0x7F
    if code == 0:
        return None
    if prefix == 0:
        return code
    if prefix == 0xE0:
        return 0x80 | code
    return None


def button_to_qemu(spice_button: int) -> int | None:
    """QEMU's D-Bus mouse button number for a SPICE-numbered button (1 = left)."""
    if 1 <= spice_button <= 7:
        return spice_button - 1
    return None
