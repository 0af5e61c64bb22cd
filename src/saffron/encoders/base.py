"""What every encoder backend offers: one frame in, one packet out."""

from __future__ import annotations

import abc
from dataclasses import dataclass

from ..display import Frame, Rect

CODECS = ("h264", "vp9", "vp8", "av1", "mjpeg")
"""Every codec Saffron can send, in the order it prefers them."""


class EncoderError(Exception):
    """An encoder could not be opened or failed on a frame."""


@dataclass(frozen=True, slots=True)
class Packet:
    """One encoded picture, shared read-only by every viewer of its codec."""

    codec: str
    data: bytes
    keyframe: bool
    width: int
    height: int
    seq: int
    capture_us: int
    encode_ms: float = 0.0
    damage: Rect | None = None
    """What changed since the stream's previous packet (set by the broadcast; None: unknown)."""


class Encoder(abc.ABC):
    """A low-latency encoder of BGRX frames at one size.

    No B-frames, no lookahead: ``encode`` returns the packet for the frame it was
    given. Calls come from one worker thread; the heavy work releases the GIL.
    """

    codec: str
    backend: str
    hardware: bool = False

    def __init__(self, width: int, height: int, fps: int, bitrate_kbps: int) -> None:
        self.width = width
        self.height = height
        self.fps = fps
        self.bitrate_kbps = bitrate_kbps

    @abc.abstractmethod
    def encode(self, frame: Frame, keyframe: bool = False, prepared: object = None) -> Packet:
        """Encode one frame; ``keyframe`` forces an intra picture.

        ``prepared`` is what :meth:`prepare` made of this frame, if anything.
        """

    def prepare(self, frame: Frame) -> object:
        """Work on a frame that can run beside the previous frame's encode.

        For FFmpeg encoders this is the colour conversion, which a second
        thread does while the first encodes: on two cores the stages overlap.
        Returns None when there is nothing to do ahead.
        """
        return None

    def set_bitrate(self, kbps: int) -> None:
        """Change the target; takes effect within a frame or two."""
        self.bitrate_kbps = kbps

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free the codec's resources."""
