"""Strategies x seeds, and CVM ablations: mean ± std tables of a benchmark.

Each (variant, seed, strategy) cell is one :func:`cvm_lightning.app.runner.run`
whose numbers are saved as soon as it ends, under a name derived from the
settings that strategy reads. A killed sweep run again with the same ``out``
folder only runs the missing cells, and a change to a CVM-only option (say a
new default) reruns CVM but keeps the baselines' cells.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Sequence

from cvm_lightning.app.reporting import METRICS
from cvm_lightning.app.run_config import DEFAULT_VALUES, RunConfig
from cvm_lightning.app.runner import claim_out_dir, prepare, run
from cvm_lightning.app.tables import mean_std, mean_std_text
from cvm_lightning.atomic import atomic_write_text

# Each CVM option off (or swapped for its alternative), one at a time.
ABLATIONS: dict[str, dict] = {
    "random concepts (--text-model random)": {"text_model": "random"},
    "simplex ETF targets (--text-model etf)": {"text_model": "etf"},
    "orthogonal targets, uncentred (--text-model orthogonal --no-center-concepts)": {
        "text_model": "orthogonal",
        "center_concepts": False,
    },
    "no replay (--buffer 0)": {"buffer_size": 0},
    "no BatchNorm recalibration": {"recalibrate_bn": False},
    "no concept centring (--no-center-concepts)": {"center_concepts": False},
    "symmetric loss (--negatives seen)": {"negatives": "seen"},
    "all concepts as negatives (--negatives all)": {"negatives": "all"},
    "no drift penalty (--distill 0)": {"distill": 0.0},
    "one replay share per class (--replay-shares)": {"replay_shares": True},
    "symmetric loss and replay shares, as cvm learn adds classes (--negatives seen --replay-shares)": {
        "negatives": "seen",
        "replay_shares": True,
    },
    "distillation from the model before each experience (--lwf 1)": {"lwf": 1.0},
    "weights merged with the model before each experience (--average-previous 0.5)": {"average_previous": 0.5},
    "an average of the weights over steps (--ema 0.99)": {"ema": 0.99},
    "memory balanced over classes and experiences (--replay-balance class-experience)": {
        "replay_balance": "class-experience",
    },
    "temperature x2": {"temperature_scale": 2.0},
    "triplet loss (--loss triplet)": {"loss": "triplet"},
    "hardest-negative triplet (--loss triplet-hard)": {"loss": "triplet-hard"},
    "semantic-distance term added (--semantic 1)": {"semantic": 1.0},
    "triplet + semantic distance (--loss triplet --semantic 1)": {"loss": "triplet", "semantic": 1.0},
    "class means beside the concepts (--prototypes)": {"prototypes": True},
    "class means beside random vectors (--text-model random --prototypes)": {
        "text_model": "random",
        "prototypes": True,
    },
}


def _variant_config(base: RunConfig, overrides: dict, seed: int) -> RunConfig:
    overrides = dict(overrides)
    scale = overrides.pop("temperature_scale", None)
    if scale is not None:
        overrides["temperature"] = base.temperature * scale
    return replace(base, seed=seed, progress=False, **overrides)


# What each seed's cell keeps beyond the metrics: the cost of each experience, which a lifetime's report shows.
PER_EXPERIENCE = ("experience_seconds", "experience_peak_rss_mb")


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
    when the settings their strategy reads are the same.
    """
    table: dict[str, dict[str, list[dict]]] = {}
    for variant, overrides in variants.items():
        for seed in seeds:
            config = _variant_config(base, overrides, seed)
            for strategy in config.strategies:
                result = run_cell(config, strategy, out_dir, report, label=f"{variant}, seed {seed}")
                table.setdefault(variant, {}).setdefault(strategy, []).append(
                    {"seed": seed, **{m: result.get(m, math.nan) for m in METRICS},
                     **{k: result.get(k) for k in PER_EXPERIENCE}, "accuracy_matrix": result["accuracy_matrix"]}
                )
    return table


