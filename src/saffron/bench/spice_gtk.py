"""What the spice-gtk viewer scripts share: gtk_frames.py beside this module (the
bench's) and tests/support/gtk_client.py (the tests'). They run under the system
python3, which has spice-gtk's GObject bindings; they import gi themselves, this
module does not (nor anything beyond NumPy), so it loads under either Python.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

SYSTEM_PYTHON = "/usr/bin/python3"
"""The Python with spice-gtk's bindings (Debian's python3-gi, gir1.2-spiceclientglib)."""

CODECS = {"mjpeg": 1, "vp8": 2, "h264": 3, "vp9": 4}
"""SpiceVideoCodecType of each codec, for change_preferred_video_codec_types."""


@dataclass(frozen=True)
class Surface:
    """The primary surface spice-gtk draws into, as ``display-primary-create`` gives it."""

    pointer: int
    width: int
    height: int
    stride: int

    def pixels(self) -> npt.NDArray[np.uint8]:
        """The surface's BGRX pixels as it is now, without a copy (rows of ``stride``)."""
        buf = (ctypes.c_uint8 * (self.stride * self.height)).from_address(self.pointer)
        rows = np.ctypeslib.as_array(buf).reshape(self.height, self.stride // 4, 4)
        return rows[:, : self.width]


def script_env() -> dict[str, str]:
    """The environment of a spice-gtk script: this Python's virtual environment left
    out (the system python3 has its own packages), and the ``saffron`` package this
    process imports importable there (for this module and the capture-time stamp)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    return env
