"""Every message layout against bytes written out by hand from the SPICE protocol,
plus round trips and fuzzing: random bytes into a parser raise ProtocolError or nothing."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saffron.spice.protocol import wire as w
from saffron.spice.protocol.display_channel import client_codecs


def h(text: str) -> bytes:
    """Bytes from spaced hex, as written in the digest's tables."""
    return bytes.fromhex(text.replace("\n", " "))


def roundtrip(msg: w.Message) -> w.Message:
    return type(msg).unpack(msg.pack())


# -- link phase ---------------------------------------------------------------------------


def test_link_header() -> None:
    data = h("52 45 44 51  02 00 00 00  02 00 00 00  16 00 00 00")
    assert w.LinkHeader(2, 2, 22).pack() == data
    header = w.LinkHeader.unpack(data)
    assert (header.magic, header.major, header.minor, header.size) == (b"REDQ", 2, 2, 22)


def test_link_mess_spice_gtk_main() -> None:
    # spice-gtk's main link: connection 0, MAIN, id 0, 1 common + 1 channel word,
    # caps offset 18, common 0x0D, main 0x0F.
    data = h("00 00 00 00  01 00  01 00 00 00  01 00 00 00  12 00 00 00  0d 00 00 00  0f 00 00 00")
    mess = w.LinkMess.unpack(data)
    assert (mess.connection_id, mess.channel_type, mess.channel_id) == (0, 1, 0)
    assert mess.common_caps == (0x0D,) and mess.channel_caps == (0x0F,)
    assert mess.pack() == data


def test_link_mess_caps_offset_is_honoured() -> None:
    # A client may put the caps elsewhere: offset 22 with 4 padding bytes first.
    data = h("07 00 00 00 02 00 01 00 00 00 00 00 00 00 16 00 00 00 ff ff ff ff 0b 00 00 00")
    mess = w.LinkMess.unpack(data)
    assert mess.connection_id == 7 and mess.common_caps == (0x0B,) and mess.channel_caps == ()


def test_link_mess_caps_past_the_end() -> None:
    data = h("00 00 00 00 01 00 05 00 00 00 00 00 00 00 12 00 00 00 0d 00 00 00")
    with pytest.raises(w.ProtocolError):
        w.LinkMess.unpack(data)


def test_link_reply_layout() -> None:
    key = bytes(range(162))
    reply = w.LinkReply(0, key, (0x0B,), (0x12,)).pack()
    assert len(reply) == 178 + 8
    assert reply[0:4] == h("00 00 00 00")
    assert reply[4:166] == key
    assert reply[166:178] == h("01 00 00 00  01 00 00 00  b2 00 00 00")  # offset 178
    assert reply[178:] == h("0b 00 00 00  12 00 00 00")
    back = w.LinkReply.unpack(reply)
    assert back.common_caps == (0x0B,) and back.channel_caps == (0x12,)


def test_link_error_reply_has_no_caps() -> None:
    reply = w.LinkReply(w.LinkErr.PERMISSION_DENIED).pack()
    assert len(reply) == 178 and reply[:4] == h("07 00 00 00") and reply[4:166] == bytes(162)


def test_link_result() -> None:
    assert w.pack_link_result(w.LinkErr.OK) == h("00 00 00 00")
    assert w.pack_link_result(w.LinkErr.BAD_CONNECTION_ID) == h("08 00 00 00")


def test_caps_bits() -> None:
    assert w.make_caps([0, 1, 3]) == (0x0B,)
    assert w.make_caps([33]) == (0, 2)
    assert w.has_cap((0x6FBF,), w.DisplayCap.CODEC_H264)
    assert not w.has_cap((0x6FBF,), w.DisplayCap.PREF_VIDEO_CODEC_TYPE)
    assert not w.has_cap((), 0)


def test_client_codecs_from_real_caps() -> None:
    assert client_codecs((0x6FBF,)) == ["mjpeg", "vp8", "h264", "vp9"]  # spice-gtk 0.42
    assert client_codecs((0x711,)) == ["mjpeg", "vp8"]  # spice-html5 with VP8
    assert client_codecs(w.make_caps([w.DisplayCap.CODEC_H264])) == ["mjpeg"]  # no MULTI_CODEC


# -- headers and the reader ---------------------------------------------------------------


def test_headers() -> None:
    assert w.pack_header(104, 10, mini=True) == h("68 00  0a 00 00 00")
    assert w.pack_header(104, 10, mini=False, serial=3) == h(
        "03 00 00 00 00 00 00 00  68 00  0a 00 00 00  00 00 00 00"
    )


