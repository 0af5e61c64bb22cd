"""Hostile bytes on every port of a running Saffron, while two good viewers watch.

A whole Saffron (web page, /ws, /spice, the SPICE port) runs in-process with the
pattern producer (tests/support/harness.py). A SPICE viewer and a web viewer watch it
throughout; each test checks that they keep receiving frames. Hypothesis then
sends random and mutated link messages, channel messages after a real link,
WebSocket handshakes and frames (to /ws, /spice and the SPICE port) and HTTP
requests. After each attempt the client half-closes and reads until the server
closes, so nothing depends on timing. Every connection must end with the server
closing it and logging so, naming it (on the SPICE port, with the reason); its
slot must come back; nothing may be logged as an error; and where the server's
answer shows it judged the input bad (an HTTP 400, a WebSocket closed for a
protocol error, a refused SPICE link) a warning must name the peer.

What the fuzz did (attempts, connections, how they ended, bytes sent, the frames
the good viewers got meanwhile) goes to .cache/test-artifacts/fuzz.json and to
one line of pytest's terminal summary.

The examples are derandomized (the same every run) and few, so this takes well
under a minute. A longer run, for the bench:

    SAFFRON_FUZZ_EXAMPLES=5000 python -m pytest tests/integration/test_fuzz_net.py
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import os
import re
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saffron.bench import clients, spice_client
from saffron.bench.spice_client import PyClient
from saffron.net import limits as limits_module
from saffron.spice import server as spice_server_module
from saffron.spice.protocol import wire as w
from saffron.web import guard as web_guard_module
from tests.support.artifacts import publish
from tests.support.harness import Live, watched_saffron
from tests.support.streams import (
    HALF_SENT,
    UPGRADE,
    Streams,
    connect,
    exchange,
    link_mess,
    local_port,
    upgrade,
    ws_frame,
)
from tests.support.wait import wait_until

EXAMPLES = int(os.environ.get("SAFFRON_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)

PROGRESS_EVERY = 10
"""Attempts between two checks that the good viewers still receive frames."""

CLIENT_CAPS = spice_client.CLIENT_COMMON_CAPS
MINI_OFF_CAPS = w.make_caps([w.CommonCap.PROTOCOL_AUTH_SELECTION, w.CommonCap.AUTH_SPICE])


# -- the server, and what the fuzz did -------------------------------------------------------


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    with watched_saffron(level=logging.DEBUG) as live:
        yield live


@pytest.fixture
def check(live: Live) -> Iterator[Live]:
    """Per test: no error logged, the connections back down, the watchers still going."""
    start = len(live.records)
    yield live
    live.settled()
    live.progress()
    assert not live.records.errors(start)


COUNTS = ("attempts", "connections", "warned", "quiet", "bytes_sent")


@dataclass
class Figures:
    """What the fuzz did, by target, and the frames the good viewers received from
    its first attempt to its last."""

    by_target: dict[str, dict[str, int]] = field(default_factory=dict)
    frames_at_start: int | None = None
    frames_at_end: int = 0

    def add(self, target: str, what: str, n: int = 1) -> int:
        counts = self.by_target.setdefault(target, dict.fromkeys(COUNTS, 0))
        counts[what] += n
        return counts[what]

    def publish(self) -> None:
        t = {k: sum(counts[k] for counts in self.by_target.values()) for k in COUNTS}
        frames = self.frames_at_end - (self.frames_at_start or 0)
        publish(
            "fuzz",
            {**t, "watcher_frames": frames, "examples": EXAMPLES, "by_target": self.by_target},
            f"fuzz: {t['attempts']} attempts, {t['connections']} connections, "
            f"{t['warned']} warned, {t['quiet']} quiet, {t['bytes_sent']} bytes sent; "
            f"the good viewers got {frames} frames throughout",
        )


@pytest.fixture(scope="module")
def figures(live: Live) -> Iterator[Figures]:
    figures = Figures()
    yield figures
    if figures.by_target:
        figures.publish()


def naming(port: int) -> re.Pattern[str]:
    """A log line that names the connection from local port ``port``."""
    return re.compile(rf":{port}(?!\d)")


def closing(port: int, web: bool) -> re.Pattern[str]:
    """The server's line that it closed the connection from ``port`` (or, for a channel
    of a SPICE session, a channel of the session whose main channel is from ``port``)."""
    peer = rf"127\.0\.0\.1:{port}(?!\d)"
    if web:
        return re.compile(rf"^web connection from {peer} closed")
    return re.compile(
        rf"^(closing SPICE connection from {peer}.*: |SPICE connection from {peer}.* closed: "
        rf"|SPICE connection from {peer}.* refused|SPICE client {peer}: closing the \w+ channel: "
        rf"|SPICE client {peer}: \w+ channel closed \(|SPICE client {peer} disconnected \()"
    )


PROTOCOL_ERRORS = {1002, 1003, 1007, 1008, 1009}
"""WebSocket close codes that say the peer broke the protocol."""


def judged_bad(answer: bytes) -> str | None:
    """How the server's answer shows that it judged the input bad, if it does."""
    responses = [r for r in re.split(rb"(?=^HTTP/1\.[01] )", answer, flags=re.M) if r]
    for i, response in enumerate(responses):
        # Bytes that are not HTTP at all in place of a first request are internet noise,
        # which the server logs at debug level (see web.guard._BadRequestsAreWarnings).
        noise = i == 0 and b"Invalid method encountered" in response
        if response.startswith((b"HTTP/1.1 400 ", b"HTTP/1.0 400 ")) and not noise:
            return "it answered 400"
    code = ws_close_code(answer)
    if code in PROTOCOL_ERRORS:
        return f"it closed the WebSocket with code {code}"
    if answer[:4] == w.MAGIC and len(answer) >= w.LinkHeader.SIZE + 4:
        (error,) = struct.unpack_from("<I", answer, w.LinkHeader.SIZE)
        if error not in (w.LinkErr.OK, w.LinkErr.NEED_SECURED):
            return f"it refused the link ({w.LinkErr(error).name})"
    return None


