"""Strategies x seeds, and CVM ablations: mean ± std tables of a benchmark.

Each (variant, seed) cell is one :func:`cvm_lightning.runner.run` whose
numbers are saved as soon as it ends, so a killed sweep run again with the
same ``out`` folder only runs the missing cells.
"""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

from cvm_lightning.atomic import atomic_write_text
from cvm_lightning.runner import RunConfig, run

METRICS = ("final_avg_accuracy", "forgetting", "bwt")

# Each CVM option off (or swapped for its alternative), one at a time.
ABLATIONS: dict[str, dict] = {
    "random concepts (--text-model random)": {"text_model": "random"},
    "no replay (--buffer 0)": {"buffer": 0},
    "no BatchNorm recalibration": {"recalibrate_bn": False},
    "no concept centring (--no-center-concepts)": {"center_concepts": False},
    "symmetric loss (--negatives seen)": {"negatives": "seen"},
    "all concepts as negatives (--negatives all)": {"negatives": "all"},
    "no drift penalty (--distill 0)": {"distill": 0.0},
    "temperature x2": {"temperature_scale": 2.0},
    "triplet loss (--loss triplet)": {"loss": "triplet"},
    "hardest-negative triplet (--loss triplet-hard)": {"loss": "triplet-hard"},
    "semantic-distance term added (--semantic 1)": {"semantic": 1.0},
    "triplet + semantic distance (--loss triplet --semantic 1)": {"loss": "triplet", "semantic": 1.0},
}


def _variant_config(base: RunConfig, overrides: dict, seed: int) -> RunConfig:
    overrides = dict(overrides)
    scale = overrides.pop("temperature_scale", None)
    if scale is not None:
        overrides["temperature"] = base.temperature * scale
    return replace(base, seed=seed, progress=False, **overrides)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def run_cells(
    base: RunConfig,
    seeds: Sequence[int],
    variants: dict[str, dict],
    out_dir: Path,
    report: Callable[[str], None] = print,
) -> dict[str, dict[str, list[dict]]]:
    """Run every variant of ``base`` on every seed; returns ``{variant: {strategy: [cell per seed]}}``.

    A variant is a name and the :class:`RunConfig` fields it changes (``{}``
    is the base itself). Finished cells found in ``out_dir/cells`` are reused
    when their configuration is the same.
    """
    cells_dir = out_dir / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    table: dict[str, dict[str, list[dict]]] = {}
    for variant, overrides in variants.items():
        for seed in seeds:
            config = _variant_config(base, overrides, seed)
            name = f"{_slug(variant)}-seed{seed}"
            path = cells_dir / f"{name}.json"
            cell = json.loads(path.read_text()) if path.exists() else None
            if cell is None or cell["config"] != config.to_json():
                report(f"== {variant}, seed {seed}")
                cell = run(config, out_dir / "runs" / name, report=report)
                atomic_write_text(path, json.dumps({"variant": variant, **cell}, indent=2))
            for strategy, result in cell["strategies"].items():
                table.setdefault(variant, {}).setdefault(strategy, []).append(
                    {"seed": seed, **{m: result[m] for m in METRICS}}
                )
    return table


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population standard deviation (0 for one value)."""
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def summary_rows(table: dict[str, dict[str, list[dict]]]) -> list[dict]:
    """One row per (variant, strategy) with the mean and std of each metric."""
    rows = []
    for variant, strategies in table.items():
        for strategy, cells in strategies.items():
            row = {"variant": variant, "strategy": strategy, "seeds": [c["seed"] for c in cells]}
            for metric in METRICS:
                row[metric] = mean_std([c[metric] for c in cells])
            rows.append(row)
    return rows


def markdown(rows: list[dict], label: str) -> str:
    """A Markdown table of :func:`summary_rows` (mean ± std over the seeds)."""
    lines = [
        f"| {label} | seeds | final avg acc | forgetting | BWT |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        name = row["strategy"] if label == "strategy" else row["variant"]
        cells = [f"{row[m][0]:.3f} ± {row[m][1]:.3f}" for m in METRICS]
        lines.append(f"| {name} | {len(row['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
