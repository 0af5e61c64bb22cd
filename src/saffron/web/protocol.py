"""The browser page's wire format: one binary header per video frame or still tile,
JSON for the rest. The first byte of every binary message is its kind, so a kind a
reader does not know is recognised (and skipped) rather than misread.

A video message is ``HEADER`` followed by the codec's bitstream (Annex B for
H.264, raw frames for VP8/VP9, OBUs for AV1, a JPEG file for MJPEG):

    u8  kind      1 = video frame, 3 = video frame with its damage
    u8  codec     index into CODEC_IDS
    u8  flags     bit 0: keyframe
    u8  reserved
    u16 width
    u16 height
    u32 frame     frame number in the stream (what the page acknowledges)
    u64 capture   capture time, microseconds since the Unix epoch, server clock
    u32 encode    encode time in microseconds

all little-endian. Kind 3 (only to a page that said ``"sharp": true`` in its
``start``) has ``DAMAGE`` after that header: the rectangle that changed since the
previous frame this page was sent (u16 x, y, width, height); kind 1 means any of
it may have.

A still tile (kind 2, same pages only) is ``TILE_HEADER`` followed by a PNG or
JPEG file, a part of the picture at full quality to draw over the video:

    u8  kind      2 = still tile
    u8  format    0 = PNG (lossless), 1 = JPEG (q98 4:4:4)
    u16 x, y, width, height    where it goes (frame pixels)
    u16 frame width, height    the picture it belongs to
    u32 after     the last video frame number sent before it: video frames up to
                  it do not paint over it, later ones' damage does

A sound packet (kind 4, only to a page that turned its sound on) is
``AUDIO_HEADER`` followed by one Opus packet (10 ms of 48 kHz stereo):

    u8  kind      4 = sound
    u8  codec     0 = Opus
    u16 samples   per channel (480)
    u32 seq       packet number (a gap: packets dropped)
    u64 capture   capture time of its first sample, microseconds, server clock

The page's microphone (kind 5, page to server, while its mic is on: a page served
over HTTPS or from localhost) is ``MIC_HEADER`` followed by one Opus packet:

    u8  kind      5 = microphone
    u8  codec     0 = Opus
    u8  channels  1 or 2 (what the packet was encoded from)
    u8  reserved
    u32 seq       packet number

It is the only binary message a page sends. Everything else travels as JSON text
messages; see ``static/app.js`` for the page's side.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..audio import FRAME_SAMPLES, AudioPacket
from ..display import CLIPBOARD_MAX_BYTES, Rect
from ..encoders.base import Packet
from ..encoders.tiles import TileFormat

HEADER = struct.Struct("<BBBBHHIQI")
DAMAGE = struct.Struct("<HHHH")
TILE_HEADER = struct.Struct("<BBHHHHHHI")
KIND_VIDEO = 1
KIND_TILE = 2
KIND_VIDEO_DAMAGE = 3
KIND_AUDIO = 4
AUDIO_HEADER = struct.Struct("<BBHIQ")
AUDIO_OPUS = 0
KIND_MIC = 5
MIC_HEADER = struct.Struct("<BBBBI")
MAX_MIC_MESSAGE = 4096
"""Largest microphone message a page may send: an Opus packet is at most 1275 bytes a
frame (RFC 6716), and the page sends 20 ms ones of about 100 bytes."""
FLAG_KEYFRAME = 1
CODEC_IDS = ("h264", "vp9", "vp8", "av1", "mjpeg")

MAX_TEXT_MESSAGE = 4096
"""Largest JSON message a page may send: input events and acks are tiny, so
anything bigger is a broken or hostile client (a clipboard message excepted)."""
CLIPBOARD_PREFIX = '{"type":"clipboard",'
"""How the page's clipboard message starts (JSON.stringify keeps the key order): only
such a message may be longer than MAX_TEXT_MESSAGE."""
MAX_CLIPBOARD_MESSAGE = 2 * CLIPBOARD_MAX_BYTES + 256
"""Largest clipboard message, in characters: text at the limit with JSON's escapes
(a quote, backslash or newline takes two characters; text made of nothing else is
refused before it is read to its end, and a page sending it is closed)."""
CLIPBOARD_RATE = MAX_CLIPBOARD_MESSAGE / 2
"""Clipboard characters a page may send a second, on average: a full clipboard every
two seconds is more than anyone pastes."""


class ProtocolError(Exception):
    """A page sent something that is not part of this protocol."""


@dataclass(frozen=True, slots=True)
class VideoHeader:
    codec: str
    keyframe: bool
    width: int
    height: int
    frame: int
    capture_us: int
    encode_us: int
    damage: Rect | None = None
    """What changed since the previous frame; None: unknown (anything)."""


@dataclass(frozen=True, slots=True)
class TileHeader:
    fmt: TileFormat
    rect: Rect
    frame_width: int
    frame_height: int
    after: int


def pack_video(packet: Packet, frame: int, damage: Rect | None = None) -> bytes:
    """A video message; with ``damage``, kind 3 carrying it (for pages that asked)."""
    header = HEADER.pack(
        KIND_VIDEO if damage is None else KIND_VIDEO_DAMAGE,
        CODEC_IDS.index(packet.codec),
        FLAG_KEYFRAME if packet.keyframe else 0,
        0,
        packet.width,
        packet.height,
        frame & 0xFFFFFFFF,
        packet.capture_us,
        min(int(packet.encode_ms * 1000), 0xFFFFFFFF),
    )
    if damage is not None:
        header += DAMAGE.pack(*_u16(damage.clip(packet.width, packet.height)))
    return header + packet.data


def _u16(r: Rect) -> tuple[int, int, int, int]:
    return (r.x, r.y, r.width, r.height)


def pack_tile(fmt: TileFormat, rect: Rect, frame_size: tuple[int, int], after: int) -> bytes:
    """A still tile's header; the image file follows it (sent as one message)."""
    return TILE_HEADER.pack(
        KIND_TILE, fmt, *_u16(rect), frame_size[0], frame_size[1], after & 0xFFFFFFFF
    )