def ws_close_code(answer: bytes) -> int | None:
    """The code of the close frame the server sent after a 101, if it sent one."""
    if not answer.startswith(b"HTTP/1.1 101"):
        return None
    data, i = answer[answer.find(b"\r\n\r\n") + 4 :], 0
    while i + 2 <= len(data):
        opcode, n = data[i] & 15, data[i + 1] & 127
        i += 2
        if n >= 126:
            size = 2 if n == 126 else 8
            n, i = int.from_bytes(data[i : i + size]), i + size
        if opcode == 8:
            return int.from_bytes(data[i : i + 2]) if n >= 2 else 1005
        i += n
    return None


@dataclass
class Fuzz:
    """One fuzz test's side of the figures, and how it ends a connection."""

    live: Live
    figures: Figures
    target: str

    @contextmanager
    def attempt(self) -> Iterator[None]:
        figures = self.figures
        if figures.frames_at_start is None:
            figures.frames_at_start = self.live.frames
        yield
        figures.frames_at_end = self.live.frames
        if figures.add(self.target, "attempts") % PROGRESS_EVERY == 0:
            self.live.progress()

    def connect(self, port: int) -> Streams:
        return self.live.run(connect(port))

    def finish(
        self, streams: Streams, chunks: list[bytes], also: tuple[int, ...] = (), others: int = 0
    ) -> None:
        """Send, half-close, read until the server closes; then check what it made of it:
        it logged closing the connection, naming it; the slot came back (``others``
        besides the watchers' stay open); nothing was logged as an error; and if its
        answer shows it judged the input bad, a warning names the connection.

        ``also``: other local ports that the server's lines about this one may name
        (a SPICE channel's session is named after its main channel).
        """
        live = self.live
        port = local_port(streams)
        web = streams[1].get_extra_info("peername")[1] == live.web_port
        start = len(live.records)
        sent, answer = live.run(exchange(streams, chunks, half_close=True))
        names = [naming(p) for p in (port, *also)]
        closed = [closing(p, web) for p in (port, *also)]

        def about() -> list[tuple[int, str]]:
            return [
                (level, text)
                for level, _, text in live.records.since(start)
                if any(n.search(text) for n in names)
            ]

        assert wait_until(lambda: any(c.search(t) for _, t in about() for c in closed)), (
            f"no line that the server closed the connection from port {port}: {about()}"
        )
        live.settled(others)
        errors = live.records.errors(start)
        assert not errors, errors
        warned = any(level >= logging.WARNING for level, _ in about())
        why = judged_bad(answer)
        assert warned or why is None, f"{why}, but no warning names port {port}: {about()}"
        self.figures.add(self.target, "connections")
        self.figures.add(self.target, "warned" if warned else "quiet")
        self.figures.add(self.target, "bytes_sent", sent)


