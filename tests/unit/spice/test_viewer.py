"""SpiceViewer with everything around it faked: exact control of frames, damage and ACKs.

The client side here acks exactly as spice-gtk does (after every 10 messages it has
received, the SET_ACK not counted), so ACK-window corner cases can be set up on
purpose rather than hoped for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from saffron.broadcast import Seat
from saffron.display import Display, Frame
from saffron.display import Rect as Area
from saffron.encoders.base import Packet
from saffron.ratecontrol import START_KBPS
from saffron.spice.damage import DamageLog
from saffron.spice.protocol import wire as w
from saffron.spice.protocol.display_channel import DisplayChannel
from saffron.spice.viewer import ACK_WINDOW, H264_FRAME_END, SpiceViewer

GTK_DISPLAY = (0x6FBF,)
HTML5_DISPLAY = (0x711,)
W, H = 64, 48


@dataclass
class FakeStream:
    codec: str
    seats: dict[Any, Seat] = field(default_factory=dict)
    bitrate_kbps: int = 4000
    keyframes_asked: int = 0

    def request_keyframe(self, urgent: bool = False) -> None:
        self.keyframes_asked += 1


@dataclass
class FakeBroadcast:
    bitrate_kbps: int = 4000
    streams: dict[str, FakeStream] = field(default_factory=dict)
    ready_calls: int = 0

    def join(self, viewer: Any, codec: str) -> FakeStream:
        stream = self.streams.setdefault(codec, FakeStream(codec))
        stream.seats[viewer] = Seat(viewer)
        return stream

    def leave(self, viewer: Any) -> None:
        for stream in self.streams.values():
            stream.seats.pop(viewer, None)

    def viewer_ready(self, viewer: Any) -> None:
        self.ready_calls += 1


@dataclass
class FakeServer:
    display: Display
    loop: asyncio.AbstractEventLoop
    codecs: list[str]
    broadcast: FakeBroadcast = field(default_factory=FakeBroadcast)
    frame_listeners: list[Any] = field(default_factory=list)
    damage_log: DamageLog = field(init=False)

    def __post_init__(self) -> None:
        self.damage_log = DamageLog(self.display)
        self.display.add_sink(self.damage_log)


@dataclass
class FakeSession:
    server: FakeServer
    label: str = "test client"
    latency_ms: int = 20
    reports: list[w.StreamReport] = field(default_factory=list)

    def mm_now(self) -> int:
        return (time.monotonic_ns() // 1_000_000) & 0xFFFFFFFF or 1

    def on_report(self, report: w.StreamReport, *, late_frames_dropped: bool = False) -> None:
        self.reports.append(report)


class FakeConn:
    """The connection and the client in one: parses what is flushed, acks like spice-gtk."""

    peer = "test"

    def __init__(self) -> None:
        self.channel: DisplayChannel | None = None
        self.viewer: SpiceViewer | None = None
        self.congested = False
        self.closed: str | None = None
        self.received: list[w.Message] = []
        self._reader = w.MessageReader(mini=True, limit=w.MAX_SERVER_MESSAGE_SIZE)
        self._window = 0
        self._count = 0
        self.acks = 0

    def buffered(self) -> int:
        return 0

    def flush(self) -> None:
        assert self.channel is not None and self.viewer is not None
        self._reader.feed(self.channel.data_to_send())
        replies = b""
        while (raw := self._reader.next()) is not None:
            msg = w.parse(w.SERVER_MESSAGES[w.ChannelType.DISPLAY], raw.type, raw.body)
            assert msg is not None
            self.received.append(msg)
            if isinstance(msg, w.SetAck):
                self._window, self._count = msg.window, 0
                replies += w.frame(w.AckSync(msg.generation), mini=True)
            elif self._window:
                self._count += 1
                if self._count % self._window == 0:
                    replies += w.frame(w.Ack(), mini=True)
                    self.acks += 1
        if replies:
            self.viewer.receive(replies)

    def close(self, reason: str, *, warn: bool = False) -> None:
        self.closed = reason

    def of(self, kind: type[w.Message]) -> list[Any]:
        return [m for m in self.received if isinstance(m, kind)]


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def make_viewer(
    loop: asyncio.AbstractEventLoop, caps: tuple[int, ...], codecs: list[str]
) -> tuple[SpiceViewer, FakeConn, FakeServer]:
    display = Display()
    display.scanout(W, H)
    server = FakeServer(display, loop, codecs)
    session = FakeSession(server)
    conn = FakeConn()
    channel = DisplayChannel(mini_header=True, client_caps=caps)
    viewer = SpiceViewer(session, conn, channel)  # type: ignore[arg-type]
    conn.channel, conn.viewer = channel, viewer
    viewer.start()
    return viewer, conn, server


class Producer:
    """Presents frames to the display through a sink that is always ready."""

    def __init__(self, display: Display) -> None:
        self.display = display
        self.taken: list[Frame] = []
        display.add_sink(self)

    @property
    def ready(self) -> bool:
        return True

    def offer(self, frame: Frame) -> None:
        self.taken.append(frame)

    def damage(self, rect: Area) -> None:
        pass

    def present(self, value: int, damage: Area | None = None) -> Frame:
        img = np.full((H, W, 4), value, np.uint8)
        self.display.present(img, damage, owned=True)
        return self.taken[-1]


def packet(frame: Frame, codec: str, keyframe: bool = True) -> Packet:
    return Packet(codec, b"frame%d" % frame.seq, keyframe, W, H, frame.seq, frame.capture_us)


def still(viewer: SpiceViewer, loop: asyncio.AbstractEventLoop) -> None:
    """Pretend the picture stood still long enough, and run the refresh."""
    viewer._last_packet_at -= 10
    viewer._refresh()
    loop.run_until_complete(asyncio.sleep(0.1))  # any pump retries


def test_start_sequence(loop: asyncio.AbstractEventLoop) -> None:
    viewer, conn, server = make_viewer(loop, GTK_DISPLAY, ["h264", "mjpeg"])
    kinds = [type(m) for m in conn.received]
    assert kinds == [w.SetAck, w.SurfaceCreate, w.MonitorsConfig, w.DrawFill, w.DisplayMark]
    assert viewer.codec == "h264" and set(server.broadcast.streams) == {"h264"}


def test_h264_frames_end_with_two_delimiters(loop: asyncio.AbstractEventLoop) -> None:
    viewer, conn, server = make_viewer(loop, GTK_DISPLAY, ["h264"])
    producer = Producer(server.display)
    viewer.send_packet(packet(producer.present(1), "h264"))
    data = conn.of(w.StreamDataSized)
    assert data[0].data == H264_FRAME_END  # the empty first message (pairing)
    assert data[1].data == b"frame1" + H264_FRAME_END


def test_packets_wait_for_a_keyframe(loop: asyncio.AbstractEventLoop) -> None:
    viewer, conn, server = make_viewer(loop, GTK_DISPLAY, ["vp8"])
    producer = Producer(server.display)
    viewer.send_packet(packet(producer.present(1), "vp8", keyframe=False))
    assert conn.of(w.StreamCreate) == []
    assert server.broadcast.streams["vp8"].keyframes_asked == 1
    viewer.send_packet(packet(producer.present(2), "vp8", keyframe=True))
    assert len(conn.of(w.StreamCreate)) == 1 and len(conn.of(w.StreamDataSized)) == 1


def test_clip_follows_damage_and_refresh_covers_it(loop: asyncio.AbstractEventLoop) -> None:
    viewer, conn, server = make_viewer(loop, GTK_DISPLAY, ["mjpeg"])
    producer = Producer(server.display)
    viewer.send_packet(packet(producer.present(1), "mjpeg"))  # first: whole, unclipped
    assert conn.of(w.StreamClip) == []
    still(viewer, loop)  # everything went lossy once: the first refresh is whole
    assert viewer.last_refresh == [(0, 0, W, H)]
    viewer._history.clear()  # forget the first second (the whole-picture clip)
    strip = Area(0, 10, W, 8)
    viewer.send_packet(packet(producer.present(2, strip), "mjpeg"))
    clip = conn.of(w.StreamClip)[-1].clip
    assert clip.rects == (w.Rect.of(0, 10, W, 8),)
    before = len(conn.of(w.DrawCopy))
    still(viewer, loop)
    copies = conn.of(w.DrawCopy)[before:]
    assert viewer.last_refresh == [(0, 10, W, 8)]
    assert [c.box for c in copies] == [w.Rect.of(0, 10, W, 8)]
    frame = server.display.last_frame
    assert frame is not None and copies[0].image.data == frame.pixels[10:18].tobytes()


def test_no_refresh_while_waiting_for_a_keyframe(loop: asyncio.AbstractEventLoop) -> None:
    """Packets this viewer drops while it waits for a keyframe are motion all the same."""
    viewer, conn, server = make_viewer(loop, GTK_DISPLAY, ["vp8"])
    producer = Producer(server.display)
    viewer.send_packet(packet(producer.present(1), "vp8"))
    viewer._drop()  # say the link refused the next one: wait for a keyframe
    viewer._last_packet_at -= 10
    viewer.send_packet(packet(producer.present(2), "vp8", keyframe=False))  # dropped
    viewer._refresh()
    loop.run_until_complete(asyncio.sleep(0.1))
    assert viewer.refreshes == 0 and conn.of(w.DrawCopy) == []


def test_withheld_packets_make_the_next_frame_whole(loop: asyncio.AbstractEventLoop) -> None:
    viewer, conn, server = make_viewer(loop, GTK_DISPLAY, ["mjpeg"])
    producer = Producer(server.display)
    viewer.send_packet(packet(producer.present(1), "mjpeg"))
    viewer._history.clear()
    viewer.send_packet(packet(producer.present(2, Area(0, 0, 8, 8)), "mjpeg"))
    assert conn.of(w.StreamClip)[-1].clip.rects
    server.broadcast.streams["mjpeg"].seats[viewer].dropped += 1  # the broadcast skipped one
    viewer.send_packet(packet(producer.present(3, Area(0, 0, 8, 8)), "mjpeg"))
    assert conn.of(w.StreamClip)[-1].clip.rects is None  # drawn whole


def test_html5_refresh_never_waits_for_an_ack_it_cannot_get(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Before a sharp refresh spice-html5's VP8 stream is destroyed. When that destroy was
    the 10th message after an ACK, it once stayed unsent while the refresh waited for an
    ACK, which the client only sends once it *has* 10 messages: nothing ever came."""
    viewer, conn, server = make_viewer(loop, HTML5_DISPLAY, ["vp8"])
    producer = Producer(server.display)
    value = 0
    while True:  # frames until the client is 9 messages past its last ACK
        value += 1
        viewer.send_packet(packet(producer.present(value), "vp8"))
        if conn._count % ACK_WINDOW == ACK_WINDOW - 1:
            break
    assert viewer.channel.unacked == ACK_WINDOW - 1
    before = len(conn.of(w.DrawCopy))
    still(viewer, loop)
    assert conn.of(w.StreamDestroy), "the stream was not taken away"
    copies = conn.of(w.DrawCopy)[before:]
    assert sum(c.box.height for c in copies) == H, "the refresh did not arrive"


