"""A minute of the soak (saffron.bench.soak): 60 fps, five viewers coming and going, web and
SPICE mixed. The assertions are on resources, not on time: memory grows less than
20 MB after the warm-up, open descriptors come back to their baseline, the log has
no error or traceback, no viewer failed or was cut off, the viewers connected on
their visits, and they got frames. ``saffron bench --soak`` runs the ten-minute
version.

Frames are also counted per kind of viewer (web, web MJPEG, SPICE): each kind must
get frames, and no visit of two seconds or more may go without one.
"""

from __future__ import annotations

import json

from saffron.bench import soak
from tests.support.artifacts import ARTIFACTS


def test_soak_one_minute() -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = ARTIFACTS / "soak-saffron.log"
    result = soak.run(60, size=(640, 360), log=log, quiet=True)
    (ARTIFACTS / "soak.json").write_text(json.dumps(result, indent=2))
    soak.print_table(result)
    assert result["alive"], "saffron died during the soak"
    assert not result["log_problems"], result["log_problems"]
    assert not result["viewer_errors"], result["viewer_errors"]
    viewers, visits = result["viewers"], result["visits"]
    assert visits >= 2 * viewers, f"every viewer came back at least once: {result}"
    # A visit lasts 2 to 5 s, except each viewer's last, cut to the end of the run.
    assert visits - viewers <= result["connects"] <= visits, (
        f"visits that never connected: {result}"
    )
    assert result["frames"] >= result["connects"], f"fewer frames than visits: {result}"
    for kind, k in result["by_kind"].items():
        assert k["visits"] >= 1 and k["frames"] > 0, f"{kind} viewers got no frames: {result}"
        assert k["without_frames"] == 0, f"{kind} visits went without frames: {result}"
    assert result["rss_growth_mb"] < soak.MAX_RSS_GROWTH_MB, result
    assert result["fds_end"] <= result["fds_baseline"], result
    assert result["ok"], result