@pytest.fixture
def fuzz(check: Live, figures: Figures, request: pytest.FixtureRequest) -> Fuzz:
    return Fuzz(check, figures, request.node.name.removeprefix("test_fuzz_"))


# -- strategies --------------------------------------------------------------------------------

Mutation = tuple[str, int, bytes]

mutations = st.lists(
    st.tuples(
        st.sampled_from(["set", "insert", "delete", "truncate"]),
        st.integers(0, 1 << 12),
        st.binary(min_size=1, max_size=8),
    ),
    max_size=3,
)

HUGE_SIZES = [0, 1, 17, 18, 4096, 4097, 65536, 65537, 1 << 31, (1 << 32) - 1]
"""Sizes at and around every limit, and 4 GiB - 1."""


def mutate(data: bytes, ops: list[Mutation]) -> bytes:
    out = bytearray(data)
    for op, pos, value in ops:
        at = pos % (len(out) + 1)
        if op == "set":
            out[at : at + len(value)] = value
        elif op == "insert":
            out[at:at] = value
        elif op == "delete":
            del out[at : at + len(value)]
        else:
            del out[at:]
    return bytes(out)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a] or [b""]


@st.composite
def link_bytes(draw: st.DrawFn) -> bytes:
    """A link message (and maybe mechanism and ticket), valid or nearly so."""
    channel = draw(st.sampled_from([1, 2, 3, 4]) | st.integers(0, 255))
    mess = w.LinkMess(
        draw(st.sampled_from([0, 1]) | st.integers(0, (1 << 32) - 1)),
        channel,
        draw(st.sampled_from([0]) | st.integers(0, 255)),
        draw(
            st.sampled_from([CLIENT_CAPS, MINI_OFF_CAPS, ()])
            | st.lists(st.integers(0, 2**32 - 1), max_size=3).map(tuple)
        ),
        draw(
            st.sampled_from([(), clients.SPICE_GTK_DISPLAY_CAPS])
            | st.lists(st.integers(0, 2**32 - 1), max_size=3).map(tuple)
        ),
    ).pack()
    size = draw(st.sampled_from([len(mess)] * 4 + HUGE_SIZES))
    magic = draw(st.sampled_from([w.MAGIC] * 6 + [b"REDX", b"GET ", b"\0\0\0\0"]))
    major = draw(st.sampled_from([2, 2, 2, 1, 3, 0xFFFFFFFF]))
    out = struct.pack("<4sIII", magic, major, 2, size) + mess
    if draw(st.booleans()):
        out += struct.pack("<I", draw(st.sampled_from([1, 1, 2, 0, 0xFFFFFFFF])))
        out += draw(st.sampled_from([bytes(128), b"\xff" * 128]) | st.binary(max_size=140))
    return out


@st.composite
def link_attempts(draw: st.DrawFn) -> list[bytes]:
    data = draw(link_bytes() | st.binary(max_size=300))
    data = mutate(data, draw(mutations))
    return split(data, draw(st.lists(st.integers(0, 1 << 12), max_size=4)))


