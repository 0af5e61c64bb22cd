"""SPICE wire format: numbers, message layouts, and a bounded message reader.

Everything here is pure data: no sockets, no clocks. Each message is a frozen
dataclass with ``pack()`` (its body, without the data header) and
``unpack(body)``; both directions exist for every message Saffron sends or
receives, so the layouts can be tested against hand-written bytes and round
trips, and a test client can be built from the same code. Anything a peer
sends that does not fit raises :class:`ProtocolError` and nothing else.

Layouts follow spice.proto (spice-protocol's message definitions): little
endian, packed, pointers are u32 offsets from the start of the message body.
This module knows no channel's state and no connection: the state machines
beside it decide what to send and when.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, NamedTuple, Self

# -- limits -------------------------------------------------------------------

MAGIC = b"REDQ"
VERSION_MAJOR = 2
VERSION_MINOR = 2

TICKET_PUBKEY_BYTES = 162
"""RSA-1024 SubjectPublicKeyInfo in DER: 1024/8 + 34 bytes (SPICE_TICKET_PUBKEY_BYTES)."""
TICKET_CIPHER_BYTES = 128
"""An RSA-1024 ciphertext: the encrypted ticket is always the key's size."""
MAX_PASSWORD_LENGTH = 60
"""SPICE_MAX_PASSWORD_LENGTH: longer passwords are refused by spice-gtk itself."""

LINK_MESS_MIN = 18
LINK_MAX_SIZE = 4096
"""Largest link message accepted, as spice-server does: a real LinkMess is 18 bytes
plus a few caps words, so anything bigger is garbage, not a client."""

MAX_CLIENT_MESSAGE_SIZE = 64 * 1024
"""Largest client message body accepted after the link. What clients really send is
tiny (inputs, reports, acks; the biggest is main-channel AGENT_DATA, at most 2 KiB
of VDAgent payload per message), so 64 KiB is generous; a size field above it
(up to 4 GiB) is refused before a byte is allocated."""

MAX_SERVER_MESSAGE_SIZE = 256 * 1024 * 1024
"""Limit for reading *server* messages (test clients): an uncompressed 8K frame
in one DRAW_COPY is 128 MiB."""

MAX_CAPS_WORDS = 64
"""Caps arrays longer than this are nonsense (the protocol defines under 32 bits)."""

# -- enums --------------------------------------------------------------------


class ProtocolError(Exception):
    """The peer sent bytes that are not valid SPICE: the connection must be closed."""


class LinkErr(enum.IntEnum):
    OK = 0
    ERROR = 1
    INVALID_MAGIC = 2
    INVALID_DATA = 3
    VERSION_MISMATCH = 4
    NEED_SECURED = 5
    NEED_UNSECURED = 6
    PERMISSION_DENIED = 7
    BAD_CONNECTION_ID = 8
    CHANNEL_NOT_AVAILABLE = 9


class ChannelType(enum.IntEnum):
    MAIN = 1
    DISPLAY = 2
    INPUTS = 3
    CURSOR = 4
    PLAYBACK = 5
    RECORD = 6
    TUNNEL = 7
    SMARTCARD = 8
    USBREDIR = 9
    PORT = 10
    WEBDAV = 11


class CommonCap(enum.IntEnum):
    PROTOCOL_AUTH_SELECTION = 0
    AUTH_SPICE = 1
    AUTH_SASL = 2
    MINI_HEADER = 3


class MainCap(enum.IntEnum):
    SEMI_SEAMLESS_MIGRATE = 0
    NAME_AND_UUID = 1
    AGENT_CONNECTED_TOKENS = 2
    SEAMLESS_MIGRATE = 3


class DisplayCap(enum.IntEnum):
    SIZED_STREAM = 0
    MONITORS_CONFIG = 1
    COMPOSITE = 2
    A8_SURFACE = 3
    STREAM_REPORT = 4
    LZ4_COMPRESSION = 5
    PREF_COMPRESSION = 6
    GL_SCANOUT = 7
    MULTI_CODEC = 8
    CODEC_MJPEG = 9
    CODEC_VP8 = 10
    CODEC_H264 = 11
    PREF_VIDEO_CODEC_TYPE = 12
    CODEC_VP9 = 13
    CODEC_H265 = 14


class InputsCap(enum.IntEnum):
    KEY_SCANCODE = 0


class PlaybackCap(enum.IntEnum):
    CELT_0_5_1 = 0
    VOLUME = 1
    LATENCY = 2
    OPUS = 3


class RecordCap(enum.IntEnum):
    CELT_0_5_1 = 0
    VOLUME = 1
    OPUS = 2


class AudioDataMode(enum.IntEnum):
    INVALID = 0
    RAW = 1
    CELT_0_5_1 = 2
    OPUS = 3


class AudioFormat(enum.IntEnum):
    INVALID = 0
    S16 = 1


class VideoCodec(enum.IntEnum):
    MJPEG = 1
    VP8 = 2
    H264 = 3
    VP9 = 4
    H265 = 5


class MouseMode(enum.IntFlag):
    SERVER = 1
    CLIENT = 2


class SurfaceFormat(enum.IntEnum):
    FMT_1_A = 1
    FMT_8_A = 8
    FMT_16_555 = 16
    FMT_32_xRGB = 32
    FMT_16_565 = 80
    FMT_32_ARGB = 96


class SurfaceFlags(enum.IntFlag):
    PRIMARY = 1
    STREAMING_MODE = 2  # never sent: crashes remote-viewer's overlay path (G5)


class StreamFlags(enum.IntFlag):
    TOP_DOWN = 1


class ClipType(enum.IntEnum):
    NONE = 0
    RECTS = 1


class ImageType(enum.IntEnum):
    BITMAP = 0
    QUIC = 1
    LZ_PLT = 100
    LZ_RGB = 101
    GLZ_RGB = 102
    FROM_CACHE = 103
    SURFACE = 104
    JPEG = 105
    FROM_CACHE_LOSSLESS = 106
    ZLIB_GLZ_RGB = 107
    JPEG_ALPHA = 108
    LZ4 = 109


class BitmapFormat(enum.IntEnum):
    INVALID = 0
    BIT1_LE = 1
    BIT1_BE = 2
    BIT4_LE = 3
    BIT4_BE = 4
    BIT8 = 5
    BIT16 = 6
    BIT24 = 7
    BIT32 = 8
    RGBA = 9
    BIT8_A = 10


class BitmapFlags(enum.IntFlag):
    PAL_CACHE_ME = 1
    PAL_FROM_CACHE = 2
    TOP_DOWN = 4


ROPD_OP_PUT = 8
"""SPICE_ROPD_OP_PUT: copy the source as it is."""

