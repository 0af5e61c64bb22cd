"""Where tests leave what outlives them (logs, figures, pictures): ARTIFACTS; and the
figures for pytest's terminal summary (``publish``, printed by tests/conftest.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
ARTIFACTS = ROOT / ".cache" / "test-artifacts"


def publish(name: str, figures: dict[str, Any], summary: str) -> None:
    """Write ``figures`` and their one-line ``summary`` to ARTIFACTS/``name``.json; the
    terminal summary (tests/conftest.py) prints the summary of every such file this
    test process wrote."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    data = {"summary": summary, "pid": os.getpid(), **figures}
    (ARTIFACTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
