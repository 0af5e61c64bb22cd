"""The sans-IO channel machines (main, display, inputs, cursor) and the WebSocket adapter."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Ping, Pong, Request

from saffron.display import Button, Cursor
from saffron.spice.protocol import wire as w
from saffron.spice.protocol.channel import Acked, Channel, PongReceived, Unhandled
from saffron.spice.protocol.cursor_channel import CursorChannel, default_arrow, shape_of
from saffron.spice.protocol.display_channel import (
    DisplayChannel,
    PreferredCodecs,
    ReportReceived,
    StreamUnplayable,
    choose_codec,
    stamp_after,
)
from saffron.spice.protocol.inputs_channel import (
    ButtonEvent,
    InputsChannel,
    KeyEvent,
    ModifiersChanged,
    PointerMotion,
    PointerMoved,
    decode_key,
    decode_scancodes,
    encode_key,
)
from saffron.spice.protocol.main_channel import (
    ChannelsAttached,
    MainChannel,
    MouseModeChanged,
    MouseModeRefused,
)
from saffron.spice.protocol.playback_channel import PlaybackChannel
from saffron.spice.protocol.record_channel import RecordChannel, Recorded
from saffron.spice.protocol.websocket import WebSocketAdapter, looks_like_http

GTK_DISPLAY = (0x6FBF,)
HTML5_DISPLAY = (0x711,)


def sent(channel: Channel) -> list[w.Message]:
    """Parse what a machine queued, with the server-side table of its channel type."""
    reader = w.MessageReader(mini=channel.mini_header, limit=w.MAX_SERVER_MESSAGE_SIZE)
    reader.feed(channel.data_to_send())
    table = w.SERVER_MESSAGES[channel.CHANNEL_TYPE]
    out = []
    while (raw := reader.next()) is not None:
        msg = w.parse(table, raw.type, raw.body)
        assert msg is not None, f"unknown type {raw.type}"
        out.append(msg)
    return out


def client(message: w.Message, mini: bool = True) -> bytes:
    return w.frame(message, mini=mini, serial=1)


# -- common -------------------------------------------------------------------------------


def test_ack_window() -> None:
    ch = DisplayChannel(mini_header=True, client_caps=GTK_DISPLAY)
    ch.set_ack(2)
    assert sent(ch) == [w.SetAck(1, 2)]
    for _ in range(4):
        assert ch.window_open()
        ch.send(w.DisplayMark())
    assert not ch.window_open()  # 2 x window unacked
    assert ch.window_open(slack=1)
    assert ch.receive_data(client(w.Ack())) == []  # no ACK_SYNC yet: ignored
    events = ch.receive_data(client(w.AckSync(1)) + client(w.Ack()))
    assert events == [Acked(3)]  # the client has now got the SET_ACK + 2 messages
    assert ch.unacked == 2 and ch.window_open()


def test_pong_and_unknown_messages() -> None:
    ch = MainChannel(mini_header=False, session_id=1, channels=())
    events = ch.receive_data(
        client(w.Pong(4, 99), mini=False) + w.pack_header(250, 1, mini=False) + b"x"
    )
    assert events == [PongReceived(4, 99), Unhandled(250, 1)]


def test_full_header_serials_count_up() -> None:
    ch = InputsChannel(mini_header=False)
    ch.start()
    ch.send(w.MouseMotionAck())
    data = ch.data_to_send()
    assert data[0:8] == (1).to_bytes(8, "little")
    assert data[20:28] == (2).to_bytes(8, "little")


def test_malformed_message_is_a_protocol_error() -> None:
    ch = InputsChannel(mini_header=True)
    with pytest.raises(w.ProtocolError):
        ch.receive_data(w.pack_header(w.MSGC_INPUTS_MOUSE_MOTION, 2, mini=True) + b"\0\0")


# -- main ---------------------------------------------------------------------------------


def test_main_start_attach_and_mouse_mode() -> None:
    ch = MainChannel(
        mini_header=True,
        client_caps=w.make_caps([w.MainCap.NAME_AND_UUID]),
        session_id=0xABCD,
        channels=((2, 0), (3, 0), (4, 0)),
    )
    ch.start(mm_time=1000, name="vm", uuid=bytes(16))
    assert sent(ch) == [
        w.MainInit(0xABCD, 1, 3, 2, 0, 0, 1000, 0),
        w.MainName(b"vm"),
        w.MainUuid(bytes(16)),
    ]
    assert ch.receive_data(client(w.AttachChannels())) == [ChannelsAttached()]
    assert sent(ch) == [w.ChannelsList(((2, 0), (3, 0), (4, 0)))]
    assert ch.receive_data(client(w.MouseModeRequest(1))) == [MouseModeChanged(w.MouseMode.SERVER)]
    assert sent(ch) == [w.MainMouseMode(3, 1)]
    assert ch.receive_data(client(w.MouseModeRequest(4))) == [MouseModeRefused(4)]
    assert sent(ch) == [w.MainMouseMode(3, 1)]
    ch.set_mm_time(-5)
    assert sent(ch) == [w.MultiMediaTime(0xFFFFFFFB)]


def test_main_without_name_cap_sends_init_only() -> None:
    ch = MainChannel(mini_header=True, session_id=1, channels=())
    ch.start(mm_time=0, name="vm", uuid=bytes(16))
    assert [type(m) for m in sent(ch)] == [w.MainInit]


# -- display ------------------------------------------------------------------------------


def test_codec_choice() -> None:
    order = ["h264", "vp9", "vp8", "mjpeg"]
    assert choose_codec(order, GTK_DISPLAY) == "h264"
    assert choose_codec(order, HTML5_DISPLAY) == "vp8"
    assert choose_codec(order, (0x0211,)) == "mjpeg"  # MJPEG only
    assert choose_codec(order, ()) == "mjpeg"  # no MULTI_CODEC: MJPEG
    assert choose_codec(order, GTK_DISPLAY, preferred=(2, 3)) == "vp8"
    assert choose_codec(order, GTK_DISPLAY, preferred=(5,)) == "h264"  # H.265: not ours
    assert choose_codec(["vp9", "h264"], GTK_DISPLAY) == "vp9"  # the server's order
    assert choose_codec(["av1", "h264"], HTML5_DISPLAY) is None


def test_stamps_never_go_back_and_are_never_zero() -> None:
    assert stamp_after(0, 100) == 100
    assert stamp_after(100, 90) == 100
    assert stamp_after(0xFFFFFFF0, 5) == 5  # wrapped forwards
    assert stamp_after(5, 0xFFFFFFF0) == 5  # wrapped backwards
    assert stamp_after(0, 0) == 1


def test_display_surface_stream_order() -> None:
    ch = DisplayChannel(mini_header=True, client_caps=GTK_DISPLAY)
    ch.create_surface(640, 480)
    ch.fill(0, 0, 640, 480)
    ch.mark()
    ch.mark()  # only once
    assert [type(m) for m in sent(ch)] == [
        w.SurfaceCreate,
        w.MonitorsConfig,
        w.DrawFill,
        w.DisplayMark,
    ]
    stream = ch.create_stream("h264", 640, 480)
    create, activate = sent(ch)
    assert isinstance(create, w.StreamCreate) and isinstance(activate, w.StreamActivateReport)
    assert create.flags == w.StreamFlags.TOP_DOWN and create.codec_type == w.VideoCodec.H264
    assert create.dest == w.Rect(0, 0, 480, 640)
    assert (activate.stream_id, activate.unique_id) == (stream.id, stream.unique_id)
    ch.stream_frame(b"frame", 500)
    ch.stream_frame(b"frame", 400)
    first, second = sent(ch)
    assert isinstance(first, w.StreamDataSized) and first.multi_media_time == 500
    assert isinstance(second, w.StreamDataSized) and second.multi_media_time == 500
    ch.create_surface(800, 600)  # destroys the stream, then the surface
    assert [type(m) for m in sent(ch)] == [
        w.StreamDestroy,
        w.SurfaceDestroy,
        w.SurfaceCreate,
        w.MonitorsConfig,
    ]
    surface = w.SurfaceCreate(0, 800, 600, 32, 1)
    assert ch.surface == (800, 600) and surface.flags == w.SurfaceFlags.PRIMARY


def test_display_for_html5_caps() -> None:
    ch = DisplayChannel(mini_header=True, client_caps=(0x201,))  # SIZED_STREAM, CODEC_MJPEG
    ch.create_surface(64, 48)
    ch.create_stream("mjpeg", 64, 48)
    ch.stream_frame(b"jpeg", 7)
    kinds = [type(m) for m in sent(ch)]
    assert kinds == [w.SurfaceCreate, w.StreamCreate, w.StreamDataSized]
    ch = DisplayChannel(mini_header=True, client_caps=())
    ch.create_surface(64, 48)
    ch.create_stream("mjpeg", 64, 48)
    ch.stream_frame(b"jpeg", 7)
    assert [type(m) for m in sent(ch)][-1] is w.StreamData


def test_stream_ids_rotate_below_50() -> None:
    ch = DisplayChannel(mini_header=True, client_caps=GTK_DISPLAY)
    ch.create_surface(8, 8)
    ids = [ch.create_stream("vp8", 8, 8).id for _ in range(120)]
    assert max(ids) < w.STREAM_ID_LIMIT and ids[0] != ids[1]


def test_reports_and_preferences() -> None:
    ch = DisplayChannel(mini_header=True, client_caps=GTK_DISPLAY)
    ch.create_surface(8, 8)
    stream = ch.create_stream("h264", 8, 8)
    good = w.StreamReport(stream.id, stream.unique_id, 1, 2, 5, 0, 21, 0xFFFFFFFF)
    stale = w.StreamReport(stream.id, stream.unique_id + 5, 1, 2, 5, 5, -9, 0)
    bad = w.StreamReport(stream.id, stream.unique_id, 0, 0, 0, w.REPORT_NO_DECODER, 0, 0)
    events = ch.receive_data(client(good) + client(stale) + client(bad))
    assert events == [ReportReceived(good), StreamUnplayable("h264")]
    assert ch.last_report == good
    assert ch.receive_data(client(w.PreferredVideoCodecType((1,)))) == [PreferredCodecs((1,))]
    assert ch.preferred_codecs == (1,)


def test_draw_bitmap_is_top_down_32bit() -> None:
    ch = DisplayChannel(mini_header=True)
    ch.draw_bitmap(1, 2, 2, 1, b"\1\2\3\4\5\6\7\x08")
    (msg,) = sent(ch)
    assert isinstance(msg, w.DrawCopy)
    assert msg.image.format == w.BitmapFormat.BIT32 and msg.image.flags == w.BitmapFlags.TOP_DOWN
    assert msg.box == w.Rect.of(1, 2, 2, 1) and msg.src_area == w.Rect.of(0, 0, 2, 1)


# -- inputs -------------------------------------------------------------------------------


def test_scancodes() -> None:
    assert decode_key(0x1E) == [(0x1E, True)]
    assert decode_key(0x9E) == [(0x1E, False)]
    assert decode_key(0x48E0) == [(0xE048, True)]  # Up: bytes e0 48
    assert decode_key(0xC8E0) == [(0xE048, False)]
    assert decode_key(0x1DE1) == [(0xE11D, True)]  # Pause, first half (spice-gtk)
    assert decode_scancodes(bytes.fromhex("e048e0c8")) == [(0xE048, True), (0xE048, False)]
    assert decode_scancodes(bytes.fromhex("1e9e00ff")) == [(0x1E, True), (0x1E, False)]
    assert encode_key(0xE048, True) == 0x48E0 and encode_key(0x1E, False) == 0x9E


def test_inputs_events_and_motion_acks() -> None:
    ch = InputsChannel(mini_header=True)
    ch.start(modifiers=2)
    assert sent(ch) == [w.InputsInit(2)]
    data = (
        client(w.KeyDown(0x1E))
        + client(w.KeyUp(0x1E))  # a release even without the 0x80 bit
        + client(w.KeyScancode(bytes.fromhex("e048e0c8")))
        + client(w.MousePosition(10, 20, 1, 0))
        + client(w.MouseMotion(-3, 4, 0))
        + client(w.MousePress(1, 1))
        + client(w.MouseRelease(1, 0))
        + client(w.MousePress(5, 16))
        + client(w.MousePress(9, 0))  # no such button: ignored
        + client(w.ClientKeyModifiers(4))
    )
    assert ch.receive_data(data) == [
        KeyEvent(0x1E, True),
        KeyEvent(0x1E, False),
        KeyEvent(0xE048, True),
        KeyEvent(0xE048, False),
        PointerMoved(10, 20),
        PointerMotion(-3, 4),
        ButtonEvent(Button.LEFT, True),
        ButtonEvent(Button.LEFT, False),
        ButtonEvent(Button.WHEEL_DOWN, True),
        ModifiersChanged(4),
    ]
    assert sent(ch) == []  # two motions: no ack yet
    ch.receive_data(client(w.MousePosition(1, 1, 0, 0)) * 6)
    assert sent(ch) == [w.MouseMotionAck(), w.MouseMotionAck()]  # one per 4 motions


# -- cursor -------------------------------------------------------------------------------


def test_cursor_channel() -> None:
    ch = CursorChannel(mini_header=True)
    ch.move(1, 1)
    ch.set(None, 0, 0, True)
    assert sent(ch) == []  # nothing before INIT
    arrow = default_arrow()
    ch.start(arrow, 5, 6, True)
    (init,) = sent(ch)
    assert isinstance(init, w.CursorInit) and init.visible == 1
    assert init.cursor.type == w.CursorType.ALPHA and init.cursor.flags == 0
    assert len(init.cursor.data) == arrow.width * arrow.height * 4
    ch.move(7, 8)
    ch.hide()
    ch.hide()  # already hidden
    assert sent(ch) == [w.CursorMove(7, 8), w.CursorHide()]
    custom = Cursor(2, 2, 1, 1, b"\xff" * 16, serial=9)
    ch.set(custom, 100000, -100000, True)  # clamped to i16
    (msg,) = sent(ch)
    assert isinstance(msg, w.CursorSet) and (msg.x, msg.y) == (32767, -32768)
    assert msg.cursor == shape_of(custom) and msg.cursor.unique == 9
    ch.set(None, 0, 0, True)
    (msg,) = sent(ch)
    assert (
        isinstance(msg, w.CursorSet) and msg.cursor.flags == w.CursorFlags.NONE and not msg.visible
    )


# -- playback -----------------------------------------------------------------------------

OPUS_CLIENT = w.make_caps([w.PlaybackCap.OPUS, w.PlaybackCap.VOLUME])


def test_playback_messages_have_spice_protos_layout() -> None:
    # spice.proto: data {u32 time; u8 data[]} = 101; mode {u32 time; u16 mode; data[]};
    # start {u32 channels; u16 format; u32 frequency; u32 time}; Empty stop. Packed.
    assert w.PlaybackData(0x01020304, b"op").pack() == b"\x04\x03\x02\x01op"
    assert w.PlaybackMode(7, w.AudioDataMode.OPUS).pack() == b"\x07\0\0\0\x03\0"
    start = w.PlaybackStart(2, w.AudioFormat.S16, 48000, 9).pack()
    assert start == b"\x02\0\0\0" + b"\x01\0" + (48000).to_bytes(4, "little") + b"\x09\0\0\0"
    assert (w.PlaybackData.TYPE, w.PlaybackMode.TYPE, w.PlaybackStart.TYPE) == (101, 102, 103)
    assert (w.PlaybackStop.TYPE, w.PlaybackStop().pack()) == (104, b"")
    ch = PlaybackChannel(mini_header=True, client_caps=OPUS_CLIENT)
    ch.start(5)
    ch.play(6)
    ch.data(7, b"\xfc\xff")
    ch.stop()
    out = ch.data_to_send()
    # mini header: u16 type, u32 size
    assert out[:6] == b"\x66\0" + b"\x06\0\0\0" and out[6:12] == b"\x05\0\0\0\x03\0"
    assert out[12:18] == b"\x67\0" + b"\x0e\0\0\0"
    assert out[32:38] == b"\x65\0" + b"\x06\0\0\0" and out[38:44] == b"\x07\0\0\0\xfc\xff"
    assert out[44:] == b"\x68\0\0\0\0\0"


def test_playback_sends_opus_in_order_and_nothing_to_a_client_without_opus() -> None:
    ch = PlaybackChannel(mini_header=True, client_caps=OPUS_CLIENT)
    ch.data(1, b"x")  # before START: nothing
    ch.start(100)
    ch.play(100)
    ch.play(120)  # already playing
    assert ch.data(130, b"a") == 130
    assert ch.data(125, b"b") == 130  # never lower than the one before
    assert ch.data(0xFFFFFFF0 + 200, b"c") == (0xFFFFFFF0 + 200) & 0xFFFFFFFF  # wraps forward
    ch.stop()
    ch.stop()
    assert sent(ch) == [
        w.PlaybackMode(100, w.AudioDataMode.OPUS),
        w.PlaybackStart(2, w.AudioFormat.S16, 48000, 100),
        w.PlaybackData(130, b"a"),
        w.PlaybackData(130, b"b"),
        w.PlaybackData(0xB8, b"c"),
        w.PlaybackStop(),
    ]
    plain = PlaybackChannel(mini_header=True, client_caps=w.make_caps([w.PlaybackCap.VOLUME]))
    plain.start(1)
    plain.play(1)
    plain.data(2, b"a")
    assert not plain.opus and sent(plain) == []


# -- record -------------------------------------------------------------------------------

RECORD_OPUS = w.make_caps([w.RecordCap.OPUS, w.RecordCap.VOLUME])


def test_record_messages_have_spice_protos_layout() -> None:
    # spice.proto RecordChannel: server start {u32 channels; u16 format; u32 frequency} = 101,
    # Empty stop; client data {u32 time; u8 data[]} = 101, mode {u32 time; u16 mode;
    # data[]}, start_mark {u32 time}. Caps: CELT 0, VOLUME 1, OPUS 2.
    assert w.RecordCap.OPUS == 2
    start = w.RecordStart(2, w.AudioFormat.S16, 48000).pack()
    assert start == b"\x02\0\0\0\x01\0" + (48000).to_bytes(4, "little")
    assert (w.RecordStart.TYPE, w.RecordStop.TYPE) == (101, 102)
    assert (w.RecordData.TYPE, w.RecordMode.TYPE, w.RecordStartMark.TYPE) == (101, 102, 103)
    ch = RecordChannel(mini_header=True, client_caps=RECORD_OPUS)
    ch.start()
    ch.start()  # already recording: once
    out = ch.data_to_send()
    assert out == b"\x65\0\x0a\0\0\0" + start
    # what spice-gtk answers: MODE opus, START_MARK, DATA
    data = b"\x66\0\x06\0\0\0" + b"\x07\0\0\0\x03\0"
    data += b"\x67\0\x04\0\0\0" + b"\x07\0\0\0"
    data += b"\x65\0\x06\0\0\0" + b"\x08\0\0\0\xfc\xff"
    assert ch.receive_data(data) == [Recorded(8, b"\xfc\xff", opus=True)]
    ch.stop()
    assert ch.data_to_send() == b"\x66\0\0\0\0\0"
    assert ch.receive_data(b"\x65\0\x05\0\0\0" + b"\x09\0\0\0\xfc") == []  # after STOP


def test_record_refuses_sound_it_was_not_told_how_to_read() -> None:
    ch = RecordChannel(mini_header=True, client_caps=RECORD_OPUS)
    ch.start()
    with pytest.raises(w.ProtocolError, match="before saying"):
        ch.receive_data(w.frame(w.RecordData(1, b"x"), mini=True, serial=1))
    plain = RecordChannel(mini_header=True, client_caps=w.make_caps([w.RecordCap.VOLUME]))
    with pytest.raises(w.ProtocolError, match="Opus"):
        plain.receive_data(w.frame(w.RecordMode(1, w.AudioDataMode.OPUS), mini=True, serial=1))
    with pytest.raises(w.ProtocolError, match="mode 2"):
        plain.receive_data(
            w.frame(w.RecordMode(1, w.AudioDataMode.CELT_0_5_1), mini=True, serial=1)
        )
    plain.receive_data(w.frame(w.RecordMode(1, w.AudioDataMode.RAW), mini=True, serial=1))
    plain.start()
    raw = plain.receive_data(w.frame(w.RecordData(2, b"\0\1\2\3"), mini=True, serial=2))
    assert raw == [Recorded(2, b"\0\1\2\3", opus=False)]


# -- fuzz: every channel, random bytes -----------------------------------------------------

MACHINES: list[Callable[[], Channel]] = [
    lambda: MainChannel(mini_header=True, session_id=1, channels=((2, 0),)),
    lambda: DisplayChannel(mini_header=True, client_caps=GTK_DISPLAY),
    lambda: InputsChannel(mini_header=False),
    lambda: CursorChannel(mini_header=True),
    lambda: PlaybackChannel(mini_header=True, client_caps=OPUS_CLIENT),
    lambda: RecordChannel(mini_header=True, client_caps=RECORD_OPUS),
]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(MACHINES), st.lists(st.binary(max_size=100), max_size=5))
def test_channels_raise_only_protocol_error(
    make: Callable[[], Channel], chunks: list[bytes]
) -> None:
    ch = make()
    try:
        for chunk in chunks:
            ch.receive_data(chunk)
    except w.ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(MACHINES),
    st.lists(st.tuples(st.integers(0, 130), st.binary(max_size=40)), max_size=8),
)
def test_channels_with_well_framed_random_bodies(
    make: Callable[[], Channel], messages: list[tuple[int, bytes]]
) -> None:
    ch = make()
    for msg_type, body in messages:
        data = w.pack_header(msg_type, len(body), mini=ch.mini_header) + body
        try:
            ch.receive_data(data)
        except w.ProtocolError:
            return


# -- WebSocket ----------------------------------------------------------------------------


def handshake(adapter: WebSocketAdapter, subprotocols: list[str]) -> WSConnection:
    peer = WSConnection(ConnectionType.CLIENT)
    request = peer.send(Request(host="x", target="/websockify", subprotocols=subprotocols))
    assert looks_like_http(request)
    assert adapter.receive_data(request) == b""
    peer.receive_data(adapter.data_to_send())
    events = list(peer.events())
    assert isinstance(events[0], AcceptConnection)
    return peer


def test_websocket_carries_spice_both_ways() -> None:
    adapter = WebSocketAdapter()
    peer = handshake(adapter, ["binary"])
    assert adapter.target == "/websockify" and adapter.open
    data = peer.send(BytesMessage(data=b"REDQ")) + peer.send(BytesMessage(data=b"more"))
    assert adapter.receive_data(data) == b"REDQmore"
    peer.receive_data(adapter.send(b"reply"))
    (event,) = list(peer.events())
    assert isinstance(event, BytesMessage) and bytes(event.data) == b"reply"
    assert adapter.receive_data(peer.send(Ping(b"p"))) == b""
    peer.receive_data(adapter.data_to_send())
    assert any(isinstance(e, Pong) for e in peer.events())
    adapter.receive_data(peer.send(CloseConnection(code=1000)))
    assert adapter.closed


def test_websocket_echoes_the_binary_subprotocol() -> None:
    adapter = WebSocketAdapter()
    peer = WSConnection(ConnectionType.CLIENT)
    adapter.receive_data(peer.send(Request(host="x", target="/", subprotocols=["binary"])))
    assert b"sec-websocket-protocol: binary" in adapter.data_to_send().lower()


def test_plain_http_get_is_refused() -> None:
    adapter = WebSocketAdapter()
    with pytest.raises(w.ProtocolError):
        adapter.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert adapter.data_to_send().startswith(b"HTTP/1.1 400")


@settings(max_examples=300, deadline=None)
@given(st.booleans(), st.lists(st.binary(max_size=200), max_size=5))
def test_websocket_random_bytes(opened: bool, chunks: list[bytes]) -> None:
    """Random bytes as a handshake, or as frames after a good one: only ProtocolError."""
    adapter = WebSocketAdapter()
    if opened:
        handshake(adapter, ["binary"])
    else:
        chunks = [b"GET ", *chunks]
    try:
        for chunk in chunks:
            adapter.receive_data(chunk)
            adapter.send(b"x")
    except w.ProtocolError:
        pass
