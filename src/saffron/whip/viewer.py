"""The media server as one more viewer of the broadcast, kept up by a WHIP publisher.

How the packets reach RTP without a second encode: aiortc's RTCRtpSender reads its
track's ``recv()``; given an ``av.Packet`` instead of a frame it skips its encoder and
only calls the codec's ``pack()`` (H264Encoder's splits the Annex B access unit into
NAL units and packetizes them, FU-A where they are large; Vp8Encoder's adds the VP8
payload descriptor), with the RTP timestamp from the packet's pts: here Saffron's
capture time. That is aiortc's supported path for pre-encoded media. What it does not
offer is a way to hear the receiver's RTCP when the encoder is bypassed (a PLI only
sets a flag its own encoder would read, REMB is handed to that encoder): the one hook
used is the sender's ``_handle_rtcp_packet``, wrapped on the instance, which sees every
RTCP packet addressed to the sender and still passes it on (NACK retransmission,
receiver reports).

Newest wins, as for every viewer: :class:`WhipViewer` holds at most ``QUEUE_PACKETS``
packets for the RTP sender; while they are there it is not writable, so the broadcast
skips it (and gets it a keyframe when it can take one again). The producer never
waits for it and a slow or lost media server costs the other viewers nothing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import aiohttp
import av
from aiortc import (
    MediaStreamTrack,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RTCP_PSFB_APP, RTCP_PSFB_FIR, RTCP_PSFB_PLI, RtcpPsfbPacket, unpack_remb_fci

from ..encoders.base import Packet
from .sdp import (
    backoff,
    h264_profile_level_id,
    is_constrained_baseline,
    resource_url,
    with_profile_level_id,
)

if TYPE_CHECKING:
    from ..broadcast import Broadcast

log = logging.getLogger("saffron.whip")

CODECS = ("h264", "vp8")
"""What browsers decode from a WebRTC media server, in Saffron's order of preference."""

QUEUE_PACKETS = 2
"""Packets waiting for the RTP sender beyond which the viewer is not writable."""

MAX_QUEUE_PACKETS = 6
"""Packets it may be handed anyway (admitted while it was writable): past this they are
dropped and it waits for a keyframe."""

CONNECT_TIMEOUT_S = 20.0
"""For the first keyframe, the HTTP exchange and ICE+DTLS each."""

STABLE_S = 30.0
"""A publish that stayed up this long starts its backoff afresh when it drops."""

US = Fraction(1, 1_000_000)


class WhipError(Exception):
    """A publish failed, in words for the log."""


class WhipViewer:
    """One WHIP publish as a :class:`~saffron.broadcast.Viewer` of one codec's stream."""

    def __init__(self, broadcast: Broadcast, codec: str, url: str) -> None:
        self.broadcast = broadcast
        self.codec = codec
        self.label = f"WHIP publish to {url}"
        self.first_keyframe: asyncio.Future[Packet] = asyncio.get_running_loop().create_future()
        self.connected = False
        self.closed = False
        self._queue: collections.deque[Packet] = collections.deque()
        self._wake = asyncio.Event()
        self._waiting_key = False
        self.remb_kbps: float | None = None
        self.sent = 0
        self.dropped = 0
        self.keyframe_requests = 0
        self.remb_reports = 0
        self.ice_local: list[str] = []
        """Our ICE candidates once connected, ``ADDRESS:PORT``; the server's below."""
        self.ice_remote: list[str] = []

    # -- Viewer ---------------------------------------------------------------

    def writable(self) -> bool:
        if self.closed:
            return False
        if not self.connected:
            return not self.first_keyframe.done()  # one keyframe, for the offer's profile
        return len(self._queue) < QUEUE_PACKETS

    def send_packet(self, packet: Packet) -> None:
        if not self.first_keyframe.done():
            if packet.keyframe:
                self.first_keyframe.set_result(packet)
            return
        if not self.connected or self.closed:
            return
        if self._waiting_key and not packet.keyframe:
            self.dropped += 1
            return
        if len(self._queue) >= MAX_QUEUE_PACKETS:
            self.dropped += len(self._queue)
            self._queue.clear()
            if not packet.keyframe:
                self.dropped += 1
                self._waiting_key = True
                self._keyframe()
                return
        self._waiting_key = False
        self._queue.append(packet)
        self._wake.set()

    def rate_kbps(self) -> float | None:
        return self.remb_kbps

    # -- the RTP sender's side --------------------------------------------------

    async def next_packet(self) -> Packet:
        while not self._queue:
            if self.closed:
                raise MediaStreamError
            self._wake.clear()
            await self._wake.wait()
        was_full = not self.writable()
        packet = self._queue.popleft()
        if was_full and self.writable():
            self.broadcast.viewer_ready(self)
        self.sent += 1
        return packet

    def start_sending(self) -> None:
        """The media server is connected: from now on take packets, from a keyframe."""
        self.connected = True
        self._queue.clear()
        self._keyframe()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    def _keyframe(self) -> None:
        stream = self.broadcast.stream_of(self)
        if stream is not None:
            stream.request_keyframe()  # rate-limited for everyone (broadcast.py)

    def on_rtcp(self, packet: object, ssrc: int) -> None:
        """Feedback from the media server: PLI/FIR ask for a keyframe, REMB says the rate."""
        if not isinstance(packet, RtcpPsfbPacket):
            return
        if packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            self.keyframe_requests += 1
            self._keyframe()
        elif packet.fmt == RTCP_PSFB_APP:
            try:
                bitrate, ssrcs = unpack_remb_fci(packet.fci)
            except ValueError:
                return
            if ssrc in ssrcs:
                self.remb_reports += 1
                self.remb_kbps = bitrate / 1000