BRUSH_SOLID = 1


class CursorType(enum.IntEnum):
    ALPHA = 0
    MONO = 1
    COLOR4 = 2
    COLOR8 = 3
    COLOR16 = 4
    COLOR24 = 5
    COLOR32 = 6


class CursorFlags(enum.IntFlag):
    NONE = 1
    CACHE_ME = 2
    FROM_CACHE = 4


class KeyModifier(enum.IntFlag):
    SCROLL_LOCK = 1
    NUM_LOCK = 2
    CAPS_LOCK = 4


INPUT_MOTION_ACK_BUNCH = 4
"""The server acks every 4 motion messages; clients stop at 8 unacked (G9)."""

STREAM_ID_LIMIT = 50
"""Stream ids in use stay below this, as spice-server keeps them (G6)."""

REPORT_NO_DECODER = 0xFFFFFFFF
"""num_drops of a STREAM_REPORT with num_frames 0: the client cannot play the stream."""

# -- message numbers ------------------------------------------------------------
# Server -> client numbers shared by every channel, then per channel.

MSG_MIGRATE = 1
MSG_MIGRATE_DATA = 2
MSG_SET_ACK = 3
MSG_PING = 4
MSG_WAIT_FOR_CHANNELS = 5
MSG_DISCONNECTING = 6
MSG_NOTIFY = 7
MSG_LIST = 8

MSGC_ACK_SYNC = 1
MSGC_ACK = 2
MSGC_PONG = 3
MSGC_MIGRATE_FLUSH_MARK = 4
MSGC_MIGRATE_DATA = 5
MSGC_DISCONNECTING = 6

MSG_MAIN_INIT = 103
MSG_MAIN_CHANNELS_LIST = 104
MSG_MAIN_MOUSE_MODE = 105
MSG_MAIN_MULTI_MEDIA_TIME = 106
MSG_MAIN_AGENT_CONNECTED = 107
MSG_MAIN_AGENT_DISCONNECTED = 108
MSG_MAIN_AGENT_DATA = 109
MSG_MAIN_AGENT_TOKEN = 110
MSG_MAIN_NAME = 113
MSG_MAIN_UUID = 114

MSGC_MAIN_CLIENT_INFO = 101
MSGC_MAIN_ATTACH_CHANNELS = 104
MSGC_MAIN_MOUSE_MODE_REQUEST = 105
MSGC_MAIN_AGENT_START = 106
MSGC_MAIN_AGENT_DATA = 107
MSGC_MAIN_AGENT_TOKEN = 108

MSG_DISPLAY_MODE = 101
MSG_DISPLAY_MARK = 102
MSG_DISPLAY_RESET = 103
MSG_DISPLAY_INVAL_ALL_PALETTES = 108
MSG_DISPLAY_STREAM_CREATE = 122
MSG_DISPLAY_STREAM_DATA = 123
MSG_DISPLAY_STREAM_CLIP = 124
MSG_DISPLAY_STREAM_DESTROY = 125
MSG_DISPLAY_STREAM_DESTROY_ALL = 126
MSG_DISPLAY_DRAW_FILL = 302
MSG_DISPLAY_DRAW_COPY = 304
MSG_DISPLAY_SURFACE_CREATE = 314
MSG_DISPLAY_SURFACE_DESTROY = 315
MSG_DISPLAY_STREAM_DATA_SIZED = 316
MSG_DISPLAY_MONITORS_CONFIG = 317
MSG_DISPLAY_STREAM_ACTIVATE_REPORT = 319

MSGC_DISPLAY_INIT = 101
MSGC_DISPLAY_STREAM_REPORT = 102
MSGC_DISPLAY_PREFERRED_COMPRESSION = 103
MSGC_DISPLAY_GL_DRAW_DONE = 104
MSGC_DISPLAY_PREFERRED_VIDEO_CODEC_TYPE = 105

MSG_INPUTS_INIT = 101
MSG_INPUTS_KEY_MODIFIERS = 102
MSG_INPUTS_MOUSE_MOTION_ACK = 111

MSGC_INPUTS_KEY_DOWN = 101
MSGC_INPUTS_KEY_UP = 102
MSGC_INPUTS_KEY_MODIFIERS = 103
MSGC_INPUTS_KEY_SCANCODE = 104
MSGC_INPUTS_MOUSE_MOTION = 111
MSGC_INPUTS_MOUSE_POSITION = 112
MSGC_INPUTS_MOUSE_PRESS = 113
MSGC_INPUTS_MOUSE_RELEASE = 114

MSG_CURSOR_INIT = 101
MSG_CURSOR_RESET = 102
MSG_CURSOR_SET = 103
MSG_CURSOR_MOVE = 104
MSG_CURSOR_HIDE = 105
MSG_CURSOR_TRAIL = 106
MSG_CURSOR_INVAL_ONE = 107
MSG_CURSOR_INVAL_ALL = 108

MSG_PLAYBACK_DATA = 101
MSG_PLAYBACK_MODE = 102
MSG_PLAYBACK_START = 103
MSG_PLAYBACK_STOP = 104
MSG_PLAYBACK_VOLUME = 105
MSG_PLAYBACK_MUTE = 106
MSG_PLAYBACK_LATENCY = 107

MSG_RECORD_START = 101
MSG_RECORD_STOP = 102
MSGC_RECORD_DATA = 101
MSGC_RECORD_MODE = 102
MSGC_RECORD_START_MARK = 103

# -- capabilities -----------------------------------------------------------------

Caps = tuple[int, ...]
"""A capability bitmap as u32 words: cap N is bit N % 32 of word N // 32."""


def make_caps(bits: Iterable[int]) -> Caps:
    """The words of a capability set."""
    words: list[int] = []
    for bit in bits:
        index = bit // 32
        while len(words) <= index:
            words.append(0)
        words[index] |= 1 << (bit % 32)
    return tuple(words)


def has_cap(caps: Sequence[int], bit: int) -> bool:
    index = bit // 32
    return index < len(caps) and bool(caps[index] >> (bit % 32) & 1)


# -- primitive helpers --------------------------------------------------------------


def _need(body: bytes, size: int, what: str) -> None:
    if len(body) < size:
        raise ProtocolError(f"{what}: {len(body)} bytes, needs at least {size}")


@dataclass(frozen=True, slots=True)
class Rect:
    """A SPICE rectangle: top, left, bottom, right (not x, y, w, h; G14)."""

    top: int
    left: int
    bottom: int
    right: int

    FMT: ClassVar[struct.Struct] = struct.Struct("<iiii")

    @classmethod
    def of(cls, x: int, y: int, width: int, height: int) -> Rect:
        return cls(y, x, y + height, x + width)

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top

    def pack(self) -> bytes:
        return self.FMT.pack(self.top, self.left, self.bottom, self.right)

    @classmethod
    def unpack_from(cls, body: bytes, offset: int) -> Rect:
        _need(body, offset + 16, "rect")
        return cls(*cls.FMT.unpack_from(body, offset))


