"""Shared by the benchmark scripts: a plain-text table, a JSON file, a timer."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Callable


def table(rows: list[dict], columns: list[str]) -> str:
    """``rows`` as an aligned plain-text table (also valid Markdown)."""
    cells = [columns, *[[str(row.get(c, "")) for c in columns] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def write_json(path: str | None, data: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2))
        print(f"wrote {path}")


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
