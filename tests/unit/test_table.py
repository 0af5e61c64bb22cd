"""The benchmarks' text tables (saffron.table)."""

from __future__ import annotations

import pytest

from saffron.table import format_table, print_table

ROWS = [{"codec": "h264", "fps": 59.9}, {"codec": "mjpeg", "fps": None}]


def test_dict_rows_pad_columns_under_a_header() -> None:
    assert format_table(ROWS) == ["codec  fps", "h264   59.9", "mjpeg  None"]


def test_right_aligned_with_a_rule() -> None:
    assert format_table(ROWS, align="right", rule=True) == [
        "codec   fps",
        "-----  ----",
        " h264  59.9",
        "mjpeg  None",
    ]


def test_pairs_without_header_indented(capsys: pytest.CaptureFixture[str]) -> None:
    print_table([("run", "60 s"), ("memory growth", "+0.1 MB")], "Soak", indent="  ")
    assert capsys.readouterr().out == "\nSoak\n  run            60 s\n  memory growth  +0.1 MB\n"


def test_no_rows_print_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    print_table([], "Empty")
    assert capsys.readouterr().out == ""
