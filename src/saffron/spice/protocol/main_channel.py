"""The main channel: session id, channel list, mouse modes, name, UUID, video clock, agent.

The server speaks first (MAIN_INIT); the client answers ATTACH_CHANNELS, which
this machine answers with the channel list on its own, and may ask for a mouse
mode, which it grants when the mode is supported. The session id, the VM's name
and the video clock's value come from the owner (the session in the asyncio layer).

With an :class:`~.agent.Agent` MAIN_INIT says an agent is connected, so that spice-gtk
sends its monitors config (the window size it wants the guest to have). AGENT_DATA
flows under tokens both ways, as spice-server does it: the client may send
``AGENT_TOKENS`` messages and gets more (AGENT_TOKEN) as they are read; the server
sends only as many as the client granted in AGENT_START and AGENT_TOKEN.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from .agent import Agent
from .channel import Channel, Event
from .wire import (
    AgentDataC,
    AgentDataS,
    AgentStart,
    AgentToken,
    AgentTokenS,
    AttachChannels,
    ChannelsList,
    ChannelType,
    MainCap,
    MainInit,
    MainMouseMode,
    MainName,
    MainUuid,
    Message,
    MouseMode,
    MouseModeRequest,
    MultiMediaTime,
    ProtocolError,
)

AGENT_TOKENS = 10
"""AGENT_DATA messages a client may send before it hears AGENT_TOKEN (spice-server's
REDS_AGENT_WINDOW_SIZE): what one client can make the server hold at once."""


@dataclass(frozen=True)
class ChannelsAttached(Event):
    """The client asked for the channel list (and got it): it will open them now."""


@dataclass(frozen=True)
class MouseModeChanged(Event):
    mode: MouseMode


@dataclass(frozen=True)
class MouseModeRefused(Event):
    mode: int


class MainState(enum.Enum):
    NEW = "new"
    INITIALISED = "initialised"
    ATTACHED = "attached"


class MainChannel(Channel):
    CHANNEL_TYPE = ChannelType.MAIN

    def __init__(
        self,
        *,
        mini_header: bool,
        client_caps: Sequence[int] = (),
        session_id: int,
        channels: Sequence[tuple[int, int]],
        supported_mouse_modes: MouseMode = MouseMode.SERVER | MouseMode.CLIENT,
        mouse_mode: MouseMode = MouseMode.CLIENT,
        agent: Agent | None = None,
    ) -> None:
        super().__init__(mini_header=mini_header, client_caps=tuple(client_caps))
        self.session_id = session_id
        self.channels = tuple(channels)
        self.supported_mouse_modes = supported_mouse_modes
        self.mouse_mode = mouse_mode
        self.state = MainState.NEW
        self.agent = agent
        self._agent_started = False
        self._client_tokens = 0
        """AGENT_DATA messages the client still takes (AGENT_START, AGENT_TOKEN)."""
        self._tokens_left = AGENT_TOKENS if agent is not None else 0
        """AGENT_DATA messages the client may still send."""
        self._tokens_used = 0
        """Read since the last AGENT_TOKEN: given back in batches."""

    def start(self, mm_time: int, name: str, uuid: bytes) -> None:
        """MAIN_INIT, then NAME and UUID if the client understands them.

        ``mm_time`` sets the client's video clock (see the display channel).
        """
        self.send(
            MainInit(
                session_id=self.session_id,
                display_channels_hint=max(
                    1, sum(1 for kind, _ in self.channels if kind == ChannelType.DISPLAY)
                ),
                supported_mouse_modes=int(self.supported_mouse_modes),
                current_mouse_mode=int(self.mouse_mode),
                agent_connected=int(self.agent is not None),
                agent_tokens=self._tokens_left,
                multi_media_time=mm_time & 0xFFFFFFFF,
                ram_hint=0,
            )
        )
        if self.has_cap(MainCap.NAME_AND_UUID):
            self.send(MainName(name.encode()))
            self.send(MainUuid(uuid))
        self.state = MainState.INITIALISED

    def set_mm_time(self, mm_time: int) -> None:
        """Move the client's video clock (MULTI_MEDIA_TIME)."""
        self.send(MultiMediaTime(mm_time & 0xFFFFFFFF))

    def flush_agent(self) -> None:
        """Send what the stand-in agent has queued, as far as the client's tokens go."""
        self._send_agent_data()

    def _send_agent_data(self) -> None:
        agent = self.agent
        if agent is None or not self._agent_started:
            return
        while agent.outgoing and self._client_tokens > 0:
            self._client_tokens -= 1
            self.send(AgentDataS(agent.outgoing.pop(0)))

    def _on_agent_data(self, data: bytes) -> list[Event]:
        if self.agent is None or not self._agent_started:
            raise ProtocolError("agent data before AGENT_START")
        if self._tokens_left <= 0:
            raise ProtocolError("agent data beyond the tokens it was given")
        self._tokens_left -= 1
        events = self.agent.receive(data)
        self._tokens_used += 1
        if self._tokens_used >= AGENT_TOKENS // 2:
            self.send(AgentTokenS(self._tokens_used))
            self._tokens_left += self._tokens_used
            self._tokens_used = 0
        return events

    def _handle(self, message: Message) -> list[Event]:
        if isinstance(message, AgentDataC):
            events = self._on_agent_data(message.data)
            self._send_agent_data()
            return events
        if isinstance(message, AgentStart):
            self._agent_started = self.agent is not None
            self._client_tokens = message.num_tokens
            self._send_agent_data()
            return []
        if isinstance(message, AgentToken):
            self._client_tokens = min(self._client_tokens + message.num_tokens, 0xFFFFFFFF)
            self._send_agent_data()
            return []
        if isinstance(message, AttachChannels):
            self.send(ChannelsList(self.channels))
            self.state = MainState.ATTACHED
            return [ChannelsAttached()]
        if isinstance(message, MouseModeRequest):
            mode = message.mode
            if mode in (MouseMode.SERVER, MouseMode.CLIENT) and mode & self.supported_mouse_modes:
                self.mouse_mode = MouseMode(mode)
                self.send(MainMouseMode(int(self.supported_mouse_modes), int(self.mouse_mode)))
                return [MouseModeChanged(self.mouse_mode)]
            self.send(MainMouseMode(int(self.supported_mouse_modes), int(self.mouse_mode)))
            return [MouseModeRefused(mode)]
        return []
