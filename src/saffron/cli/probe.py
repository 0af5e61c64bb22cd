"""``saffron probe``: the encoders this machine has, and whether each works.

It only prints what :func:`saffron.encoders.registry.probe` finds; it serves nothing.
"""

from __future__ import annotations

import argparse


def command(args: argparse.Namespace) -> int:
    """A table of the encoders; exit status 1 when none works."""
    from ..encoders.registry import probe as run_probe
    from ..table import print_table

    results = run_probe()
    rows = [
        (
            r.backend.codec,
            r.backend.name,
            "hardware" if r.backend.hardware else "software",
            "works" if r.works else f"no: {r.reason}"[:100],
        )
        for r in results
    ]
    print_table(rows, header=("codec", "backend", "kind", "status"))
    return 0 if any(r.works for r in results) else 1
