"""The link handshake state machine: bytes in, replies and events out."""

from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from saffron.net.passwords import passwords_match
from saffron.spice.protocol import wire as w
from saffron.spice.protocol.link import (
    SERVER_COMMON_CAPS,
    LinkEstablished,
    LinkFailed,
    LinkState,
    ServerLink,
    TicketKey,
    encrypt_ticket,
)
from tests.support.spice_link import OFFERED, hello, read_reply

KEY = TicketKey()
HTML5_COMMON = (0x09,)  # AUTH_SELECTION, MINI_HEADER


def test_key_is_spki_der_of_162_bytes() -> None:
    assert len(KEY.public_der) == 162
    key = serialization.load_der_public_key(KEY.public_der)
    assert key.key_size == 1024  # type: ignore[union-attr]
    assert key.public_numbers().e == 65537  # type: ignore[union-attr]


def test_handshake_with_auth_selection_and_password() -> None:
    link = ServerLink(KEY, "secret", OFFERED)
    assert link.receive_data(hello()) == []
    reply, rest = read_reply(link.data_to_send())
    assert rest == b""
    assert reply.error == 0 and reply.pub_key == KEY.public_der
    assert reply.common_caps == SERVER_COMMON_CAPS == (0x0B,)
    assert reply.channel_caps == (0x02,)
    assert link.state is LinkState.MECHANISM
    ticket = encrypt_ticket(reply.pub_key, "secret")
    events = link.receive_data(struct.pack("<I", 1) + ticket + b"\x01\x02")
    assert len(events) == 1 and isinstance(events[0], LinkEstablished)
    assert events[0].mini_header and events[0].mess.channel_type == 1
    assert link.leftover == b"\x01\x02"  # the client's first channel bytes are kept
    assert link.data_to_send() == b""  # nothing until the owner decides
    link.accept()
    assert link.data_to_send() == w.pack_link_result(0)


def test_without_auth_selection_the_ticket_comes_straight() -> None:
    link = ServerLink(KEY, "pw", OFFERED)
    link.receive_data(hello(common=(0x08,)))  # MINI_HEADER only
    reply, _ = read_reply(link.data_to_send())
    events = link.receive_data(encrypt_ticket(reply.pub_key, "pw"))
    assert isinstance(events[0], LinkEstablished) and events[0].mini_header


def test_mini_header_only_when_the_client_has_it() -> None:
    link = ServerLink(KEY, None, OFFERED)
    link.receive_data(hello(common=(0x01,)))
    link.data_to_send()
    events = link.receive_data(struct.pack("<I", 1) + bytes(128))
    assert isinstance(events[0], LinkEstablished) and not events[0].mini_header


def test_wrong_password_is_permission_denied() -> None:
    link = ServerLink(KEY, "secret", OFFERED)
    link.receive_data(hello())
    reply, _ = read_reply(link.data_to_send())
    events = link.receive_data(struct.pack("<I", 1) + encrypt_ticket(reply.pub_key, "guess"))
    assert events == [LinkFailed(w.LinkErr.PERMISSION_DENIED, "wrong password")]
    assert link.data_to_send() == w.pack_link_result(w.LinkErr.PERMISSION_DENIED)
    assert link.receive_data(b"more") == []  # a failed link takes nothing more


def test_undecryptable_ticket_with_password_is_denied_without_password_accepted() -> None:
    strict = ServerLink(KEY, "", OFFERED)
    strict.receive_data(hello())
    strict.data_to_send()
    events = strict.receive_data(struct.pack("<I", 1) + b"\x07" * 128)
    assert isinstance(events[0], LinkFailed) and events[0].error == w.LinkErr.PERMISSION_DENIED

    lenient = ServerLink(KEY, None, OFFERED)
    lenient.receive_data(hello())
    lenient.data_to_send()
    events = lenient.receive_data(struct.pack("<I", 1) + b"\x07" * 128)
    assert isinstance(events[0], LinkEstablished)


def test_empty_password_is_a_password() -> None:
    link = ServerLink(KEY, "", OFFERED)
    link.receive_data(hello())
    reply, _ = read_reply(link.data_to_send())
    events = link.receive_data(struct.pack("<I", 1) + encrypt_ticket(reply.pub_key, ""))
    assert isinstance(events[0], LinkEstablished)


def test_html5_ticket_without_its_leading_zero() -> None:
    """spice-html5 drops a leading 0x00 of the ciphertext and zero-pads at the end."""
    for _ in range(5000):
        ticket = KEY.encrypt(b"secret")
        if ticket[0] == 0:
            break
    else:
        pytest.skip("no ciphertext with a leading zero turned up")
    mangled = ticket[1:] + b"\0"
    assert KEY.decrypt(mangled) == b"secret"


