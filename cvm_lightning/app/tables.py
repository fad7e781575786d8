"""Table cells and layout shared by the reports: mean ± std over seeds, and Markdown or aligned text."""

from __future__ import annotations

import math
import statistics
from typing import Sequence


def number_or_na(value: float | None, spec: str) -> str:
    """``value`` formatted, or "n/a" where it was not measured (joint training has no zero-shot rows)."""
    return "n/a" if value is None or value != value else format(value, spec)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population standard deviation (0 for one value); NaN for both where a value was not measured."""
    if any(math.isnan(v) for v in values):
        return math.nan, math.nan
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def mean_std_text(mean: float, std: float) -> str:
    """``mean ± std`` to 3 decimals, or "n/a" where nothing was measured."""
    return "n/a" if number_or_na(mean, ".3f") == "n/a" else f"{mean:.3f} ± {std:.3f}"


def render_table(head: list[str], rows: list[list[str]], markdown: bool) -> str:
    """Rows under a header: a Markdown table, or plain text aligned for the terminal."""
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     for row in [head, *rows])
