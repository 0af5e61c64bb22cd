"""The sound's fan-out: PCM in, one Opus encode, packets to the viewers that have room."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

import av
import numpy as np
import pytest

from saffron.audio import FRAME_SAMPLES, FRAME_US, RATE, AudioBroadcast, AudioPacket
from saffron.display import PcmFormat


@dataclass(eq=False)
class FakeViewer:
    label: str = "viewer"
    room: bool = True
    packets: list[AudioPacket] = field(default_factory=list)
    playing: list[bool] = field(default_factory=list)

    def audio_writable(self) -> bool:
        return self.room

    def send_audio(self, packet: AudioPacket) -> None:
        self.packets.append(packet)

    def audio_playing(self, playing: bool) -> None:
        self.playing.append(playing)


def tone(freq: float, seconds: float, rate: int, channels: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    mono = (np.sin(2 * np.pi * freq * t) * 12000).astype("<i2")
    return np.repeat(mono[:, None], channels, axis=1)


def decode(packets: list[AudioPacket]) -> np.ndarray:
    dec = av.CodecContext.create("libopus", "r")
    dec.sample_rate = RATE
    dec.layout = "stereo"
    out = []
    for p in packets:
        for frame in dec.decode(av.Packet(p.data)):
            out.append(frame.to_ndarray().reshape(-1))
    return np.concatenate(out)


def peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum[1:]) + 1) * rate / len(samples)


def play(
    audio: AudioBroadcast, loop: asyncio.AbstractEventLoop, pcm: np.ndarray, fmt: PcmFormat
) -> int:
    """Write ``pcm`` in QEMU-sized chunks as if it were played now; returns the start time."""
    chunk = 1024
    start_us = 1_000_000_000
    audio.pcm_start(7, fmt)
    audio.pcm_enable(7, True)
    for i in range(0, len(pcm), chunk):
        part = pcm[i : i + chunk]
        end_us = start_us + (i + len(part)) * 1_000_000 // fmt.rate
        audio.pcm_write(7, part.tobytes(), end_us)
    audio.pcm_enable(7, False)
    loop.run_until_complete(asyncio.sleep(0.01))  # run what the producer posted
    return start_us


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def test_a_tone_arrives_as_10ms_opus_packets_with_capture_times(loop) -> None:
    audio = AudioBroadcast(loop)
    viewer = FakeViewer()
    audio.add_viewer(viewer)
    fmt = PcmFormat(rate=44100, channels=2)
    start_us = play(audio, loop, tone(440, 1.0, 44100, 2), fmt)
    assert viewer.playing == [True, False]
    assert 99 <= len(viewer.packets) <= 101
    stamps = [p.capture_us for p in viewer.packets]
    assert stamps[0] == pytest.approx(start_us, abs=FRAME_US)
    assert all(abs(b - a - FRAME_US) < 500 for a, b in itertools.pairwise(stamps))
    pcm = decode(viewer.packets).reshape(-1, 2)[:, 0].astype(float)
    assert len(pcm) == len(viewer.packets) * FRAME_SAMPLES
    assert peak_hz(pcm[4800:], RATE) == pytest.approx(440, rel=0.02)
    kbps = audio.stats.kbps
    assert 48 <= kbps <= 140, kbps


def test_a_viewer_without_room_loses_packets_and_never_gets_them_late(loop) -> None:
    audio = AudioBroadcast(loop)
    fast, slow = FakeViewer("fast"), FakeViewer("slow", room=False)
    audio.add_viewer(fast)
    audio.add_viewer(slow)
    play(audio, loop, tone(440, 0.5, 48000, 1), PcmFormat(rate=48000, channels=1))
    assert len(fast.packets) >= 49
    assert slow.packets == []
    assert audio.seats[slow].dropped == len(fast.packets)
    slow.room = True
    play(audio, loop, tone(440, 0.1, 48000, 1), PcmFormat(rate=48000, channels=1))
    assert len(slow.packets) in (10, 11)  # only what was played after it had room again


def test_stamps_follow_the_wall_clock_when_the_guest_plays_slower(loop) -> None:
    """QEMU's audio timer slips under load: chunks come later than their length says, and
    the packets' capture times must say so (the page and SPICE clients time sound by them)."""
    audio = AudioBroadcast(loop)
    viewer = FakeViewer()
    audio.add_viewer(viewer)
    fmt = PcmFormat(rate=44100, channels=2)
    audio.pcm_start(1, fmt)
    audio.pcm_enable(1, True)
    chunk = tone(440, 1024 / 44100, 44100, 2).tobytes()  # QEMU's 1024 frames, 23 ms...
    for i in range(100):
        audio.pcm_write(1, chunk, 1_000_000 + (i + 1) * 50_000)  # ...every 50 ms
    loop.run_until_complete(asyncio.sleep(0.01))
    last = viewer.packets[-1]  # its first sample came at most 35 ms before the last chunk
    assert last.capture_us == pytest.approx(6_000_000 - 25_000, abs=20_000)


def test_nothing_is_encoded_without_listeners_and_a_late_viewer_hears_it_playing(loop) -> None:
    audio = AudioBroadcast(loop)
    fmt = PcmFormat(rate=48000, channels=2)
    audio.pcm_start(1, fmt)
    audio.pcm_enable(1, True)
    audio.pcm_write(1, tone(440, 0.1, 48000, 2).tobytes(), 1)
    loop.run_until_complete(asyncio.sleep(0.01))
    assert audio.stats.packets == 0 and audio.playing
    viewer = FakeViewer()
    audio.add_viewer(viewer)
    assert viewer.playing == [True]


def test_a_second_voice_waits_for_the_first(loop) -> None:
    audio = AudioBroadcast(loop)
    viewer = FakeViewer()
    audio.add_viewer(viewer)
    fmt = PcmFormat(rate=48000, channels=2)
    audio.pcm_start(1, fmt)
    audio.pcm_start(2, fmt)
    audio.pcm_enable(1, True)
    audio.pcm_enable(2, True)
    audio.pcm_write(2, tone(1000, 0.1, 48000, 2).tobytes(), 1)
    loop.run_until_complete(asyncio.sleep(0.01))
    assert viewer.packets == []
    audio.pcm_write(1, tone(440, 0.1, 48000, 2).tobytes(), 1)
    loop.run_until_complete(asyncio.sleep(0.01))
    assert len(viewer.packets) == 10


@pytest.mark.parametrize(
    "fmt",
    [
        PcmFormat(rate=22050, channels=1, bits=8, signed=False),
        PcmFormat(rate=44100, channels=2, bits=32, floating=True),
        PcmFormat(rate=48000, channels=2, bits=16, big_endian=True),
    ],
)
def test_other_formats_are_converted(loop, fmt: PcmFormat) -> None:
    audio = AudioBroadcast(loop)
    viewer = FakeViewer()
    audio.add_viewer(viewer)
    t = np.arange(fmt.rate // 2) / fmt.rate
    wave = np.sin(2 * np.pi * 440 * t)
    if fmt.floating:
        samples = (wave * 0.4).astype("<f4")
    elif fmt.bits == 8:
        samples = (wave * 50 + 128).astype("u1")
    else:
        samples = (wave * 12000).astype(">i2" if fmt.big_endian else "<i2")
    pcm = np.repeat(samples[:, None], fmt.channels, axis=1)
    play(audio, loop, pcm, fmt)
    decoded = decode(viewer.packets).reshape(-1, 2)[:, 0].astype(float)
    assert peak_hz(decoded[4800:], RATE) == pytest.approx(440, rel=0.03)
