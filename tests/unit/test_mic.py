"""The viewers' microphone into the guest: Opus decoded into the capture voice's format,
bounded, one speaker at a time; QEMU's reads paced; the page's microphone message."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from saffron.display import Display, PcmFormat
from saffron.mic import IDLE_S, MAX_BUFFER_MS, MicInput
from saffron.sources.qemu.mic import MAX_CATCHUP_MS, QemuMicListener
from saffron.web.protocol import KIND_MIC, ProtocolError, pack_mic, unpack_mic
from tests.support.mic import TONE_HZ, opus_tone_packets, peak_hz


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def recording(fmt: PcmFormat, clock: Clock | None = None) -> MicInput:
    mic = MicInput(clock=clock or Clock())
    mic.mic_start(7, fmt)
    mic.mic_enable(7, True)
    return mic


@pytest.mark.parametrize(
    "fmt",
    [PcmFormat(44100, 2, 16), PcmFormat(48000, 1, 32, floating=True), PcmFormat(8000, 1, 8, False)],
)
def test_a_tone_comes_out_in_the_voices_format(fmt: PcmFormat) -> None:
    mic = recording(fmt)
    out = b""
    per_packet = fmt.rate * fmt.bytes_per_frame // 50
    for packet in opus_tone_packets(TONE_HZ, 1):
        assert mic.push_opus("page", packet, 1)
        out += mic.mic_read(7, per_packet)
    assert len(out) == 50 * per_packet
    dtype = {8: "u1", 16: "<i2", 32: "<f4"}[fmt.bits]
    pcm = np.frombuffer(out, dtype).reshape(-1, fmt.channels)[:, 0].astype(float)
    assert peak_hz(pcm, fmt.rate) == pytest.approx(TONE_HZ, rel=0.01)
    assert np.abs(pcm - pcm.mean()).max() > (0.1 if fmt.floating else 20)
    assert mic.stats.silence_bytes < per_packet  # the decoder's first packet is short


def test_what_waits_is_bounded_and_the_excess_counted() -> None:
    fmt = PcmFormat(48000, 2, 16)
    mic = recording(fmt)
    for packet in opus_tone_packets(TONE_HZ, 1):  # a second, and the guest takes none
        mic.push_opus("page", packet, 1)
    assert mic.buffered_ms <= MAX_BUFFER_MS
    assert mic.stats.dropped_ms == pytest.approx(1000 - MAX_BUFFER_MS, abs=30)


def test_silence_when_nothing_was_sent_or_nobody_records() -> None:
    mic = recording(PcmFormat(8000, 1, 8, signed=False))
    assert mic.mic_read(7, 80) == b"\x80" * 80
    assert mic.mic_read(8, 16) == bytes(16)  # a voice it does not know
    mic.mic_enable(7, False)
    assert not mic.recording
    assert not mic.push_opus("page", opus_tone_packets(TONE_HZ, 0.02)[0], 1)
    assert mic.stats.refused == 1


def test_one_speaker_at_a_time() -> None:
    clock = Clock()
    mic = recording(PcmFormat(48000, 2, 16), clock)
    packets = opus_tone_packets(TONE_HZ, 0.2)
    assert mic.push_opus("first", packets[0], 1)
    assert not mic.push_opus("second", packets[1], 1)
    clock.t += IDLE_S + 0.1  # the first fell silent
    assert mic.push_opus("second", packets[2], 1)
    mic.release("second")
    assert mic.push_opus("first", packets[3], 1)
    assert mic.stats.refused == 1


def test_packets_that_are_not_opus_are_counted_not_raised() -> None:
    mic = recording(PcmFormat(48000, 2, 16))
    assert not mic.push_opus("page", b"", 1)
    assert not mic.push_opus("page", b"\x00" * 5000, 1)
    assert not mic.push_opus("page", b"\xfc\x01", 3)
    assert mic.stats.bad == 3


def test_qemus_reads_are_paced_by_the_voices_rate() -> None:
    now = [0]
    ours, theirs = socket.socketpair()
    try:
        listener = QemuMicListener(Display(), ours, clock=lambda: now[0])
        fmt = PcmFormat(44100, 2, 16)
        listener.voices[1] = fmt
        listener._started[1] = (0, 0)
        assert listener.due(1, 1 << 20) == 0
        now[0] = 10_000_000  # 10 ms: 441 frames
        assert listener.due(1, 1 << 20) == 441 * 4
        now[0] = 20_000_000
        assert listener.due(1, 100 * 4) == 100 * 4  # QEMU asked for less: the rest waits
        assert listener.due(1, 1 << 20) == 341 * 4
        now[0] = 5_000_000_000  # QEMU stalled for seconds: no burst
        assert listener.due(1, 1 << 20) == 44100 * MAX_CATCHUP_MS // 1000 * 4
        assert listener.due(2, 1 << 20) == 0  # a voice it was not told of
    finally:
        ours.close()
        theirs.close()


def test_mic_message_layout() -> None:
    data = pack_mic(1, 0x01020304, b"\xfc\xff")
    assert data == bytes([KIND_MIC, 0, 1, 0, 4, 3, 2, 1]) + b"\xfc\xff"
    packet = unpack_mic(data)
    assert (packet.channels, packet.seq, packet.data) == (1, 0x01020304, b"\xfc\xff")
    for bad in (data[:8], b"\x01" + data[1:], data[:2] + b"\x03" + data[3:], data + bytes(5000)):
        with pytest.raises(ProtocolError):
            unpack_mic(bad)