@dataclass(frozen=True, slots=True)
class Clip:
    """A clip: none, or a list of rectangles stored inline."""

    rects: tuple[Rect, ...] | None = None

    @property
    def size(self) -> int:
        return 1 if self.rects is None else 5 + 16 * len(self.rects)

    def pack(self) -> bytes:
        if self.rects is None:
            return bytes([ClipType.NONE])
        return struct.pack("<BI", ClipType.RECTS, len(self.rects)) + b"".join(
            r.pack() for r in self.rects
        )

    @classmethod
    def unpack_from(cls, body: bytes, offset: int) -> Clip:
        _need(body, offset + 1, "clip")
        kind = body[offset]
        if kind == ClipType.NONE:
            return cls(None)
        if kind != ClipType.RECTS:
            raise ProtocolError(f"clip type {kind} is not NONE or RECTS")
        _need(body, offset + 5, "clip")
        (count,) = struct.unpack_from("<I", body, offset + 1)
        _need(body, offset + 5 + 16 * count, "clip rects")
        rects = tuple(Rect.unpack_from(body, offset + 5 + 16 * i) for i in range(count))
        return cls(rects)


# -- the message base -----------------------------------------------------------------


class Message:
    """A message body. Subclasses set TYPE and implement pack/unpack."""

    TYPE: ClassVar[int]

    def pack(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def unpack(cls, body: bytes) -> Self:
        raise NotImplementedError


class _Fixed(Message):
    """A message whose body is one struct; extra trailing bytes are ignored, as the
    generated C demarshallers ignore them."""

    FMT: ClassVar[struct.Struct]

    def pack(self) -> bytes:
        return self.FMT.pack(*(getattr(self, f.name) for f in fields(self)))  # type: ignore[arg-type]

    @classmethod
    def unpack(cls, body: bytes) -> Self:
        _need(body, cls.FMT.size, cls.__name__)
        return cls(*cls.FMT.unpack_from(body))


class _Empty(Message):
    def pack(self) -> bytes:
        return b""

    @classmethod
    def unpack(cls, body: bytes) -> Self:
        return cls()


def _fixed(fmt: str) -> struct.Struct:
    return struct.Struct("<" + fmt)


# -- link phase -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkHeader:
    """The 16 bytes before a LinkMess or LinkReply."""

    major: int
    minor: int
    size: int
    magic: bytes = MAGIC

    FMT: ClassVar[struct.Struct] = struct.Struct("<4sIII")
    SIZE: ClassVar[int] = 16

    def pack(self) -> bytes:
        return self.FMT.pack(self.magic, self.major, self.minor, self.size)

    @classmethod
    def unpack(cls, data: bytes) -> LinkHeader:
        _need(data, 16, "link header")
        magic, major, minor, size = cls.FMT.unpack_from(data)
        return cls(major, minor, size, magic)


def _unpack_caps(body: bytes, offset: int, common: int, channel: int) -> tuple[Caps, Caps]:
    if common > MAX_CAPS_WORDS or channel > MAX_CAPS_WORDS:
        raise ProtocolError(f"{common} + {channel} caps words is not believable")
    end = offset + 4 * (common + channel)
    if offset < 0 or end > len(body):
        raise ProtocolError("caps run past the end of the link message")
    words = struct.unpack_from(f"<{common + channel}I", body, offset)
    return tuple(words[:common]), tuple(words[common:])


@dataclass(frozen=True, slots=True)
class LinkMess:
    """What a client sends to open a channel."""

    connection_id: int
    channel_type: int
    channel_id: int
    common_caps: Caps = ()
    channel_caps: Caps = ()

    FMT: ClassVar[struct.Struct] = struct.Struct("<IBBIII")

    def pack(self) -> bytes:
        head = self.FMT.pack(
            self.connection_id,
            self.channel_type,
            self.channel_id,
            len(self.common_caps),
            len(self.channel_caps),
            LINK_MESS_MIN,
        )
        caps = (*self.common_caps, *self.channel_caps)
        return head + struct.pack(f"<{len(caps)}I", *caps)

    @classmethod
    def unpack(cls, body: bytes) -> LinkMess:
        _need(body, LINK_MESS_MIN, "link message")
        conn, ctype, cid, ncommon, nchannel, offset = cls.FMT.unpack_from(body)
        common, channel = _unpack_caps(body, offset, ncommon, nchannel)
        return cls(conn, ctype, cid, common, channel)


@dataclass(frozen=True, slots=True)
class LinkReply:
    """The server's answer to a LinkMess: an error code, the ticket key and its caps."""

    error: int
    pub_key: bytes = bytes(TICKET_PUBKEY_BYTES)
    common_caps: Caps = ()
    channel_caps: Caps = ()

    FMT: ClassVar[struct.Struct] = struct.Struct(f"<I{TICKET_PUBKEY_BYTES}sIII")
    SIZE: ClassVar[int] = 178

    def pack(self) -> bytes:
        if len(self.pub_key) != TICKET_PUBKEY_BYTES:
            raise ValueError("the public key must be 162 bytes of SPKI DER")
        head = self.FMT.pack(
            self.error,
            self.pub_key,
            len(self.common_caps),
            len(self.channel_caps),
            self.SIZE,
        )
        caps = (*self.common_caps, *self.channel_caps)
        return head + struct.pack(f"<{len(caps)}I", *caps)

    @classmethod
    def unpack(cls, body: bytes) -> LinkReply:
        _need(body, cls.SIZE, "link reply")
        error, key, ncommon, nchannel, offset = cls.FMT.unpack_from(body)
        common, channel = _unpack_caps(body, offset, ncommon, nchannel)
        return cls(error, key, common, channel)


def pack_link_result(error: int) -> bytes:
    """The u32 that ends the link phase (0: the channel is up)."""
    return struct.pack("<I", error)


# -- data headers and the reader ------------------------------------------------------

FULL_HEADER = struct.Struct("<QHII")
MINI_HEADER = struct.Struct("<HI")


def header_size(mini: bool) -> int:
    return MINI_HEADER.size if mini else FULL_HEADER.size


def pack_header(msg_type: int, size: int, *, mini: bool, serial: int = 0) -> bytes:
    """A data header: 6-byte mini header, or 18-byte full one with a serial."""
    if mini:
        return MINI_HEADER.pack(msg_type, size)
    return FULL_HEADER.pack(serial, msg_type, size, 0)


def frame(message: Message, *, mini: bool, serial: int = 0) -> bytes:
    """A whole message: header and body."""
    body = message.pack()
    return pack_header(message.TYPE, len(body), mini=mini, serial=serial) + body


class RawMessage(NamedTuple):
    type: int
    body: bytes
    serial: int


class MessageReader:
    """Splits a byte stream into messages, never holding more than one message.

    The size field is checked against ``limit`` before the body is waited for,
    so a hostile 4 GiB size costs nothing.
    """

    def __init__(self, *, mini: bool, limit: int = MAX_CLIENT_MESSAGE_SIZE) -> None:
        self.mini = mini
        self.limit = limit
        self._buf = bytearray()
        self._pos = 0
        self._serial = 0

    def feed(self, data: bytes) -> None:
        if self._pos and self._pos >= len(self._buf) // 2:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def next(self) -> RawMessage | None:
        """The next complete message, or None until more bytes arrive."""
        hsize = header_size(self.mini)
        if self.buffered < hsize:
            return None
        if self.mini:
            msg_type, size = MINI_HEADER.unpack_from(self._buf, self._pos)
            serial = self._serial + 1
        else:
            serial, msg_type, size, sub_list = FULL_HEADER.unpack_from(self._buf, self._pos)
            if sub_list:
                raise ProtocolError("sub-message lists are not used by clients")
        if size > self.limit:
            raise ProtocolError(f"message of {size} bytes is over the {self.limit}-byte limit")
        if self.buffered < hsize + size:
            return None
        start = self._pos + hsize
        body = bytes(self._buf[start : start + size])
        self._pos = start + size
        self._serial = serial
        return RawMessage(msg_type, body, serial)


# -- common messages ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SetAck(_Fixed):
    TYPE = MSG_SET_ACK
    FMT = _fixed("II")
    generation: int
    window: int


@dataclass(frozen=True, slots=True)
class Ping(Message):
    """A PING: the client echoes id and timestamp; padding measures bandwidth."""

    TYPE = MSG_PING
    id: int
    timestamp: int
    padding: bytes = b""

    def pack(self) -> bytes:
        return struct.pack("<IQ", self.id, self.timestamp) + self.padding

    @classmethod
    def unpack(cls, body: bytes) -> Self:
        _need(body, 12, "PING")
        ident, stamp = struct.unpack_from("<IQ", body)
        return cls(ident, stamp, body[12:])


@dataclass(frozen=True, slots=True)
class Disconnecting(_Fixed):
    TYPE = MSG_DISCONNECTING
    FMT = _fixed("QI")
    time_stamp: int
    reason: int


@dataclass(frozen=True, slots=True)
class Notify(Message):
    TYPE = MSG_NOTIFY
    time_stamp: int
    severity: int
    visibility: int
    what: int
    message: bytes

    def pack(self) -> bytes:
        head = struct.pack(
            "<QIIII", self.time_stamp, self.severity, self.visibility, self.what, len(self.message)
        )
        return head + self.message + b"\0"

    @classmethod
    def unpack(cls, body: bytes) -> Self:
        _need(body, 24, "NOTIFY")
        stamp, severity, visibility, what, length = struct.unpack_from("<QIIII", body)
        _need(body, 24 + length, "NOTIFY text")
        return cls(stamp, severity, visibility, what, body[24 : 24 + length])


@dataclass(frozen=True, slots=True)
class AckSync(_Fixed):
    TYPE = MSGC_ACK_SYNC
    FMT = _fixed("I")
    generation: int


@dataclass(frozen=True, slots=True)
class Ack(_Empty):
    TYPE = MSGC_ACK


@dataclass(frozen=True, slots=True)
class Pong(_Fixed):
    TYPE = MSGC_PONG
    FMT = _fixed("IQ")
    id: int
    timestamp: int


@dataclass(frozen=True, slots=True)
class MigrateFlushMark(_Empty):
    TYPE = MSGC_MIGRATE_FLUSH_MARK


@dataclass(frozen=True, slots=True)
class ClientDisconnecting(_Fixed):
    TYPE = MSGC_DISCONNECTING
    FMT = _fixed("QI")
    time_stamp: int
    reason: int


@dataclass(frozen=True, slots=True)
class Opaque(Message):
    """A message whose body Saffron does not look into (migration, agent data)."""

    TYPE = 0
    data: bytes = b""

    def pack(self) -> bytes:
        return self.data

    @classmethod
    def unpack(cls, body: bytes) -> Self:
        return cls(body)


@dataclass(frozen=True, slots=True)
class MigrateDataC(Opaque):
    TYPE = MSGC_MIGRATE_DATA


# -- main channel ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MainInit(_Fixed):
    TYPE = MSG_MAIN_INIT
    FMT = _fixed("8I")
    session_id: int
    display_channels_hint: int
    supported_mouse_modes: int
    current_mouse_mode: int
    agent_connected: int
    agent_tokens: int
    multi_media_time: int
    ram_hint: int


@dataclass(frozen=True, slots=True)
class ChannelsList(Message):
    TYPE = MSG_MAIN_CHANNELS_LIST
    channels: tuple[tuple[int, int], ...]

    def pack(self) -> bytes:
        return struct.pack("<I", len(self.channels)) + b"".join(
            struct.pack("<BB", t, i) for t, i in self.channels
        )

    @classmethod
    def unpack(cls, body: bytes) -> Self:
        _need(body, 4, "CHANNELS_LIST")
        (count,) = struct.unpack_from("<I", body)
        _need(body, 4 + 2 * count, "CHANNELS_LIST entries")
        return cls(tuple((body[4 + 2 * i], body[5 + 2 * i]) for i in range(count)))


@dataclass(frozen=True, slots=True)
class MainMouseMode(_Fixed):
    TYPE = MSG_MAIN_MOUSE_MODE
    FMT = _fixed("HH")
    supported_modes: int
    current_mode: int


@dataclass(frozen=True, slots=True)
class MultiMediaTime(_Fixed):
    TYPE = MSG_MAIN_MULTI_MEDIA_TIME
    FMT = _fixed("I")
    time: int


@dataclass(frozen=True, slots=True)
class MainName(Message):
    """The VM's name; spice-server counts the trailing NUL in name_len, so do we."""

    TYPE = MSG_MAIN_NAME
    name: bytes

    def pack(self) -> bytes:
        data = self.name + b"\0"
        return struct.pack("<I", len(data)) + data

    @classmethod
    def unpack(cls, body: bytes) -> Self:
        _need(body, 4, "NAME")
        (length,) = struct.unpack_from("<I", body)
        _need(body, 4 + length, "NAME text")
        return cls(body[4 : 4 + length].split(b"\0", 1)[0])


@dataclass(frozen=True, slots=True)
class MainUuid(Message):
    TYPE = MSG_MAIN_UUID
    uuid: bytes

    def pack(self) -> bytes:
        if len(self.uuid) != 16:
            raise ValueError("a UUID is 16 bytes")
        return self.uuid

    @classmethod
    def unpack(cls, body: bytes) -> Self:
        _need(body, 16, "UUID")
        return cls(body[:16])


@dataclass(frozen=True, slots=True)
class ClientInfo(_Fixed):
    TYPE = MSGC_MAIN_CLIENT_INFO
    FMT = _fixed("Q")
    cache_size: int


@dataclass(frozen=True, slots=True)
class AttachChannels(_Empty):
    TYPE = MSGC_MAIN_ATTACH_CHANNELS


@dataclass(frozen=True, slots=True)
class MouseModeRequest(_Fixed):
    TYPE = MSGC_MAIN_MOUSE_MODE_REQUEST
    FMT = _fixed("H")
    mode: int


@dataclass(frozen=True, slots=True)
class AgentStart(_Fixed):
    TYPE = MSGC_MAIN_AGENT_START
    FMT = _fixed("I")
    num_tokens: int


@dataclass(frozen=True, slots=True)
class AgentDataC(Opaque):
    TYPE = MSGC_MAIN_AGENT_DATA


@dataclass(frozen=True, slots=True)
class AgentToken(_Fixed):
    TYPE = MSGC_MAIN_AGENT_TOKEN
    FMT = _fixed("I")
    num_tokens: int


@dataclass(frozen=True, slots=True)
class AgentDataS(Opaque):
    """Agent data to the client (see protocol/agent.py): at most 2048 bytes."""

    TYPE = MSG_MAIN_AGENT_DATA


@dataclass(frozen=True, slots=True)
class AgentTokenS(_Fixed):
    """The client may send ``num_tokens`` more AGENT_DATA messages."""

    TYPE = MSG_MAIN_AGENT_TOKEN
    FMT = _fixed("I")
    num_tokens: int


# -- display channel ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DisplayMark(_Empty):
    TYPE = MSG_DISPLAY_MARK


@dataclass(frozen=True, slots=True)
class DisplayReset(_Empty):
    TYPE = MSG_DISPLAY_RESET


@dataclass(frozen=True, slots=True)
class InvalAllPalettes(_Empty):
    TYPE = MSG_DISPLAY_INVAL_ALL_PALETTES


@dataclass(frozen=True, slots=True)
class SurfaceCreate(_Fixed):
    TYPE = MSG_DISPLAY_SURFACE_CREATE
    FMT = _fixed("5I")
    surface_id: int
    width: int
    height: int
    format: int
    flags: int


@dataclass(frozen=True, slots=True)
class SurfaceDestroy(_Fixed):
    TYPE = MSG_DISPLAY_SURFACE_DESTROY
    FMT = _fixed("I")
    surface_id: int


@dataclass(frozen=True, slots=True)
class Head:
    """One monitor: note width and height come before x and y (G14)."""

    monitor_id: int
    surface_id: int
    width: int
    height: int
    x: int
    y: int
    flags: int = 0

    FMT: ClassVar[struct.Struct] = _fixed("7I")


@dataclass(frozen=True, slots=True)
class MonitorsConfig(Message):
    TYPE = MSG_DISPLAY_MONITORS_CONFIG
    heads: tuple[Head, ...]
    max_allowed: int

    def pack(self) -> bytes:
        return struct.pack("<HH", len(self.heads), self.max_allowed) + b"".join(
            Head.FMT.pack(h.monitor_id, h.surface_id, h.width, h.height, h.x, h.y, h.flags)
            for h in self.heads
        )

    @classmethod
    def unpack(cls, body: bytes) -> Self:
        _need(body, 4, "MONITORS_CONFIG")
        count, max_allowed = struct.unpack_from("<HH", body)
        _need(body, 4 + 28 * count, "MONITORS_CONFIG heads")
        heads = tuple(Head(*Head.FMT.unpack_from(body, 4 + 28 * i)) for i in range(count))
        return cls(heads, max_allowed)


@dataclass(frozen=True, slots=True)
class Bitmap:
    """An uncompressed SpiceImage of type BITMAP with its pixels inline."""

    width: int
    height: int
    stride: int
    data: bytes
    format: int = BitmapFormat.BIT32
    flags: int = BitmapFlags.TOP_DOWN
    image_id: int = 0

    HEAD: ClassVar[struct.Struct] = _fixed("QBBIIBBIIII")
    """descriptor (id, type, flags, width, height) + bitmap (format, flags, x, y,
    stride, palette offset): 36 bytes, then the pixels."""

    def pack(self) -> bytes:
        if len(self.data) != self.stride * self.height:
            raise ValueError("bitmap data must be stride * height bytes")
        head = self.HEAD.pack(
            self.image_id,
            ImageType.BITMAP,
            0,
            self.width,
            self.height,
            self.format,
            self.flags,
            self.width,
            self.height,
            self.stride,
            0,
        )
        return head + self.data

    @classmethod
    def unpack_from(cls, body: bytes, offset: int) -> Bitmap:
        _need(body, offset + cls.HEAD.size, "image")
        (ident, kind, _dflags, width, height, fmt, flags, x, y, stride, palette) = (
            cls.HEAD.unpack_from(body, offset)
        )
        if kind != ImageType.BITMAP:
            raise ProtocolError(f"image type {kind} is not BITMAP")
        if palette:
            raise ProtocolError("paletted bitmaps are not used")
        if (x, y) != (width, height):
            raise ProtocolError("bitmap size differs from its descriptor")
        start = offset + cls.HEAD.size
        _need(body, start + stride * y, "bitmap pixels")
        return cls(x, y, stride, body[start : start + stride * y], fmt, flags, ident)


@dataclass(frozen=True, slots=True)
class DrawCopy(Message):
    """DRAW_COPY of one BITMAP with no mask: the image follows the fixed part."""

    TYPE = MSG_DISPLAY_DRAW_COPY
    surface_id: int
    box: Rect
    image: Bitmap
    src_area: Rect
    clip: Clip = field(default_factory=Clip)
    rop: int = ROPD_OP_PUT
    scale_mode: int = 0

    def pack(self) -> bytes:
        clip = self.clip.pack()
        fixed = 4 + 16 + len(clip) + 4 + 16 + 2 + 1 + 13
        return (
            struct.pack("<I", self.surface_id)
            + self.box.pack()
            + clip
            + struct.pack("<I", fixed)
            + self.src_area.pack()
            + struct.pack("<HBBiiI", self.rop, self.scale_mode, 0, 0, 0, 0)
            + self.image.pack()
        )

    @classmethod
    def unpack(cls, body: bytes) -> Self:
        _need(body, 21, "DRAW_COPY")
        (surface,) = struct.unpack_from("<I", body)
        box = Rect.unpack_from(body, 4)
        clip = Clip.unpack_from(body, 20)
        at = 20 + clip.size
        _need(body, at + 36, "DRAW_COPY")
        (image_at,) = struct.unpack_from("<I", body, at)
        src = Rect.unpack_from(body, at + 4)
        rop, scale, _mflags, _mx, _my, mask = struct.unpack_from("<HBBiiI", body, at + 20)
        if mask:
            raise ProtocolError("masked DRAW_COPY is not used")
        if image_at == 0:
            raise ProtocolError("DRAW_COPY without an image")
        return cls(surface, box, Bitmap.unpack_from(body, image_at), src, clip, rop, scale)


@dataclass(frozen=True, slots=True)
class DrawFill(Message):
    """DRAW_FILL with a solid colour (xRGB) and no mask."""

    TYPE = MSG_DISPLAY_DRAW_FILL
    surface_id: int
    box: Rect
    color: int
    clip: Clip = field(default_factory=Clip)
    rop: int = ROPD_OP_PUT

    def pack(self) -> bytes:
        return (
            struct.pack("<I", self.surface_id)
            + self.box.pack()
            + self.clip.pack()
            + struct.pack("<BIHBiiI", BRUSH_SOLID, self.color, self.rop, 0, 0, 0, 0)
        )

    @classmethod
    def unpack(cls, body: bytes) -> Self:
        _need(body, 21, "DRAW_FILL")
        (surface,) = struct.unpack_from("<I", body)
        box = Rect.unpack_from(body, 4)
        clip = Clip.unpack_from(body, 20)
        at = 20 + clip.size
        _need(body, at + 20, "DRAW_FILL")
        brush, color, rop, _mflags, _mx, _my, mask = struct.unpack_from("<BIHBiiI", body, at)
        if brush != BRUSH_SOLID or mask:
            raise ProtocolError("only solid unmasked fills are used")
        return cls(surface, box, color, clip, rop)


@dataclass(frozen=True, slots=True)
class StreamCreate(Message):
    TYPE = MSG_DISPLAY_STREAM_CREATE
    surface_id: int
    id: int
    flags: int
    codec_type: int
    stamp: int
    stream_width: int
    stream_height: int
    src_width: int
    src_height: int
    dest: Rect
    clip: Clip = field(default_factory=Clip)

    HEAD: ClassVar[struct.Struct] = _fixed("IIBBQIIII")

    def pack(self) -> bytes:
        return (
            self.HEAD.pack(
                self.surface_id,
                self.id,
                self.flags,
                self.codec_type,
                self.stamp,
                self.stream_width,
                self.stream_height,
                self.src_width,
                self.src_height,
            )
            + self.dest.pack()
            + self.clip.pack()
        )

    @classmethod
    def unpack(cls, body: bytes) -> Self:
        _need(body, cls.HEAD.size + 17, "STREAM_CREATE")
        surface, ident, flags, codec, stamp, sw, sh, srcw, srch = cls.HEAD.unpack_from(body)
        dest = Rect.unpack_from(body, cls.HEAD.size)
        clip = Clip.unpack_from(body, cls.HEAD.size + 16)
        return cls(surface, ident, flags, codec, stamp, sw, sh, srcw, srch, dest, clip)


@dataclass(frozen=True, slots=True)
class StreamData(Message):
    TYPE = MSG_DISPLAY_STREAM_DATA
    id: int
    multi_media_time: int
    data: bytes

    def pack(self) -> bytes:
        return struct.pack("<III", self.id, self.multi_media_time, len(self.data)) + self.data

    @classmethod
    def unpack(cls, body: bytes) -> Self:
        _need(body, 12, "STREAM_DATA")
        ident, stamp, size = struct.unpack_from("<III", body)
        _need(body, 12 + size, "STREAM_DATA payload")
        return cls(ident, stamp, body[12 : 12 + size])


@dataclass(frozen=True, slots=True)
class StreamDataSized(Message):
    TYPE = MSG_DISPLAY_STREAM_DATA_SIZED
    id: int
    multi_media_time: int
    width: int
    height: int
    dest: Rect
    data: bytes

    def pack(self) -> bytes:
        return (
            struct.pack("<IIII", self.id, self.multi_media_time, self.width, self.height)
            + self.dest.pack()
            + struct.pack("<I", len(self.data))
            + self.data
        )

    @classmethod
    def unpack(cls, body: bytes) -> Self:
        _need(body, 36, "STREAM_DATA_SIZED")
        ident, stamp, width, height = struct.unpack_from("<IIII", body)
        dest = Rect.unpack_from(body, 16)
        (size,) = struct.unpack_from("<I", body, 32)
        _need(body, 36 + size, "STREAM_DATA_SIZED payload")
        return cls(ident, stamp, width, height, dest, body[36 : 36 + size])


@dataclass(frozen=True, slots=True)
class StreamClip(Message):
    """A new clip for a stream; spice-gtk applies it when it *shows* a frame."""

    TYPE = MSG_DISPLAY_STREAM_CLIP
    id: int
    clip: Clip

    def pack(self) -> bytes:
        return struct.pack("<I", self.id) + self.clip.pack()

    @classmethod
    def unpack(cls, body: bytes) -> Self:
        _need(body, 5, "STREAM_CLIP")
        (ident,) = struct.unpack_from("<I", body)
        return cls(ident, Clip.unpack_from(body, 4))


@dataclass(frozen=True, slots=True)
class StreamDestroy(_Fixed):
    TYPE = MSG_DISPLAY_STREAM_DESTROY
    FMT = _fixed("I")
    id: int


@dataclass(frozen=True, slots=True)
class StreamActivateReport(_Fixed):
    TYPE = MSG_DISPLAY_STREAM_ACTIVATE_REPORT
    FMT = _fixed("IIII")
    stream_id: int
    unique_id: int
    max_window_size: int
    timeout_ms: int


@dataclass(frozen=True, slots=True)
class DisplayInit(_Fixed):
    TYPE = MSGC_DISPLAY_INIT
    FMT = _fixed("BqBi")
    pixmap_cache_id: int
    pixmap_cache_size: int
    glz_dictionary_id: int
    glz_dictionary_window_size: int


@dataclass(frozen=True, slots=True)
class StreamReport(_Fixed):
    TYPE = MSGC_DISPLAY_STREAM_REPORT
    FMT = _fixed("IIIIIIiI")
    stream_id: int
    unique_id: int
    start_frame_mm_time: int
    end_frame_mm_time: int
    num_frames: int
    num_drops: int
    last_frame_delay: int
    audio_delay: int


@dataclass(frozen=True, slots=True)
class PreferredCompression(_Fixed):
    TYPE = MSGC_DISPLAY_PREFERRED_COMPRESSION
    FMT = _fixed("B")
    image_compression: int


@dataclass(frozen=True, slots=True)
class GlDrawDone(_Empty):
    TYPE = MSGC_DISPLAY_GL_DRAW_DONE


@dataclass(frozen=True, slots=True)
class PreferredVideoCodecType(Message):
    TYPE = MSGC_DISPLAY_PREFERRED_VIDEO_CODEC_TYPE
    codecs: tuple[int, ...]

    def pack(self) -> bytes:
        return bytes([len(self.codecs), *self.codecs])

    @classmethod
    def unpack(cls, body: bytes) -> Self:
        _need(body, 1, "PREFERRED_VIDEO_CODEC_TYPE")
        count = body[0]
        _need(body, 1 + count, "PREFERRED_VIDEO_CODEC_TYPE list")
        return cls(tuple(body[1 : 1 + count]))


# -- inputs channel -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InputsInit(_Fixed):
    TYPE = MSG_INPUTS_INIT
    FMT = _fixed("H")
    keyboard_modifiers: int


@dataclass(frozen=True, slots=True)
class InputsKeyModifiers(_Fixed):
    TYPE = MSG_INPUTS_KEY_MODIFIERS
    FMT = _fixed("H")
    modifiers: int


@dataclass(frozen=True, slots=True)
class MouseMotionAck(_Empty):
    TYPE = MSG_INPUTS_MOUSE_MOTION_ACK


@dataclass(frozen=True, slots=True)
class KeyDown(_Fixed):
    TYPE = MSGC_INPUTS_KEY_DOWN
    FMT = _fixed("I")
    code: int


@dataclass(frozen=True, slots=True)
class KeyUp(_Fixed):
    TYPE = MSGC_INPUTS_KEY_UP
    FMT = _fixed("I")
    code: int


@dataclass(frozen=True, slots=True)
class ClientKeyModifiers(_Fixed):
    TYPE = MSGC_INPUTS_KEY_MODIFIERS
    FMT = _fixed("H")
    modifiers: int


@dataclass(frozen=True, slots=True)
class KeyScancode(Message):
    TYPE = MSGC_INPUTS_KEY_SCANCODE
    codes: bytes

    def pack(self) -> bytes:
        return self.codes

    @classmethod
    def unpack(cls, body: bytes) -> Self:
        return cls(body)


@dataclass(frozen=True, slots=True)
class MouseMotion(_Fixed):
    TYPE = MSGC_INPUTS_MOUSE_MOTION
    FMT = _fixed("iiH")
    dx: int
    dy: int
    buttons_state: int


@dataclass(frozen=True, slots=True)
class MousePosition(_Fixed):
    TYPE = MSGC_INPUTS_MOUSE_POSITION
    FMT = _fixed("IIHB")
    x: int
    y: int
    buttons_state: int
    display_id: int


@dataclass(frozen=True, slots=True)
class MousePress(_Fixed):
    TYPE = MSGC_INPUTS_MOUSE_PRESS
    FMT = _fixed("BH")
    button: int
    buttons_state: int


@dataclass(frozen=True, slots=True)
class MouseRelease(_Fixed):
    TYPE = MSGC_INPUTS_MOUSE_RELEASE
    FMT = _fixed("BH")
    button: int
    buttons_state: int


# -- cursor channel -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CursorShape:
    """A SpiceCursor: flags, then (unless NONE) a 17-byte header, then the shape."""

    flags: int = 0
    unique: int = 0
    type: int = CursorType.ALPHA
    width: int = 0
    height: int = 0
    hot_spot_x: int = 0
    hot_spot_y: int = 0
    data: bytes = b""

    HEADER: ClassVar[struct.Struct] = _fixed("QBHHHH")

    @classmethod
    def none(cls) -> CursorShape:
        return cls(flags=CursorFlags.NONE)

    def pack(self) -> bytes:
        out = struct.pack("<H", self.flags)
        if self.flags & CursorFlags.NONE:
            return out
        return (
            out
            + self.HEADER.pack(
                self.unique, self.type, self.width, self.height, self.hot_spot_x, self.hot_spot_y
            )
            + self.data
        )

    @classmethod
    def unpack_from(cls, body: bytes, offset: int) -> CursorShape:
        _need(body, offset + 2, "cursor")
        (flags,) = struct.unpack_from("<H", body, offset)
        if flags & CursorFlags.NONE:
            return cls(flags=flags)
        _need(body, offset + 2 + cls.HEADER.size, "cursor header")
        unique, kind, width, height, hot_x, hot_y = cls.HEADER.unpack_from(body, offset + 2)
        data = body[offset + 2 + cls.HEADER.size :]
        return cls(flags, unique, kind, width, height, hot_x, hot_y, data)


@dataclass(frozen=True, slots=True)
class CursorInit(Message):
    TYPE = MSG_CURSOR_INIT
    x: int
    y: int
    trail_length: int
    trail_frequency: int
    visible: int
    cursor: CursorShape

    FMT: ClassVar[struct.Struct] = _fixed("hhHHB")

    def pack(self) -> bytes:
        return (
            self.FMT.pack(self.x, self.y, self.trail_length, self.trail_frequency, self.visible)
            + self.cursor.pack()
        )

    @classmethod
    def unpack(cls, body: bytes) -> Self:
        _need(body, cls.FMT.size, "CURSOR_INIT")
        x, y, length, frequency, visible = cls.FMT.unpack_from(body)
        return cls(x, y, length, frequency, visible, CursorShape.unpack_from(body, cls.FMT.size))


@dataclass(frozen=True, slots=True)
class CursorReset(_Empty):
    TYPE = MSG_CURSOR_RESET


@dataclass(frozen=True, slots=True)
class CursorSet(Message):
    TYPE = MSG_CURSOR_SET
    x: int
    y: int
    visible: int
    cursor: CursorShape

    FMT: ClassVar[struct.Struct] = _fixed("hhB")

    def pack(self) -> bytes:
        return self.FMT.pack(self.x, self.y, self.visible) + self.cursor.pack()

    @classmethod
    def unpack(cls, body: bytes) -> Self:
        _need(body, cls.FMT.size, "CURSOR_SET")
        x, y, visible = cls.FMT.unpack_from(body)
        return cls(x, y, visible, CursorShape.unpack_from(body, cls.FMT.size))


@dataclass(frozen=True, slots=True)
class CursorMove(_Fixed):
    TYPE = MSG_CURSOR_MOVE
    FMT = _fixed("hh")
    x: int
    y: int


@dataclass(frozen=True, slots=True)
class CursorHide(_Empty):
    TYPE = MSG_CURSOR_HIDE


@dataclass(frozen=True, slots=True)
class CursorInvalAll(_Empty):
    TYPE = MSG_CURSOR_INVAL_ALL


# -- playback and record channels --------------------------------------------------------
# spice.proto's PlaybackChannel and RecordChannel: the server says when and in what format
# to play or record, MODE says how DATA is encoded from then on (an AudioDataMode), DATA
# carries one packet (one Opus packet in OPUS mode) stamped on the multimedia clock. Both
# channels lay MODE and DATA out alike.


@dataclass(frozen=True, slots=True)
class _AudioData(Message):
    time: int
    data: bytes

    def pack(self) -> bytes:
        return struct.pack("<I", self.time) + self.data

    @classmethod
    def unpack(cls, body: bytes) -> Self:
        _need(body, 4, cls.__name__)
        return cls(struct.unpack_from("<I", body)[0], bytes(body[4:]))


@dataclass(frozen=True, slots=True)
class _AudioMode(Message):
    time: int
    mode: int
    data: bytes = b""  # unused by either side (empty)

    def pack(self) -> bytes:
        return struct.pack("<IH", self.time, self.mode) + self.data

    @classmethod
    def unpack(cls, body: bytes) -> Self:
        _need(body, 6, cls.__name__)
        time, mode = struct.unpack_from("<IH", body)
        return cls(time, mode, bytes(body[6:]))


@dataclass(frozen=True, slots=True)
class PlaybackData(_AudioData):
    TYPE = MSG_PLAYBACK_DATA


@dataclass(frozen=True, slots=True)
class PlaybackMode(_AudioMode):
    TYPE = MSG_PLAYBACK_MODE


@dataclass(frozen=True, slots=True)
class PlaybackStart(_Fixed):
    TYPE = MSG_PLAYBACK_START
    FMT = _fixed("IHII")
    channels: int
    format: int
    frequency: int
    time: int


@dataclass(frozen=True, slots=True)
class PlaybackStop(_Empty):
    TYPE = MSG_PLAYBACK_STOP


@dataclass(frozen=True, slots=True)
class RecordStart(_Fixed):
    TYPE = MSG_RECORD_START
    FMT = _fixed("IHI")
    channels: int
    format: int
    frequency: int


@dataclass(frozen=True, slots=True)
class RecordStop(_Empty):
    TYPE = MSG_RECORD_STOP


@dataclass(frozen=True, slots=True)
class RecordData(_AudioData):
    TYPE = MSGC_RECORD_DATA


@dataclass(frozen=True, slots=True)
class RecordMode(_AudioMode):
    TYPE = MSGC_RECORD_MODE


@dataclass(frozen=True, slots=True)
class RecordStartMark(_Fixed):
    TYPE = MSGC_RECORD_START_MARK
    FMT = _fixed("I")
    time: int


# -- dispatch tables ------------------------------------------------------------------

_COMMON_CLIENT: tuple[type[Message], ...] = (
    AckSync,
    Ack,
    Pong,
    MigrateFlushMark,
    MigrateDataC,
    ClientDisconnecting,
)
_COMMON_SERVER: tuple[type[Message], ...] = (SetAck, Ping, Disconnecting, Notify)


def _table(*classes: type[Message]) -> dict[int, type[Message]]:
    return {c.TYPE: c for c in classes}


CLIENT_MESSAGES: dict[int, dict[int, type[Message]]] = {
    ChannelType.MAIN: _table(
        *_COMMON_CLIENT,
        ClientInfo,
        AttachChannels,
        MouseModeRequest,
        AgentStart,
        AgentDataC,
        AgentToken,
    ),
    ChannelType.DISPLAY: _table(
        *_COMMON_CLIENT,
        DisplayInit,
        StreamReport,
        PreferredCompression,
        GlDrawDone,
        PreferredVideoCodecType,
    ),
    ChannelType.INPUTS: _table(
        *_COMMON_CLIENT,
        KeyDown,
        KeyUp,
        ClientKeyModifiers,
        KeyScancode,
        MouseMotion,
        MousePosition,
        MousePress,
        MouseRelease,
    ),
    ChannelType.CURSOR: _table(*_COMMON_CLIENT),
    ChannelType.PLAYBACK: _table(*_COMMON_CLIENT),
    ChannelType.RECORD: _table(*_COMMON_CLIENT, RecordData, RecordMode, RecordStartMark),
}
"""Client -> server messages Saffron understands, per channel type."""

SERVER_MESSAGES: dict[int, dict[int, type[Message]]] = {
    ChannelType.MAIN: _table(
        *_COMMON_SERVER,
        MainInit,
        ChannelsList,
        MainMouseMode,
        MultiMediaTime,
        MainName,
        MainUuid,
        AgentDataS,
        AgentTokenS,
    ),
    ChannelType.DISPLAY: _table(
        *_COMMON_SERVER,
        DisplayMark,
        DisplayReset,
        InvalAllPalettes,
        SurfaceCreate,
        SurfaceDestroy,
        MonitorsConfig,
        DrawCopy,
        DrawFill,
        StreamCreate,
        StreamData,
        StreamDataSized,
        StreamClip,
        StreamDestroy,
        StreamActivateReport,
    ),
    ChannelType.INPUTS: _table(*_COMMON_SERVER, InputsInit, InputsKeyModifiers, MouseMotionAck),
    ChannelType.CURSOR: _table(
        *_COMMON_SERVER, CursorInit, CursorReset, CursorSet, CursorMove, CursorHide, CursorInvalAll
    ),
    ChannelType.PLAYBACK: _table(
        *_COMMON_SERVER, PlaybackData, PlaybackMode, PlaybackStart, PlaybackStop
    ),
    ChannelType.RECORD: _table(*_COMMON_SERVER, RecordStart, RecordStop),
}
"""Server -> client messages Saffron sends, per channel type (test clients read them)."""


def parse(table: dict[int, type[Message]], msg_type: int, body: bytes) -> Message | None:
    """The message of this type from ``table``; None for a type Saffron does not know.

    Raises only ProtocolError, whatever the bytes.
    """
    cls = table.get(msg_type)
    if cls is None:
        return None
    try:
        return cls.unpack(body)
    except ProtocolError:
        raise
    except (struct.error, ValueError, IndexError, OverflowError) as exc:
        raise ProtocolError(f"{cls.__name__}: {exc}") from exc


def describe(value: Any) -> str:
    """A short name for an enum value, or the number."""
    return getattr(value, "name", str(value))
