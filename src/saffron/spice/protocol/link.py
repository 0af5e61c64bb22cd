"""The SPICE link handshake, server side, as a state machine: bytes in, events out.

One :class:`ServerLink` per connection. It reads the LinkHeader and LinkMess,
answers with the ticket key and Saffron's caps, reads the auth mechanism (when
both sides use auth selection) and the RSA ticket, checks the password, and
then waits for the owner to :meth:`~ServerLink.accept` or
:meth:`~ServerLink.refuse` (session ids are the owner's business). Every
failure is answered the way spice-server answers it, so clients show a useful
message, and reported as a :class:`LinkFailed` event with a reason in words.
It knows no session, socket or key pool: the owner hands it a key (or none yet)
and decides which session a linked channel joins.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ...net.passwords import passwords_match
from .wire import (
    LINK_MAX_SIZE,
    LINK_MESS_MIN,
    MAGIC,
    TICKET_CIPHER_BYTES,
    TICKET_PUBKEY_BYTES,
    VERSION_MAJOR,
    VERSION_MINOR,
    Caps,
    ChannelType,
    CommonCap,
    LinkErr,
    LinkHeader,
    LinkMess,
    LinkReply,
    ProtocolError,
    has_cap,
    make_caps,
    pack_link_result,
)

SERVER_COMMON_CAPS: Caps = make_caps(
    [CommonCap.PROTOCOL_AUTH_SELECTION, CommonCap.AUTH_SPICE, CommonCap.MINI_HEADER]
)
"""AUTH_SELECTION needs AUTH_SPICE beside it (G10); spice-html5 needs the mini header."""

_OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None)


class TicketKey:
    """The RSA-1024 key clients encrypt their password with; one per link, so that a
    ticket seen once cannot link again (the asyncio layer keeps a pool of fresh ones)."""

    def __init__(self) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        self.public_der = self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        assert len(self.public_der) == TICKET_PUBKEY_BYTES

    def decrypt(self, ticket: bytes) -> bytes | None:
        """The password a ticket carries (up to its NUL), or None if it does not decrypt.

        spice-html5 drops a leading zero byte of the ciphertext and pads at the end
        (about one connection in 256), so that shape is tried as well.
        """
        candidates = [ticket]
        if ticket.endswith(b"\0"):
            candidates.append(b"\0" + ticket[:-1])
        for candidate in candidates:
            try:
                plain = self._key.decrypt(candidate, _OAEP)
            except ValueError:
                continue
            return plain.split(b"\0", 1)[0]
        return None

    def encrypt(self, password: bytes) -> bytes:
        """A ticket as a client makes it (for tests and the Python test client)."""
        return self._key.public_key().encrypt(password + b"\0", _OAEP)


def encrypt_ticket(public_der: bytes, password: str) -> bytes:
    """Encrypt a password with a server's SPKI key, as spice-gtk does."""
    key = serialization.load_der_public_key(public_der)
    if not isinstance(key, rsa.RSAPublicKey):
        raise ProtocolError("the server's ticket key is not RSA")
    return key.encrypt(password.encode() + b"\0", _OAEP)


# -- events ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LinkEstablished:
    """The client authenticated; the owner must now accept() or refuse()."""

    mess: LinkMess
    mini_header: bool
    channel_caps: Caps
    """What Saffron offered for this channel (the client's are in ``mess``)."""


@dataclass(frozen=True)
class LinkFailed:
    """The link is over: an error reply is queued (if any) and the connection must close."""

    error: LinkErr
    reason: str


LinkEvent = LinkEstablished | LinkFailed


class LinkState(enum.Enum):
    HEADER = "header"
    MESS = "link message"
    MECHANISM = "auth mechanism"
    TICKET = "ticket"
    AUTHENTICATED = "authenticated"
    DONE = "done"
    FAILED = "failed"


