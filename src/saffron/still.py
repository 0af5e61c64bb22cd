"""The sharp refresh below the front ends: which parts of a viewer's picture stood still
while lossy, and those parts once more at full quality, encoded once for everyone.

:class:`StillRegions` is one viewer's view of its picture cut into a grid of tiles:
each video frame it was sent marks the tiles its damage covers as lossy (all of
them when the damage is unknown: a frame it missed, a new stream, a new size).
A lossy tile that no frame has touched for the idle time is *due*: the front end
sends it again as a still tile, and it is sharp until damage covers it again.
Sans-IO: it knows times and rectangles, not sockets or loops.

:class:`TileCache` encodes due tiles off the event loop (a small thread pool), at
most once per frame, tile and format however many viewers want them, and
:func:`choose_formats` picks lossless PNG for each tile unless the whole refresh
would not fit the viewer's budget, when the tiles PNG saves least on go as JPEG
q98 4:4:4 (visually lossless) instead.

The SPICE front end does the same with its own DamageLog and lossless bitmaps
(spice/viewer.py); the web front end uses this module.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .display import Frame, Rect
from .encoders.tiles import TileFormat, encode_tile

TILE_W = 128
TILE_H = 64
"""The grid: a tile is at most 128x64x3 = 24 KiB as PNG, so a video frame queued
behind one waits at most a few milliseconds on a link of some Mbit/s."""

CACHE_BYTES = 32 << 20
"""Encoded tiles kept for other viewers of the same still picture."""


@dataclass(frozen=True, slots=True)
class Tile:
    """One encoded tile of a frame."""

    rect: Rect
    fmt: TileFormat
    data: bytes


class StillRegions:
    """One viewer's grid of tiles: which are lossy, and since when each stood still."""

    def __init__(self, tile_w: int = TILE_W, tile_h: int = TILE_H) -> None:
        self.tile_w, self.tile_h = tile_w, tile_h
        self.width = self.height = 0
        self._lossy = np.zeros((0, 0), bool)
        self._changed = np.zeros((0, 0), float)
        self._gen = np.zeros((0, 0), np.int64)
        """Bumped on every damage: a tile encoded before a bump is out of date."""

    @property
    def shape(self) -> tuple[int, int]:
        return (-(-self.height // self.tile_h), -(-self.width // self.tile_w))

    def reset(self, width: int, height: int) -> None:
        """A new picture size or a new stream: nothing on the viewer's side is sharp."""
        self.width, self.height = width, height
        rows, cols = self.shape
        self._lossy = np.zeros((rows, cols), bool)
        self._changed = np.zeros((rows, cols), float)
        self._gen = np.zeros((rows, cols), np.int64)

    def _cells(self, rect: Rect | None) -> tuple[slice, slice]:
        if rect is None:
            return slice(None), slice(None)
        r = rect.clip(self.width, self.height)
        if r.empty:
            return slice(0, 0), slice(0, 0)
        return (
            slice(r.y // self.tile_h, -(-(r.y + r.height) // self.tile_h)),
            slice(r.x // self.tile_w, -(-(r.x + r.width) // self.tile_w)),
        )

    def on_video(self, damage: Rect | None, width: int, height: int, now: float) -> None:
        """A video frame went to the viewer; ``damage`` None: it may have changed anything."""
        if (width, height) != (self.width, self.height):
            self.reset(width, height)
            damage = None
        rows, cols = self._cells(damage)
        self._lossy[rows, cols] = True
        self._changed[rows, cols] = now
        self._gen[rows, cols] += 1

    @property
    def last_change(self) -> float:
        """When the last damage came (0 before any)."""
        return float(self._changed.max()) if self._changed.size else 0.0

    @property
    def lossy(self) -> bool:
        return bool(self._lossy.any())

    def due(self, now: float, idle: float) -> list[tuple[int, int]]:
        """(row, column) of every lossy tile untouched for ``idle`` seconds."""
        ready = self._lossy & (self._changed <= now - idle)
        return [(int(r), int(c)) for r, c in zip(*np.nonzero(ready), strict=True)]

    def next_due(self, idle: float) -> float | None:
        """When the next lossy tile becomes due, if any is lossy."""
        if not self._lossy.any():
            return None
        return float(self._changed[self._lossy].min()) + idle

    def generation(self, cell: tuple[int, int]) -> int:
        return int(self._gen[cell])

    def take(self, cell: tuple[int, int]) -> int:
        """The tile is on its way to the viewer (sharp unless damaged again, which bumps
        its generation): not due any more. Returns the generation it was taken at."""
        self._lossy[cell] = False
        return int(self._gen[cell])

    def give_back(self, cell: tuple[int, int], generation: int) -> None:
        """A taken tile that will not be sent after all (its encoding failed): lossy."""
        if self._gen[cell] == generation:
            self._lossy[cell] = True

    def rect(self, cell: tuple[int, int]) -> Rect:
        row, col = cell
        x, y = col * self.tile_w, row * self.tile_h
        return Rect(x, y, min(self.tile_w, self.width - x), min(self.tile_h, self.height - y))


def choose_formats(png_sizes: Sequence[int], jpeg_sizes: Sequence[int], budget: int) -> list[bool]:
    """For each tile, whether it goes as JPEG: none while the PNGs fit ``budget`` bytes,
    else those where PNG saves least first, until the whole fits (or all are JPEG)."""
    total = sum(png_sizes)
    as_jpeg = [False] * len(png_sizes)
    order = sorted(range(len(png_sizes)), key=lambda i: jpeg_sizes[i] / max(png_sizes[i], 1))
    for i in order:
        if total <= budget:
            break
        if jpeg_sizes[i] < png_sizes[i]:
            as_jpeg[i] = True
            total += jpeg_sizes[i] - png_sizes[i]
    return as_jpeg


class TileCache:
    """Encodes tiles in worker threads, once per (frame, tile, format) for all viewers."""

    def __init__(self, workers: int = 2, limit: int = CACHE_BYTES) -> None:
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="still-tiles")
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[int, Rect, TileFormat], bytes] = OrderedDict()
        self._bytes = 0
        self._limit = limit
        self.encoded = 0
        """Tiles encoded (not served from the cache): what the one-encode rule saves."""

    def _get(self, frame: Frame, rect: Rect, fmt: TileFormat) -> bytes:
        key = (frame.seq, rect, fmt)
        with self._lock:
            data = self._cache.get(key)
            if data is not None:
                self._cache.move_to_end(key)
                return data
        pixels = frame.pixels[rect.y : rect.y + rect.height, rect.x : rect.x + rect.width]
        data = encode_tile(pixels, fmt)
        with self._lock:
            self.encoded += 1
            if key not in self._cache:
                self._cache[key] = data
                self._bytes += len(data)
            while self._bytes > self._limit and self._cache:
                _, old = self._cache.popitem(last=False)
                self._bytes -= len(old)
        return data

    def encode(self, frame: Frame, rects: Sequence[Rect], budget: int) -> list[Tile]:
        """The tiles of ``frame`` as PNG, or partly JPEG where PNG would pass ``budget``
        bytes (see choose_formats). Blocking: call it in a worker (``encode_async``)."""
        pngs = [self._get(frame, r, TileFormat.PNG) for r in rects]
        if sum(map(len, pngs)) <= budget:
            return [Tile(r, TileFormat.PNG, d) for r, d in zip(rects, pngs, strict=True)]
        jpegs = [self._get(frame, r, TileFormat.JPEG) for r in rects]
        as_jpeg = choose_formats([len(d) for d in pngs], [len(d) for d in jpegs], budget)
        return [
            Tile(r, TileFormat.JPEG, j) if use_jpeg else Tile(r, TileFormat.PNG, p)
            for r, p, j, use_jpeg in zip(rects, pngs, jpegs, as_jpeg, strict=True)
        ]

    async def encode_async(self, frame: Frame, rects: Sequence[Rect], budget: int) -> list[Tile]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.encode, frame, list(rects), budget)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
