"""The viewers' microphone, into the guest: Opus packets in, the guest's capture PCM out.

A viewer (a page's ``getUserMedia``, a SPICE client's record channel) hands Opus
packets (or a SPICE client's raw 16-bit PCM) to :class:`MicInput`, the display's
:class:`~saffron.display.PcmSource`. Each is decoded (PyAV's libopus), converted to
the format of the guest's capture voice (what QEMU's ``Init`` said) and waits in a
buffer until the producer takes it. The buffer holds at most ``MAX_BUFFER_MS``: sound
that arrives faster than the guest records (a burst after a stalled link, clocks that
drift apart) is dropped from its oldest end and counted, so the guest never hears the
viewer later and later. What the guest asks for and the buffer does not hold is silence.

One viewer speaks at a time: the first one that sends sound holds the microphone until
it stops (``release``) or is silent for ``IDLE_S``; the others' packets are dropped.

Threads: viewers push on the event loop; the producer reads from its own thread (QEMU
waits for the answer, so reading never does more than copy bytes).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import av
import numpy as np

from .display import PcmFormat

log = logging.getLogger("saffron.mic")

OPUS_RATE = 48000
"""What an Opus decoder gives, whatever the encoder was fed."""
MAX_BUFFER_MS = 200
"""The most sound that waits for the guest; past it the oldest is dropped."""
IDLE_S = 0.5
"""A viewer that sent nothing for this long no longer holds the microphone."""
MAX_PACKET_BYTES = 4000
"""Larger than any Opus packet (RFC 6716: at most 1275 bytes a frame, 120 ms)."""
MAX_RAW_BYTES = 48000 * 2 * 2 // 5
"""200 ms of 48 kHz 16-bit stereo: more than a SPICE client's raw DATA carries."""


@dataclass
class MicStats:
    packets: int = 0
    bytes_in: int = 0
    decoded_ms: float = 0.0
    dropped_ms: float = 0.0
    """Sound dropped because the guest did not take it in time (the buffer was full)."""
    refused: int = 0
    """Packets of a viewer that did not hold the microphone, or sent while nobody recorded."""
    bad: int = 0
    """Packets that did not decode."""
    read_bytes: int = 0
    silence_bytes: int = 0
    """Bytes the guest asked for that no viewer had sent (silence instead)."""


class _Converter:
    """One viewer's Opus stream, decoded and converted to one capture format."""

    def __init__(self, channels: int, fmt: PcmFormat, raw_rate: int = 0) -> None:
        name = fmt.sample_format
        if name is None or fmt.channels not in (1, 2):
            raise ValueError(f"cannot record into {fmt}")
        self.channels = channels
        self.fmt = fmt
        self.raw_rate = raw_rate
        """Not Opus but 16-bit PCM at this rate (a SPICE client's raw mode); 0: Opus."""
        self.layout = "mono" if channels == 1 else "stereo"
        self.decoder: Any = None
        if not raw_rate:
            self.decoder = av.CodecContext.create("libopus", "r")
            self.decoder.sample_rate = OPUS_RATE
            self.decoder.layout = self.layout
            self.decoder.open()
        self.resampler = av.AudioResampler(
            format=name, layout="mono" if fmt.channels == 1 else "stereo", rate=fmt.rate
        )
        self.swap = fmt.big_endian != (np.dtype("=i2").byteorder == ">")
        self.pts = 0

    def convert(self, packet: bytes) -> bytes:
        out = bytearray()
        if self.decoder is not None:
            frames = self.decoder.decode(av.Packet(packet))
        else:
            samples = np.frombuffer(
                packet, "<i2", len(packet) // 2 // self.channels * self.channels
            )
            frame = av.AudioFrame.from_ndarray(
                samples.astype("=i2").reshape(1, -1), format="s16", layout=self.layout
            )
            frame.sample_rate = self.raw_rate
            frames = [frame]
        for frame in frames:
            frame.pts = None
            for converted in self.resampler.resample(frame):
                pcm = converted.to_ndarray()
                if self.swap and pcm.dtype.itemsize > 1:
                    pcm = pcm.byteswap()
                out += pcm.tobytes()
        return bytes(out)


