"""A minute of the soak (saffron.soak): 60 fps, five viewers coming and going, web and
SPICE mixed. The assertions are on resources, not on time: memory grows less than
20 MB after the warm-up, open descriptors come back to their baseline, the log has
no error or traceback, and every viewer got frames. ``saffron bench --soak`` runs
the ten-minute version.
"""

from __future__ import annotations

import json
from pathlib import Path

from saffron import soak

ARTIFACTS = Path(__file__).resolve().parent.parent / ".cache" / "test-artifacts"


def test_soak_one_minute() -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = ARTIFACTS / "soak-saffron.log"
    result = soak.run(60, size=(640, 360), log=log, quiet=True)
    (ARTIFACTS / "soak.json").write_text(json.dumps(result, indent=2))
    soak.print_table(result)
    assert result["alive"], "saffron died during the soak"
    assert not result["log_problems"], result["log_problems"]
    assert not result["viewer_errors"], result["viewer_errors"]
    assert result["visits"] >= 10 and result["frames"] > 0, result
    assert result["rss_growth_mb"] < soak.MAX_RSS_GROWTH_MB, result
    assert result["fds_end"] <= result["fds_baseline"], result
    assert result["ok"], result
