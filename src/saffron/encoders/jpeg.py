"""MJPEG through libjpeg-turbo (simplejpeg): every frame a keyframe.

The bitrate target is met by steering the JPEG quality from the size of the
last frames, since JPEG has no rate control of its own.
"""

from __future__ import annotations

import time

import numpy as np
import simplejpeg

from ..display import Frame
from .base import Encoder, Packet

MIN_QUALITY = 30
MAX_QUALITY = 90


class JpegEncoder(Encoder):
    codec = "mjpeg"
    backend = "libjpeg-turbo"

    def __init__(self, width: int, height: int, fps: int, bitrate_kbps: int) -> None:
        super().__init__(width, height, fps, bitrate_kbps)
        self.quality = 75

    def encode(self, frame: Frame, keyframe: bool = False, prepared: object = None) -> Packet:
        t0 = time.perf_counter()
        pixels = frame.pixels
        if not pixels.flags.c_contiguous:
            pixels = np.ascontiguousarray(pixels)
        data = simplejpeg.encode_jpeg(
            pixels, quality=self.quality, colorspace="BGRX", colorsubsampling="420", fastdct=True
        )
        self._steer(len(data))
        return Packet(
            self.codec,
            data,
            True,
            self.width,
            self.height,
            frame.seq,
            frame.capture_us,
            (time.perf_counter() - t0) * 1000,
        )

    def _steer(self, size: int) -> None:
        budget = self.bitrate_kbps * 1000 / 8 / max(self.fps, 1)
        if size > budget * 1.1 and self.quality > MIN_QUALITY:
            self.quality -= 2
        elif size < budget * 0.7 and self.quality < MAX_QUALITY:
            self.quality += 1
