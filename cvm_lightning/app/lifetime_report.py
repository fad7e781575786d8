"""What a lifetime stream's report adds: the first classes over the updates, each update on arrival and at the end,
and what each update cost (see :mod:`cvm_lightning.streams.lifetime`).

Test experience ``k`` of a lifetime stream holds what update ``k`` brought,
so everything here reads the accuracy matrix: column 0 is the first classes
in the first condition, ``R[k][k]`` an update on arrival, ``R[-1][k]`` at the end.
"""

from __future__ import annotations

from pathlib import Path

from cvm_lightning.app.tables import mean_std, render_table


def _runs(strategy: dict) -> list[dict]:
    """A strategy's runs: itself, or one per seed of ``--seeds``."""
    return strategy["per_seed"] if "per_seed" in strategy else [strategy]


def _matrices(strategy: dict) -> list[list[list[float | None]]]:
    """A strategy's accuracy matrices, one per run."""
    return [run["accuracy_matrix"] for run in _runs(strategy)]


def _cells(strategy: dict, key: str) -> list[list[float]]:
    """A per-experience list of a strategy's results, one per run; empty lists where it was not kept."""
    return [run.get(key) or [] for run in _runs(strategy)]


def _text(values: list[float | None], spec: str = ".3f") -> str:
    if not values or any(v is None for v in values):
        return "n/a"
    mean, std = mean_std(values)
    return format(mean, spec) if len(values) == 1 else f"{format(mean, spec)} ± {format(std, spec.lstrip('+'))}"


def first_classes(matrix: list[list[float | None]]) -> list[float | None]:
    """The first classes' accuracy in the first condition after each experience (the matrix's column 0)."""
    return [row[0] for row in matrix]


def first_classes_table(results: dict, markdown: bool = False) -> str:
    """One row per strategy: the accuracy over everything at the end (and against the cumulative retrain's), then
    the first classes in the first condition after every update, and their change from the start."""
    steps = len(results["lifetime"])
    cumulative = results["strategies"].get("cumulative")
    head = ["strategy", "final avg acc", *(["vs cumulative"] if cumulative else []), "start",
            *map(str, range(1, steps)), "end - start"]
    rows = []
    for name, r in results["strategies"].items():
        columns = [first_classes(m) for m in _matrices(r)]
        finals = [run["final_avg_accuracy"] for run in _runs(r)]
        row = [name, _text(finals)]
        if cumulative:
            bound = [run["final_avg_accuracy"] for run in _runs(cumulative)]
            row.append(_text([a / b for a, b in zip(finals, bound)], ".2f"))
        row += [_text([c[k] for c in columns]) for k in range(steps)]
        row.append(_text([c[-1] - c[0] for c in columns], "+.3f"))
        rows.append(row)
    return render_table(head, rows, markdown)


def _what(step: dict, several_seeds: bool) -> str:
    """An update as the table names it; over several seeds, without the class names each seed draws."""
    if not several_seeds or step["kind"] == "condition":
        return step["label"]
    return "first classes" if step["kind"] == "first" else f"new class ({step['condition']})"


def arrival_table(results: dict, markdown: bool = False) -> str:
    """One row per update: what it brought, and each strategy's accuracy on it when it arrived and at the end."""
    names = list(results["strategies"])
    rows = []
    for k, step in enumerate(results["lifetime"]):
        row = [str(k) if k else "start", _what(step, several_seeds="seeds" in results)]
        for name in names:
            matrices = _matrices(results["strategies"][name])
            row.append(f"{_text([m[k][k] for m in matrices])} -> {_text([m[-1][k] for m in matrices])}")
        rows.append(row)
    return render_table(["update", "what it brought", *names], rows, markdown)


def cost_table(results: dict, markdown: bool = False) -> str:
    """One row per strategy: the updates' training seconds (mean and slowest) and the process's resident memory
    at the end of the first update and of the last."""
    rows = []
    for name, r in results["strategies"].items():
        seconds, peaks = _cells(r, "experience_seconds"), _cells(r, "experience_peak_rss_mb")
        updates = [s[1:] for s in seconds if len(s) > 1]
        rows.append([name, _text([sum(u) / len(u) for u in updates], ".1f") if updates else "n/a",
                     _text([max(u) for u in updates], ".1f") if updates else "n/a",
                     _text([p[1] for p in peaks if len(p) > 1], ".0f"),
                     _text([p[-1] for p in peaks if len(p) > 1], ".0f"),
                     _text([p[-1] / p[1] for p in peaks if len(p) > 1], ".2f")])
    return render_table(["strategy", "update s (mean)", "update s (slowest)", "peak RSS MB, first update",
                    "last update", "ratio"], rows, markdown)


def lifetime_section(results: dict, markdown: bool = False) -> str:
    """The three tables with their headings (text for the terminal, or Markdown); empty for another kind of stream."""
    if not results.get("lifetime"):
        return ""
    tables = [("The first classes in the first condition after each update", first_classes_table),
              ("Each update: accuracy on what it brought when it arrived -> at the end", arrival_table),
              ("What each update cost (training only; resident memory of the process)", cost_table)]
    if not markdown:
        return "".join(f"\n\n{title}\n{table(results)}" for title, table in tables)
    return "".join(f"\n## {title}\n\n{table(results, markdown=True)}\n" for title, table in tables)


def plot_first_classes(results: dict, path: Path) -> Path:
    """The first classes in the first condition after each update, one line a strategy (the mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in results["strategies"].items():
        columns = [first_classes(m) for m in _matrices(r)]
        points = [(k, sum(c[k] for c in columns) / len(columns)) for k in range(len(columns[0]))
                  if all(c[k] is not None for c in columns)]
        ax.plot(*zip(*points), marker="o", label=name, lw=2.5 if name == "cvm" else 1.2)
    ax.set_xlabel("update (0: the deployed model)")
    ax.set_xticks(range(len(results["lifetime"])))
    ax.set_ylabel("first classes, first condition")
    ax.set_ylim(0, 1)
    seeds = results.get("seeds")
    ax.set_title(f"{results['benchmark']}" + (f", mean of seeds {', '.join(map(str, seeds))}" if seeds else ""))
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
