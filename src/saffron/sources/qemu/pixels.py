"""QEMU's pixel formats (pixman's and DRM's) turned into the BGRX frames Saffron shows.

Pure functions of bytes: no D-Bus, no threads.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...display import Pixels

# pixman formats (PIXMAN_FORMAT(bpp, type, a, r, g, b)) and their bytes in memory
PIXMAN_X8R8G8B8 = 0x20020888
PIXMAN_A8R8G8B8 = 0x20028888
PIXMAN_X8B8G8R8 = 0x20030888
PIXMAN_A8B8G8R8 = 0x20038888
PIXMAN_B8G8R8X8 = 0x20080888
PIXMAN_B8G8R8A8 = 0x20088888
PIXMAN_R8G8B8X8 = 0x20090888
PIXMAN_R8G8B8A8 = 0x20098888
PIXMAN_R8G8B8 = 0x18020888
PIXMAN_B8G8R8 = 0x18030888
PIXMAN_R5G6B5 = 0x10020565
PIXMAN_X1R5G5B5 = 0x10020555

_BYTE_ORDER_32: dict[int, tuple[int, int, int]] = {
    # where B, G and R are among a pixel's four bytes (little-endian host)
    PIXMAN_X8R8G8B8: (0, 1, 2),
    PIXMAN_A8R8G8B8: (0, 1, 2),
    PIXMAN_X8B8G8R8: (2, 1, 0),
    PIXMAN_A8B8G8R8: (2, 1, 0),
    PIXMAN_B8G8R8X8: (3, 2, 1),
    PIXMAN_B8G8R8A8: (3, 2, 1),
    PIXMAN_R8G8B8X8: (1, 2, 3),
    PIXMAN_R8G8B8A8: (1, 2, 3),
}
_BYTES_PER_PIXEL = {
    **dict.fromkeys(_BYTE_ORDER_32, 4),
    PIXMAN_R8G8B8: 3,
    PIXMAN_B8G8R8: 3,
    PIXMAN_R5G6B5: 2,
    PIXMAN_X1R5G5B5: 2,
}


def _fourcc(code: str) -> int:
    return int.from_bytes(code.encode(), "little")


DRM_FORMAT_TO_PIXMAN = {
    _fourcc("XR24"): PIXMAN_X8R8G8B8,
    _fourcc("AR24"): PIXMAN_A8R8G8B8,
    _fourcc("XB24"): PIXMAN_X8B8G8R8,
    _fourcc("AB24"): PIXMAN_A8B8G8R8,
    _fourcc("BX24"): PIXMAN_B8G8R8X8,
    _fourcc("BA24"): PIXMAN_B8G8R8A8,
    _fourcc("RX24"): PIXMAN_R8G8B8X8,
    _fourcc("RA24"): PIXMAN_R8G8B8A8,
}
"""DRM fourccs of linear 32-bit dma-bufs, as the pixman format with the same bytes."""
DRM_FORMAT_MOD_LINEAR = 0
DRM_FORMAT_MOD_INVALID = 0x00FFFFFFFFFFFFFF
DMA_BUF_IOCTL_SYNC = 0x40086200  # _IOW('b', 0, struct dma_buf_sync)
DMA_BUF_SYNC_READ, DMA_BUF_SYNC_START, DMA_BUF_SYNC_END = 1, 0, 4


# pixels


def _rows(buf: Any, offset: int, stride: int, height: int, row_bytes: int) -> Any:
    """A (height, row_bytes) uint8 view of rows ``stride`` bytes apart in ``buf``."""
    return np.ndarray(
        shape=(height, row_bytes), dtype=np.uint8, buffer=buf, offset=offset, strides=(stride, 1)
    )


def pixels_to_bgrx(
    buf: Any, offset: int, width: int, height: int, stride: int, pixman_format: int
) -> Pixels | None:
    """A (height, width, 4) BGRX array of an image in a pixman format; None if unknown.

    For x8r8g8b8 and a8r8g8b8 (what QEMU nearly always sends) this is a view of
    ``buf`` itself, writable if ``buf`` is; other formats are converted.
    """
    bpp = _BYTES_PER_PIXEL.get(pixman_format)
    if bpp is None or width <= 0 or height <= 0:
        return None
    need = offset + stride * (height - 1) + width * bpp
    if stride < width * bpp or need > len(buf):
        raise ValueError(f"{len(buf) - offset} bytes cannot hold {width}x{height} at {stride}")
    rows = _rows(buf, offset, stride, height, width * bpp)
    if bpp == 4:
        px = rows.reshape(height, width, 4)
        b, g, r = _BYTE_ORDER_32[pixman_format]
        if (b, g, r) == (0, 1, 2):
            return px  # type: ignore[no-any-return]
        out = np.empty((height, width, 4), np.uint8)
        out[..., 0], out[..., 1], out[..., 2] = px[..., b], px[..., g], px[..., r]
        out[..., 3] = 255
        return out
    out = np.empty((height, width, 4), np.uint8)
    out[..., 3] = 255
    if bpp == 3:
        px = rows.reshape(height, width, 3)
        out[..., :3] = px if pixman_format == PIXMAN_R8G8B8 else px[..., ::-1]
        return out
    v = rows.view("<u2").astype(np.uint16)
    if pixman_format == PIXMAN_R5G6B5:
        r5, g6, b5 = (v >> 11) & 31, (v >> 5) & 63, v & 31
        out[..., 1] = ((g6 << 2) | (g6 >> 4)).astype(np.uint8)
    else:
        r5, g5, b5 = (v >> 10) & 31, (v >> 5) & 31, v & 31
        out[..., 1] = ((g5 << 3) | (g5 >> 2)).astype(np.uint8)
    out[..., 2] = ((r5 << 3) | (r5 >> 2)).astype(np.uint8)
    out[..., 0] = ((b5 << 3) | (b5 >> 2)).astype(np.uint8)
    return out
