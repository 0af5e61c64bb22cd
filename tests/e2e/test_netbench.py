"""Over a shaped slow link (a network namespace with tc tbf; needs root, as CI is):
newest-wins keeps frames fresh where a FIFO falls further and further behind."""

from __future__ import annotations

from saffron.bench import slowlink


def test_newest_wins_bounds_frame_age_where_a_fifo_grows() -> None:
    result = slowlink.run(12, link_kbit=4000, bitrate=20000, codec="h264", fps=60, viewers=("web",))
    slowlink.print_table(result)
    rows = {r["mode"]: r for r in result["rows"]}
    shipped = rows["newest-wins + rate control"]
    newest = rows["newest-wins, fixed bitrate"]
    fifo = rows["FIFO, fixed bitrate"]
    # Every mode delivered frames that were decoded and whose stamp was read.
    assert all(r["frames_per_s"] > 1 for r in rows.values())
    # The FIFO's backlog grows: its last stretch is older than its first.
    first, last = fifo["p95_trend_ms"][0], fifo["p95_trend_ms"][-1]
    assert first is not None and last is not None and last > first
    # Side by side on the same link, newest-wins is far fresher than the queue.
    assert newest["age_p95_ms"] * 3 < fifo["age_p95_ms"]
    assert shipped["age_p95_ms"] * 3 < fifo["age_p95_ms"]
    # Rate control makes the frames small enough for more of them to get through.
    assert shipped["frames_per_s"] > newest["frames_per_s"]