def test_byte_by_byte() -> None:
    link = ServerLink(KEY, "x", OFFERED)
    for byte in hello(w.ChannelType.DISPLAY, HTML5_COMMON, connection_id=77):
        assert link.receive_data(bytes([byte])) == []
    reply, _ = read_reply(link.data_to_send())
    assert reply.channel_caps == (0x1012,)
    events: list[object] = []
    for byte in struct.pack("<I", 1) + encrypt_ticket(reply.pub_key, "x"):
        events += link.receive_data(bytes([byte]))
    assert len(events) == 1 and isinstance(events[0], LinkEstablished)
    assert events[0].mess.connection_id == 77


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", w.LinkErr.INVALID_MAGIC),
        (hello(major=3), w.LinkErr.VERSION_MISMATCH),
        (hello(size=5000), w.LinkErr.INVALID_DATA),
        (hello(size=10), w.LinkErr.INVALID_DATA),
        (hello(channel=w.ChannelType.PLAYBACK), w.LinkErr.CHANNEL_NOT_AVAILABLE),
        (hello(channel_id=1), w.LinkErr.CHANNEL_NOT_AVAILABLE),
    ],
)
def test_early_failures_get_an_error_reply(data: bytes, error: w.LinkErr) -> None:
    link = ServerLink(KEY, None, OFFERED)
    events = link.receive_data(data)
    assert len(events) == 1 and isinstance(events[0], LinkFailed) and events[0].error == error
    reply, _ = read_reply(link.data_to_send())
    assert reply.error == error and reply.pub_key == bytes(162) and reply.common_caps == ()


def test_bad_link_message_is_invalid_data() -> None:
    body = bytearray(w.LinkMess(0, 1, 0, (1, 2), ()).pack())
    body[6:10] = struct.pack("<I", 1000)  # 1000 caps words in a 26-byte message
    link = ServerLink(KEY, None, OFFERED)
    events = link.receive_data(w.LinkHeader(2, 2, len(body)).pack() + bytes(body))
    assert isinstance(events[0], LinkFailed) and events[0].error == w.LinkErr.INVALID_DATA


def test_sasl_mechanism_is_refused() -> None:
    link = ServerLink(KEY, None, OFFERED)
    link.receive_data(hello())
    link.data_to_send()
    events = link.receive_data(struct.pack("<I", 2))
    assert isinstance(events[0], LinkFailed) and events[0].error == w.LinkErr.INVALID_DATA
    assert link.data_to_send() == w.pack_link_result(w.LinkErr.INVALID_DATA)


def test_refuse_after_authentication() -> None:
    link = ServerLink(KEY, None, OFFERED)
    link.receive_data(hello(w.ChannelType.DISPLAY, connection_id=5))
    link.data_to_send()
    link.receive_data(struct.pack("<I", 1) + bytes(128))
    failed = link.refuse(w.LinkErr.BAD_CONNECTION_ID, "no such session")
    assert failed.error == w.LinkErr.BAD_CONNECTION_ID
    assert link.data_to_send() == w.pack_link_result(w.LinkErr.BAD_CONNECTION_ID)


def test_passwords_match_is_exact() -> None:
    assert passwords_match(b"secret", "secret")
    assert not passwords_match(b"secre", "secret")
    assert not passwords_match(b"secret2", "secret")
    assert not passwords_match(b"", "secret")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=6), st.sampled_from([None, "pw"]))
def test_random_bytes_never_crash_the_link(chunks: list[bytes], password: str | None) -> None:
    link = ServerLink(KEY, password, OFFERED)
    for chunk in chunks:
        for event in link.receive_data(chunk):
            assert isinstance(event, LinkEstablished | LinkFailed)
        link.data_to_send()


def test_a_secure_channel_over_plain_tcp_needs_tls() -> None:
    """spice-server's rule: NEED_SECURED in the reply, before any key goes out."""
    secure = {w.ChannelType.DISPLAY}
    plain = ServerLink(KEY, None, OFFERED, secure_channels=secure)
    events = plain.receive_data(hello(w.ChannelType.DISPLAY))
    assert events == [
        LinkFailed(w.LinkErr.NEED_SECURED, "the display channel is served over TLS only")
    ]
    reply, _ = read_reply(plain.data_to_send())
    assert reply.error == w.LinkErr.NEED_SECURED and reply.pub_key == bytes(162)

    other = ServerLink(KEY, None, OFFERED, secure_channels=secure)
    other.receive_data(hello(w.ChannelType.MAIN))  # not listed: plain is fine
    assert read_reply(other.data_to_send())[0].error == w.LinkErr.OK

    over_tls = ServerLink(KEY, None, OFFERED, secured=True, secure_channels=secure)
    over_tls.receive_data(hello(w.ChannelType.DISPLAY))
    assert read_reply(over_tls.data_to_send())[0].pub_key == KEY.public_der
