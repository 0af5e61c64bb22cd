"""The bytes of a SPICE link as a client sends them (``hello``) and the server's reply
read back (``read_reply``), for the tests that drive saffron.spice.protocol.link's ServerLink
by hand; ``OFFERED``, the channels such a server offers."""

from __future__ import annotations

from saffron.spice.protocol import wire as w

OFFERED = {(w.ChannelType.MAIN, 0): (0x02,), (w.ChannelType.DISPLAY, 0): (0x1012,)}
GTK_COMMON = (0x0D,)  # AUTH_SELECTION, AUTH_SASL, MINI_HEADER


def hello(
    channel: int = w.ChannelType.MAIN, common: tuple[int, ...] = GTK_COMMON, **kw: int
) -> bytes:
    body = w.LinkMess(
        kw.get("connection_id", 0), channel, kw.get("channel_id", 0), common, ()
    ).pack()
    return w.LinkHeader(kw.get("major", 2), 2, kw.get("size", len(body))).pack() + body


def read_reply(data: bytes) -> tuple[w.LinkReply, bytes]:
    header = w.LinkHeader.unpack(data)
    assert header.magic == b"REDQ" and (header.major, header.minor) == (2, 2)
    return w.LinkReply.unpack(data[16 : 16 + header.size]), data[16 + header.size :]