def _body_sizes(cls: type[w.Message]) -> st.SearchStrategy[int]:
    fmt = getattr(cls, "FMT", None)
    exact = [fmt.size] if fmt is not None else []
    return st.sampled_from(exact * 3 + [0, 1]) | st.integers(0, 80)


@st.composite
def channel_messages(draw: st.DrawFn, channel: int, mini: bool) -> bytes:
    """A few channel messages: known types with random bodies, unknown types, lying sizes."""
    table = w.CLIENT_MESSAGES[channel]
    out = b""
    for _ in range(draw(st.integers(0, 6))):
        msg_type = draw(st.sampled_from(sorted(table)) | st.integers(0, 0xFFFF))
        cls = table.get(msg_type)
        body = draw(st.binary(min_size=0, max_size=80))
        if cls is not None:
            body = draw(st.binary(min_size=draw(_body_sizes(cls)), max_size=96))
        size = draw(st.sampled_from([len(body)] * 6 + HUGE_SIZES))
        if mini:
            header = struct.pack("<HI", msg_type, size)
        else:
            sub_list = draw(st.sampled_from([0, 0, 0, 12, 0xFFFFFFFF]))
            header = struct.pack("<QHII", draw(st.integers(0, 2**64 - 1)), msg_type, size, sub_list)
        out += header + body
    return mutate(out, draw(mutations)) if draw(st.integers(0, 3)) == 0 else out


