"""Synthetic frames for tests and benchmarks: a size, a rate and an amount of motion.

Every frame carries its capture time in rows 0-15, readable from the pixels by
any viewer: 64 cells of equal width across the picture, white for a 1 bit and
black for a 0, the first the most significant bit of the capture time in
microseconds since the Unix epoch. The rest is a static scene with a band of
moving, detailed content covering ``motion`` of the picture's height.
"""

from __future__ import annotations

import numpy as np

from ..display import Display, Pixels, Rect, now_us
from .base import TimedSource

STAMP_ROWS = 16
STAMP_BITS = 64


def draw_stamp(pixels: Pixels, value: int) -> None:
    """Write ``value`` as the 64-cell black and white band in rows 0-15."""
    width = pixels.shape[1]
    bits = np.array([(value >> (63 - i)) & 1 for i in range(STAMP_BITS)], np.uint8) * 255
    edges = (np.arange(STAMP_BITS + 1) * width) // STAMP_BITS
    row = np.repeat(bits, np.diff(edges))
    pixels[:STAMP_ROWS, :, :3] = row[None, :, None]


def read_stamp(pixels: Pixels) -> int:
    """The capture time in a (decoded, possibly lossy) picture: each cell's centre."""
    width = pixels.shape[1]
    centres = ((np.arange(STAMP_BITS) * 2 + 1) * width) // (2 * STAMP_BITS)
    band = pixels[4:12, centres, :3].astype(np.int32).mean(axis=(0, 2))
    value = 0
    for bit in band > 127:
        value = (value << 1) | int(bit)
    return value


def background(width: int, height: int) -> Pixels:
    """A still scene with gradients and fine lines, the kind of thing a desktop has."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.empty((height, width, 4), np.uint8)
    img[..., 0] = (x * 255 // max(width - 1, 1)).astype(np.uint8)
    img[..., 1] = (y * 255 // max(height - 1, 1)).astype(np.uint8)
    img[..., 2] = 96
    img[..., 3] = 255
    img[(y % 64 == 0) | (x % 64 == 0)] = (255, 255, 255, 255)
    return img


class PatternSource(TimedSource):
    """Frames of ``width`` x ``height`` at ``fps``; ``motion`` (0-1) of the height moves."""

    name = "pattern"

    def __init__(
        self, display: Display, width: int, height: int, fps: int, motion: float = 0.25
    ) -> None:
        super().__init__(display, fps)
        self.width, self.height = width, height
        self.motion = min(max(motion, 0.0), 1.0)
        self._base = background(width, height)
        self._rng = np.random.default_rng(1)
        display.scanout(width, height)

    def make_frame(self, t: float, capture_us: int) -> tuple[Pixels, Rect]:
        """A fresh frame (the caller may give it away) and its damage."""
        img = self._base.copy()
        band = int(self.height * self.motion)
        top = STAMP_ROWS
        if band > 0:
            top = STAMP_ROWS + int((self.height - STAMP_ROWS - band) * (0.5 + 0.5 * np.sin(t)))
            blocks = self._rng.integers(0, 256, (band // 8 + 1, self.width // 8 + 1, 4), np.uint8)
            noise = np.repeat(np.repeat(blocks, 8, axis=0), 8, axis=1)[:band, : self.width]
            img[top : top + band] = noise
            img[top : top + band, :, 3] = 255
        draw_stamp(img, capture_us)
        return img, Rect(0, 0, self.width, self.height)

    def tick(self, t: float) -> None:
        if not self.display.wants_frame:
            return
        capture = now_us()
        img, damage = self.make_frame(t, capture)
        self.display.present(img, damage, owned=True, capture_us=capture)
