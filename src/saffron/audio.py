"""The sound's fan-out: the producer's PCM encoded once with Opus, handed to every listener.

A producer (QEMU's D-Bus audio) writes PCM chunks to :class:`AudioBroadcast`, the
display's :class:`~saffron.display.PcmSink`. They are converted to 48 kHz stereo,
cut into 10 ms frames, encoded once with libopus (PyAV) and each packet is
handed, on the event loop, to every viewer that has room for it. A viewer whose
link is full loses that packet: sound is never queued behind a slow link, so its
delay cannot grow (the decoder conceals the gap). Packets carry the capture time
of their first sample on the clock video frames carry (:func:`saffron.display.now_us`),
so a viewer can keep picture and sound together.

When several voices play at once (a sound card and the PC speaker), the one that
started first is heard until it stops.

Threads: the producer's calls encode in the producer's thread (about 0.2 ms per
10 ms of sound); everything that touches viewers runs on the asyncio loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from typing import Any, Protocol

import av
import numpy as np
import numpy.typing as npt

from .display import PcmFormat

log = logging.getLogger("saffron.audio")

RATE = 48000
"""Opus's own rate: every viewer gets 48 kHz."""
CHANNELS = 2
"""Stereo, what spice-gtk's Opus decoder is opened with (SND_CODEC_PLAYBACK_CHAN)."""
FRAME_SAMPLES = 480
"""10 ms per packet: spice-gtk decodes each Opus packet into a buffer of 480 samples
(SND_CODEC_OPUS_FRAME_SIZE), so a 20 ms packet would fail to decode there."""
FRAME_US = FRAME_SAMPLES * 1_000_000 // RATE
BITRATE = 80_000
"""Bits per second, constrained VBR: measured 81 kbit/s for a tone or noise, 2.4 kbit/s
for silence (unconstrained VBR ran 99-117 kbit/s for tones at this setting)."""


@dataclass(frozen=True, slots=True)
class AudioPacket:
    """One Opus packet: 10 ms of 48 kHz stereo."""

    data: bytes
    capture_us: int
    """:func:`~saffron.display.now_us` time of the packet's first sample."""
    seq: int
    """Packet number since Saffron started (a gap: packets dropped or nothing played)."""


class AudioViewer(Protocol):
    """What a front end's connection offers the sound's fan-out (called on the loop)."""

    label: str

    def audio_writable(self) -> bool:
        """True while one more packet fits in the viewer's link; else it is dropped."""
        ...

    def send_audio(self, packet: AudioPacket) -> None: ...

    def audio_playing(self, playing: bool) -> None:
        """Sound starts (packets follow) or stops (for now)."""
        ...


@dataclass
class AudioSeat:
    viewer: AudioViewer
    sent: int = 0
    dropped: int = 0


@dataclass
class AudioStats:
    packets: int = 0
    bytes: int = 0
    seconds: float = 0.0
    dropped: int = 0
    """Packets some viewer could not take."""

    @property
    def kbps(self) -> float:
        return self.bytes * 8 / self.seconds / 1000 if self.seconds else 0.0


class _Encoder:
    """PCM of one format in, Opus packets out (with the capture time of each)."""

    def __init__(self, fmt: PcmFormat, bitrate: int) -> None:
        name = fmt.sample_format
        if name is None:
            raise ValueError(f"cannot convert {fmt.bits}-bit {'' if fmt.signed else 'un'}signed")
        self.fmt = fmt
        self.av_format = name
        self.layout = "mono" if fmt.channels == 1 else "stereo" if fmt.channels == 2 else None
        self.dtype = np.dtype(
            {"u8": "u1", "s16": "i2", "s32": "i4", "flt": "f4", "dbl": "f8"}[name]
        ).newbyteorder(">" if fmt.big_endian else "<")
        self.resampler = av.AudioResampler(format="s16", layout="stereo", rate=RATE)
        self.codec: Any = av.CodecContext.create("libopus", "w")
        self.codec.sample_rate = RATE
        self.codec.layout = "stereo"
        self.codec.format = "s16"
        self.codec.bit_rate = bitrate
        self.codec.options = {
            "frame_duration": "10",
            "application": "lowdelay",
            "vbr": "constrained",
        }
        self.codec.open()
        self.buf: npt.NDArray[np.int16] = np.zeros((0, CHANNELS), np.int16)
        self.buf_start_us = 0
        self.pts = 0

    def feed(self, data: bytes, capture_us: int) -> list[tuple[bytes, int]]:
        frames_in = len(data) // self.fmt.bytes_per_frame
        if frames_in == 0:
            return []
        samples = np.frombuffer(data, self.dtype, frames_in * self.fmt.channels)
        samples = samples.astype(self.dtype.newbyteorder("="), copy=False)
        if self.layout is None:  # more than two channels: keep the first two
            samples = samples.reshape(frames_in, self.fmt.channels)[:, :2].copy()
        frame = av.AudioFrame.from_ndarray(
            samples.reshape(1, -1), format=self.av_format, layout=self.layout or "stereo"
        )
        frame.sample_rate = self.fmt.rate
        for out in self.resampler.resample(frame):
            pcm = np.asarray(out.to_ndarray(), np.int16).reshape(-1, CHANNELS)
            self.buf = np.concatenate([self.buf, pcm]) if len(self.buf) else pcm
        # Anchored on the newest chunk: its last sample arrived at capture_us. Counting
        # samples from the first chunk instead would drift from the wall clock whenever the
        # guest's sound runs slower than real time (QEMU's audio timer under load).
        self.buf_start_us = capture_us - len(self.buf) * 1_000_000 // RATE
        return self._drain()

    def flush(self) -> list[tuple[bytes, int]]:
        """The rest of the buffer, padded with silence to a whole frame."""
        if len(self.buf) % FRAME_SAMPLES:
            pad = np.zeros((FRAME_SAMPLES - len(self.buf) % FRAME_SAMPLES, CHANNELS), np.int16)
            self.buf = np.concatenate([self.buf, pad])
        return self._drain()

    def _drain(self) -> list[tuple[bytes, int]]:
        out: list[tuple[bytes, int]] = []
        while len(self.buf) >= FRAME_SAMPLES:
            chunk = np.ascontiguousarray(self.buf[:FRAME_SAMPLES])
            self.buf = self.buf[FRAME_SAMPLES:]
            frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="stereo")
            frame.sample_rate = RATE
            frame.pts = self.pts
            self.pts += FRAME_SAMPLES
            for packet in self.codec.encode(frame):
                out.append((bytes(packet), self.buf_start_us))
            self.buf_start_us += FRAME_US
        return out


