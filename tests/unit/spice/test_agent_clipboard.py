"""The stand-in agent's clipboard: spice-protocol's byte layouts (vd_agent.h), by demand,
with and without selections, its limits, and any bytes."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saffron.display import CLIPBOARD_MAX_BYTES
from saffron.spice.protocol import agent as a
from saffron.spice.protocol import wire as w

SPICE_GTK_CAPS = (a.AgentCap.CLIPBOARD_BY_DEMAND, a.AgentCap.CLIPBOARD_SELECTION, 17)
"""What spice-gtk announces that matters here (17: grab serials, which the stand-in lacks)."""


def feed(agent: a.Agent, kind: int, data: bytes) -> list[object]:
    events: list[object] = []
    for chunk in a.pack_message(kind, data):
        events += agent.receive(chunk)
    return events


def sent(agent: a.Agent) -> list[a.AgentMessage]:
    reader = a.AgentReader()
    out = [m for chunk in agent.outgoing for m in reader.feed(chunk)]
    agent.outgoing.clear()
    return out


def connected(caps: tuple[int, ...] = SPICE_GTK_CAPS) -> a.Agent:
    agent = a.Agent(clipboard=True)
    feed(agent, a.AgentType.ANNOUNCE_CAPABILITIES, a.pack_capabilities(True, caps))
    (announced,) = sent(agent)
    assert a.parse_capabilities(announced.data).caps == {1, 2, 5, 6}
    return agent


def test_without_a_clipboard_none_is_announced_and_clipboard_is_ignored() -> None:
    agent = a.Agent()
    feed(agent, a.AgentType.ANNOUNCE_CAPABILITIES, a.pack_capabilities(True, SPICE_GTK_CAPS))
    assert a.parse_capabilities(sent(agent)[0].data).caps == {1, 2}
    events = feed(agent, a.AgentType.CLIPBOARD_GRAB, b"\0\0\0\0\1\0\0\0")
    assert events == [a.AgentIgnored(a.AgentType.CLIPBOARD_GRAB, 8)]


def test_the_clients_copy_is_asked_for_at_once_with_the_selection_bytes() -> None:
    agent = connected()
    # VDAgentClipboardGrab: selection u8, 3 reserved, then the types (u32 each)
    events = feed(agent, a.AgentType.CLIPBOARD_GRAB, bytes([0, 0, 0, 0]) + struct.pack("<II", 2, 1))
    assert events == [a.ClipboardGrabbed(0, (2, 1))]
    # VDAgentClipboardRequest: selection, reserved, type
    assert sent(agent) == [a.AgentMessage(a.AgentType.CLIPBOARD_REQUEST, b"\0\0\0\0\1\0\0\0")]
    # VDAgentClipboard: selection, reserved, type, data
    data = "grüße".encode()
    events = feed(agent, a.AgentType.CLIPBOARD, b"\0\0\0\0\1\0\0\0" + data)
    assert events == [a.ClipboardReceived(0, a.ClipboardType.UTF8_TEXT, data)]
    assert sent(agent) == []


def test_primary_selection_and_images_are_not_asked_for() -> None:
    agent = connected()
    assert feed(agent, a.AgentType.CLIPBOARD_GRAB, b"\1\0\0\0\1\0\0\0") == [
        a.ClipboardGrabbed(1, (1,))
    ]
    assert feed(agent, a.AgentType.CLIPBOARD_GRAB, b"\0\0\0\0\2\0\0\0") == [
        a.ClipboardGrabbed(0, (2,))
    ]
    assert sent(agent) == []


def test_without_selections_there_is_no_selection_field() -> None:
    agent = connected((a.AgentCap.CLIPBOARD_BY_DEMAND,))
    assert feed(agent, a.AgentType.CLIPBOARD_GRAB, b"\1\0\0\0") == [a.ClipboardGrabbed(0, (1,))]
    assert sent(agent) == [a.AgentMessage(a.AgentType.CLIPBOARD_REQUEST, b"\1\0\0\0")]
    agent.offer_text("x")
    assert sent(agent) == [a.AgentMessage(a.AgentType.CLIPBOARD_GRAB, b"\1\0\0\0")]


def test_the_guests_text_is_grabbed_and_given_on_request() -> None:
    agent = connected()
    agent.offer_text("from the guest ✓")
    assert sent(agent) == [a.AgentMessage(a.AgentType.CLIPBOARD_GRAB, b"\0\0\0\0\1\0\0\0")]
    events = feed(agent, a.AgentType.CLIPBOARD_REQUEST, b"\0\0\0\0\1\0\0\0")
    assert events == [a.ClipboardRequested(0, 1)]
    want = b"\0\0\0\0\1\0\0\0" + "from the guest ✓".encode()
    assert sent(agent) == [a.AgentMessage(a.AgentType.CLIPBOARD, want)]
    # a type or selection it does not have: an empty answer, so the client does not wait
    feed(agent, a.AgentType.CLIPBOARD_REQUEST, b"\1\0\0\0\1\0\0\0")
    assert sent(agent) == [a.AgentMessage(a.AgentType.CLIPBOARD, b"\1\0\0\0\0\0\0\0")]


def test_an_offer_before_the_clients_capabilities_waits_for_them() -> None:
    agent = a.Agent(clipboard=True)
    agent.offer_text("early")
    assert sent(agent) == []
    feed(agent, a.AgentType.ANNOUNCE_CAPABILITIES, a.pack_capabilities(False, SPICE_GTK_CAPS))
    assert [m.type for m in sent(agent)] == [a.AgentType.CLIPBOARD_GRAB]


def test_clipboard_text_at_the_limit_passes_and_beyond_it_closes() -> None:
    agent = connected()
    head = b"\0\0\0\0\1\0\0\0"
    (event,) = feed(agent, a.AgentType.CLIPBOARD, head + bytes(CLIPBOARD_MAX_BYTES))
    assert isinstance(event, a.ClipboardReceived) and len(event.data) == CLIPBOARD_MAX_BYTES
    with pytest.raises(w.ProtocolError, match="at most"):
        feed(agent, a.AgentType.CLIPBOARD, head + bytes(CLIPBOARD_MAX_BYTES + 1))


@pytest.mark.parametrize(
    ("kind", "data", "why"),
    [
        (a.AgentType.CLIPBOARD_GRAB, b"\0\0", "bytes"),
        (a.AgentType.CLIPBOARD_GRAB, b"\0\0\0\0\1\0\0", "types"),
        (a.AgentType.CLIPBOARD_GRAB, bytes(4) + bytes(4 * 17), "types"),
        (a.AgentType.CLIPBOARD_GRAB, b"\3\0\0\0\1\0\0\0", "selection 3"),
        (a.AgentType.CLIPBOARD_REQUEST, b"\0\0\0\0\1\0", "without a type"),
        (a.AgentType.CLIPBOARD, b"\0\0\0\0", "without a type"),
        (a.AgentType.CLIPBOARD_RELEASE, b"", "bytes"),
    ],
)
def test_malformed_clipboard_messages_are_protocol_errors(kind: int, data: bytes, why: str) -> None:
    with pytest.raises(w.ProtocolError, match=why):
        feed(connected(), kind, data)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(list(a.CLIPBOARD_MESSAGES)), st.binary(max_size=40), st.booleans()
        ),
        max_size=8,
    )
)
def test_any_clipboard_bytes_give_events_or_a_protocol_error(
    messages: list[tuple[int, bytes, bool]],
) -> None:
    agent = connected()
    for kind, data, offer in messages:
        if offer:
            agent.offer_text("t")
        try:
            feed(agent, kind, data)
        except w.ProtocolError:
            return
    for message in sent(agent):
        assert message.type in a.CLIPBOARD_MESSAGES