class ServerLink:
    """The server side of one link handshake.

    ``offered`` maps (channel type, channel id) to the channel caps Saffron offers;
    a channel not in it is refused as CHANNEL_NOT_AVAILABLE. ``password`` None
    accepts any ticket, but the ticket is still read (G11). A channel type in
    ``secure_channels`` reached over a plain connection (``secured`` False) is
    refused as NEED_SECURED before any key is sent, as spice-server does;
    spice-gtk then opens that channel again on the TLS port.

    ``key`` is this link's own ticket key, used once. It may be None while the
    owner waits for one: the link then stops before its reply until the owner
    sets ``key`` and feeds it again (``receive_data(b"")``).
    """

    def __init__(
        self,
        key: TicketKey | None,
        password: str | None,
        offered: Mapping[tuple[int, int], Caps],
        *,
        secured: bool = False,
        secure_channels: Collection[int] = (),
    ) -> None:
        self.key = key
        self.password = password
        self.offered = offered
        self.secured = secured
        self.secure_channels = secure_channels
        self.state = LinkState.HEADER
        self.mess: LinkMess | None = None
        self.leftover = b""
        """Bytes the client sent after its ticket: the first channel messages."""
        self._buf = bytearray()
        self._size = 0
        self._out = bytearray()
        self._channel_caps: Caps = ()

    # -- output ---------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        out, self._out = bytes(self._out), bytearray()
        return out

    def _reply(self, reply: LinkReply) -> None:
        body = reply.pack()
        self._out += LinkHeader(VERSION_MAJOR, VERSION_MINOR, len(body)).pack() + body

    def _fail_early(self, error: LinkErr, reason: str) -> LinkFailed:
        """A failure before the ticket: answered with a LinkReply carrying the error."""
        self._reply(LinkReply(error))
        self.state = LinkState.FAILED
        return LinkFailed(error, reason)

    def _fail_late(self, error: LinkErr, reason: str) -> LinkFailed:
        """A failure after the reply was sent: answered with the u32 link result."""
        self._out += pack_link_result(error)
        self.state = LinkState.FAILED
        return LinkFailed(error, reason)

    # -- the owner's decision ---------------------------------------------------------

    def accept(self) -> None:
        if self.state is not LinkState.AUTHENTICATED:
            raise RuntimeError(f"cannot accept a link in state {self.state.value}")
        self._out += pack_link_result(LinkErr.OK)
        self.state = LinkState.DONE

    def refuse(self, error: LinkErr, reason: str) -> LinkFailed:
        """Refuse a link whose reply was sent: after its ticket was checked, or before
        it is read (the owner's guess throttle)."""
        if self.state not in (LinkState.MECHANISM, LinkState.TICKET, LinkState.AUTHENTICATED):
            raise RuntimeError(f"cannot refuse a link in state {self.state.value}")
        return self._fail_late(error, reason)

    # -- input ------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[LinkEvent]:
        """Feed bytes from the client; returns what happened."""
        if self.state in (LinkState.AUTHENTICATED, LinkState.DONE):
            self.leftover += data
            return []
        if self.state is LinkState.FAILED:
            return []
        self._buf += data
        events: list[LinkEvent] = []
        while self.state not in (LinkState.AUTHENTICATED, LinkState.DONE, LinkState.FAILED):
            event = self._step()
            if event is None:
                break
            if isinstance(event, LinkFailed | LinkEstablished):
                events.append(event)
        return events

    def _take(self, size: int) -> bytes | None:
        if len(self._buf) < size:
            return None
        chunk = bytes(self._buf[:size])
        del self._buf[:size]
        return chunk

    def _step(self) -> LinkEvent | bool | None:
        """One step; None when more bytes are needed, True when progress was made."""
        if self.state is LinkState.HEADER:
            raw = self._take(LinkHeader.SIZE)
            if raw is None:
                # Fail fast on a wrong magic: no need to wait for 16 bytes of junk.
                if len(self._buf) >= 4 and bytes(self._buf[:4]) != MAGIC:
                    return self._fail_early(LinkErr.INVALID_MAGIC, "not a SPICE client")
                return None
            header = LinkHeader.unpack(raw)
            if header.magic != MAGIC:
                return self._fail_early(LinkErr.INVALID_MAGIC, "not a SPICE client")
            if header.major != VERSION_MAJOR:
                return self._fail_early(
                    LinkErr.VERSION_MISMATCH, f"protocol version {header.major} is not 2"
                )
            if not LINK_MESS_MIN <= header.size <= LINK_MAX_SIZE:
                return self._fail_early(
                    LinkErr.INVALID_DATA, f"link message of {header.size} bytes"
                )
            self._size = header.size
            self.state = LinkState.MESS
            return True
        if self.state is LinkState.MESS:
            if self.key is None:
                return None  # the reply needs the key: wait for the owner to give one
            raw = self._take(self._size)
            if raw is None:
                return None
            try:
                mess = LinkMess.unpack(raw)
            except ProtocolError as exc:
                return self._fail_early(LinkErr.INVALID_DATA, f"bad link message: {exc}")
            self.mess = mess
            offered = self.offered.get((mess.channel_type, mess.channel_id))
            if offered is None:
                return self._fail_early(
                    LinkErr.CHANNEL_NOT_AVAILABLE,
                    f"no {_channel_name(mess.channel_type)} channel {mess.channel_id} here",
                )
            if mess.channel_type in self.secure_channels and not self.secured:
                return self._fail_early(
                    LinkErr.NEED_SECURED,
                    f"the {_channel_name(mess.channel_type)} channel is served over TLS only",
                )
            self._channel_caps = offered
            self._reply(LinkReply(LinkErr.OK, self.key.public_der, SERVER_COMMON_CAPS, offered))
            selection = has_cap(mess.common_caps, CommonCap.PROTOCOL_AUTH_SELECTION)
            self.state = LinkState.MECHANISM if selection else LinkState.TICKET
            return True
        if self.state is LinkState.MECHANISM:
            raw = self._take(4)
            if raw is None:
                return None
            mechanism = int.from_bytes(raw, "little")
            if mechanism != CommonCap.AUTH_SPICE:
                return self._fail_late(
                    LinkErr.INVALID_DATA, f"asked for auth mechanism {mechanism}, not SPICE"
                )
            self.state = LinkState.TICKET
            return True
        if self.state is LinkState.TICKET:
            raw = self._take(TICKET_CIPHER_BYTES)
            if raw is None:
                return None
            return self._check_ticket(raw)
        return None

    def _check_ticket(self, ticket: bytes) -> LinkEvent:
        assert self.mess is not None
        if self.password is not None:
            assert self.key is not None
            given = self.key.decrypt(ticket)
            if given is None:
                return self._fail_late(LinkErr.PERMISSION_DENIED, "the ticket did not decrypt")
            if not passwords_match(given, self.password):
                return self._fail_late(LinkErr.PERMISSION_DENIED, "wrong password")
        self.state = LinkState.AUTHENTICATED
        self.leftover += bytes(self._buf)
        self._buf.clear()
        mini = has_cap(self.mess.common_caps, CommonCap.MINI_HEADER)
        return LinkEstablished(self.mess, mini, self._channel_caps)


def _channel_name(channel_type: int) -> str:
    try:
        return ChannelType(channel_type).name.lower()
    except ValueError:
        return f"type-{channel_type}"
