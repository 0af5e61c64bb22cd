"""The display channel: one primary surface, one video stream over it, reports back.

The machine keeps the order spice-gtk needs (surface before stream, stream
destroyed before its surface, MARK after the first picture: G1–G3), uses fresh
stream ids (G6), sets TOP_DOWN on streams and bitmaps (G4), never sets
STREAMING_MODE (G5), and keeps frame stamps non-zero and non-decreasing (G7).
Which codec to use and when to send what is the owner's decision (the viewer in
the asyncio layer): this machine knows neither the broadcast nor the producer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .channel import Channel, Event
from .wire import (
    REPORT_NO_DECODER,
    STREAM_ID_LIMIT,
    Bitmap,
    BitmapFlags,
    BitmapFormat,
    Caps,
    ChannelType,
    DisplayCap,
    DisplayInit,
    DisplayMark,
    DrawCopy,
    DrawFill,
    Head,
    Message,
    MonitorsConfig,
    PreferredVideoCodecType,
    Rect,
    StreamActivateReport,
    StreamCreate,
    StreamData,
    StreamDataSized,
    StreamDestroy,
    StreamFlags,
    StreamReport,
    SurfaceCreate,
    SurfaceDestroy,
    SurfaceFlags,
    SurfaceFormat,
    VideoCodec,
    has_cap,
    make_caps,
)

SERVER_DISPLAY_CAPS: Caps = make_caps(
    [DisplayCap.MONITORS_CONFIG, DisplayCap.STREAM_REPORT, DisplayCap.PREF_VIDEO_CODEC_TYPE]
)
"""MONITORS_CONFIG is then always sent to clients that have it (G2); STREAM_REPORT
feeds rate control; PREF_VIDEO_CODEC_TYPE lets clients ask for a codec."""

PRIMARY_SURFACE = 0

REPORT_WINDOW = 5
"""Frames per STREAM_REPORT, and the report timeout below: spice-server's values."""
REPORT_TIMEOUT_MS = 1000

CODEC_TYPES: dict[str, VideoCodec] = {
    "mjpeg": VideoCodec.MJPEG,
    "vp8": VideoCodec.VP8,
    "h264": VideoCodec.H264,
    "vp9": VideoCodec.VP9,
}
"""Saffron codec names that SPICE can carry (AV1 has no SPICE codec type)."""

CODEC_NAMES: dict[int, str] = {int(v): k for k, v in CODEC_TYPES.items()}

_CODEC_CAPS: dict[str, DisplayCap] = {
    "mjpeg": DisplayCap.CODEC_MJPEG,
    "vp8": DisplayCap.CODEC_VP8,
    "h264": DisplayCap.CODEC_H264,
    "vp9": DisplayCap.CODEC_VP9,
}

CODEC_LABELS = {"mjpeg": "MJPEG", "vp8": "VP8", "vp9": "VP9", "h264": "H.264", "av1": "AV1"}


def client_codecs(caps: Sequence[int]) -> list[str]:
    """Codecs a client can decode: MJPEG always, the rest only with MULTI_CODEC (G15)."""
    found = ["mjpeg"]
    if has_cap(caps, DisplayCap.MULTI_CODEC):
        found += [
            name for name, cap in _CODEC_CAPS.items() if name != "mjpeg" and has_cap(caps, cap)
        ]
    return found


def choose_codec(
    server_codecs: Sequence[str], caps: Sequence[int], preferred: Sequence[int] = ()
) -> str | None:
    """The codec to stream: the client's stated preference first, then the server's order."""
    usable = [c for c in server_codecs if c in CODEC_TYPES and c in client_codecs(caps)]
    for code in preferred:
        name = CODEC_NAMES.get(code)
        if name in usable:
            return name
    return usable[0] if usable else None


def stamp_after(previous: int, now: int) -> int:
    """A frame stamp: ``now`` unless that is behind ``previous`` (u32 wrap-aware); never 0."""
    delta = (now - previous) & 0xFFFFFFFF
    stamp = previous if previous and delta >= 0x80000000 else now & 0xFFFFFFFF
    return stamp or 1


# -- events ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DisplayInitReceived(Event):
    message: DisplayInit


@dataclass(frozen=True)
class ReportReceived(Event):
    report: StreamReport


@dataclass(frozen=True)
class StreamUnplayable(Event):
    """The client says it cannot decode the current stream (num_drops = 0xFFFFFFFF)."""

    codec: str


@dataclass(frozen=True)
class PreferredCodecs(Event):
    codecs: tuple[int, ...]


@dataclass(frozen=True)
class VideoStream:
    id: int
    codec: str
    width: int
    height: int
    unique_id: int


