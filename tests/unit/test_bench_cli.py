"""``saffron bench --soak`` hands the soak its length and writes its numbers
(the soak itself is tests/e2e/test_soak.py; here soak.run is a stand-in)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from saffron import cli
from saffron.bench import soak


def test_bench_soak_runs_the_soak_for_the_given_seconds(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[float] = []

    def fake_run(seconds: float = 600, **kwargs: Any) -> dict[str, Any]:
        calls.append(seconds)
        return {"seconds": seconds, "ok": True}

    monkeypatch.setattr(soak, "run", fake_run)
    out = tmp_path / "soak.json"
    assert cli.main(["bench", "--soak", "--soak-seconds", "42", "--json", str(out)]) == 0
    assert calls == [42.0]
    written = json.loads(out.read_text())
    assert written["soak"] == {"seconds": 42.0, "ok": True}
    assert "cores" in written["machine"]


def test_bench_soak_is_ten_minutes_and_a_failed_soak_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[float] = []

    def fake_run(seconds: float = 600, **kwargs: Any) -> dict[str, Any]:
        calls.append(seconds)
        return {"ok": False}

    monkeypatch.setattr(soak, "run", fake_run)
    assert cli.main(["bench", "--soak"]) == 1
    assert calls == [600.0]


def test_bench_soak_and_full_do_not_go_together() -> None:
    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args(["bench", "--soak", "--full"])
    assert exc.value.code == 2
