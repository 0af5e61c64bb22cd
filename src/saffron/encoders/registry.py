"""Which encoders work on this host, found by opening them (names prove nothing).

Probed once at start: hardware backends first, then software. FFmpeg's wheel
compiles in NVENC and QSV but they fail to open without the hardware, so each
backend is opened and fed one small frame before it is listed as working.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import av
import numpy as np

from ..display import Frame, Rect
from .base import CODECS, Encoder, EncoderError
from .ffmpeg import PROFILES, FFmpegEncoder
from .jpeg import JpegEncoder

log = logging.getLogger("saffron.encoders")

Factory = Callable[[int, int, int, int], Encoder]


@dataclass(frozen=True)
class Backend:
    codec: str
    name: str
    hardware: bool
    factory: Factory


@dataclass(frozen=True)
class ProbeResult:
    backend: Backend
    works: bool
    reason: str = ""


def _backends() -> list[Backend]:
    found = [
        Backend(
            p.codec,
            p.name,
            p.hardware,
            functools.partial(FFmpegEncoder, p),
        )
        for p in PROFILES
    ]
    found.append(Backend("mjpeg", "libjpeg-turbo", False, JpegEncoder))
    return found


def _try(backend: Backend) -> ProbeResult:
    try:
        enc = backend.factory(256, 144, 30, 500)
        pixels = np.zeros((144, 256, 4), np.uint8)
        enc.encode(Frame(pixels, Rect(0, 0, 256, 144), 0), keyframe=True)
        enc.close()
    except EncoderError as exc:
        return ProbeResult(backend, False, str(exc).split(": ", 1)[-1])
    except Exception as exc:  # a broken driver may raise anything
        return ProbeResult(backend, False, f"{type(exc).__name__}: {exc}")
    return ProbeResult(backend, True)


@functools.cache
def probe() -> tuple[ProbeResult, ...]:
    """Every backend with whether it works here, in order of preference."""
    av.logging.set_level(av.logging.PANIC)  # absent hardware is expected, not an error
    try:
        results = tuple(_try(b) for b in _backends())
    finally:
        av.logging.set_level(av.logging.ERROR)
    for r in results:
        log.debug("encoder %s (%s): %s", r.backend.name, r.backend.codec, r.reason or "works")
    return results


def available_codecs() -> list[str]:
    """Codecs with at least one working backend, best first."""
    working = {r.backend.codec for r in probe() if r.works}
    return [c for c in CODECS if c in working]


def create_encoder(
    codec: str, width: int, height: int, fps: int, bitrate_kbps: int, skip: int = 0
) -> Encoder:
    """The best working encoder for ``codec``; ``skip`` passes over that many (fallback)."""
    candidates = [r.backend for r in probe() if r.works and r.backend.codec == codec]
    errors = []
    for backend in candidates[skip:]:
        try:
            return backend.factory(width, height, fps, bitrate_kbps)
        except EncoderError as exc:
            errors.append(str(exc))
    if not candidates:
        raise EncoderError(f"no working {codec} encoder on this host (see 'saffron probe')")
    raise EncoderError("; ".join(errors) or f"no further {codec} encoder to fall back to")