class DisplayChannel(Channel):
    CHANNEL_TYPE = ChannelType.DISPLAY

    def __init__(self, *, mini_header: bool, client_caps: Sequence[int] = ()) -> None:
        super().__init__(mini_header=mini_header, client_caps=tuple(client_caps))
        self.surface: tuple[int, int] | None = None
        self.stream: VideoStream | None = None
        self.marked = False
        self.preferred_codecs: tuple[int, ...] = ()
        self.last_report: StreamReport | None = None
        self.reports = 0
        self.frames_sent = 0
        self._next_id = 0
        self._next_unique = 1
        self._last_stamp = 0

    @property
    def codecs(self) -> list[str]:
        return client_codecs(self.client_caps)

    # -- surface ------------------------------------------------------------------------

    def create_surface(self, width: int, height: int) -> None:
        """(Re)create the primary surface; a stream on the old one is destroyed first."""
        if self.stream is not None:
            self.destroy_stream()
        if self.surface is not None:
            self.send(SurfaceDestroy(PRIMARY_SURFACE))
        self.send(
            SurfaceCreate(
                PRIMARY_SURFACE, width, height, SurfaceFormat.FMT_32_xRGB, SurfaceFlags.PRIMARY
            )
        )
        self.surface = (width, height)
        if self.has_cap(DisplayCap.MONITORS_CONFIG):
            head = Head(0, PRIMARY_SURFACE, width, height, 0, 0, 0)
            self.send(MonitorsConfig((head,), 1))

    def fill(self, x: int, y: int, width: int, height: int, color: int = 0) -> None:
        self.send(DrawFill(PRIMARY_SURFACE, Rect.of(x, y, width, height), color))

    def draw_bitmap(self, x: int, y: int, width: int, height: int, data: bytes) -> None:
        """DRAW_COPY of BGRX pixels (``width * 4`` bytes a row, top row first)."""
        image = Bitmap(width, height, width * 4, data, BitmapFormat.BIT32, BitmapFlags.TOP_DOWN)
        self.send(
            DrawCopy(
                PRIMARY_SURFACE, Rect.of(x, y, width, height), image, Rect.of(0, 0, width, height)
            )
        )

    def mark(self) -> None:
        """Tell the client the surface holds a picture (once: G1)."""
        if not self.marked:
            self.send(DisplayMark())
            self.marked = True

    # -- video ---------------------------------------------------------------------------

    def create_stream(self, codec: str, width: int, height: int) -> VideoStream:
        if self.surface is None:
            raise RuntimeError("a stream needs a surface first (G3)")
        if self.stream is not None:
            self.destroy_stream()
        ident = self._next_id
        self._next_id = (self._next_id + 1) % STREAM_ID_LIMIT
        unique = self._next_unique
        self._next_unique += 1
        self.stream = VideoStream(ident, codec, width, height, unique)
        self.send(
            StreamCreate(
                surface_id=PRIMARY_SURFACE,
                id=ident,
                flags=StreamFlags.TOP_DOWN,
                codec_type=CODEC_TYPES[codec],
                stamp=0,
                stream_width=width,
                stream_height=height,
                src_width=width,
                src_height=height,
                dest=Rect.of(0, 0, width, height),
            )
        )
        if self.has_cap(DisplayCap.STREAM_REPORT):
            self.send(StreamActivateReport(ident, unique, REPORT_WINDOW, REPORT_TIMEOUT_MS))
        return self.stream

    def stream_frame(self, data: bytes, mm_time: int) -> int:
        """Send one encoded frame on the current stream; returns the stamp it got."""
        stream = self.stream
        if stream is None:
            raise RuntimeError("no stream")
        stamp = stamp_after(self._last_stamp, mm_time)
        self._last_stamp = stamp
        if self.has_cap(DisplayCap.SIZED_STREAM):
            dest = Rect.of(0, 0, stream.width, stream.height)
            self.send(StreamDataSized(stream.id, stamp, stream.width, stream.height, dest, data))
        else:
            self.send(StreamData(stream.id, stamp, data))
        self.frames_sent += 1
        return stamp

    def destroy_stream(self) -> None:
        if self.stream is not None:
            self.send(StreamDestroy(self.stream.id))
            self.stream = None

    # -- input ---------------------------------------------------------------------------

    def _handle(self, message: Message) -> list[Event]:
        if isinstance(message, DisplayInit):
            return [DisplayInitReceived(message)]
        if isinstance(message, StreamReport):
            stream = self.stream
            if stream is None or (message.stream_id, message.unique_id) != (
                stream.id,
                stream.unique_id,
            ):
                return []  # a report on a stream that is gone
            if message.num_frames == 0 and message.num_drops == REPORT_NO_DECODER:
                return [StreamUnplayable(stream.codec)]
            self.last_report = message
            self.reports += 1
            return [ReportReceived(message)]
        if isinstance(message, PreferredVideoCodecType):
            self.preferred_codecs = message.codecs
            return [PreferredCodecs(message.codecs)]
        return []