class PacketTrack(MediaStreamTrack):
    """The track aiortc's sender reads: Saffron's encoded packets as ``av.Packet``."""

    kind = "video"

    def __init__(self, viewer: WhipViewer) -> None:
        super().__init__()
        self.viewer = viewer

    async def recv(self) -> Any:
        packet = await self.viewer.next_packet()
        out = av.Packet(packet.data)
        out.pts = packet.capture_us  # the RTP timestamp: the capture time at 90 kHz
        out.time_base = US
        return out


def _codec_preferences(codec: str) -> list[Any]:
    """aiortc's capability for ``codec`` (H.264: packetization-mode 1, Constrained
    Baseline; the level is set from the stream's SPS in the offer), with RTX."""
    chosen = []
    for cap in RTCRtpSender.getCapabilities("video").codecs:
        mime = cap.mimeType.lower()
        if mime == "video/rtx":
            chosen.append(cap)
        elif mime == f"video/{codec}" and (
            codec != "h264" or cap.parameters.get("profile-level-id") == "42e01f"
        ):
            chosen.insert(0, cap)
    return chosen


class WhipPublisher:
    """Keeps one WHIP publish of the broadcast up: tries again with backoff when it fails
    or drops, and ``DELETE``s the resource when it ends."""

    def __init__(
        self, broadcast: Broadcast, url: str, token: str | None, codecs: list[str]
    ) -> None:
        self.broadcast = broadcast
        self.url = url
        self.token = token
        usable = [c for c in codecs if c in CODECS]
        if not usable:
            raise WhipError(
                f"WHIP needs H.264 or VP8 and neither encoder works here ({', '.join(codecs)})"
            )
        self.codec = usable[0]
        self.viewer: WhipViewer | None = None
        """The current attempt's viewer (statistics), None between attempts."""
        self.publishes = 0
        """Publishes that got connected."""
        self.failures = 0
        self._task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="whip-publish")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _run(self) -> None:
        failures = 0
        while True:
            started = time.monotonic()
            try:
                await self._session()
                why = "the media server went away"
            except WhipError as exc:
                why = str(exc)
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                why = f"{type(exc).__name__}: {exc}"
            if time.monotonic() - started >= STABLE_S:
                failures = 0
            failures += 1
            self.failures += 1
            wait = backoff(failures)
            log.warning("WHIP publish to %s: %s; trying again in %.0f s", self.url, why, wait)
            await asyncio.sleep(wait)

    async def _session(self) -> None:
        """One publish, from the offer until the connection ends (raises WhipError if it
        does not get that far)."""
        viewer = WhipViewer(self.broadcast, self.codec, self.url)
        self.viewer = viewer
        pc = RTCPeerConnection()
        location: str | None = None
        try:
            self.broadcast.join(viewer, self.codec)
            try:
                key = await asyncio.wait_for(viewer.first_keyframe, CONNECT_TIMEOUT_S)
            except TimeoutError:
                raise WhipError(f"no {self.codec} keyframe from the encoder") from None
            transceiver = pc.addTransceiver(PacketTrack(viewer), direction="sendonly")
            transceiver.setCodecPreferences(_codec_preferences(self.codec))
            sender = transceiver.sender
            original = sender._handle_rtcp_packet

            async def hear(packet: Any) -> None:
                viewer.on_rtcp(packet, sender._ssrc)
                await original(packet)

            sender._handle_rtcp_packet = hear  # type: ignore[method-assign]
            await pc.setLocalDescription(await pc.createOffer())  # gathers every candidate
            offer = pc.localDescription.sdp
            if self.codec == "h264":
                profile = h264_profile_level_id(key.data)
                if profile is None:
                    raise WhipError("the H.264 keyframe has no SPS")
                if not is_constrained_baseline(profile):
                    log.warning(
                        "the H.264 stream is profile-level-id %s, not Constrained "
                        "Baseline: browsers may not decode it",
                        profile,
                    )
                offer = with_profile_level_id(offer, profile)
            answer, location = await self._post(offer)
            connected = asyncio.Event()
            ended = asyncio.Event()

            @pc.on("connectionstatechange")
            def _state() -> None:
                if pc.connectionState == "connected":
                    connected.set()
                elif pc.connectionState in ("failed", "closed"):
                    ended.set()

            await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
            try:
                await asyncio.wait_for(connected.wait(), CONNECT_TIMEOUT_S)
            except TimeoutError:
                raise WhipError(
                    f"the media server answered but ICE/DTLS did not connect within "
                    f"{CONNECT_TIMEOUT_S:.0f} s (state {pc.connectionState})"
                ) from None
            ice = sender.transport.transport
            viewer.ice_local = [f"{c.ip}:{c.port}" for c in ice.iceGatherer.getLocalCandidates()]
            viewer.ice_remote = [f"{c.ip}:{c.port}" for c in ice.getRemoteCandidates()]
            viewer.start_sending()
            self.publishes += 1
            log.info("publishing %s to %s over WHIP", self.codec, self.url)
            log.debug(
                "WHIP ICE candidates: ours %s, the server's %s",
                " ".join(viewer.ice_local),
                " ".join(viewer.ice_remote),
            )
            await ended.wait()
        finally:
            viewer.close()
            self.broadcast.leave(viewer)
            self.viewer = None
            if location is not None:  # first: closing the connection may end it anyway
                await asyncio.shield(self._delete(location))
            await pc.close()

    def _session_http(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        return self._http

    def _headers(self, **extra: str) -> dict[str, str]:
        headers = dict(extra)
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    async def _post(self, offer: str) -> tuple[str, str]:
        """POST the offer (RFC 9725 §4.2): the answer and the resource's address."""
        http = self._session_http()
        headers = self._headers(**{"Content-Type": "application/sdp", "Accept": "application/sdp"})
        try:
            async with http.post(self.url, data=offer.encode(), headers=headers) as resp:
                body = await resp.text()
                if resp.status != 201:
                    raise WhipError(
                        f"the media server refused the offer: HTTP {resp.status} "
                        f"{resp.reason}: {body.strip()[:200]}"
                    )
                location = resp.headers.get("Location")
                if not location:
                    raise WhipError("the media server's answer has no Location header")
                return body, resource_url(self.url, location)
        except aiohttp.ClientConnectionError as exc:
            raise WhipError(f"cannot reach the media server: {exc}") from None
        except TimeoutError:
            raise WhipError("the media server did not answer the offer within 10 s") from None

    async def _delete(self, location: str) -> None:
        """End the publish on the server's side (RFC 9725 §4.3); a failure is only logged."""
        try:
            http = self._session_http()
            async with http.delete(location, headers=self._headers()) as resp:
                if resp.status >= 300:
                    log.info("WHIP DELETE %s: HTTP %d %s", location, resp.status, resp.reason)
                else:
                    log.info("WHIP publish ended: deleted %s", location)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.info("WHIP DELETE %s failed: %s", location, exc)
