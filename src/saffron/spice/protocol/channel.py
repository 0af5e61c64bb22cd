"""What every linked SPICE channel shares: framing, the ACK window, ping and pong.

:class:`Channel` is sans-IO: ``receive_data`` takes bytes and returns events,
``send`` queues a message, ``data_to_send`` drains the output. Subclasses add
their own messages by overriding :meth:`Channel._handle`. A channel knows its
messages and its window, not the connection that carries them nor what the
server does with its events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...net.ratelimit import TokenBucket, TooManyMessages, message_cost
from .wire import (
    CLIENT_MESSAGES,
    MAX_CLIENT_MESSAGE_SIZE,
    Ack,
    AckSync,
    Caps,
    ChannelType,
    ClientDisconnecting,
    Disconnecting,
    Message,
    MessageReader,
    Ping,
    Pong,
    SetAck,
    frame,
    has_cap,
    parse,
)


class Event:
    """Something a client did that the owner of a channel may act on."""


@dataclass(frozen=True)
class PongReceived(Event):
    """The client echoed a PING: ``timestamp`` is what the server put in it."""

    id: int
    timestamp: int


@dataclass(frozen=True)
class Acked(Event):
    """An ACK arrived: the client has now received ``through`` messages (counted as
    ``messages_sent`` counts them), and the send window may have opened."""

    through: int


@dataclass(frozen=True)
class ClientClosing(Event):
    """The client says it is disconnecting (reason is a SpiceLinkErr)."""

    reason: int


@dataclass(frozen=True)
class Unhandled(Event):
    """A message type this channel does not use: logged, otherwise ignored."""

    type: int
    size: int


class Channel:
    """One linked channel's protocol state."""

    CHANNEL_TYPE: ClassVar[ChannelType]

    def __init__(self, *, mini_header: bool, client_caps: Caps = ()) -> None:
        self.mini_header = mini_header
        self.client_caps = client_caps
        self._reader = MessageReader(mini=mini_header, limit=MAX_CLIENT_MESSAGE_SIZE)
        self._table = CLIENT_MESSAGES[self.CHANNEL_TYPE]
        self._budget = TokenBucket()
        """What the client may still send on this connection (see net.ratelimit)."""
        self._out: list[bytes] = []
        self._out_size = 0
        self._serial = 0
        # ACK window, spice-server's rule: after SET_ACK{generation, window} the
        # client acks every `window` messages; the server may run 2 × window ahead.
        self.ack_window = 0
        self.ack_generation = 0
        self._client_generation = 0
        self._acked_through = 0
        self.unacked = 0
        self.messages_sent = 0
        self.bytes_sent = 0

    def has_cap(self, bit: int) -> bool:
        return has_cap(self.client_caps, bit)

    # -- output -----------------------------------------------------------------------

    def send(self, message: Message) -> None:
        self._serial += 1
        data = frame(message, mini=self.mini_header, serial=self._serial)
        self._out.append(data)
        self._out_size += len(data)
        self.messages_sent += 1
        self.bytes_sent += len(data)
        if self.ack_window:
            self.unacked += 1

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        self._out_size = 0
        return out

    @property
    def pending_output(self) -> int:
        return self._out_size

    def set_ack(self, window: int) -> None:
        """Start (or with 0, stop) ACK flow control."""
        self.ack_generation += 1
        self.ack_window = 0
        self.send(SetAck(self.ack_generation, window))
        self.ack_window = window
        self.unacked = 0
        self._acked_through = self.messages_sent

    def window_open(self, slack: int = 0) -> bool:
        """Whether one more message keeps the client within 2 × window (+ slack) unacked."""
        return not self.ack_window or self.unacked < 2 * self.ack_window + slack

    def ping(self, ident: int, timestamp: int) -> None:
        self.send(Ping(ident, timestamp))

    def disconnecting(self, time_stamp: int, reason: int) -> None:
        self.send(Disconnecting(time_stamp, reason))

    # -- input ------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the client. Raises ProtocolError on a malformed message, and
        TooManyMessages past the connection's message rate (before that message is read)."""
        self._reader.feed(data)
        events: list[Event] = []
        while (raw := self._reader.next()) is not None:
            if not self._budget.take(message_cost(len(raw.body))):
                raise TooManyMessages(self._budget.exceeded())
            message = parse(self._table, raw.type, raw.body)
            if message is None:
                events.append(Unhandled(raw.type, len(raw.body)))
                continue
            events.extend(self._common(message))
        return events

    def _common(self, message: Message) -> list[Event]:
        if isinstance(message, AckSync):
            self._client_generation = message.generation
            return []
        if isinstance(message, Ack):
            if self._client_generation == self.ack_generation and self.ack_window:
                self.unacked = max(self.unacked - self.ack_window, 0)
                self._acked_through += self.ack_window
                return [Acked(self._acked_through)]
            return []
        if isinstance(message, Pong):
            return [PongReceived(message.id, message.timestamp)]
        if isinstance(message, ClientDisconnecting):
            return [ClientClosing(message.reason)]
        return self._handle(message)

    def _handle(self, message: Message) -> list[Event]:
        """Channel-specific messages; the default ignores migration and the rest."""
        return []
