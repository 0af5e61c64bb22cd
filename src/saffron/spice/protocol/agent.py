"""The guest agent's messages (VDAgent), and Saffron standing in for the agent.

A SPICE client talks to the guest's agent (spice-vdagent) through the main channel:
``AGENT_DATA`` messages carry a byte stream of VDAgent messages, each a header
(``protocol`` u32 = 1, ``type`` u32, ``opaque`` u64, ``size`` u32) and ``size`` bytes,
cut into chunks of at most 2048 bytes. spice-gtk sends the window size it wants the
guest to have only to an agent (``VD_AGENT_MONITORS_CONFIG``), and only once the
agent announced the capability (``VD_AGENT_ANNOUNCE_CAPABILITIES``). Saffron has no
agent in the guest; it answers as one and turns the monitors config into a resize
request (QEMU's SetUIInfo) itself.

Where the producer has a clipboard the stand-in also speaks the agent's clipboard
messages, by demand (``VD_AGENT_CAP_CLIPBOARD_BY_DEMAND``): whoever copies sends
``CLIPBOARD_GRAB`` with the types it has, the other side asks with
``CLIPBOARD_REQUEST`` and gets ``CLIPBOARD`` (type, then the data). With
``VD_AGENT_CAP_CLIPBOARD_SELECTION`` on both sides every one of them starts with a
selection byte and three reserved bytes. Only UTF-8 text of the clipboard selection
(not X11's primary) is taken: when the client grabs with text the stand-in asks for it
at once, so the guest can have it without waiting on the client later.

:class:`AgentReader` reassembles the stream (bounded); :class:`Agent` is the stand-in:
chunks in, events and chunks to send back out, no I/O. What it does not act on (file
transfer, ...) is parsed into an :class:`AgentIgnored` event.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from ...display import CLIPBOARD_MAX_BYTES
from .channel import Event
from .wire import ProtocolError

VD_AGENT_PROTOCOL = 1
MAX_CHUNK = 2048
"""VD_AGENT_MAX_DATA_SIZE: the most one AGENT_DATA message carries, either way."""
CLIPBOARD_HEADER = struct.Struct("<B3xI")
"""A clipboard message's selection byte (with ``CLIPBOARD_SELECTION``) and its u32 type."""
MAX_MESSAGE = CLIPBOARD_MAX_BYTES + CLIPBOARD_HEADER.size
"""The biggest agent message accepted: clipboard text at its limit with its selection and
type. A client that sends more is closed (it may not make the server hold more)."""
MAX_CLIPBOARD_TYPES = 16
"""Types one grab may offer: spice-gtk knows six (text, four image kinds, files)."""
MAX_MONITORS = 16
"""spice-gtk's MAX_DISPLAY: a config naming more is not from a real client."""

HEADER = struct.Struct("<IIQI")
MON_CONFIG = struct.Struct("<IIIii")  # height, width, depth, x, y
MON_MM = struct.Struct("<HH")  # height_mm, width_mm
REPLY = struct.Struct("<II")  # type, error

CONFIG_USE_POS = 1
CONFIG_PHYSICAL_SIZE = 2
"""A VDAgentMonitorMM (height_mm, width_mm: u16) per monitor follows the monitors."""
REPLY_SUCCESS = 1


class AgentType(enum.IntEnum):
    MOUSE_STATE = 1
    MONITORS_CONFIG = 2
    REPLY = 3
    CLIPBOARD = 4
    DISPLAY_CONFIG = 5
    ANNOUNCE_CAPABILITIES = 6
    CLIPBOARD_GRAB = 7
    CLIPBOARD_REQUEST = 8
    CLIPBOARD_RELEASE = 9
    FILE_XFER_START = 10
    FILE_XFER_STATUS = 11
    FILE_XFER_DATA = 12
    CLIENT_DISCONNECTED = 13
    MAX_CLIPBOARD = 14
    AUDIO_VOLUME_SYNC = 15
    GRAPHICS_DEVICE_INFO = 16