def test_reader_splits_and_joins() -> None:
    stream = w.frame(w.KeyDown(0x1E), mini=True) + w.frame(w.KeyUp(0x9E), mini=True)
    reader = w.MessageReader(mini=True)
    got = []
    for byte in stream:  # one byte at a time
        reader.feed(bytes([byte]))
        while (msg := reader.next()) is not None:
            got.append(msg)
    assert [(m.type, m.body) for m in got] == [(101, h("1e 00 00 00")), (102, h("9e 00 00 00"))]
    assert [m.serial for m in got] == [1, 2]


def test_reader_full_header_keeps_serials() -> None:
    reader = w.MessageReader(mini=False)
    reader.feed(w.frame(w.Ack(), mini=False, serial=9))
    msg = reader.next()
    assert msg is not None and (msg.type, msg.body, msg.serial) == (2, b"", 9)


def test_reader_refuses_a_huge_size_before_reading_it() -> None:
    reader = w.MessageReader(mini=True)
    reader.feed(h("65 00 ff ff ff ff"))  # 4 GiB announced, nothing sent
    with pytest.raises(w.ProtocolError, match="limit"):
        reader.next()
    assert reader.buffered == 6


def test_reader_refuses_sub_lists() -> None:
    reader = w.MessageReader(mini=False)
    reader.feed(h("01 00 00 00 00 00 00 00 02 00 00 00 00 00 04 00 00 00"))
    with pytest.raises(w.ProtocolError):
        reader.next()


# -- common -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("msg", "data"),
    [
        (w.SetAck(1, 20), h("01 00 00 00  14 00 00 00")),
        (w.Ping(5, 0x0102030405060708), h("05 00 00 00  08 07 06 05 04 03 02 01")),
        (w.Disconnecting(1, 7), h("01 00 00 00 00 00 00 00  07 00 00 00")),
        (w.AckSync(3), h("03 00 00 00")),
        (w.Ack(), b""),
        (w.Pong(5, 9), h("05 00 00 00  09 00 00 00 00 00 00 00")),
        (w.ClientDisconnecting(2, 0), h("02 00 00 00 00 00 00 00  00 00 00 00")),
    ],
)
def test_common_messages(msg: w.Message, data: bytes) -> None:
    assert msg.pack() == data
    assert type(msg).unpack(data) == msg


def test_notify_has_a_trailing_nul() -> None:
    data = w.Notify(1, 0, 2, 0, b"hi").pack()
    assert data == h("01 00 00 00 00 00 00 00  00 00 00 00  02 00 00 00  00 00 00 00") + h(
        "02 00 00 00  68 69 00"
    )
    assert w.Notify.unpack(data).message == b"hi"


def test_pong_from_html5_echoes_ping_padding() -> None:
    # spice-html5 echoes the first 12 bytes of the PING body; extra bytes are ignored.
    assert w.Pong.unpack(h("05 00 00 00 09 00 00 00 00 00 00 00 ff ff")) == w.Pong(5, 9)


# -- main ---------------------------------------------------------------------------------


def test_main_init() -> None:
    msg = w.MainInit(0x11223344, 1, 3, 2, 0, 0, 1000, 0)
    assert msg.pack() == h(
        "44 33 22 11  01 00 00 00  03 00 00 00  02 00 00 00  00 00 00 00  00 00 00 00"
        "  e8 03 00 00  00 00 00 00"
    )


def test_channels_list() -> None:
    msg = w.ChannelsList(((2, 0), (3, 0), (4, 0)))
    assert msg.pack() == h("03 00 00 00  02 00  03 00  04 00")
    assert roundtrip(msg) == msg


def test_main_small_messages() -> None:
    assert w.MainMouseMode(3, 2).pack() == h("03 00  02 00")
    assert w.MultiMediaTime(0xFFFFFFFF).pack() == h("ff ff ff ff")
    assert w.MainName(b"vm").pack() == h("03 00 00 00  76 6d 00")  # the NUL is counted
    assert w.MainName.unpack(h("03 00 00 00 76 6d 00")).name == b"vm"
    assert w.MainUuid(bytes(range(16))).pack() == bytes(range(16))
    assert w.MouseModeRequest.unpack(h("02 00")) == w.MouseModeRequest(2)
    assert w.AttachChannels.unpack(b"") == w.AttachChannels()
    assert w.AgentStart.unpack(h("0a 00 00 00")).num_tokens == 10
    assert w.ClientInfo.unpack(h("00 01 00 00 00 00 00 00")).cache_size == 256


# -- display ------------------------------------------------------------------------------


