"""The record channel: the client's microphone, for the guest to record.

The server sends START (channels, format, rate) when the guest starts recording and
STOP when it stops. spice-gtk (channel-record.c) then answers MODE (Opus when both
sides have RECORD_CAP_OPUS and the rate is 48 kHz, else raw S16 PCM), START_MARK,
and DATA messages of what it recorded, each stamped with its time. The server asks
for 48 kHz stereo, what spice-gtk's Opus encoder is opened with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .channel import Channel, Event
from .wire import (
    AudioDataMode,
    AudioFormat,
    ChannelType,
    Message,
    ProtocolError,
    RecordCap,
    RecordData,
    RecordMode,
    RecordStart,
    RecordStartMark,
    RecordStop,
)

RECORD_RATE = 48000
RECORD_CHANNELS = 2


@dataclass(frozen=True)
class Recorded(Event):
    """One DATA: an Opus packet (``opus``) or raw S16 PCM at RECORD_RATE, RECORD_CHANNELS."""

    time: int
    data: bytes
    opus: bool


class RecordChannel(Channel):
    CHANNEL_TYPE = ChannelType.RECORD

    def __init__(self, *, mini_header: bool, client_caps: Sequence[int] = ()) -> None:
        super().__init__(mini_header=mini_header, client_caps=tuple(client_caps))
        self.recording = False
        self.mode = AudioDataMode.INVALID

    @property
    def opus(self) -> bool:
        """Whether the client may send Opus (it announced RECORD_CAP_OPUS)."""
        return self.has_cap(RecordCap.OPUS)

    def start(self) -> None:
        """START: the guest records; the client sends what its microphone hears."""
        if not self.recording:
            self.send(RecordStart(RECORD_CHANNELS, AudioFormat.S16, RECORD_RATE))
            self.recording = True

    def stop(self) -> None:
        """STOP: the guest stopped recording."""
        if self.recording:
            self.send(RecordStop())
            self.recording = False

    def _handle(self, message: Message) -> list[Event]:
        if isinstance(message, RecordMode):
            if message.mode == AudioDataMode.OPUS and not self.opus:
                raise ProtocolError("the client chose Opus but did not say it can send it")
            if message.mode not in (AudioDataMode.RAW, AudioDataMode.OPUS):
                raise ProtocolError(f"the client records in mode {message.mode}, not raw or Opus")
            self.mode = AudioDataMode(message.mode)
            return []
        if isinstance(message, RecordData):
            if self.mode == AudioDataMode.INVALID:
                raise ProtocolError("the client sent sound before saying how it is encoded")
            if not self.recording:
                return []  # sent before it read our STOP
            return [Recorded(message.time, message.data, self.mode == AudioDataMode.OPUS)]
        if isinstance(message, RecordStartMark):
            return []
        return []
