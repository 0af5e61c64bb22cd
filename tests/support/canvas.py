"""A viewer page's canvas read back exactly (getImageData), and how far it is from a source
picture (PSNR), for the tests that check what the page shows pixel for pixel."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

READ = """() => {
    const c = document.getElementById('screen');
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let s = '';
    for (let i = 0; i < d.length; i += 0x8000)
        s += String.fromCharCode.apply(null, d.subarray(i, i + 0x8000));
    return {w: c.width, h: c.height, b: btoa(s)};
}"""


def read_canvas(page: Any) -> np.ndarray:
    """The whole canvas as RGB (height, width, 3), every pixel."""
    d = page.evaluate(READ)
    rgba = np.frombuffer(base64.b64decode(d["b"]), np.uint8).reshape(d["h"], d["w"], 4)
    return rgba[..., :3]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two RGB pictures of one size; inf when equal."""
    if a.shape != b.shape:
        return 0.0
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))