class MicInput:
    """The display's capture source: see the module's docstring."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.stats = MicStats()
        self._clock = clock
        self._lock = threading.Lock()
        self._formats: dict[int, PcmFormat] = {}
        self._voice: int | None = None
        """The capture voice the viewers' sound goes to (the first the guest records on)."""
        self._buffer = bytearray()
        self._owner: object | None = None
        self._owner_at = 0.0
        self._converter: _Converter | None = None
        self._listeners: list[Callable[[bool], None]] = []

    # -- viewers ------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """A producer has a capture voice (the guest has somewhere to record from)."""
        return bool(self._formats)

    @property
    def recording(self) -> bool:
        """The guest records now (a viewer's microphone is heard)."""
        return self._voice is not None

    def watch(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(recording)`` (from the producer's thread) when the guest starts
        or stops recording."""
        self._listeners.append(callback)

    def unwatch(self, callback: Callable[[bool], None]) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    def push_opus(self, owner: object, packet: bytes, channels: int) -> bool:
        """One Opus packet of ``owner``'s microphone; False if it was not used."""
        return self._push(owner, packet, channels, 0)

    def push_pcm(self, owner: object, pcm: bytes, channels: int, rate: int) -> bool:
        """Signed 16-bit little-endian PCM of ``owner``'s microphone (interleaved)."""
        return self._push(owner, pcm, channels, rate)

    def _push(self, owner: object, packet: bytes, channels: int, raw_rate: int) -> bool:
        limit = MAX_RAW_BYTES if raw_rate else MAX_PACKET_BYTES
        if not 0 < len(packet) <= limit or channels not in (1, 2):
            self.stats.bad += 1
            return False
        with self._lock:
            now = self._clock()
            voice = self._voice
            fmt = self._formats.get(voice) if voice is not None else None
            if voice is None or fmt is None:
                self.stats.refused += 1
                return False
            if self._owner is not owner:
                if self._owner is not None and now - self._owner_at < IDLE_S:
                    self.stats.refused += 1
                    return False
                self._owner, self._converter = owner, None
                log.info("the guest hears %s's microphone", getattr(owner, "label", owner))
            self._owner_at = now
            converter = self._converter
            if (
                converter is None
                or (converter.channels, converter.raw_rate) != (channels, raw_rate)
                or converter.fmt != fmt
            ):
                try:
                    converter = self._converter = _Converter(channels, fmt, raw_rate)
                except (ValueError, av.FFmpegError) as exc:
                    log.warning("cannot give the guest the microphone's sound: %s", exc)
                    self._formats.pop(voice, None)
                    return False
            try:
                pcm = converter.convert(packet)
            except av.FFmpegError:
                self.stats.bad += 1
                return False
            self.stats.packets += 1
            self.stats.bytes_in += len(packet)
            per_ms = fmt.rate * fmt.bytes_per_frame / 1000
            self.stats.decoded_ms += len(pcm) / per_ms
            self._buffer += pcm
            limit = int(MAX_BUFFER_MS * per_ms) // fmt.bytes_per_frame * fmt.bytes_per_frame
            excess = len(self._buffer) - limit
            if excess > 0:
                excess = -(-excess // fmt.bytes_per_frame) * fmt.bytes_per_frame
                del self._buffer[:excess]
                self.stats.dropped_ms += excess / per_ms
            return True

    def release(self, owner: object) -> None:
        """``owner`` turned its microphone off (or left): another viewer may speak."""
        with self._lock:
            if self._owner is owner:
                self._owner, self._converter = None, None
                self._buffer.clear()

    @property
    def buffered_ms(self) -> float:
        with self._lock:
            fmt = self._formats.get(self._voice) if self._voice is not None else None
            return len(self._buffer) * 1000 / (fmt.rate * fmt.bytes_per_frame) if fmt else 0.0

    # -- the producer (its thread) ------------------------------------------------------

    def mic_start(self, stream: int, fmt: PcmFormat) -> None:
        with self._lock:
            self._formats[stream] = fmt

    def mic_enable(self, stream: int, enabled: bool) -> None:
        with self._lock:
            if enabled:
                if self._voice is not None or stream not in self._formats:
                    return
                self._voice = stream
            elif stream == self._voice:
                self._voice = None
            else:
                return
            self._buffer.clear()
            self._converter = None
        log.info("the guest %s recording", "starts" if enabled else "stops")
        for callback in list(self._listeners):
            callback(enabled)

    def mic_read(self, stream: int, size: int) -> bytes:
        with self._lock:
            fmt = self._formats.get(stream)
            size -= size % fmt.bytes_per_frame if fmt else 0
            if stream != self._voice or fmt is None:
                data = b""
            else:
                data = bytes(self._buffer[:size])
                del self._buffer[:size]
            self.stats.read_bytes += size
            self.stats.silence_bytes += size - len(data)
            return data + _silence(fmt, size - len(data))

    def mic_stop(self, stream: int) -> None:
        with self._lock:
            self._formats.pop(stream, None)
        if stream == self._voice:
            self.mic_enable(stream, False)


def _silence(fmt: PcmFormat | None, size: int) -> bytes:
    """``size`` bytes of silence in ``fmt`` (unsigned samples are silent at half scale)."""
    if fmt is None or fmt.signed or fmt.floating or size <= 0:
        return bytes(max(size, 0))
    if fmt.bits == 8:
        return b"\x80" * size
    mid = (1 << (fmt.bits - 1)).to_bytes(fmt.bits // 8, "big" if fmt.big_endian else "little")
    return mid * (size // len(mid))