def message_kind(message: bytes) -> int:
    if not message:
        raise ProtocolError("empty binary message")
    return message[0]


def unpack_video(message: bytes) -> tuple[VideoHeader, bytes]:
    """The reverse of pack_video, for Python viewers (tests, benchmarks)."""
    if len(message) < HEADER.size:
        raise ProtocolError(f"video message of {len(message)} bytes is shorter than its header")
    kind, codec, flags, _, width, height, frame, capture, encode = HEADER.unpack_from(message)
    if kind not in (KIND_VIDEO, KIND_VIDEO_DAMAGE) or codec >= len(CODEC_IDS):
        raise ProtocolError(f"unknown message kind {kind} or codec {codec}")
    start, damage = HEADER.size, None
    if kind == KIND_VIDEO_DAMAGE:
        if len(message) < HEADER.size + DAMAGE.size:
            raise ProtocolError("video message too short for its damage rectangle")
        damage = Rect(*DAMAGE.unpack_from(message, HEADER.size))
        start += DAMAGE.size
    header = VideoHeader(
        CODEC_IDS[codec], bool(flags & FLAG_KEYFRAME), width, height, frame, capture, encode, damage
    )
    return header, message[start:]


def unpack_tile(message: bytes) -> tuple[TileHeader, bytes]:
    """A still tile's header and image file, for Python viewers (tests)."""
    if len(message) < TILE_HEADER.size:
        raise ProtocolError(f"tile message of {len(message)} bytes is shorter than its header")
    kind, fmt, x, y, w, h, fw, fh, after = TILE_HEADER.unpack_from(message)
    if kind != KIND_TILE or fmt not in (TileFormat.PNG, TileFormat.JPEG):
        raise ProtocolError(f"not a tile: kind {kind}, format {fmt}")
    header = TileHeader(TileFormat(fmt), Rect(x, y, w, h), fw, fh, after)
    return header, message[TILE_HEADER.size :]


def pack_audio(packet: AudioPacket) -> bytes:
    """A sound message: its header, then the Opus packet."""
    header = AUDIO_HEADER.pack(
        KIND_AUDIO, AUDIO_OPUS, FRAME_SAMPLES, packet.seq & 0xFFFFFFFF, packet.capture_us
    )
    return header + packet.data


def unpack_audio(message: bytes) -> tuple[AudioPacket, int]:
    """A sound message's packet and its samples per channel, for Python viewers (tests)."""
    if len(message) < AUDIO_HEADER.size:
        raise ProtocolError(f"sound message of {len(message)} bytes is shorter than its header")
    kind, codec, samples, seq, capture = AUDIO_HEADER.unpack_from(message)
    if kind != KIND_AUDIO or codec != AUDIO_OPUS:
        raise ProtocolError(f"not a sound message: kind {kind}, codec {codec}")
    return AudioPacket(bytes(message[AUDIO_HEADER.size :]), capture, seq), samples


@dataclass(frozen=True, slots=True)
class MicPacket:
    channels: int
    seq: int
    data: bytes


def pack_mic(channels: int, seq: int, data: bytes) -> bytes:
    """A microphone message, as the page sends it (for Python pages: tests)."""
    return MIC_HEADER.pack(KIND_MIC, AUDIO_OPUS, channels, 0, seq & 0xFFFFFFFF) + data


def unpack_mic(message: bytes) -> MicPacket:
    """A page's microphone message; ProtocolError if it is not a well-formed one."""
    if len(message) > MAX_MIC_MESSAGE:
        raise ProtocolError(f"microphone message of {len(message)} bytes is too long")
    if len(message) <= MIC_HEADER.size:
        raise ProtocolError(f"microphone message of {len(message)} bytes has no sound")
    kind, codec, channels, _, seq = MIC_HEADER.unpack_from(message)
    if kind != KIND_MIC:
        raise ProtocolError(f"the page sent binary message kind {kind}; it only sends 5")
    if codec != AUDIO_OPUS or channels not in (1, 2):
        raise ProtocolError(f"microphone message of codec {codec}, {channels} channels")
    return MicPacket(channels, seq, bytes(message[MIC_HEADER.size :]))
