"""The browser page's wire format: one binary header per video frame, JSON for the rest.

A video message is ``HEADER`` followed by the codec's bitstream (Annex B for
H.264, raw frames for VP8/VP9, OBUs for AV1, a JPEG file for MJPEG):

    u8  kind      1 = video frame
    u8  codec     index into CODEC_IDS
    u8  flags     bit 0: keyframe
    u8  reserved
    u16 width
    u16 height
    u32 frame     frame number in the stream (what the page acknowledges)
    u64 capture   capture time, microseconds since the Unix epoch, server clock
    u32 encode    encode time in microseconds

all little-endian. Everything else travels as JSON text messages; see
``static/app.js`` for the page's side.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..encoders.base import Packet

HEADER = struct.Struct("<BBBBHHIQI")
KIND_VIDEO = 1
FLAG_KEYFRAME = 1
CODEC_IDS = ("h264", "vp9", "vp8", "av1", "mjpeg")

MAX_TEXT_MESSAGE = 4096
"""Largest JSON message a page may send: input events and acks are tiny, so
anything bigger is a broken or hostile client."""


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


def pack_video(packet: Packet, frame: int) -> bytes:
    header = HEADER.pack(
        KIND_VIDEO,
        CODEC_IDS.index(packet.codec),
        FLAG_KEYFRAME if packet.keyframe else 0,
        0,
        packet.width,
        packet.height,
        frame & 0xFFFFFFFF,
        packet.capture_us,
        min(int(packet.encode_ms * 1000), 0xFFFFFFFF),
    )
    return header + packet.data


def unpack_video(message: bytes) -> tuple[VideoHeader, bytes]:
    """The reverse of pack_video, for Python viewers (tests, benchmarks)."""
    if len(message) < HEADER.size:
        raise ProtocolError(f"video message of {len(message)} bytes is shorter than its header")
    kind, codec, flags, _, width, height, frame, capture, encode = HEADER.unpack_from(message)
    if kind != KIND_VIDEO or codec >= len(CODEC_IDS):
        raise ProtocolError(f"unknown message kind {kind} or codec {codec}")
    header = VideoHeader(
        CODEC_IDS[codec], bool(flags & FLAG_KEYFRAME), width, height, frame, capture, encode
    )
    return header, message[HEADER.size :]