class AgentCap(enum.IntEnum):
    MOUSE_STATE = 0
    MONITORS_CONFIG = 1
    REPLY = 2
    CLIPBOARD = 3
    DISPLAY_CONFIG = 4
    CLIPBOARD_BY_DEMAND = 5
    CLIPBOARD_SELECTION = 6
    SPARSE_MONITORS_CONFIG = 7
    GUEST_LINEEND_LF = 8
    GUEST_LINEEND_CRLF = 9
    MAX_CLIPBOARD = 10
    AUDIO_VOLUME_SYNC = 11
    MONITORS_CONFIG_POSITION = 12
    FILE_XFER_DISABLED = 13
    FILE_XFER_DETAILED_ERRORS = 14
    GRAPHICS_DEVICE_INFO = 15


class ClipboardType(enum.IntEnum):
    NONE = 0
    UTF8_TEXT = 1
    IMAGE_PNG = 2
    IMAGE_BMP = 3
    IMAGE_TIFF = 4
    IMAGE_JPG = 5
    FILE_LIST = 6


SELECTION_CLIPBOARD = 0
"""VD_AGENT_CLIPBOARD_SELECTION_CLIPBOARD (1 is X11's primary, 2 the secondary)."""
MAX_SELECTION = 2

SERVER_CAPS = (AgentCap.MONITORS_CONFIG, AgentCap.REPLY)
"""What the stand-in announces: monitors config (non-sparse: only enabled monitors
are sent) and replies."""
CLIPBOARD_CAPS = (AgentCap.CLIPBOARD_BY_DEMAND, AgentCap.CLIPBOARD_SELECTION)
"""Announced too where the producer has a clipboard (no grab serials: the stand-in is
the only agent, so the client's grab and the guest's cannot cross on the way)."""
CLIPBOARD_MESSAGES = (
    AgentType.CLIPBOARD,
    AgentType.CLIPBOARD_GRAB,
    AgentType.CLIPBOARD_REQUEST,
    AgentType.CLIPBOARD_RELEASE,
)


@dataclass(frozen=True, slots=True)
class AgentMessage:
    type: int
    data: bytes
    opaque: int = 0


@dataclass(frozen=True, slots=True)
class MonitorConfig:
    width: int
    height: int
    depth: int = 32
    x: int = 0
    y: int = 0
    width_mm: int = 0
    height_mm: int = 0


@dataclass(frozen=True, slots=True)
class Capabilities:
    request: bool
    caps: frozenset[int]


# -- events ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MonitorsConfigured(Event):
    """The client wants the guest's monitors so (the first is the window it shows)."""

    flags: int
    monitors: tuple[MonitorConfig, ...]


@dataclass(frozen=True)
class AgentCapabilities(Event):
    """The client announced what it understands (and was answered if it asked)."""

    caps: frozenset[int]


@dataclass(frozen=True)
class AgentIgnored(Event):
    """An agent message the stand-in does not act on (clipboard, file transfer...)."""

    type: int
    size: int


@dataclass(frozen=True)
class ClipboardGrabbed(Event):
    """The client copied something of these types (ints: unknown ones are kept)."""

    selection: int
    types: tuple[int, ...]


@dataclass(frozen=True)
class ClipboardReceived(Event):
    """The client's clipboard data (answering the stand-in's request)."""

    selection: int
    type: int
    data: bytes


@dataclass(frozen=True)
class ClipboardRequested(Event):
    """The client asked for the guest's clipboard (answered already)."""

    selection: int
    type: int


@dataclass(frozen=True)
class ClipboardReleased(Event):
    selection: int


# -- layouts -----------------------------------------------------------------------------


def pack_message(kind: int, data: bytes, opaque: int = 0) -> list[bytes]:
    """One agent message as the AGENT_DATA bodies that carry it (at most MAX_CHUNK each)."""
    stream = HEADER.pack(VD_AGENT_PROTOCOL, kind, opaque, len(data)) + data
    return [stream[i : i + MAX_CHUNK] for i in range(0, len(stream), MAX_CHUNK)]