def test_surface_create_and_destroy() -> None:
    msg = w.SurfaceCreate(0, 640, 480, 32, 1)
    assert msg.pack() == h("00 00 00 00  80 02 00 00  e0 01 00 00  20 00 00 00  01 00 00 00")
    assert w.SurfaceDestroy(0).pack() == h("00 00 00 00")


def test_monitors_config_puts_size_before_position() -> None:
    msg = w.MonitorsConfig((w.Head(0, 0, 640, 480, 10, 20, 0),), 1)
    assert msg.pack() == h(
        "01 00  01 00  00 00 00 00  00 00 00 00  80 02 00 00  e0 01 00 00"
        "  0a 00 00 00  14 00 00 00  00 00 00 00"
    )
    assert roundtrip(msg) == msg


def test_rect_is_top_left_bottom_right() -> None:
    assert w.Rect.of(1, 2, 10, 20).pack() == h("02 00 00 00 01 00 00 00 16 00 00 00 0b 00 00 00")


def test_draw_copy_bitmap_offsets() -> None:
    pixels = bytes(range(2 * 1 * 4))  # 2x1, BGRX
    image = w.Bitmap(2, 1, 8, pixels)
    msg = w.DrawCopy(0, w.Rect.of(5, 6, 2, 1), image, w.Rect.of(0, 0, 2, 1))
    data = msg.pack()
    assert len(data) == 93 + 8  # G13: image at 57, pixels at 93
    assert data[0:4] == h("00 00 00 00")
    assert data[4:20] == h("06 00 00 00 05 00 00 00 07 00 00 00 07 00 00 00")
    assert data[20] == 0  # clip NONE
    assert data[21:25] == h("39 00 00 00")  # src_bitmap = 57
    assert data[25:41] == h("00 00 00 00 00 00 00 00 01 00 00 00 02 00 00 00")
    assert data[41:43] == h("08 00")  # OP_PUT
    assert data[43:57] == bytes(14)  # scale mode, mask flags, pos, mask bitmap
    # SpiceImage: id, type BITMAP, flags, width, height; bitmap: 32BIT, TOP_DOWN, x, y, stride,
    # palette 0, then the pixels.
    assert data[57:93] == h(
        "00 00 00 00 00 00 00 00  00  00  02 00 00 00  01 00 00 00"
        "  08  04  02 00 00 00  01 00 00 00  08 00 00 00  00 00 00 00"
    )
    assert data[93:] == pixels
    assert roundtrip(msg) == msg


def test_draw_fill_is_41_bytes() -> None:
    data = w.DrawFill(0, w.Rect.of(0, 0, 4, 4), 0x00FF0000).pack()
    assert len(data) == 41
    assert data[20:] == h("00  01  00 00 ff 00  08 00  00  00 00 00 00  00 00 00 00  00 00 00 00")


def test_stream_create_is_51_bytes() -> None:
    msg = w.StreamCreate(0, 3, 1, 3, 0, 640, 480, 640, 480, w.Rect.of(0, 0, 640, 480))
    data = msg.pack()
    assert data == h(
        "00 00 00 00  03 00 00 00  01  03  00 00 00 00 00 00 00 00"
        "  80 02 00 00  e0 01 00 00  80 02 00 00  e0 01 00 00"
        "  00 00 00 00  00 00 00 00  e0 01 00 00  80 02 00 00  00"
    )
    assert roundtrip(msg) == msg


def test_stream_data_and_sized() -> None:
    assert w.StreamData(3, 1000, b"ab").pack() == h("03 00 00 00 e8 03 00 00 02 00 00 00 61 62")
    sized = w.StreamDataSized(3, 1000, 640, 480, w.Rect.of(0, 0, 640, 480), b"ab")
    assert sized.pack() == h(
        "03 00 00 00  e8 03 00 00  80 02 00 00  e0 01 00 00"
        "  00 00 00 00 00 00 00 00 e0 01 00 00 80 02 00 00  02 00 00 00  61 62"
    )
    assert roundtrip(sized) == sized


def test_stream_clip_destroy_report() -> None:
    clip = w.StreamClip(3, w.Clip((w.Rect.of(0, 0, 8, 8),)))
    assert clip.pack() == h(
        "03 00 00 00  01  01 00 00 00  00 00 00 00 00 00 00 00 08 00 00 00 08 00 00 00"
    )
    assert w.StreamClip(3, w.Clip()).pack() == h("03 00 00 00 00")
    assert roundtrip(clip) == clip
    assert w.StreamDestroy(3).pack() == h("03 00 00 00")
    assert w.StreamActivateReport(3, 7, 5, 1000).pack() == h(
        "03 00 00 00 07 00 00 00 05 00 00 00 e8 03 00 00"
    )


