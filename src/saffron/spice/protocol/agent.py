"""The guest agent's messages (VDAgent), and Saffron standing in for the agent.

A SPICE client talks to the guest's agent (spice-vdagent) through the main channel:
``AGENT_DATA`` messages carry a byte stream of VDAgent messages, each a header
(``protocol`` u32 = 1, ``type`` u32, ``opaque`` u64, ``size`` u32) and ``size`` bytes,
cut into chunks of at most 2048 bytes. spice-gtk sends the window size it wants the
guest to have only to an agent (``VD_AGENT_MONITORS_CONFIG``), and only once the
agent announced the capability (``VD_AGENT_ANNOUNCE_CAPABILITIES``). Saffron has no
agent in the guest; it answers as one and turns the monitors config into a resize
request (QEMU's SetUIInfo) itself.

:class:`AgentReader` reassembles the stream (bounded); :class:`Agent` is the stand-in:
chunks in, events and chunks to send back out, no I/O. What is not monitors config
(clipboard, file transfer, ...) is parsed into an :class:`AgentIgnored` event, so a
clipboard stand-in can be added here later.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from .channel import Event
from .wire import ProtocolError

VD_AGENT_PROTOCOL = 1
MAX_CHUNK = 2048
"""VD_AGENT_MAX_DATA_SIZE: the most one AGENT_DATA message carries, either way."""
MAX_MESSAGE = 1 << 20
"""The biggest agent message accepted. Monitors config is a few hundred bytes; clipboard
data (not taken yet) is what could be large: a client may not make the server hold more."""
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


SERVER_CAPS = (AgentCap.MONITORS_CONFIG, AgentCap.REPLY)
"""What the stand-in announces: monitors config (non-sparse: only enabled monitors
are sent) and replies. No clipboard yet, so clients do not offer it."""


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

    def __init__(self, caps: tuple[int, ...] = SERVER_CAPS) -> None:
        self.caps = caps
        self.reader = AgentReader()
        self.outgoing: list[bytes] = []
        self.client_caps: frozenset[int] = frozenset()

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
            elif message.type == AgentType.MONITORS_CONFIG:
                events.append(parse_monitors_config(message.data))
                if AgentCap.REPLY in self.client_caps:
                    self.send(AgentType.REPLY, REPLY.pack(AgentType.MONITORS_CONFIG, REPLY_SUCCESS))
            else:
                events.append(AgentIgnored(message.type, len(message.data)))
        return events