def pack_capabilities(request: bool, caps: tuple[int, ...] | frozenset[int]) -> bytes:
    words = [0] * ((max(AgentCap) + 32) // 32)
    for cap in caps:
        words[cap // 32] |= 1 << (cap % 32)
    return struct.pack(f"<I{len(words)}I", int(request), *words)


def parse_capabilities(data: bytes) -> Capabilities:
    if len(data) < 4 or len(data) % 4:
        raise ProtocolError(f"agent capabilities of {len(data)} bytes")
    request, *words = struct.unpack(f"<{len(data) // 4}I", data)
    caps = frozenset(i * 32 + b for i, word in enumerate(words) for b in range(32) if word >> b & 1)
    return Capabilities(bool(request), caps)


def pack_monitors_config(monitors: list[MonitorConfig], flags: int = 0) -> bytes:
    """The client's side, for tests and Python clients."""
    data = struct.pack("<II", len(monitors), flags)
    data += b"".join(MON_CONFIG.pack(m.height, m.width, m.depth, m.x, m.y) for m in monitors)
    if flags & CONFIG_PHYSICAL_SIZE:
        data += b"".join(MON_MM.pack(m.height_mm, m.width_mm) for m in monitors)
    return data


def parse_monitors_config(data: bytes) -> MonitorsConfigured:
    if len(data) < 8:
        raise ProtocolError(f"monitors config of {len(data)} bytes")
    count, flags = struct.unpack_from("<II", data)
    if count > MAX_MONITORS:
        raise ProtocolError(f"monitors config for {count} monitors (at most {MAX_MONITORS})")
    end = 8 + count * MON_CONFIG.size
    if len(data) < end:
        raise ProtocolError(f"monitors config for {count} monitors in {len(data)} bytes")
    heads = [MON_CONFIG.unpack_from(data, 8 + i * MON_CONFIG.size) for i in range(count)]
    mm = [(0, 0)] * count
    if flags & CONFIG_PHYSICAL_SIZE and len(data) >= end + count * MON_MM.size:
        mm = [MON_MM.unpack_from(data, end + i * MON_MM.size) for i in range(count)]
    monitors = tuple(
        MonitorConfig(w, h, depth, x, y, width_mm=mw, height_mm=mh)
        for (h, w, depth, x, y), (mh, mw) in zip(heads, mm, strict=True)
    )
    return MonitorsConfigured(flags, monitors)


def pack_clipboard(selection: int | None, body: bytes) -> bytes:
    """A clipboard message's body: the selection field where both sides know selections."""
    head = b"" if selection is None else bytes((selection, 0, 0, 0))
    return head + body


def parse_clipboard(kind: int, data: bytes, selections: bool) -> Event:
    """One of the four clipboard messages (``selections``: whether it starts with one)."""
    selection = SELECTION_CLIPBOARD
    if selections:
        if len(data) < 4:
            raise ProtocolError(f"{AgentType(kind).name} of {len(data)} bytes")
        selection = data[0]
        if selection > MAX_SELECTION:
            raise ProtocolError(f"clipboard selection {selection}")
        data = data[4:]
    if kind == AgentType.CLIPBOARD_RELEASE:
        return ClipboardReleased(selection)
    if kind == AgentType.CLIPBOARD_GRAB:
        if len(data) % 4 or len(data) // 4 > MAX_CLIPBOARD_TYPES:
            raise ProtocolError(f"clipboard grab with {len(data)} bytes of types")
        return ClipboardGrabbed(selection, struct.unpack(f"<{len(data) // 4}I", data))
    if len(data) < 4:
        raise ProtocolError(f"{AgentType(kind).name} without a type ({len(data)} bytes)")
    (kind_of_data,) = struct.unpack_from("<I", data)
    if kind == AgentType.CLIPBOARD_REQUEST:
        return ClipboardRequested(selection, kind_of_data)
    return ClipboardReceived(selection, kind_of_data, data[4:])


# -- the stream --------------------------------------------------------------------------


class AgentReader:
    """Agent messages out of the AGENT_DATA chunks that carry them."""

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self.max_message = max_message
        self._buf = bytearray()
        self._header: tuple[int, int, int] | None = None
        """(type, opaque, size) of the message being gathered."""

    def feed(self, chunk: bytes) -> list[AgentMessage]:
        if len(chunk) > MAX_CHUNK:
            raise ProtocolError(f"agent data of {len(chunk)} bytes (at most {MAX_CHUNK})")
        self._buf += chunk
        out: list[AgentMessage] = []
        while True:
            if self._header is None:
                if len(self._buf) < HEADER.size:
                    return out
                protocol, kind, opaque, size = HEADER.unpack_from(self._buf)
                if protocol != VD_AGENT_PROTOCOL:
                    raise ProtocolError(f"agent protocol {protocol} (only {VD_AGENT_PROTOCOL})")
                if size > self.max_message:
                    raise ProtocolError(
                        f"agent message of {size} bytes (at most {self.max_message})"
                    )
                del self._buf[: HEADER.size]
                self._header = (kind, opaque, size)
            kind, opaque, size = self._header
            if len(self._buf) < size:
                return out
            out.append(AgentMessage(kind, bytes(self._buf[:size]), opaque))
            del self._buf[:size]
            self._header = None


class Agent:
    """Saffron's stand-in for the guest agent: ``receive`` a chunk, get events; what it
    answers waits in ``outgoing`` (AGENT_DATA bodies, oldest first)."""

    def __init__(self, caps: tuple[int, ...] = SERVER_CAPS, *, clipboard: bool = False) -> None:
        self.caps = caps + CLIPBOARD_CAPS if clipboard else caps
        self.clipboard = clipboard
        self.reader = AgentReader()
        self.outgoing: list[bytes] = []
        self.client_caps: frozenset[int] = frozenset()
        self.offered: bytes | None = None
        """The guest's text, UTF-8, offered to the client (grabbed) and given on request."""
        self._offer_pending = False
        """Offered before the client said it takes clipboard by demand."""

    @property
    def selections(self) -> bool:
        """Whether clipboard messages carry a selection (both sides announced it)."""
        return AgentCap.CLIPBOARD_SELECTION in self.client_caps and (
            AgentCap.CLIPBOARD_SELECTION in self.caps
        )

    def _selection(self, selection: int) -> int | None:
        return selection if self.selections else None

    def offer_text(self, text: str) -> None:
        """The guest copied ``text``: grab the client's clipboard with it (sent now, or
        once the client said it takes clipboard by demand)."""
        self.offered = text.encode()
        if AgentCap.CLIPBOARD_BY_DEMAND in self.client_caps:
            self._send_grab()
        else:
            self._offer_pending = True

    def _send_grab(self) -> None:
        self._offer_pending = False
        body = struct.pack("<I", ClipboardType.UTF8_TEXT)
        selection = self._selection(SELECTION_CLIPBOARD)
        self.send(AgentType.CLIPBOARD_GRAB, pack_clipboard(selection, body))

    def _on_clipboard(self, event: Event) -> None:
        if isinstance(event, ClipboardGrabbed):
            if event.selection == SELECTION_CLIPBOARD and ClipboardType.UTF8_TEXT in event.types:
                body = struct.pack("<I", ClipboardType.UTF8_TEXT)
                selection = self._selection(event.selection)
                self.send(
                    AgentType.CLIPBOARD_REQUEST,
                    pack_clipboard(selection, body),
                )
        elif isinstance(event, ClipboardRequested):
            have = (
                self.offered is not None
                and event.selection == SELECTION_CLIPBOARD
                and event.type == ClipboardType.UTF8_TEXT
            )
            # an empty answer of type NONE where there is nothing: the client must not wait
            kind = ClipboardType.UTF8_TEXT if have else ClipboardType.NONE
            data = (self.offered or b"") if have else b""
            body = struct.pack("<I", kind) + data
            selection = self._selection(event.selection)
            self.send(AgentType.CLIPBOARD, pack_clipboard(selection, body))

    def send(self, kind: int, data: bytes) -> None:
        self.outgoing.extend(pack_message(kind, data))

    def announce(self, request: bool) -> None:
        self.send(AgentType.ANNOUNCE_CAPABILITIES, pack_capabilities(request, self.caps))

    def receive(self, chunk: bytes) -> list[Event]:
        events: list[Event] = []
        for message in self.reader.feed(chunk):
            if message.type == AgentType.ANNOUNCE_CAPABILITIES:
                caps = parse_capabilities(message.data)
                self.client_caps = caps.caps
                if caps.request:
                    self.announce(request=False)
                events.append(AgentCapabilities(caps.caps))
                if self._offer_pending and AgentCap.CLIPBOARD_BY_DEMAND in self.client_caps:
                    self._send_grab()
            elif message.type == AgentType.MONITORS_CONFIG:
                events.append(parse_monitors_config(message.data))
                if AgentCap.REPLY in self.client_caps:
                    self.send(AgentType.REPLY, REPLY.pack(AgentType.MONITORS_CONFIG, REPLY_SUCCESS))
            elif self.clipboard and message.type in CLIPBOARD_MESSAGES:
                event = parse_clipboard(message.type, message.data, self.selections)
                self._on_clipboard(event)
                events.append(event)
            else:
                events.append(AgentIgnored(message.type, len(message.data)))
        return events