def test_display_client_messages() -> None:
    init = w.DisplayInit.unpack(h("01  00 10 00 00 00 00 00 00  02  00 00 40 00"))
    assert init == w.DisplayInit(1, 4096, 2, 0x400000)
    report = w.StreamReport.unpack(
        h("03 00 00 00 07 00 00 00 64 00 00 00 c8 00 00 00 05 00 00 00 00 00 00 00")
        + h("e2 ff ff ff ff ff ff ff")
    )
    assert report == w.StreamReport(3, 7, 100, 200, 5, 0, -30, 0xFFFFFFFF)
    assert w.PreferredVideoCodecType.unpack(h("02 03 01")).codecs == (3, 1)
    assert w.PreferredCompression.unpack(h("07")).image_compression == 7


# -- inputs -------------------------------------------------------------------------------


def test_inputs_messages() -> None:
    assert w.InputsInit(2).pack() == h("02 00")
    assert w.MouseMotionAck().pack() == b""
    assert w.KeyDown.unpack(h("1e 00 00 00")).code == 0x1E
    assert w.KeyUp.unpack(h("e0 c8 00 00")).code == 0xC8E0
    assert w.MouseMotion.unpack(h("fb ff ff ff 03 00 00 00 01 00")) == w.MouseMotion(-5, 3, 1)
    assert w.MousePosition.unpack(h("64 00 00 00 32 00 00 00 00 00 00")) == w.MousePosition(
        100, 50, 0, 0
    )
    assert w.MousePress.unpack(h("01 01 00")) == w.MousePress(1, 1)
    assert w.MouseRelease.unpack(h("04 00 00")) == w.MouseRelease(4, 0)
    assert w.KeyScancode.unpack(h("e0 48 e0 c8")).codes == h("e0 48 e0 c8")


# -- cursor -------------------------------------------------------------------------------


def test_cursor_init_alpha() -> None:
    shape = w.CursorShape(0, 42, w.CursorType.ALPHA, 1, 1, 0, 0, h("01 02 03 ff"))
    msg = w.CursorInit(10, 20, 0, 0, 1, shape)
    assert msg.pack() == h(
        "0a 00 14 00  00 00  00 00  01  00 00  2a 00 00 00 00 00 00 00  00  01 00 01 00"
        "  00 00 00 00  01 02 03 ff"
    )
    assert roundtrip(msg) == msg


def test_cursor_none_set_move_hide() -> None:
    assert w.CursorSet(0, 0, 0, w.CursorShape.none()).pack() == h("00 00 00 00 00 01 00")
    assert w.CursorMove(-1, 2).pack() == h("ff ff 02 00")
    assert w.CursorHide().pack() == b""


# -- properties ---------------------------------------------------------------------------

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
i32 = st.integers(-(2**31), 2**31 - 1)
i16 = st.integers(-(2**15), 2**15 - 1)
u64 = st.integers(0, 2**64 - 1)
rects = st.builds(w.Rect, i32, i32, i32, i32)
clips = st.one_of(st.just(w.Clip()), st.lists(rects, max_size=4).map(lambda r: w.Clip(tuple(r))))
shapes = st.one_of(
    st.just(w.CursorShape.none()),
    st.builds(w.CursorShape, st.just(0), u64, u8, u16, u16, u16, u16, st.binary(max_size=64)),
)


@st.composite
def bitmaps(draw: st.DrawFn) -> w.Bitmap:
    width, height = draw(st.integers(0, 8)), draw(st.integers(0, 8))
    data = draw(st.binary(min_size=width * height * 4, max_size=width * height * 4))
    return w.Bitmap(width, height, width * 4, data, draw(u8), draw(u8), draw(u64))