def test_reports_keep_numbers_and_cap_the_rate(loop: asyncio.AbstractEventLoop) -> None:
    viewer, _, server = make_viewer(loop, GTK_DISPLAY, ["vp8"])
    producer = Producer(server.display)
    viewer.send_packet(packet(producer.present(1), "vp8"))
    stream = viewer.channel.stream
    assert stream is not None
    assert viewer.rate_kbps() == START_KBPS  # a new viewer's estimate starts low
    viewer.rate.target_kbps = 4000  # as if its ACKs had shown a fast link
    assert viewer.rate_kbps() == 4000
    # Frames a little late are the spread of frame sizes the video delay follows...
    slightly = w.StreamReport(stream.id, stream.unique_id, 1, 2, 5, 5, -40, 0xFFFFFFFF)
    for _ in range(3):
        viewer.receive(w.frame(slightly, mini=True))
    assert viewer.report_cap_kbps is None
    # ...frames far behind it, again and again, cap the rate.
    late = w.StreamReport(stream.id, stream.unique_id, 1, 2, 5, 5, -100, 0xFFFFFFFF)
    for _ in range(2):
        viewer.receive(w.frame(late, mini=True))
    assert viewer.last_report == late and viewer.session.reports[-2:] == [late, late]  # type: ignore[attr-defined]
    assert viewer.rate_kbps() == 0.8 * 4000
    good = w.StreamReport(stream.id, stream.unique_id, 1, 2, 5, 0, 20, 0xFFFFFFFF)
    for _ in range(30):
        viewer.receive(w.frame(good, mini=True))
    assert viewer.report_cap_kbps is None


def test_ack_window_closes_and_reopens(loop: asyncio.AbstractEventLoop) -> None:
    viewer, conn, server = make_viewer(loop, GTK_DISPLAY, ["mjpeg"])
    conn._window = 0  # this client stops acking
    producer = Producer(server.display)
    sent = 0
    while viewer.writable(2):
        viewer.send_packet(packet(producer.present(sent), "mjpeg"))
        sent += 1
    assert not viewer.writable() and sent <= 2 * ACK_WINDOW + 2
    viewer.receive(w.frame(w.Ack(), mini=True) * 2)
    assert viewer.writable() and server.broadcast.ready_calls == 1


def test_damage_log_ranges() -> None:
    display = Display()
    log = DamageLog(display)
    display.add_sink(log)
    producer = Producer(display)
    producer.present(1)  # seq 1, tagged 0
    producer.present(2, Area(1, 1, 2, 2))  # seq 2, tagged 1
    producer.present(3, Area(5, 5, 2, 2))  # seq 3, tagged 2
    assert log.between(2, 2) == [Area(5, 5, 2, 2)]
    assert log.between(1, 2) == [Area(1, 1, 2, 2), Area(5, 5, 2, 2)]
    assert log.between(3, 2) == []
