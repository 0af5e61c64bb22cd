"""The playback channel: the producer's sound, as Opus packets on the multimedia clock.

spice-gtk (channel-playback.c) takes MODE first (how DATA is encoded), then START
(channels, format, rate, and a time that resets its packet clock), then DATA,
each stamped with the multimedia time of its first sample, never lower than the
previous one (it warns otherwise), and STOP when the sound stops. Its audio
back end reports its playback delay, and the client's multimedia clock is then
set to the last packet's stamp minus that delay: video frames stamped on the
same clock are shown in step with the sound they were captured with.

Opus only, and only to a client that announced PLAYBACK_CAP_OPUS (spice-gtk and
spice-html5 do): each DATA is one 10 ms packet of 48 kHz stereo, the frame size
spice-gtk's decoder is opened with. A client without it hears nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from .channel import Channel
from .wire import (
    AudioDataMode,
    AudioFormat,
    ChannelType,
    PlaybackCap,
    PlaybackData,
    PlaybackMode,
    PlaybackStart,
    PlaybackStop,
)

OPUS_RATE = 48000
OPUS_CHANNELS = 2


class PlaybackChannel(Channel):
    CHANNEL_TYPE = ChannelType.PLAYBACK

    def __init__(self, *, mini_header: bool, client_caps: Sequence[int] = ()) -> None:
        super().__init__(mini_header=mini_header, client_caps=tuple(client_caps))
        self.started = False
        self.playing = False
        self.last_time = 0

    @property
    def opus(self) -> bool:
        """Whether this client decodes Opus (else it gets no sound)."""
        return self.has_cap(PlaybackCap.OPUS)

    def start(self, mm_time: int) -> None:
        """MODE: the packets that follow are Opus."""
        if self.opus:
            self.send(PlaybackMode(mm_time & 0xFFFFFFFF, AudioDataMode.OPUS))
            self.started = True

    def play(self, mm_time: int) -> None:
        """START: sound begins; ``mm_time`` is where the packet clock starts."""
        if not self.started or self.playing:
            return
        self.last_time = mm_time & 0xFFFFFFFF
        self.send(PlaybackStart(OPUS_CHANNELS, AudioFormat.S16, OPUS_RATE, self.last_time))
        self.playing = True

    def data(self, mm_time: int, packet: bytes) -> int:
        """DATA: one Opus packet, stamped no lower than the one before; returns the stamp."""
        if not self.playing:
            return 0
        stamp = mm_time & 0xFFFFFFFF
        if (stamp - self.last_time) & 0x80000000:  # earlier, in wrapping u32 terms
            stamp = self.last_time
        self.last_time = stamp
        self.send(PlaybackData(stamp, packet))
        return stamp

    def stop(self) -> None:
        """STOP: no sound for now."""
        if self.playing:
            self.send(PlaybackStop())
            self.playing = False
