"""The benchmarks' plain-text tables: columns padded to their widest cell, two spaces
apart. Rows are dicts (their keys, in the first row's order, make the header) or
sequences (no header unless one is given)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

Row = Mapping[str, Any] | Sequence[Any]


def format_table(
    rows: Sequence[Row],
    *,
    header: Sequence[str] | None = None,
    align: Literal["left", "right"] = "left",
    rule: bool = False,
    indent: str = "",
) -> list[str]:
    """The table's lines, without trailing blanks; none for no rows."""
    if not rows:
        return []
    first = rows[0]
    cols = list(first) if isinstance(first, Mapping) else None
    if header is None and cols is not None:
        header = cols
    cells = [_cells(r, cols) for r in rows]
    lines = [*([list(header)] if header is not None else []), *cells]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    pad = str.rjust if align == "right" else str.ljust
    out = [
        indent + "  ".join(pad(v, w) for v, w in zip(line, widths, strict=True)) for line in lines
    ]
    if rule and header is not None:
        out.insert(1, indent + "  ".join("-" * w for w in widths))
    return [line.rstrip() for line in out]


def print_table(
    rows: Sequence[Row],
    title: str | None = None,
    *,
    header: Sequence[str] | None = None,
    align: Literal["left", "right"] = "left",
    rule: bool = False,
    indent: str = "",
) -> None:
    """Print the title after a blank line, then the table; nothing for no rows."""
    lines = format_table(rows, header=header, align=align, rule=rule, indent=indent)
    if not lines:
        return
    if title is not None:
        print(f"\n{title}")
    for line in lines:
        print(line)


def _cells(row: Row, cols: list[str] | None) -> list[str]:
    if isinstance(row, Mapping):
        return [str(row[c]) for c in (cols if cols is not None else list(row))]
    return [str(v) for v in row]
