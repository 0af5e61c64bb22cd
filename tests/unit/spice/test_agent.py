"""The guest agent's messages (VDAgent) and Saffron's stand-in for the agent: chunks
reassembled within bounds, monitors config parsed, capabilities answered, the main
channel's agent tokens kept both ways."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saffron.spice.protocol import agent as a
from saffron.spice.protocol import wire as w
from saffron.spice.protocol.main_channel import AGENT_TOKENS, MainChannel
from tests.unit.spice.test_channels import client, sent

GTK_MONITORS = a.pack_monitors_config(
    [a.MonitorConfig(1024, 640, 32, 0, 0, width_mm=271, height_mm=169)],
    a.CONFIG_USE_POS | a.CONFIG_PHYSICAL_SIZE,
)
"""What spice-gtk 0.42 sends for one 1024x640 window (flags USE_POS | PHYSICAL_SIZE)."""


def test_monitors_config_layout() -> None:
    # VDAgentMonConfig is height first, then width; the millimetres follow all heads
    assert struct.pack("<II5i2H", 1, 3, 640, 1024, 32, 0, 0, 169, 271) == GTK_MONITORS
    event = a.parse_monitors_config(GTK_MONITORS)
    assert event.monitors == (a.MonitorConfig(1024, 640, 32, 0, 0, 271, 169),)
    plain = a.parse_monitors_config(struct.pack("<II5i", 1, 0, 600, 800, 32, 0, 0))
    assert plain.monitors == (a.MonitorConfig(800, 600),)


@pytest.mark.parametrize(
    "data",
    [
        b"\1\0\0",  # shorter than its count and flags
        struct.pack("<II", 2, 0) + bytes(20),  # two monitors, one there
        struct.pack("<II", a.MAX_MONITORS + 1, 0) + bytes(20 * (a.MAX_MONITORS + 1)),
    ],
)
def test_bad_monitors_config_is_a_protocol_error(data: bytes) -> None:
    with pytest.raises(w.ProtocolError):
        a.parse_monitors_config(data)


def test_messages_are_reassembled_across_chunks() -> None:
    big = bytes(range(256)) * 20  # 5120 bytes: three chunks with its header
    chunks = a.pack_message(a.AgentType.CLIPBOARD, big) + a.pack_message(
        a.AgentType.MONITORS_CONFIG, GTK_MONITORS
    )
    assert [len(c) for c in chunks[:3]] == [2048, 2048, 1044]
    reader = a.AgentReader()
    got = [m for c in chunks for m in reader.feed(c)]
    assert got == [
        a.AgentMessage(a.AgentType.CLIPBOARD, big),
        a.AgentMessage(a.AgentType.MONITORS_CONFIG, GTK_MONITORS),
    ]
    # a header split between two chunks, and two messages in one chunk
    stream = b"".join(chunks[3:]) * 2
    reader = a.AgentReader()
    assert len(reader.feed(stream[:7]) + reader.feed(stream[7:])) == 2


def test_the_reader_is_bounded() -> None:
    reader = a.AgentReader(max_message=1000)
    with pytest.raises(w.ProtocolError, match="at most 1000"):
        reader.feed(struct.pack("<IIQI", 1, 4, 0, 1001))
    with pytest.raises(w.ProtocolError, match="protocol"):
        a.AgentReader().feed(struct.pack("<IIQI", 2, 4, 0, 0))
    with pytest.raises(w.ProtocolError, match="2048"):
        a.AgentReader().feed(bytes(2049))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=a.MAX_CHUNK), max_size=8))
def test_any_bytes_give_messages_or_a_protocol_error(chunks: list[bytes]) -> None:
    agent = a.Agent()
    try:
        for chunk in chunks:
            agent.receive(chunk)
    except w.ProtocolError:
        pass


def test_the_stand_in_answers_capabilities_and_takes_monitors() -> None:
    agent = a.Agent()
    asked = a.pack_capabilities(True, (a.AgentCap.MONITORS_CONFIG, a.AgentCap.REPLY, 17))
    events = agent.receive(a.pack_message(a.AgentType.ANNOUNCE_CAPABILITIES, asked)[0])
    assert events == [a.AgentCapabilities(frozenset({1, 2, 17}))]
    (answer,) = agent.outgoing
    (msg,) = a.AgentReader().feed(answer)
    assert msg.type == a.AgentType.ANNOUNCE_CAPABILITIES
    caps = a.parse_capabilities(msg.data)
    assert caps == a.Capabilities(False, frozenset({1, 2}))  # no request back: no loop
    agent.outgoing.clear()
    events = agent.receive(a.pack_message(a.AgentType.MONITORS_CONFIG, GTK_MONITORS)[0])
    assert events == [a.parse_monitors_config(GTK_MONITORS)]
    (reply,) = a.AgentReader().feed(agent.outgoing[0])
    assert reply == a.AgentMessage(a.AgentType.REPLY, struct.pack("<II", 2, 1))
    # clipboard and the rest: parsed, not acted on
    grab = a.pack_message(a.AgentType.CLIPBOARD_GRAB, b"\0\0\0\0\1\0\0\0")[0]
    assert agent.receive(grab) == [a.AgentIgnored(a.AgentType.CLIPBOARD_GRAB, 8)]


def test_main_channel_says_an_agent_is_there_and_keeps_tokens() -> None:
    ch = MainChannel(mini_header=True, session_id=7, channels=(), agent=a.Agent())
    ch.start(mm_time=0, name="vm", uuid=bytes(16))
    assert sent(ch) == [w.MainInit(7, 1, 3, 2, 1, AGENT_TOKENS, 0, 0)]
    caps = a.pack_message(
        a.AgentType.ANNOUNCE_CAPABILITIES, a.pack_capabilities(True, (a.AgentCap.REPLY,))
    )[0]
    ch.receive_data(client(w.AgentStart(1)) + client(w.AgentDataC(caps)))
    (answer,) = sent(ch)  # one token from the client: one message
    assert isinstance(answer, w.AgentDataS)
    events = ch.receive_data(client(w.AgentDataC(a.pack_message(2, GTK_MONITORS)[0])))
    assert events == [a.parse_monitors_config(GTK_MONITORS)]
    assert sent(ch) == []  # the reply waits for a token
    ch.receive_data(client(w.AgentToken(5)))
    assert [type(m) for m in sent(ch)] == [w.AgentDataS]
    # the client gets its tokens back in batches, and may never send beyond them
    grab = a.pack_message(a.AgentType.CLIPBOARD_RELEASE, b"")[0]
    for _ in range(AGENT_TOKENS // 2 - 2):
        ch.receive_data(client(w.AgentDataC(grab)))
    assert sent(ch) == [w.AgentTokenS(AGENT_TOKENS // 2)]
    for _ in range(AGENT_TOKENS):
        ch.receive_data(client(w.AgentDataC(grab)))
    flood = MainChannel(mini_header=True, session_id=7, channels=(), agent=a.Agent())
    flood.receive_data(client(w.AgentStart(0)))
    flood._tokens_left = 1  # as if nine were spent and none given back yet
    flood.receive_data(client(w.AgentDataC(grab)))
    with pytest.raises(w.ProtocolError, match="tokens"):
        flood.receive_data(client(w.AgentDataC(grab)))


def test_without_an_agent_agent_data_is_a_protocol_error() -> None:
    ch = MainChannel(mini_header=True, session_id=7, channels=())
    ch.start(mm_time=0, name="vm", uuid=bytes(16))
    assert sent(ch) == [w.MainInit(7, 1, 3, 2, 0, 0, 0, 0)]
    ch.receive_data(client(w.AgentStart(10)))
    with pytest.raises(w.ProtocolError, match="before AGENT_START"):
        ch.receive_data(client(w.AgentDataC(b"x")))
