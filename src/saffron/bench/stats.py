"""Percentiles of measured values, one definition for every bench."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), interpolated between the two nearest ranks.

    The usual definition (NumPy's default, spreadsheets' PERCENTILE.INC): the
    50th is the median, and a percentile moves smoothly as values are added.
    NaN for no values, so a table shows that nothing was measured.
    """
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))
