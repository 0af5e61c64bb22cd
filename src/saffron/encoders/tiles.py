"""Still pictures, sharp: one rectangle of a frame as a PNG (lossless) or a JPEG at q98 4:4:4.

What a browser decodes with its own image decoders (``createImageBitmap``) to draw
over lossy video once the picture stands still. PNG goes through Pillow (zlib);
JPEG through libjpeg-turbo (simplejpeg) at full chroma, visually lossless where a
lossless tile would cost too much of a viewer's link. Codec-independent: the same
tile serves every viewer of every video codec.
"""

from __future__ import annotations

import enum
import io

import numpy as np
import simplejpeg
from PIL import Image

from ..display import Pixels

PNG_LEVEL = 1
"""zlib level: text and flat areas shrink nearly as well as at 6, several times faster."""

JPEG_QUALITY = 98
"""Full chroma (4:4:4), accurate DCT: 47 dB PSNR on thin coloured strokes (q96: 42), 52 on
rendered scenes."""


class TileFormat(enum.IntEnum):
    """How a tile is coded; the numbers are the page's wire format (web/protocol.py)."""

    PNG = 0
    JPEG = 1


def encode_tile(pixels: Pixels, fmt: TileFormat) -> bytes:
    """Encode BGRX ``pixels`` (height, width, 4), any strides, as one image file."""
    if fmt is TileFormat.JPEG:
        return bytes(
            simplejpeg.encode_jpeg(
                np.ascontiguousarray(pixels),
                quality=JPEG_QUALITY,
                colorspace="BGRX",
                colorsubsampling="444",
                fastdct=False,
            )
        )
    rgb = np.ascontiguousarray(pixels[..., 2::-1])
    out = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(out, "PNG", compress_level=PNG_LEVEL)
    return out.getvalue()


def decode_tile(data: bytes) -> Pixels:
    """An encoded tile back to RGB (height, width, 3): for tests and measurements."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), np.uint8)
