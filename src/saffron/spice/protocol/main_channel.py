"""The main channel: session id, channel list, mouse modes, name, UUID, video clock.

The server speaks first (MAIN_INIT); the client answers ATTACH_CHANNELS, which
this machine answers with the channel list on its own, and may ask for a mouse
mode, which it grants when the mode is supported. The session id, the VM's name
and the video clock's value come from the owner (the session in the asyncio layer).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from .channel import Channel, Event
from .wire import (
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
)


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
    ) -> None:
        super().__init__(mini_header=mini_header, client_caps=tuple(client_caps))
        self.session_id = session_id
        self.channels = tuple(channels)
        self.supported_mouse_modes = supported_mouse_modes
        self.mouse_mode = mouse_mode
        self.state = MainState.NEW

    def start(self, mm_time: int, name: str, uuid: bytes) -> None:
        """MAIN_INIT, then NAME and UUID if the client understands them.

        ``mm_time`` sets the client's video clock (see the display channel).
        """
        self.send(
            MainInit(
                session_id=self.session_id,
                display_channels_hint=1,
                supported_mouse_modes=int(self.supported_mouse_modes),
                current_mouse_mode=int(self.mouse_mode),
                agent_connected=0,
                agent_tokens=0,
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

    def _handle(self, message: Message) -> list[Event]:
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
