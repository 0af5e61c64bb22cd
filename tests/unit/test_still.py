"""The sharp refresh's parts: still tiles coded and decoded, which tiles are due, which go
as JPEG, one encode per tile for every viewer, and the page's wire format for them."""

from __future__ import annotations

import numpy as np
import pytest

from saffron.display import Frame, Rect
from saffron.encoders.base import Packet
from saffron.encoders.tiles import TileFormat, decode_tile, encode_tile
from saffron.still import StillRegions, TileCache, choose_formats
from saffron.web.protocol import (
    HEADER,
    KIND_TILE,
    KIND_VIDEO,
    KIND_VIDEO_DAMAGE,
    ProtocolError,
    message_kind,
    pack_tile,
    pack_video,
    unpack_tile,
    unpack_video,
)


def text_like(height: int = 64, width: int = 128, seed: int = 1) -> np.ndarray:
    """BGRX: coloured glyph-like strokes on a dark ground, the worst case for 4:2:0."""
    rng = np.random.default_rng(seed)
    px = np.zeros((height, width, 4), np.uint8)
    px[..., :3] = 16
    for _ in range(40):
        y, x = int(rng.integers(0, height - 8)), int(rng.integers(0, width - 2))
        px[y : y + 8, x : x + 1, :3] = rng.integers(0, 256, 3, dtype=np.uint8)
    return px