def run_cell(config: RunConfig, strategy: str, out_dir: Path, report: Callable[[str], None], label: str = "") -> dict:
    """``strategy``'s results under ``config``: from ``out_dir/cells`` when run before, else run now and saved."""
    settings = config.settings_of(strategy)
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    name = f"{strategy}-seed{config.seed}-{digest}"
    path = out_dir / "cells" / f"{name}.json"
    for kept in sorted((out_dir / "cells").glob(f"{strategy}-seed{config.seed}-*.json")):
        cell = json.loads(kept.read_text())
        if _same_settings(cell["settings"], settings):
            return cell["result"]
    report(f"== {label}: {strategy}")
    results = run(replace(config, strategies=(strategy,)), out_dir / "runs" / name, report=report)
    path.parent.mkdir(parents=True, exist_ok=True)
    cell = {"strategy": strategy, "settings": settings, "result": results["strategies"][strategy]}
    atomic_write_text(path, json.dumps(cell, indent=2))
    return cell["result"]


def _same_settings(kept: dict, now: dict) -> bool:
    """Whether a kept cell ran with the settings ``now``.

    A cell kept before a setting existed ran it at its default; a setting
    the strategy no longer reads matches where the cell kept its default,
    which is how the strategy runs now.
    """
    return (all(kept.get(name, DEFAULT_VALUES.get(name)) == value for name, value in now.items())
            and all(value == DEFAULT_VALUES.get(name) for name, value in kept.items() if name not in now))


def run_seeds(config: RunConfig, out_dir: Path, report: Callable[[str], None] = print) -> dict:
    """``cvm run --seeds``: every strategy of ``config`` on each of ``config.seeds``; returns the results dictionary.

    Each (seed, strategy) is a cell of :func:`run_cells` in ``out_dir``, so
    a killed run called again skips the finished cells and resumes CVM's
    from its checkpoints. The results hold each strategy's per-seed numbers
    and their mean and standard deviation.
    """
    data, _ = prepare(replace(config, seed=config.seeds[0], seeds=None))  # every check before the first file
    claim_out_dir(config, out_dir)
    single = replace(config, seeds=None)
    table = run_cells(single, config.seeds, {"default": {}}, out_dir, report)["default"]
    rows = {row["strategy"]: row for row in summary_rows({"default": table})}
    return {
        "benchmark": config.benchmark,
        "kind": data.benchmark.kind,
        "classes_per_experience": data.benchmark.classes_per_experience,
        "conditions": list(data.benchmark.conditions),
        "lifetime": [asdict(step) for step in data.benchmark.lifetime],
        "seeds": list(config.seeds),
        "protocol": config.protocol_report(),
        "config": config.to_json(),
        "strategies": {name: {**{m: list(rows[name][m]) for m in METRICS}, "per_seed": cells}
                       for name, cells in table.items()},
    }


def summary_rows(table: dict[str, dict[str, list[dict]]]) -> list[dict]:
    """One row per (variant, strategy) with the mean and std of each metric."""
    rows = []
    for variant, strategies in table.items():
        for strategy, cells in strategies.items():
            row = {"variant": variant, "strategy": strategy, "seeds": [c["seed"] for c in cells]}
            for metric in METRICS:
                row[metric] = mean_std([c[metric] for c in cells])
            # The first experience's accuracy at the end against right after it: a lifetime's first classes.
            row["first_classes_change"] = mean_std([_first_change(c.get("accuracy_matrix")) for c in cells])
            rows.append(row)
    return rows


def _first_change(matrix: list[list[float | None]] | None) -> float:
    """Column 0 at the end minus right after experience 0 (NaN where either was not evaluated or kept)."""
    if not matrix:
        return math.nan
    start, end = matrix[0][0], matrix[-1][0]
    return math.nan if start is None or end is None else end - start


def markdown(rows: list[dict], label: str, first_classes: bool = False) -> str:
    """A Markdown table of :func:`summary_rows` (mean ± std over the seeds); ``first_classes`` adds the first
    experience's change from right after it to the end (a lifetime stream's first classes)."""
    extra = ["first classes, end - start"] if first_classes else []
    lines = [
        f"| {label} | seeds | " + " | ".join([*METRICS.values(), *extra]) + " |",
        "|---|---|" + "---|" * (len(METRICS) + len(extra)),
    ]
    for row in rows:
        name = row["strategy"] if label == "strategy" else row["variant"]
        cells = [mean_std_text(*row[m]) for m in METRICS]
        if first_classes:
            mean, std = row["first_classes_change"]
            cells.append("n/a" if math.isnan(mean) else f"{mean:+.3f} ± {std:.3f}")
        lines.append(f"| {name} | {len(row['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
