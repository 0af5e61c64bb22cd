"""A known tone for a microphone, and what the test guest recorded of it.

The guest (saffron.bench.guest) records a second of its AC97 card's input on R and
prints it in hex on its serial port; :func:`guest_recording` reads that back.
"""

from __future__ import annotations

import wave
from pathlib import Path

import av
import numpy as np

from saffron.bench import guest as build_guest

TONE_HZ = 660
"""Not the guest's own 440 Hz, nor a harmonic of it."""


def tone(hz: float, seconds: float, rate: int = 48000, level: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (np.sin(2 * np.pi * hz * t) * level * 32767).astype(np.int16)


def opus_tone_packets(
    hz: float, seconds: float, frame_ms: int = 20, channels: int = 1
) -> list[bytes]:
    """A tone as Opus packets of ``frame_ms``, as a page's AudioEncoder makes them (20 ms,
    mono) or spice-gtk's record channel (10 ms, stereo)."""
    layout = "mono" if channels == 1 else "stereo"
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = 48000
    codec.layout = layout
    codec.format = "s16"
    codec.bit_rate = 32000
    codec.options = {"frame_duration": str(frame_ms)}
    codec.open()
    pcm = np.repeat(tone(hz, seconds), channels)  # interleaved
    step = 48 * frame_ms
    packets: list[bytes] = []
    for i in range(0, len(pcm) // channels - step + 1, step):
        chunk = pcm[i * channels : (i + step) * channels]
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), "s16", layout)
        frame.sample_rate = 48000
        frame.pts = i
        packets += [bytes(p) for p in codec.encode(frame)]
    return packets


def write_tone_wav(path: Path, hz: float, seconds: float) -> Path:
    """A 48 kHz mono WAV of the tone (Chromium's --use-file-for-fake-audio-capture)."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(48000)
        out.writeframes(tone(hz, seconds).tobytes())
    return path


def guest_recording(serial: Path) -> np.ndarray:
    """The last recording the guest printed (unsigned 8-bit at MIC_RATE), centred on 0."""
    text = serial.read_text(errors="replace")
    end = text.rindex("saffron-guest: mic done")
    lines = text[:end].splitlines()
    data: list[int] = []
    for line in reversed(lines):
        if not line.startswith("mic "):
            if data:
                break
            continue
        data[:0] = [int(h, 16) for h in line[4:].split()]
    return np.array(data, np.float64) - 128


def peak_hz(samples: np.ndarray, rate: int = build_guest.MIC_RATE) -> float:
    """The strongest frequency of ``samples``."""
    samples = samples - samples.mean()
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum[1:]) + 1) * rate / len(samples)