def gradient(height: int = 64, width: int = 128) -> np.ndarray:
    """BGRX: a smooth shaded picture, as a rendered scene has."""
    y, x = np.mgrid[0:height, 0:width]
    px = np.zeros((height, width, 4), np.uint8)
    px[..., 0] = (x * 255 // max(width - 1, 1)).astype(np.uint8)
    px[..., 1] = (y * 255 // max(height - 1, 1)).astype(np.uint8)
    px[..., 2] = ((x + y) * 127 // max(width + height, 1)).astype(np.uint8)
    return px


def rgb(bgrx: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(bgrx[..., 2::-1])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(float) - b.astype(float)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


# -- tiles --------------------------------------------------------------------------------------


def test_png_tile_is_lossless_from_a_strided_region() -> None:
    big = text_like(200, 300)
    region = big[10:74, 20:148]  # a view with the big picture's strides
    data = encode_tile(region, TileFormat.PNG)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert np.array_equal(decode_tile(data), rgb(region))


@pytest.mark.parametrize("picture", [text_like, gradient])
def test_jpeg_tile_is_full_chroma_and_visually_lossless(picture: object) -> None:
    px = picture()  # type: ignore[operator]
    data = encode_tile(px, TileFormat.JPEG)
    assert data[:2] == b"\xff\xd8"
    assert psnr(decode_tile(data), rgb(px)) >= 45
    # 4:4:4: every component of the frame header samples 1x1 (SOF0: FF C0)
    sof = data.index(b"\xff\xc0")
    components = data[sof + 9]
    factors = [data[sof + 10 + 3 * i + 1] for i in range(components)]
    assert components == 3 and factors == [0x11, 0x11, 0x11]


# -- which tiles are due --------------------------------------------------------------------


def test_damage_marks_tiles_lossy_and_they_are_due_after_the_idle_time() -> None:
    still = StillRegions(128, 64)
    still.on_video(None, 300, 130, now=10.0)  # a new size: everything is unknown
    assert still.shape == (3, 3)
    assert len(still.due(10.1, idle=0.25)) == 0
    assert len(still.due(10.3, idle=0.25)) == 9
    cells = still.due(10.3, idle=0.25)
    for cell in cells:
        still.take(cell)
    assert not still.lossy
    # A small change touches only its tiles, which become due later.
    still.on_video(Rect(130, 70, 4, 4), 300, 130, now=11.0)
    assert still.due(11.3, 0.25) == [(1, 1)]
    assert still.next_due(0.25) == pytest.approx(11.25)
    assert still.rect((2, 2)) == Rect(256, 128, 44, 2)  # the edge tiles are cut to the picture


def test_a_tile_damaged_while_on_its_way_is_not_sharp() -> None:
    still = StillRegions(128, 64)
    still.on_video(None, 256, 128, now=0.0)
    gen = still.take((0, 0))
    still.on_video(Rect(0, 0, 1, 1), 256, 128, now=0.1)
    assert still.generation((0, 0)) != gen  # the front end drops the tile it encoded
    assert set(still.due(1.0, 0.25)) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    other = still.take((1, 1))
    still.give_back((1, 1), other)  # its encoding failed: lossy again
    assert (1, 1) in still.due(1.0, 0.25)


def test_empty_damage_changes_nothing() -> None:
    still = StillRegions(128, 64)
    still.on_video(None, 256, 128, now=0.0)
    for cell in still.due(1.0, 0.25):
        still.take(cell)
    still.on_video(Rect(0, 0, 0, 0), 256, 128, now=2.0)
    assert not still.lossy


# -- lossless or not ------------------------------------------------------------------------


def test_lossless_while_it_fits_the_budget() -> None:
    assert choose_formats([100, 200], [150, 50], budget=300) == [False, False]


def test_past_the_budget_the_tiles_png_saves_least_on_go_as_jpeg_first() -> None:
    # tile 1 saves most by JPEG (4x), tile 0 a little, tile 2 not at all
    assert choose_formats([100, 400, 50], [90, 100, 80], budget=300) == [False, True, False]
    assert choose_formats([100, 400, 50], [90, 100, 80], budget=100) == [True, True, False]


def frame(px: np.ndarray, seq: int = 7) -> Frame:
    return Frame(px, Rect(0, 0, px.shape[1], px.shape[0]), 0, seq)


def test_the_cache_encodes_a_tile_once_for_every_viewer() -> None:
    cache = TileCache(workers=1)
    try:
        f = frame(text_like(128, 256))
        rects = [Rect(0, 0, 128, 64), Rect(128, 64, 128, 64)]
        first = cache.encode(f, rects, budget=1 << 20)
        again = cache.encode(f, rects, budget=1 << 20)
        assert cache.encoded == 2
        assert [t.data for t in first] == [t.data for t in again]
        assert all(t.fmt is TileFormat.PNG for t in first)
        for tile in first:
            r = tile.rect
            want = rgb(f.pixels[r.y : r.y + r.height, r.x : r.x + r.width])
            assert np.array_equal(decode_tile(tile.data), want)
    finally:
        cache.close()


def test_the_cache_goes_lossy_on_a_tight_budget() -> None:
    cache = TileCache(workers=1)
    try:
        noise = np.random.default_rng(3).integers(0, 256, (64, 128, 4), dtype=np.uint8)
        smooth = gradient() // 2 + noise // 2  # PNG cannot shrink it much; JPEG can
        tiles = cache.encode(frame(smooth), [Rect(0, 0, 128, 64)], budget=1000)
        assert tiles[0].fmt is TileFormat.JPEG
        assert psnr(decode_tile(tiles[0].data), rgb(smooth)) >= 30
    finally:
        cache.close()


# -- the wire -------------------------------------------------------------------------------


def packet() -> Packet:
    return Packet("h264", b"\x00\x00\x00\x01frame", True, 640, 480, 3, 1234, 1.5)


def test_video_without_damage_is_the_old_format() -> None:
    raw = pack_video(packet(), 9)
    assert message_kind(raw) == KIND_VIDEO and len(raw) == HEADER.size + 9
    header, data = unpack_video(raw)
    assert header.damage is None and header.frame == 9 and data == b"\x00\x00\x00\x01frame"


def test_video_with_damage() -> None:
    raw = pack_video(packet(), 10, Rect(8, 16, 700, 32))  # clipped to the frame
    assert message_kind(raw) == KIND_VIDEO_DAMAGE
    header, data = unpack_video(raw)
    assert header.damage == Rect(8, 16, 632, 32)
    assert (header.codec, header.keyframe, header.frame) == ("h264", True, 10)
    assert data == b"\x00\x00\x00\x01frame"
    with pytest.raises(ProtocolError):
        unpack_video(raw[: HEADER.size + 3])


def test_tile_message_round_trip() -> None:
    image = encode_tile(text_like(), TileFormat.PNG)
    raw = pack_tile(TileFormat.PNG, Rect(128, 64, 128, 64), (720, 400), 41) + image
    assert message_kind(raw) == KIND_TILE
    header, data = unpack_tile(raw)
    assert header.rect == Rect(128, 64, 128, 64)
    assert (header.frame_width, header.frame_height, header.after) == (720, 400, 41)
    assert header.fmt is TileFormat.PNG and data == image
    with pytest.raises(ProtocolError):
        unpack_video(raw)  # a tile is not a video frame
    with pytest.raises(ProtocolError):
        unpack_tile(pack_video(packet(), 1))
    with pytest.raises(ProtocolError):
        message_kind(b"")
