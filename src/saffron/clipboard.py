"""The clipboard's fan-out: the guest's text to every viewer, a viewer's text to the guest.

A producer with a clipboard (QEMU's D-Bus ``Clipboard``) sets the display's
``clipboard_hook`` and tells :class:`ClipboardBroadcast` (the display's
:class:`~saffron.display.ClipboardSink`) whenever the guest copies text; every viewer
hears of it (a SPICE client through the stand-in agent's grab, the page as a message).
A viewer's copy goes to the guest through the hook, and to the other viewers, so that
what one person copies any of them may paste. Text only, at most
:data:`~saffron.display.CLIPBOARD_MAX_BYTES` of UTF-8 either way.

Threads: the producer calls from its own thread; everything that touches viewers runs
on the asyncio loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from .display import CLIPBOARD_MAX_BYTES, Display

log = logging.getLogger("saffron.clipboard")


class ClipboardViewer(Protocol):
    """What a front end's connection offers the clipboard's fan-out (called on the loop)."""

    def clipboard_changed(self, text: str) -> None:
        """The shared clipboard now holds ``text`` (the guest's, or another viewer's)."""


class ClipboardTooBig(ValueError):
    """A viewer's text is over :data:`~saffron.display.CLIPBOARD_MAX_BYTES`."""


class ClipboardBroadcast:
    def __init__(self, display: Display, loop: asyncio.AbstractEventLoop) -> None:
        self.display = display
        self.loop = loop
        self.viewers: list[ClipboardViewer] = []
        self.text: str | None = None
        """What the clipboard holds now, as far as Saffron knows; a viewer that joins gets it."""
        self.from_guest = 0
        self.from_viewers = 0
        display.clipboard = self

    @property
    def available(self) -> bool:
        """Whether the producer has a clipboard at all."""
        return self.display.clipboard_hook is not None

    def add_viewer(self, viewer: ClipboardViewer) -> None:
        if viewer not in self.viewers:
            self.viewers.append(viewer)
            if self.text is not None:
                viewer.clipboard_changed(self.text)

    def remove_viewer(self, viewer: ClipboardViewer) -> None:
        if viewer in self.viewers:
            self.viewers.remove(viewer)

    # -- the producer (any thread) ---------------------------------------------------------

    def guest_clipboard(self, text: str) -> None:
        size = len(text.encode())
        if size > CLIPBOARD_MAX_BYTES:
            log.warning(
                "the guest copied %d bytes of text, more than the %d passed on: not shared",
                size,
                CLIPBOARD_MAX_BYTES,
            )
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: Saffron is stopping
            self.loop.call_soon_threadsafe(self._publish, text, None)

    # -- viewers (on the loop) -------------------------------------------------------------

    def viewer_copied(self, text: str, origin: ClipboardViewer | None) -> None:
        """A viewer copied ``text``: to the guest, and to the other viewers.

        Raises :class:`ClipboardTooBig` past the limit (the caller closes that viewer)."""
        size = len(text.encode())
        if size > CLIPBOARD_MAX_BYTES:
            raise ClipboardTooBig(f"clipboard text of {size} bytes (at most {CLIPBOARD_MAX_BYTES})")
        hook = self.display.clipboard_hook
        if hook is None:
            return
        self.from_viewers += 1
        hook(text)
        self._publish(text, origin, guest=False)

    def _publish(self, text: str, origin: ClipboardViewer | None, guest: bool = True) -> None:
        if guest:
            self.from_guest += 1
            log.debug("the guest copied %d characters", len(text))
        self.text = text
        for viewer in list(self.viewers):
            if viewer is not origin:
                viewer.clipboard_changed(text)
