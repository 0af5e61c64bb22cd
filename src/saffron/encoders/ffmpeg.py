"""Video encoders through FFmpeg (PyAV): x264, libvpx VP8/VP9, SVT-AV1, hardware ones.

Colour conversion BGRX -> YUV 4:2:0 is done once per frame by FFmpeg's scaler
on a zero-copy view of the frame's pixels; both it and the encode release the
GIL, so the producer and the network keep running meanwhile.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TypeGuard, cast

import av
import numpy as np
from av.video.codeccontext import VideoCodecContext
from av.video.frame import PictureType, VideoFrame

from ..display import Frame
from .base import Encoder, EncoderError, Packet

os.environ.setdefault("SVT_LOG", "0")  # SVT-AV1 prints a banner per encoder otherwise
av.logging.set_level(av.logging.ERROR)


@dataclass(frozen=True)
class FFmpegProfile:
    """How to open one FFmpeg encoder for low latency."""

    codec: str
    name: str
    options: dict[str, str] = field(default_factory=dict)
    hardware: bool = False
    pix_fmt: str = "yuv420p"
    live_bitrate: bool = False
    """A new bitrate near the one it was opened at is taken by the open encoder (no
    keyframe): see ``LIVE_RANGE``."""


PROFILES = [
    FFmpegProfile(
        "h264", "h264_nvenc", {"preset": "p1", "tune": "ull", "zerolatency": "1"}, hardware=True
    ),
    FFmpegProfile(
        "h264", "h264_qsv", {"preset": "veryfast", "low_power": "1"}, True, pix_fmt="nv12"
    ),
    FFmpegProfile(
        "h264",
        "libx264",
        {"preset": "ultrafast", "tune": "zerolatency", "profile": "baseline"},
        live_bitrate=True,
    ),
    FFmpegProfile(
        "vp9",
        "libvpx-vp9",
        {
            "deadline": "realtime",
            "cpu-used": "8",
            "row-mt": "1",
            "lag-in-frames": "0",
            "error-resilient": "1",
        },
    ),
    FFmpegProfile(
        "vp8",
        "libvpx",
        {
            "deadline": "realtime",
            "cpu-used": "16",
            "lag-in-frames": "0",
            "auto-alt-ref": "0",
            "error-resilient": "1",
        },
    ),
    FFmpegProfile("av1", "av1_nvenc", {"preset": "p1", "tune": "ull"}, True),
    FFmpegProfile("av1", "libsvtav1", {"preset": "12", "svtav1-params": "rtc=1:rc=2"}),
]


LIVE_RANGE = (0.5, 1.2)
"""An encoder that can (``live_bitrate``) takes a new bitrate between these shares
of the one it was opened at without reopening. It is opened with its VBV ceiling
(maxrate) at the top of the range, so a raise within it is honoured; the ceiling it
keeps is then at most 2.4 times the new rate, and its buffer (``VBV_SECONDS``) that
of the rate it was opened at."""

VBV_SECONDS = 0.25
"""Rate-control buffer, in seconds of the target bitrate: no frame, keyframes
included, may take more than this much link time, which bounds the latency a
single large frame adds on a link that runs at the target."""


class FFmpegEncoder(Encoder):
    """One FFmpeg encoder context at one size.

    A new bitrate reopens the context (with a keyframe): x264's live reconfig
    keeps the old VBV ceiling and libvpx and SVT-AV1 ignore a changed target,
    so reopening is the one way that works for all of them. Callers limit how
    often they change it. The exception: x264 takes a target near the one it
    was opened at in place (``LIVE_RANGE``), keeping the ceiling it was opened
    with: rate control changes the rate every second or two on a slow link, where
    each keyframe costs a fraction of a second of link time.
    """

    def __init__(
        self, profile: FFmpegProfile, width: int, height: int, fps: int, bitrate_kbps: int
    ) -> None:
        super().__init__(width, height, fps, bitrate_kbps)
        self.profile = profile
        self.codec = profile.codec
        self.backend = profile.name
        self.hardware = profile.hardware
        self._pts = 0
        self._reopen = False
        self._opened_kbps = bitrate_kbps
        self._live_kbps: int | None = None
        self._ctx: VideoCodecContext | None = self._open()

    def _open(self) -> VideoCodecContext:
        try:
            ctx = cast(VideoCodecContext, av.CodecContext.create(self.profile.name, "w"))
            ctx.width = self.width
            ctx.height = self.height
            ctx.pix_fmt = self.profile.pix_fmt
            ctx.time_base = Fraction(1, 1000)
            ctx.framerate = Fraction(self.fps)
            ctx.bit_rate = self.bitrate_kbps * 1000
            self._opened_kbps = self.bitrate_kbps
            ctx.gop_size = max(self.fps * 10, 1)
            ctx.max_b_frames = 0
            ctx.thread_count = 2
            bits = self.bitrate_kbps * 1000
            ctx.options = {
                **self.profile.options,
                "maxrate": str(int(bits * (LIVE_RANGE[1] if self.profile.live_bitrate else 1))),
                "bufsize": str(int(bits * VBV_SECONDS)),
            }
            ctx.open()
        except av.FFmpegError as exc:
            # Its str() repeats the whole avcodec_open2 call with every option.
            why = exc.strerror or str(exc)
            raise EncoderError(f"{self.profile.name} does not open here: {why}") from exc
        except (ValueError, OSError) as exc:
            raise EncoderError(f"{self.profile.name} does not open here: {exc}") from exc
        return ctx

    def set_bitrate(self, kbps: int) -> None:
        if kbps == self.bitrate_kbps:
            return
        super().set_bitrate(kbps)
        ctx = self._ctx
        opened = self._opened_kbps
        low, high = LIVE_RANGE
        if self.profile.live_bitrate and ctx is not None and opened * low <= kbps <= opened * high:
            self._live_kbps = kbps  # set on the context by encode(), on the encoder's thread
            return
        self._reopen = True

    def prepare(self, frame: Frame) -> VideoFrame:
        """BGRX to the encoder's YUV, by FFmpeg's scaler on a zero-copy view (GIL released)."""
        pixels = frame.pixels
        if not pixels.flags.c_contiguous:
            pixels = np.ascontiguousarray(pixels)
        src = VideoFrame.from_numpy_buffer(pixels, format="bgra")
        return src.reformat(format=self.profile.pix_fmt)

    def _fits(self, prepared: object) -> TypeGuard[VideoFrame]:
        return (
            isinstance(prepared, VideoFrame)
            and prepared.format.name == self.profile.pix_fmt
            and (prepared.width, prepared.height) == (self.width, self.height)
        )

    def encode(self, frame: Frame, keyframe: bool = False, prepared: object = None) -> Packet:
        t0 = time.perf_counter()
        ctx = self._ctx
        if self._reopen or ctx is None:
            self._reopen = False
            self._live_kbps = None
            self._ctx = ctx = self._open()
            keyframe = True
        live, self._live_kbps = self._live_kbps, None
        if live is not None:
            ctx.bit_rate = live * 1000
        yuv = prepared if self._fits(prepared) else self.prepare(frame)
        yuv.pts = self._pts
        self._pts += max(1000 // self.fps, 1)
        if keyframe:
            yuv.pict_type = PictureType.I
        try:
            packets = ctx.encode(yuv)
        except av.FFmpegError as exc:
            raise EncoderError(f"{self.backend} failed on a frame: {exc}") from exc
        if not packets:
            raise EncoderError(f"{self.backend} returned no packet: it is buffering frames")
        data = b"".join(bytes(p) for p in packets)
        return Packet(
            self.codec,
            data,
            any(p.is_keyframe for p in packets),
            self.width,
            self.height,
            frame.seq,
            frame.capture_us,
            (time.perf_counter() - t0) * 1000,
        )

    def close(self) -> None:
        # Dropping the context frees it and ends its codec's threads (PyAV has no close);
        # a later encode opens a fresh one.
        self._ctx = None
