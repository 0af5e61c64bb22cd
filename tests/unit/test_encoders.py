"""Encoders: what goes in comes out (decoded with FFmpeg), keyframes on request."""

from __future__ import annotations

import av
import numpy as np
import pytest
import simplejpeg
from av.video.frame import VideoFrame

from saffron.display import Display, Frame, Rect
from saffron.encoders.base import EncoderError
from saffron.encoders.ffmpeg import FFmpegEncoder, FFmpegProfile
from saffron.encoders.registry import available_codecs, create_encoder, probe
from saffron.sources.pattern import PatternSource, background, read_stamp

W, H = 320, 240
DECODERS = {"h264": "h264", "vp8": "vp8", "vp9": "vp9", "av1": "libdav1d"}

# Measured against the source after the 4:2:0 conversion every encoder starts
# with (that conversion alone costs this scene's 1-pixel coloured lines about
# 32 dB, whatever the codec). 33 dB against it means the codec's own loss is
# faint; at 4 Mbit/s for 320x240 the encoders here score about 54 (x264),
# 46 (VP8), 43 (VP9), 35 (SVT-AV1 preset 12) and 36 (JPEG q75), while a wrong
# colour order, a flipped picture or a broken stride scores under 15.
PSNR_FLOOR = 33.0


def as_420(img: np.ndarray) -> np.ndarray:
    """What a 4:2:0 encoder is really given: the source through FFmpeg's scaler."""
    frame = VideoFrame.from_numpy_buffer(np.ascontiguousarray(img), format="bgra")
    return frame.reformat(format="yuv420p").reformat(format="bgra").to_ndarray()


def scene(t: float) -> np.ndarray:
    img = background(W, H)
    x = int(40 + 100 * t)
    img[80:160, x : x + 60] = (30, 200, 250, 255)
    return img


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / max(mse, 1e-9)))


def test_software_encoders_work_here() -> None:
    # CI installs everything these need: a missing one is a failure, not a skip.
    assert {"h264", "vp8", "vp9", "av1", "mjpeg"} <= set(available_codecs())
    by_name = {r.backend.name: r for r in probe()}
    assert by_name["libx264"].works and by_name["libjpeg-turbo"].works


@pytest.mark.parametrize("codec", ["h264", "vp8", "vp9", "av1"])
def test_video_round_trip(codec: str) -> None:
    enc = create_encoder(codec, W, H, 30, 4000)
    dec = av.CodecContext.create(DECODERS[codec], "r")
    if codec == "av1":
        dec.options = {"max_frame_delay": "1"}  # dav1d otherwise holds frames back
    scores = []
    for i in range(12):
        src = scene(i / 12)
        packet = enc.encode(Frame(src, Rect(0, 0, W, H), i, i), keyframe=(i == 6))
        assert packet.codec == codec and (packet.width, packet.height) == (W, H)
        if i in (0, 6):
            assert packet.keyframe, f"frame {i} should be a keyframe"
        elif i > 1:
            assert not packet.keyframe
        frames = dec.decode(av.Packet(packet.data))
        assert len(frames) == 1, "one packet in must give one picture out: no lag"
        out = frames[0].to_ndarray(format="bgra")
        scores.append(psnr(out[..., :3], as_420(src)[..., :3]))
    assert min(scores) > PSNR_FLOOR, scores


def test_mjpeg_round_trip_and_quality_follows_bitrate() -> None:
    src = scene(0.3)
    enc = create_encoder("mjpeg", W, H, 30, 20000)
    packet = enc.encode(Frame(src, Rect(0, 0, W, H), 0))
    assert packet.keyframe and packet.data[:2] == b"\xff\xd8"
    out = simplejpeg.decode_jpeg(packet.data, colorspace="BGRX")
    assert psnr(out[..., :3], as_420(src)[..., :3]) > PSNR_FLOOR
    small = create_encoder("mjpeg", W, H, 30, 200)
    sizes = [len(small.encode(Frame(src, Rect(0, 0, W, H), i)).data) for i in range(40)]
    assert sizes[-1] < sizes[0], "a low bitrate must lower the JPEG quality"


def test_bitrate_change_takes_effect() -> None:
    enc = create_encoder("vp8", W, H, 30, 4000)
    rng = np.random.default_rng(0)
    big = sum(
        len(enc.encode(Frame(rng.integers(0, 255, (H, W, 4), np.uint8), Rect(0, 0, W, H), i)).data)
        for i in range(10)
    )
    enc.set_bitrate(200)
    small = sum(
        len(enc.encode(Frame(rng.integers(0, 255, (H, W, 4), np.uint8), Rect(0, 0, W, H), i)).data)
        for i in range(10)
    )
    assert small < big / 2


def test_unknown_codec_is_a_clear_error() -> None:
    with pytest.raises(EncoderError, match="no working"):
        create_encoder("theora", W, H, 30, 1000)


def test_encoder_that_does_not_open_says_why_in_a_few_words() -> None:
    """FFmpeg's error text repeats the whole avcodec_open2 call with its options:
    ``saffron probe`` and the log give only the reason."""
    profile = FFmpegProfile("h264", "libx264", {"preset": "no-such-preset"})
    with pytest.raises(EncoderError) as caught:
        FFmpegEncoder(profile, W, H, 30, 1000).encode(
            Frame(np.zeros((H, W, 4), np.uint8), Rect(0, 0, W, H), 0), keyframe=True
        )
    assert str(caught.value) == "libx264 does not open here: Invalid argument"


def test_pattern_stamp_survives_encoding() -> None:
    p = PatternSource(Display(), 640, 360, 30, motion=0.5)
    img, _ = p.make_frame(0.5, 1_764_000_123_456_789)
    assert read_stamp(img) == 1_764_000_123_456_789
    enc = create_encoder("h264", 640, 360, 30, 2000)
    dec = av.CodecContext.create("h264", "r")
    packet = enc.encode(Frame(img, Rect(0, 0, 640, 360), 0), keyframe=True)
    out = dec.decode(av.Packet(packet.data))[0].to_ndarray(format="bgra")
    assert read_stamp(out) == 1_764_000_123_456_789
