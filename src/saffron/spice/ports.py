"""What the SPICE server, its connections and the channel handlers see of each other.

The server (:mod:`saffron.spice.server`) owns the sockets, the sessions, the
producer's display, the broadcast and the settings; the handlers
(:mod:`~saffron.spice.session` for main, inputs and cursor,
:mod:`~saffron.spice.viewer` for the display channel) run one linked channel
each. A handler sees its connection as a :class:`ConnectionPort` and the server
as a :class:`ServerPort`, and the connection sees a handler as a
:class:`Handler`: so the handlers never import the server, and only the
server's module knows every piece. This module holds the three typing
Protocols and nothing else; it must not know sockets, sessions or channels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import asyncio

    from ..audio import AudioBroadcast
    from ..broadcast import Broadcast
    from ..clipboard import ClipboardBroadcast
    from ..display import Display
    from ..encoders.base import Packet
    from ..mic import MicInput
    from .damage import DamageLog
    from .protocol.channel import Channel


class ConnectionPort(Protocol):
    """What a channel handler needs from its connection (see server.Connection)."""

    peer: str

    @property
    def congested(self) -> bool: ...

    def buffered(self) -> int: ...

    def flush(self) -> None: ...

    def close(self, reason: str, *, warn: bool = False) -> None: ...


class Handler(Protocol):
    """The asyncio side of one linked channel."""

    @property
    def channel(self) -> Channel: ...

    def start(self) -> None: ...

    def receive(self, data: bytes) -> None: ...

    def on_drain(self) -> None: ...

    def stop(self) -> None: ...


class ScreenPort(Protocol):
    """One of the producer's screens, as a display channel shows it (see server.SpiceScreen;
    the server itself is screen 0)."""

    @property
    def display(self) -> Display: ...

    @property
    def broadcast(self) -> Broadcast: ...

    @property
    def damage_log(self) -> DamageLog: ...


class ServerPort(Protocol):
    """What a session and its channel handlers need from the server (see server.SpiceServer)."""

    @property
    def display(self) -> Display:
        """The producer's display: picture, cursor, input."""
        ...

    @property
    def broadcast(self) -> Broadcast:
        """The shared encoders a display channel viewer joins with its codec."""
        ...

    @property
    def audio(self) -> AudioBroadcast | None:
        """The producer's sound, encoded once, for playback channels (None: no sound)."""
        ...

    @property
    def mic(self) -> MicInput | None:
        """Where record channels' sound goes, for the guest to record (None: nowhere)."""
        ...

    @property
    def clipboard(self) -> ClipboardBroadcast | None:
        """The shared clipboard, for the main channel's stand-in agent (None: none)."""
        ...

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop every handler runs on (for its timers)."""
        ...

    @property
    def view_only(self) -> bool:
        """Keyboard and mouse are ignored."""
        ...

    @property
    def codecs(self) -> list[str]:
        """The codecs the server still encodes, in its order of preference."""
        ...

    @property
    def damage_log(self) -> DamageLog:
        """What changed between frames, for stream clips."""
        ...

    def display_of(self, screen: int) -> Display | None:
        """Screen ``screen``'s display (0 is :attr:`display`), None past the last."""
        ...

    @property
    def frame_listeners(self) -> list[Callable[[str, Packet, int], None]]:
        """Called after each frame is sent: (client label, packet, mm stamp)."""
        ...