MESSAGES = st.one_of(
    st.builds(w.SetAck, u32, u32),
    st.builds(w.Ping, u32, u64, st.binary(max_size=16)),
    st.builds(w.Disconnecting, u64, u32),
    st.builds(
        w.Notify, u64, u32, u32, u32, st.binary(max_size=16).filter(lambda b: b"\0" not in b)
    ),
    st.builds(w.AckSync, u32),
    st.builds(w.Pong, u32, u64),
    st.builds(w.MainInit, u32, u32, u32, u32, u32, u32, u32, u32),
    st.builds(w.ChannelsList, st.lists(st.tuples(u8, u8), max_size=8).map(tuple)),
    st.builds(w.MainMouseMode, u16, u16),
    st.builds(w.MultiMediaTime, u32),
    st.builds(w.MainName, st.binary(max_size=16).filter(lambda b: b"\0" not in b)),
    st.builds(w.MainUuid, st.binary(min_size=16, max_size=16)),
    st.builds(w.MouseModeRequest, u16),
    st.builds(w.SurfaceCreate, u32, u32, u32, u32, u32),
    st.builds(
        w.MonitorsConfig,
        st.lists(st.builds(w.Head, u32, u32, u32, u32, u32, u32, u32), max_size=4).map(tuple),
        u16,
    ),
    st.builds(w.DrawCopy, u32, rects, bitmaps(), rects, clips, u16, u8),
    st.builds(w.DrawFill, u32, rects, u32, clips, u16),
    st.builds(w.StreamCreate, u32, u32, u8, u8, u64, u32, u32, u32, u32, rects, clips),
    st.builds(w.StreamData, u32, u32, st.binary(max_size=64)),
    st.builds(w.StreamDataSized, u32, u32, u32, u32, rects, st.binary(max_size=64)),
    st.builds(w.StreamClip, u32, clips),
    st.builds(w.StreamDestroy, u32),
    st.builds(w.StreamActivateReport, u32, u32, u32, u32),
    st.builds(w.DisplayInit, u8, st.integers(-(2**63), 2**63 - 1), u8, i32),
    st.builds(w.StreamReport, u32, u32, u32, u32, u32, u32, i32, u32),
    st.builds(w.PreferredVideoCodecType, st.lists(u8, max_size=8).map(tuple)),
    st.builds(w.InputsInit, u16),
    st.builds(w.KeyDown, u32),
    st.builds(w.KeyUp, u32),
    st.builds(w.KeyScancode, st.binary(max_size=8)),
    st.builds(w.MouseMotion, i32, i32, u16),
    st.builds(w.MousePosition, u32, u32, u16, u8),
    st.builds(w.MousePress, u8, u16),
    st.builds(w.MouseRelease, u8, u16),
    st.builds(w.CursorInit, i16, i16, u16, u16, u8, shapes),
    st.builds(w.CursorSet, i16, i16, u8, shapes),
    st.builds(w.CursorMove, i16, i16),
)


@given(MESSAGES)
def test_round_trip(msg: w.Message) -> None:
    assert roundtrip(msg) == msg


@given(
    st.builds(w.LinkMess, u32, u8, u8, st.lists(u32, max_size=4).map(tuple)),
    st.lists(u32, max_size=4).map(tuple),
)
def test_link_round_trips(mess: w.LinkMess, caps: tuple[int, ...]) -> None:
    mess = w.LinkMess(
        mess.connection_id, mess.channel_type, mess.channel_id, mess.common_caps, caps
    )
    assert w.LinkMess.unpack(mess.pack()) == mess
    reply = w.LinkReply(mess.connection_id, bytes(162), mess.common_caps, caps)
    assert w.LinkReply.unpack(reply.pack()) == reply


ALL_TABLES = [
    table for tables in (w.CLIENT_MESSAGES, w.SERVER_MESSAGES) for table in tables.values()
]


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(ALL_TABLES), u16, st.binary(max_size=300))
def test_parsers_raise_only_protocol_error(
    table: dict[int, type[w.Message]], msg_type: int, body: bytes
) -> None:
    for kind in (msg_type, *table):  # the drawn type, then every type the table knows
        with contextlib.suppress(w.ProtocolError):
            w.parse(table, kind, body)


@given(st.binary(max_size=400))
def test_link_parsers_raise_only_protocol_error(data: bytes) -> None:
    for parse in (w.LinkHeader.unpack, w.LinkMess.unpack, w.LinkReply.unpack):
        with contextlib.suppress(w.ProtocolError):
            parse(data)


@given(st.lists(st.binary(max_size=64), max_size=8), st.booleans())
def test_reader_raises_only_protocol_error(chunks: list[bytes], mini: bool) -> None:
    reader = w.MessageReader(mini=mini, limit=1024)
    try:
        for chunk in chunks:
            reader.feed(chunk)
            while reader.next() is not None:
                pass
    except w.ProtocolError:
        pass


def test_fixed_messages_ignore_trailing_bytes() -> None:
    assert w.KeyDown.unpack(h("1e 00 00 00 ff")) == w.KeyDown(0x1E)
    with pytest.raises(w.ProtocolError):
        w.KeyDown.unpack(h("1e 00"))
    assert struct.calcsize("<IIIIIIiI") == 32
