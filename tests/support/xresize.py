#!/usr/bin/python3
"""Move and resize the X window WID on $DISPLAY to WxH at the origin (or at X,Y), as a
window manager (which Xvfb has none of) would when a user drags its corner. Run with the
*system* python3 (GTK's GObject bindings: gir1.2-gtk-3.0)."""

from __future__ import annotations

import sys

import gi

gi.require_version("Gdk", "3.0")
gi.require_version("GdkX11", "3.0")
from gi.repository import Gdk, GdkX11  # noqa: E402


def main() -> None:
    wid, width, height = int(sys.argv[1], 0), int(sys.argv[2]), int(sys.argv[3])
    x, y = (int(sys.argv[4]), int(sys.argv[5])) if len(sys.argv) > 5 else (0, 0)
    display = Gdk.Display.get_default()
    window = GdkX11.X11Window.foreign_new_for_display(display, wid)
    window.move_resize(x, y, width, height)
    display.flush()


if __name__ == "__main__":
    main()