PAGE_MESSAGES = [
    {"type": "start", "codec": "mjpeg"},
    {"type": "start", "codec": "theora"},
    {"type": "ack", "frame": 0},
    {"type": "ack", "frame": 10**30},
    {"type": "ping", "t0": 1.5},
    {"type": "stats", "fps": 60},
    {"type": "key", "code": "KeyA", "down": True},
    {"type": "pointer", "x": -(10**12), "y": 1e308},
    {"type": "button", "button": 99, "down": 1},
    {"type": "wheel", "dy": "NaN"},
    {"type": None},
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def page_payloads(draw: st.DrawFn) -> tuple[int, bytes]:
    """What a page might send on /ws, or something like it: (opcode, payload)."""
    choice = draw(st.integers(0, 3))
    if choice == 0:
        msg = dict(draw(st.sampled_from(PAGE_MESSAGES)))
        for key in draw(
            st.lists(st.sampled_from(["frame", "codec", "x", "down", "type"]), max_size=2)
        ):
            msg[key] = draw(json_values)
        return 1, json.dumps(msg).encode()
    if choice == 1:
        return 1, json.dumps(draw(json_values)).encode()
    if choice == 2:
        return 1, draw(st.text(max_size=60)).encode()
    return draw(st.sampled_from([2, 0, 9, 10, 8, 3, 15])), draw(st.binary(max_size=60))


@st.composite
def spice_payloads(draw: st.DrawFn) -> tuple[int, bytes]:
    opcode = draw(st.sampled_from([2, 2, 2, 0, 1, 9, 10, 8, 7]))
    return opcode, draw(link_bytes() | st.binary(max_size=80))


@st.composite
def ws_attempts(draw: st.DrawFn, path: str, payloads: Any) -> list[bytes]:
    """A WebSocket upgrade (usually right) and a few frames (often wrong)."""
    key = base64.b64encode(draw(st.binary(min_size=16, max_size=16))).decode()
    request = UPGRADE.format(path=path, key=key).encode()
    if draw(st.integers(0, 4)) == 0:
        lines = request.split(b"\r\n")
        del lines[draw(st.integers(1, 5))]
        request = b"\r\n".join(lines)
    if draw(st.integers(0, 5)) == 0:
        request = mutate(request, draw(mutations))
    frames = b""
    for _ in range(draw(st.integers(0, 4))):
        opcode, payload = draw(payloads)
        frames += ws_frame(
            opcode,
            payload,
            fin=draw(st.sampled_from([True, True, True, False])),
            rsv=draw(st.sampled_from([0, 0, 0, 0, 1, 4])),
            mask=draw(
                st.sampled_from([b"\x11\x22\x33\x44", b"\0\0\0\0", None, b"\x11\x22\x33\x44"])
            ),
            length=draw(
                st.sampled_from([None] * 6 + [126, 65535, 1 << 32, (1 << 63) - 1, (1 << 64) - 1])
            ),
        )
    if draw(st.integers(0, 3)) == 0:
        frames = mutate(frames, draw(mutations))
    return split(request + frames, draw(st.lists(st.integers(0, 1 << 12), max_size=3)))


@st.composite
def http_attempts(draw: st.DrawFn) -> list[bytes]:
    method = draw(st.sampled_from(["GET", "POST", "HEAD", "PUT", "OPTIONS", "G\0T", "BREW"]))
    path = draw(
        st.sampled_from(
            [
                "/",
                "/ws",
                "/spice",
                "/login",
                "/metrics",
                "/healthz",
                "/static/app.js",
                "/static/../app.py",
                "/spice-html5/../../../etc/passwd",
                "/?token=x",
                "/" + "a" * 9000,
            ]
        )
    )
    version = draw(
        st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1x", ""])
    )
    headers = ["Host: 127.0.0.1"]
    body = draw(st.binary(max_size=100))
    for header in draw(
        st.lists(
            st.sampled_from(
                [
                    f"Content-Length: {len(body)}",
                    "Content-Length: 99999999999999999999",
                    "Content-Length: -1",
                    "Transfer-Encoding: chunked",
                    "Content-Type: application/x-www-form-urlencoded",
                    "Connection: close",
                    "Connection: keep-alive, Upgrade",
                    "Upgrade: websocket",
                    "Origin: http://evil.example",
                    "Cookie: saffron_session=" + "x" * 100,
                    "X-Long: " + "y" * 9000,
                    "Bad Header: 1",
                    ": empty",
                ]
            ),
            max_size=4,
        )
    ):
        headers.append(header)
    request = f"{method} {path} {version}\r\n" + "\r\n".join(headers) + "\r\n\r\n"
    data = mutate(request.encode("latin-1") + body, draw(mutations))
    return split(data, draw(st.lists(st.integers(0, 1 << 14), max_size=3)))


# -- the fuzz tests ------------------------------------------------------------------------------


@FUZZ
@given(chunks=link_attempts())
def test_fuzz_spice_link(fuzz: Fuzz, chunks: list[bytes]) -> None:
    """Random and mutated link messages on the SPICE port."""
    with fuzz.attempt():
        fuzz.finish(fuzz.connect(fuzz.live.spice_port), chunks)


def streams_of(client: PyClient) -> Streams:
    return client.stream.reader, client.stream.writer


@FUZZ
@given(data=st.data())
def test_fuzz_spice_channels(fuzz: Fuzz, data: st.DataObject) -> None:
    """Real links, then random and mutated messages on the main, display, inputs and cursor."""
    live = fuzz.live
    channel = data.draw(st.sampled_from([1, 2, 3, 4]))
    mini = data.draw(st.booleans())
    common = CLIENT_CAPS if mini else MINI_OFF_CAPS
    caps = data.draw(st.sampled_from([(), clients.SPICE_GTK_DISPLAY_CAPS, (0xFFFFFFFF,)]))
    messages = data.draw(channel_messages(channel, mini))
    chunks = split(messages, data.draw(st.lists(st.integers(0, 1 << 10), max_size=3)))
    with fuzz.attempt():
        main = live.run(PyClient.open(live.spice_port, w.ChannelType.MAIN, common_caps=common))
        assert main.ok and main.mini == mini, main.link
        session = live.run(main.expect(w.MainInit)).session_id
        if channel == w.ChannelType.MAIN:
            fuzz.finish(streams_of(main), chunks)
            return
        other = live.run(
            PyClient.open(
                live.spice_port,
                channel,
                connection_id=session,
                channel_caps=caps,
                common_caps=common,
            )
        )
        assert other.ok, other.link
        main_port = local_port(streams_of(main))
        fuzz.finish(streams_of(other), chunks, also=(main_port,), others=1)
        fuzz.finish(streams_of(main), [])


@FUZZ
@given(data=st.data())
def test_fuzz_websockets(fuzz: Fuzz, data: st.DataObject) -> None:
    """WebSocket upgrades and frames to /ws, /spice on the web port, and the SPICE port."""
    where = data.draw(st.sampled_from(["/ws", "/spice", "spice-port"]))
    if where == "/ws":
        chunks = data.draw(ws_attempts("/ws", page_payloads()))
    else:
        chunks = data.draw(ws_attempts("/spice" if where == "/spice" else "/", spice_payloads()))
    port = fuzz.live.spice_port if where == "spice-port" else fuzz.live.web_port
    with fuzz.attempt():
        fuzz.finish(fuzz.connect(port), chunks)


@FUZZ
@given(chunks=http_attempts())
def test_fuzz_http(fuzz: Fuzz, chunks: list[bytes]) -> None:
    """Random and mutated HTTP requests to the web port."""
    with fuzz.attempt():
        fuzz.finish(fuzz.connect(fuzz.live.web_port), chunks)


# -- inputs that are certainly wrong: a warning that names the connection ----------------------


FOUR_GIB_FRAME = ws_frame(2, b"x" * 64, length=(1 << 32) + 64)
CLOSE_FRAME = ws_frame(8, struct.pack(">H", 1000))
BAD_INPUTS: dict[str, tuple[str, bytes, str]] = {
    "spice-not-spice": ("spice", b"HELLO WORLD, ANYONE THERE?\r\n", "not a SPICE client"),
    "spice-4gib-link": (
        "spice",
        struct.pack("<4sIII", w.MAGIC, 2, 2, (1 << 32) - 1),
        "link message of 4294967295 bytes",
    ),
    "spice-version-3": ("spice", struct.pack("<4sIII", w.MAGIC, 3, 0, 18), "version 3 is not 2"),
    "spice-no-such-channel": ("spice", link_mess(99), "no type-99 channel"),
    "spice-sasl": ("spice", link_mess() + struct.pack("<I", 2) + bytes(128), "mechanism 2"),
    "spice-port-http": ("spice", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "Missing header"),
    "spice-port-text-frame": (
        "spice",
        upgrade("/") + ws_frame(1, b"REDQ"),
        "text frame",
    ),
    "spice-port-4gib-frame": ("spice", upgrade("/") + FOUR_GIB_FRAME, "not a SPICE client"),
    "ws-upgrade-not-utf8": (
        "web",
        upgrade("/ws").replace(b"Upgrade: websocket", b"Upgrade:\x80websocket"),
        "headers are not text",
    ),
    "ws-key-not-ascii": (
        "web",
        upgrade("/spice").replace(b"Key: AAAA", "Key: ÄÄ".encode()),
        "headers are not text",
    ),
    "ws-binary": ("web", upgrade("/ws") + ws_frame(2, b"\x01\x02"), "microphone message"),
    "ws-not-json": ("web", upgrade("/ws") + ws_frame(1, b"{{{"), "not JSON"),
    "ws-unknown-type": ("web", upgrade("/ws") + ws_frame(1, b'{"type": "x"}'), "unknown message"),
    "ws-4gib-frame": ("web", upgrade("/ws") + FOUR_GIB_FRAME, "exceeds limit"),
    "web-spice-4gib-frame": ("web", upgrade("/spice") + FOUR_GIB_FRAME, "exceeds limit"),
    "web-spice-text": ("web", upgrade("/spice") + ws_frame(1, link_mess()), "text frame"),
    "web-spice-junk": ("web", upgrade("/spice") + ws_frame(2, b"JUNKJUNKJUNKJUNK"), "not a SPICE"),
    "web-long-header": ("web", b"GET / HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", "bad HTTP"),
    "web-bad-chunks": (
        "web",
        b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\n",
        "bad HTTP",
    ),
}


def closed_with_warning(live: Live, streams: Streams, data: bytes, words: str) -> None:
    """Send ``data`` and read, without half-closing: the server must close the connection
    on its own, and log a warning that names it and says ``words``."""
    port = local_port(streams)
    start = len(live.records)
    live.run(exchange(streams, [data], half_close=False))

    def warnings() -> list[str]:
        return [
            text
            for level, _, text in live.records.since(start)
            if level == logging.WARNING and naming(port).search(text)
        ]

    assert wait_until(lambda: any(words in text for text in warnings())), (
        warnings() or live.records.since(start)
    )


def port_of(live: Live, where: str) -> int:
    return live.spice_port if where == "spice" else live.web_port


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_closed_with_a_warning(check: Live, case: str) -> None:
    """The server closes these on its own (no half-close here) and warns, naming the
    peer. The 4 GiB sizes among them are refused as soon as their header is in: the
    rest never comes, so a server that waited for it would time out instead."""
    where, data, words = BAD_INPUTS[case]
    if data.startswith(b"GET /ws") or data.startswith(b"GET /spice"):
        data += CLOSE_FRAME  # as a browser answers the server's close (aiohttp waits for it)
    closed_with_warning(check, check.run(connect(port_of(check, where))), data, words)


@pytest.mark.parametrize("mini", [True, False], ids=["mini-header", "full-header"])
def test_4gib_message_after_the_link_is_refused_on_sight(check: Live, mini: bool) -> None:
    """A linked main channel announces a 4 GiB message: the server closes the channel as
    soon as the header is in, saying why, rather than wait for the body (never sent)."""
    common = CLIENT_CAPS if mini else MINI_OFF_CAPS
    main = check.run(PyClient.open(check.spice_port, w.ChannelType.MAIN, common_caps=common))
    check.run(main.expect(w.MainInit))
    size = (1 << 32) - 1
    header = struct.pack("<HI", 1, size) if mini else struct.pack("<QHII", 1, 1, size, 0)
    closed_with_warning(check, streams_of(main), header, f"message of {size} bytes is over")


# -- half-sent handshakes time out --------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(HALF_SENT))
def test_half_sent_handshake_times_out(
    check: Live, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """A client that sends part of a handshake and waits is closed, with a warning."""
    monkeypatch.setattr(spice_server_module, "LINK_TIMEOUT_S", 0.5)
    monkeypatch.setattr(web_guard_module, "HANDSHAKE_TIMEOUT_S", 0.5)
    where, data, words = HALF_SENT[case]
    closed_with_warning(check, check.run(connect(port_of(check, where))), data, words)


def test_idle_keepalive_connection_is_closed_quietly(
    check: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a complete request, an idle browser connection is closed without a warning."""
    monkeypatch.setattr(web_guard_module, "HANDSHAKE_TIMEOUT_S", 0.5)
    streams = check.run(connect(check.web_port))
    port = local_port(streams)
    start = len(check.records)
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    _, answer = check.run(exchange(streams, [request], half_close=False))
    assert answer.startswith(b"HTTP/1.1 200")
    about = [r for r in check.records.since(start) if naming(port).search(r[2])]
    assert about and all(level < logging.WARNING for level, _, _ in about), about


def test_refusal_log_is_summed_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """A flood of refusals is one line, then a count, not one line each."""
    caught: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            caught.append(record.getMessage())

    handler = Catch()
    logging.getLogger("saffron.limits").addHandler(handler)
    try:
        limits = limits_module.ConnectionLimits(max_connections=5, max_per_address=2)
        slots = [limits.admit("10.0.0.1", "SPICE") for _ in range(2)]
        assert all(slots)
        for _ in range(1000):
            assert limits.admit("10.0.0.1", "SPICE") is None
        limits.flush_log()
        assert len(caught) == 2, caught
        assert "refused a SPICE connection from 10.0.0.1" in caught[0]
        assert "refused 999 more connections from 10.0.0.1" in caught[1]
        for slot in slots:
            limits.release(slot)
            limits.release(slot)  # twice is harmless
        assert limits.total == 0 and limits.open_from("10.0.0.1") == 0
    finally:
        logging.getLogger("saffron.limits").removeHandler(handler)
