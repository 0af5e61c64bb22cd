"""The QEMU source's pure parts: key and button numbers (saffron.sources.qemu.keymap), the
``-display dbus`` command line, pixel formats turned into BGRX, and ``--console``."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from saffron.app import StartupError
from saffron.cli import build_parser, serve
from saffron.cli.options import ALL_CONSOLES
from saffron.sources import qemu as Q
from saffron.sources.qemu import pixels as px
from saffron.sources.qemu.keymap import button_to_qemu, scancode_to_qnum

QEMU = "qemu-system-x86_64"


def test_scancodes_map_to_qemu_key_numbers() -> None:
    assert scancode_to_qnum(0x1E) == 0x1E  # a
    assert scancode_to_qnum(0x9E) == 0x1E  # a break code is the same key
    assert scancode_to_qnum(0xE048) == 0xC8  # Up: E0 folded into the high bit
    assert scancode_to_qnum(0xE01C) == 0x9C  # keypad Enter
    assert scancode_to_qnum(0x48E0) == 0xC8  # Up in SPICE's wire byte order
    assert scancode_to_qnum(0xE11D45) == 0xC6  # Pause
    assert scancode_to_qnum(0xE02A) is None  # a fake shift is no key
    assert scancode_to_qnum(0) is None
    assert [button_to_qemu(b) for b in range(1, 8)] == [0, 1, 2, 3, 4, 5, 6]
    assert button_to_qemu(0) is None


def test_command_line_gets_the_dbus_display() -> None:
    argv = Q.with_dbus_display(
        [QEMU, "-m", "64", "-display", "gtk", "-nographic", "-display=dbus,gl=on,addr=x"],
        "unix:path=/tmp/b.sock,guid=42",
    )
    assert argv == [QEMU, "-m", "64", "-display", "dbus,addr=unix:path=/tmp/b.sock,,guid=42,gl=on"]


def test_pixel_formats_become_bgrx() -> None:
    bgrx = np.array([[[1, 2, 3, 0], [4, 5, 6, 0]]], np.uint8)
    same = px.pixels_to_bgrx(bytearray(bgrx.tobytes()), 0, 2, 1, 8, px.PIXMAN_X8R8G8B8)
    assert same is not None and np.array_equal(same, bgrx)
    rgbx = bytearray(bgrx[..., [2, 1, 0, 3]].tobytes())
    out = px.pixels_to_bgrx(rgbx, 0, 2, 1, 8, px.PIXMAN_X8B8G8R8)
    assert out is not None and np.array_equal(out[..., :3], bgrx[..., :3])
    bgr = bytearray(bgrx[..., :3].tobytes())
    out = px.pixels_to_bgrx(bgr, 0, 2, 1, 6, px.PIXMAN_R8G8B8)
    assert out is not None and np.array_equal(out[..., :3], bgrx[..., :3])
    rgb565 = bytearray(struct.pack("<2H", 0xF800, 0x07E0))  # pure red, pure green
    out = px.pixels_to_bgrx(rgb565, 0, 2, 1, 4, px.PIXMAN_R5G6B5)
    assert out is not None and out[0, 0, :3].tolist() == [0, 0, 255]
    assert out[0, 1, :3].tolist() == [0, 255, 0]
    assert px.pixels_to_bgrx(bytearray(8), 0, 2, 1, 8, 0x12345678) is None


def test_audio_adds_a_dbus_audiodev_or_wires_the_one_given() -> None:
    addr = "unix:path=/tmp/b.sock"
    added = Q.with_dbus_display([QEMU, "-m", "64"], addr, audio=True)
    assert added == [
        QEMU,
        "-m",
        "64",
        "-audiodev",
        "dbus,id=saffron",
        "-display",
        "dbus,addr=unix:path=/tmp/b.sock,audiodev=saffron",
    ]
    given = [QEMU, "-audiodev", "pa,id=speakers", "-audiodev", "driver=dbus,id=snd0"]
    wired = Q.with_dbus_display([*given, "-machine", "pcspk-audiodev=snd0"], addr, audio=True)
    assert wired[-2:] == ["-display", "dbus,addr=unix:path=/tmp/b.sock,audiodev=snd0"]
    assert wired.count("-audiodev") == 2
    kept = Q.with_dbus_display([QEMU, "-display", "dbus,audiodev=mine"], addr, audio=True)
    assert kept == [QEMU, "-display", "dbus,addr=unix:path=/tmp/b.sock,audiodev=mine"]
    assert "-audiodev" not in Q.with_dbus_display([QEMU], addr)


def test_clipboard_adds_qemus_agent_port_unless_one_is_given() -> None:
    addr = "unix:path=/tmp/bus"
    added = Q.with_dbus_display([QEMU, "-m", "64"], addr, clipboard=True)
    assert added[: 3 + len(Q.CLIPBOARD_ARGS)] == [QEMU, "-m", "64", *Q.CLIPBOARD_ARGS]
    assert "qemu-vdagent,id=saffron-vdagent,clipboard=on" in added
    own = [QEMU, "-chardev", "qemu-vdagent,id=v,clipboard=on", "-device", "virtio-serial"]
    assert Q.with_dbus_display(own, addr, clipboard=True)[:5] == own
    assert "-chardev" not in Q.with_dbus_display([QEMU], addr)


def test_console_is_a_number_or_all() -> None:
    parser = build_parser()
    assert parser.parse_args(["qemu", "--console", "all", "--", "q"]).console == ALL_CONSOLES
    assert parser.parse_args(["serve", "--console", "2"]).console == 2
    for wrong in ("-1", "two"):
        with pytest.raises(SystemExit):
            parser.parse_args(["serve", "--console", wrong])
    # every screen of what? only a QEMU on a bus can say
    with pytest.raises(StartupError, match="--console all is for --source qemu"):
        serve.command(parser.parse_args(["serve", "--console", "all"]))
