"""The sharp-picture bench's summary of its drags (the bench itself drives Chromium:
``python -m saffron.bench.sharp``): exact counts as the best PSNR, a drag that never
got sharp shows as a miss, not as a fast time."""

from __future__ import annotations

import math

import pytest

from saffron.bench.sharp import MARKS_MS, Drag, print_results, summarize


def drag(video: float, at: float, sharp_ms: float | None, jpeg: int = 0) -> Drag:
    return Drag(video, dict.fromkeys(MARKS_MS, at), sharp_ms, 72 - jpeg, jpeg)


def test_medians_count_exact_as_the_best_value() -> None:
    row = summarize("vp9", [drag(35, math.inf, 400), drag(36, 40, 900), drag(37, math.inf, 450)])
    assert row["video_db"] == 36
    assert row["at_500_db"] == math.inf
    assert row["sharp_p50_ms"] == 450
    assert row["sharp_max_ms"] == 900
    assert row["sharp_within_500"] == 2
    assert (row["png_tiles"], row["jpeg_tiles"]) == (216, 0)


def test_a_drag_never_sharp_is_a_miss_not_a_time() -> None:
    row = summarize("av1", [drag(33, 34, None), drag(33, 34, 1500), drag(33, 34, None)])
    assert row["sharp_max_ms"] is None
    assert row["sharp_p50_ms"] is None, "most drags missed: no median time"
    assert row["sharp_within_500"] == 0


def test_the_table_shows_exact_misses_and_jpeg(capsys: pytest.CaptureFixture[str]) -> None:
    row = summarize("h264", [drag(36, math.inf, None, jpeg=10)])
    print_results({"size": "960x540", "drags": 1, "lossy_floor_db": 45.0, "codecs": [row]})
    out = capsys.readouterr().out
    assert "exact" in out and "> 3000 ms" in out and "10 JPEG" in out
