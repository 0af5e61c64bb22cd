"""spice-gtk over a shaped slow link (a network namespace with tc tbf; needs root, as
CI is): newest-wins keeps the frames it shows young, from the first second on, where a
FIFO falls further and further behind; and it shows more of them.

Only relative results: the machine may be busy, so no figure here is a time to meet.
"""

from __future__ import annotations

from saffron.bench import slowlink

SHIPPED = "newest-wins + rate control"
FIFO = "FIFO, fixed bitrate"
FPS = 60


def test_spice_newest_wins_stays_young_where_a_fifo_grows() -> None:
    result = slowlink.run(
        15,
        link_kbit=4000,
        bitrate=20000,
        codec="h264",
        fps=FPS,
        viewers=("SPICE",),
        modes=(SHIPPED, FIFO),
    )
    slowlink.print_table(result)
    rows = {r["mode"]: r for r in result["rows"]}
    shipped, fifo = rows[SHIPPED], rows[FIFO]
    # spice-gtk showed frames, and read their stamps, in both modes.
    assert shipped["frames_per_s"] > 1 and fifo["frames_per_s"] > 1
    # The FIFO's backlog grows over the run; newest-wins is far fresher, start included.
    assert fifo["p95_trend_ms"][-1] > fifo["p95_trend_ms"][0]
    assert shipped["age_p95_ms"] * 5 < fifo["age_p95_ms"]
    assert shipped["p95_trend_ms"][0] * 3 < fifo["p95_trend_ms"][-1]
    # Rate control makes the frames small enough for more of them to get through:
    # more than the FIFO at the asked bitrate, and a good share of what the source makes.
    assert shipped["frames_per_s"] > 1.5 * fifo["frames_per_s"]
    assert shipped["frames_per_s"] >= 0.25 * FPS