class AudioBroadcast:
    """The display's sound sink and its listeners: see the module's docstring."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, bitrate: int = BITRATE) -> None:
        self.loop = loop
        self.bitrate = bitrate
        self.seats: dict[AudioViewer, AudioSeat] = {}
        self.stats = AudioStats()
        self.available = False
        """A producer has said it has sound (SPICE clients are offered a playback channel)."""
        self.playing = False
        """Sound is playing now (viewers were told so); read on the loop."""
        self._lock = threading.Lock()
        self._formats: dict[int, PcmFormat] = {}
        self._voice: int | None = None
        """The voice being heard; None while none plays."""
        self._encoder: _Encoder | None = None
        self._seq = 0
        self._listening = False
        """Whether some viewer listens (read by the producer's thread: no encoding if not)."""
        self._closed = False

    # -- viewers (on the loop) ------------------------------------------------------------

    def add_viewer(self, viewer: AudioViewer) -> None:
        self.seats[viewer] = AudioSeat(viewer)
        self._listening = True
        if self.playing:
            viewer.audio_playing(True)

    def remove_viewer(self, viewer: AudioViewer) -> AudioSeat | None:
        seat = self.seats.pop(viewer, None)
        self._listening = bool(self.seats)
        return seat

    def close(self) -> None:
        self._closed = True
        self.seats.clear()
        self._listening = False

    # -- the producer's side (its thread) ---------------------------------------------------

    def pcm_start(self, stream: int, fmt: PcmFormat) -> None:
        if fmt.sample_format is None:
            log.warning("the guest's sound format is not one Saffron can encode: %s", fmt)
            return
        with self._lock:
            self._formats[stream] = fmt
            self.available = True

    def pcm_enable(self, stream: int, enabled: bool) -> None:
        with self._lock:
            if enabled:
                if self._voice is not None or stream not in self._formats:
                    return
                self._voice = stream
                self._encoder = None  # a fresh one at the first chunk, in this voice's format
                self._post(self._set_playing, True)
            elif stream == self._voice:
                self._end_voice()

    def pcm_stop(self, stream: int) -> None:
        with self._lock:
            self._formats.pop(stream, None)
            if stream == self._voice:
                self._end_voice()

    def pcm_write(self, stream: int, data: bytes, capture_us: int) -> None:
        with self._lock:
            if self._voice is None and stream in self._formats:
                # QEMU writes before it says the voice is on (or we joined late)
                self._voice = stream
                self._post(self._set_playing, True)
            if stream != self._voice:
                return
            if not self._listening:
                self._encoder = None  # nobody hears it: no work, and no stale samples kept
                return
            encoder = self._encoder
            if encoder is None:
                try:
                    encoder = self._encoder = _Encoder(self._formats[stream], self.bitrate)
                except (ValueError, av.FFmpegError) as exc:
                    log.warning("cannot encode the guest's sound: %s", exc)
                    self._formats.pop(stream, None)
                    self._voice = None
                    return
            self._publish_all(encoder.feed(data, capture_us))

    def _end_voice(self) -> None:
        encoder, self._encoder = self._encoder, None
        if encoder is not None and self._listening:
            self._publish_all(encoder.flush())
        self._voice = None
        self._post(self._set_playing, False)

    def _publish_all(self, packets: list[tuple[bytes, int]]) -> None:
        for data, capture_us in packets:
            self._seq += 1
            self._post(self._publish, AudioPacket(data, capture_us, self._seq))

    def _post(self, fn: Any, *args: Any) -> None:
        if self._closed:
            return
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: Saffron is stopping
            self._closed = True

    # -- on the loop ------------------------------------------------------------------------

    def _set_playing(self, playing: bool) -> None:
        if playing == self.playing:
            return
        self.playing = playing
        log.debug("the guest's sound %s", "starts" if playing else "stops")
        for viewer in list(self.seats):
            viewer.audio_playing(playing)

    def _publish(self, packet: AudioPacket) -> None:
        self.stats.packets += 1
        self.stats.bytes += len(packet.data)
        self.stats.seconds += FRAME_US / 1e6
        for seat in list(self.seats.values()):
            if seat.viewer.audio_writable():
                seat.viewer.send_audio(packet)
                seat.sent += 1
            else:
                seat.dropped += 1
                self.stats.dropped += 1
