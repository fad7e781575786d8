"""Tables and plots of a run's results."""

from __future__ import annotations

import json
from pathlib import Path

from cvm_lightning.app.lifetime_report import lifetime_section, plot_first_classes
from cvm_lightning.app.tables import mean_std, mean_std_text, number_or_na, render_table
from cvm_lightning.atomic import atomic_write_text

# The metrics of a multi-seed table, by key in a strategy's results, with their column titles.
METRICS = {"final_avg_accuracy": "final avg acc", "forgetting": "forgetting", "bwt": "BWT",
           "zero_shot_accuracy": "zero-shot", "fwt": "FWT"}

COLUMNS = ("strategy", "final avg acc", "forgetting", "BWT", "zero-shot (chance)", "FWT", "train s", "params",
           "peak RSS MB")


def table_rows(results: dict) -> list[list[str]]:
    return [
        [
            name,
            f"{r['final_avg_accuracy']:.3f}",
            f"{r['forgetting']:.3f}",
            f"{r['bwt']:+.3f}",
            f"{number_or_na(r.get('zero_shot_accuracy'), '.3f')} ({number_or_na(r.get('zero_shot_chance'), '.3f')})",
            number_or_na(r.get("fwt"), "+.3f"),
            f"{r['train_seconds']:.1f}",
            f"{r['params']:,}",
            f"{r['peak_rss_mb']:.0f}",
            *([number_or_na(r.get("anytime_accuracy"), ".3f")] if _has_anytime(results) else []),
            *_reference_cells(results, name, [r["final_avg_accuracy"]]),
        ]
        for name, r in results["strategies"].items()
    ]


def _has_anytime(results: dict) -> bool:
    """Whether any strategy of the run measured anytime accuracy (a task-free stream with ``--anytime-every``)."""
    return any(r.get("anytime") for r in results["strategies"].values())


def _columns(results: dict) -> list[str]:
    return [*COLUMNS, *(["anytime acc"] if _has_anytime(results) else []), *_reference_columns(results)]


def _reference_cells(results: dict, strategy: str, accuracies: list[float]) -> list[str]:
    """The published reference of ``strategy`` and whether every accuracy is within its tolerance (or blanks).

    No cells at all where :func:`_reference_columns` has no columns.
    """
    if not _reference_columns(results):
        return []
    protocol = results["protocol"]
    reference = protocol["references"].get(strategy)
    if reference is None:
        return ["", ""]
    within = all(acc >= reference - protocol["tolerance"] for acc in accuracies)
    return [f"{reference:g}", "yes" if within else "no"]


def _reference_columns(results: dict) -> list[str]:
    """A published protocol's reference columns; a modified one is not comparable to them, so it has none."""
    protocol = results.get("protocol") or {}
    comparable = protocol.get("references") and not protocol.get("modified")
    return ["reference", f"within {protocol['tolerance']:g}"] if comparable else []


def protocol_line(results: dict) -> str:
    """Which protocol made the table: a preset as published, a modified one with its overrides, or none named."""
    protocol = results.get("protocol")
    if not protocol:
        return "Protocol: this package's settings (no preset; run_config.json lists them)."
    title = f"{protocol['name']} v{protocol['version']}"
    if not protocol["modified"]:
        return f"Protocol: {title}, as published ({protocol['source']})."
    from cvm_lightning.settings import flag

    changed = ", ".join(f"{flag(k)} {v}" for k, v in protocol["overrides"].items())
    return (f"Modified protocol: {title} with {changed}; not the published protocol, so not comparable to its "
            "references.")


def markdown_table(results: dict) -> str:
    """The results as a Markdown table, one row per strategy."""
    return render_table(_columns(results), table_rows(results), markdown=True)


def text_table(results: dict) -> str:
    """The results as an aligned plain-text table for the terminal."""
    return render_table(_columns(results), table_rows(results), markdown=False)


def condition_table(results: dict, markdown: bool = False) -> str:
    """A domain-incremental stream's final accuracy and forgetting on each condition, one row per strategy
    (with ``--seeds``, their mean ± std over the seeds)."""
    import torch

    from cvm_lightning.metrics.functional import forgetting_per_experience

    rows = []
    for name, r in results["strategies"].items():
        matrices = [r["accuracy_matrix"]] if "accuracy_matrix" in r else [c["accuracy_matrix"] for c in r["per_seed"]]
        finals, forgets = [], []
        for matrix in matrices:
            R = torch.tensor(_as_floats(matrix), dtype=torch.float64)
            finals.append(R[-1].tolist())
            forgets.append(forgetting_per_experience(R).tolist())
        cells = []
        for j in range(len(results["conditions"])):
            acc, fgt = mean_std([f[j] for f in finals]), mean_std([f[j] for f in forgets])
            cells.append(f"{mean_std_text(*acc)} ({mean_std_text(*fgt)})" if len(matrices) > 1
                         else f"{acc[0]:.3f} ({fgt[0]:.3f})")
        rows.append([name, *cells])
    return render_table(["strategy", *results["conditions"]], rows, markdown)


def _stream_line(results: dict) -> str:
    if results.get("lifetime"):
        first = results["lifetime"][0]
        # Over several seeds the first classes differ, each seed drawing its own.
        named = f"{len(first['classes'])} first classes" if "seeds" in results else first["label"]
        return (f"Lifetime on site: {named}, then {len(results['lifetime']) - 1} small updates, new conditions and "
                "new classes in turn; test experience k holds what update k brought.")
    if results.get("conditions"):
        return (f"Domain-incremental: every experience holds the same {results['classes_per_experience'][0]} classes, "
                f"under the conditions {', '.join(results['conditions'])} in turn.")
    return "Class-incremental: each experience brings new classes."


def conditions_section(results: dict, markdown: bool = False) -> str:
    """The table of each condition with its heading (text for the terminal, or Markdown); empty for a stream
    without conditions."""
    if not results.get("conditions"):
        return ""
    if not markdown:
        return f"\n\nEach condition: final accuracy (forgetting)\n{condition_table(results)}"
    return ("\n## Each condition\n\nFinal accuracy on each condition's test images, and (in brackets) its "
            f"forgetting.\n\n{condition_table(results, markdown=True)}\n")


def stream_sections(results: dict, markdown: bool = False) -> str:
    """What the kind of stream adds to the main table: each condition's table, or a lifetime's tables."""
    return conditions_section(results, markdown) + lifetime_section(results, markdown)


def divergence_note(strategy: str, step: int) -> str:
    """What a run whose loss stopped being a number means for its row."""
    return (f"{strategy}: its training loss became NaN or infinite at step {step}, so the run diverged; its "
            "accuracies are a diverged model's, not the strategy's.")


def divergence_section(results: dict) -> str:
    """A note for each strategy of ``results`` whose training diverged (empty when none did)."""
    return "".join(f"\n\n{divergence_note(name, r['nonfinite_loss_step'])}"
                   for name, r in results["strategies"].items() if r.get("nonfinite_loss_step") is not None)


def seed_table(results: dict, markdown: bool = False) -> str:
    """Mean ± std over the seeds of ``cvm run --seeds``, one row per strategy (text, or Markdown)."""
    head = ["strategy", *METRICS.values(), *_reference_columns(results)]
    rows = [[name, *(mean_std_text(*r[m]) for m in METRICS),
             *_reference_cells(results, name, [cell["final_avg_accuracy"] for cell in r["per_seed"]])]
            for name, r in results["strategies"].items()]
    return render_table(head, rows, markdown)


def write_seed_results(results: dict, out_dir: Path) -> list[Path]:
    """``results.json``, ``results.md`` and the accuracy-against-forgetting plot of ``cvm run --seeds``."""
    json_path, md_path = out_dir / "results.json", out_dir / "results.md"
    atomic_write_text(json_path, json.dumps(results, indent=2))
    seeds = ", ".join(map(str, results["seeds"]))
    header = (f"# {results['benchmark']}: mean ± std over seeds {seeds}\n\n{_stream_line(results)}\n\n"
              f"{protocol_line(results)}\n\n"
              "Accuracies in [0, 1]; forgetting in max mode (Chaudhry et al. 2018); std over seeds (population).\n\n")
    table = seed_table(results, markdown=True)
    atomic_write_text(md_path, header + table + "\n" + stream_sections(results, markdown=True))
    return [json_path, md_path, plot_accuracy_against_forgetting(results, out_dir), *stream_plots(results, out_dir)]


def plot_accuracy_against_forgetting(results: dict, out_dir: Path) -> Path:
    """One point per strategy: final average accuracy against forgetting, with their std over seeds as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for name, r in results["strategies"].items():
        (acc, acc_std), (fgt, fgt_std) = r["final_avg_accuracy"], r["forgetting"]
        ax.errorbar(fgt, acc, xerr=fgt_std, yerr=acc_std, fmt="o", capsize=3)
        ax.annotate(name, (fgt, acc), textcoords="offset points", xytext=(5, 5))
    ax.set_xlabel("forgetting (lower is better)")
    ax.set_ylabel("final average accuracy")
    ax.set_title(f"{results['benchmark']}, seeds {', '.join(map(str, results['seeds']))}")
    path = out_dir / "accuracy_vs_forgetting.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def write_results(results: dict, out_dir: Path) -> list[Path]:
    """Write ``results.json``, ``results.md`` and the plots into ``out_dir``; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "results.json", out_dir / "results.md"
    atomic_write_text(json_path, json.dumps(results, indent=2))
    header = (
        f"# {results['benchmark']}: {results['n_experiences']} experiences, seed {results['seed']}\n\n"
        f"{_stream_line(results)}\n\n{protocol_line(results)}\n\n"
        "Accuracies in [0, 1]; forgetting in max mode (Chaudhry et al. 2018).\n\n"
    )
    atomic_write_text(md_path, header + markdown_table(results) + divergence_section(results) + "\n"
                      + stream_sections(results, markdown=True))
    return [json_path, md_path, *plot_results(results, out_dir), *stream_plots(results, out_dir)]


def stream_plots(results: dict, out_dir: Path) -> list[Path]:
    """A lifetime stream's plot of the first classes over the updates (none for another kind of stream)."""
    if not results.get("lifetime"):
        return []
    return [plot_first_classes(results, out_dir / "first_classes.png")]


def _as_floats(matrix: list[list[float | None]]) -> list[list[float]]:
    """A JSON accuracy matrix with its unevaluated cells (null) as NaN, which matplotlib leaves blank."""
    return [[float("nan") if v is None else v for v in row] for row in matrix]


def plot_results(results: dict, out_dir: Path) -> list[Path]:
    """Accuracy-matrix heat maps (one per strategy) and average accuracy after each experience."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    strategies = results["strategies"]
    fig, axes = plt.subplots(1, len(strategies), figsize=(3.2 * len(strategies), 3.2), squeeze=False)
    for k, (ax, (name, r)) in enumerate(zip(axes[0], strategies.items())):
        image = ax.imshow(_as_floats(r["accuracy_matrix"]), vmin=0, vmax=1, cmap="viridis")
        ax.set_title(name)
        ax.set_xlabel("test condition" if results.get("conditions") else "test experience")
        if results.get("conditions"):
            ax.set_xticks(range(len(results["conditions"])), results["conditions"], rotation=90)
        if k == 0:  # the rows mean the same in every panel
            ax.set_ylabel("after training experience")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="accuracy")
    paths.append(out_dir / "accuracy_matrices.png")
    fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in strategies.items():
        R = r["accuracy_matrix"]
        evaluated = [i for i in range(len(R)) if R[i][0] is not None]  # rows skipped by --eval-every are null
        ax.plot([i + 1 for i in evaluated], [sum(R[i][: i + 1]) / (i + 1) for i in evaluated], marker="o", label=name)
    ax.set_xlabel("experiences learned")
    ax.set_xticks(range(1, results["n_experiences"] + 1))
    ax.set_ylabel("average accuracy on seen experiences")
    ax.set_ylim(0, 1)
    ax.set_title(results["benchmark"])
    ax.legend()
    paths.append(out_dir / "average_accuracy.png")
    fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
    plt.close(fig)
    if _has_anytime(results):
        paths.append(plot_anytime(results, out_dir / "anytime_accuracy.png"))
    return paths


def plot_anytime(results: dict, path: Path) -> Path:
    """Anytime accuracy (on the classes seen so far) against the training samples learned, one line per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in results["strategies"].items():
        if r.get("anytime"):
            samples, accuracy = zip(*r["anytime"])
            ax.plot(samples, accuracy, label=name)
    ax.set_xlabel("training samples learned (one pass)")
    ax.set_ylabel("accuracy on the classes seen so far")
    ax.set_ylim(0, 1)
    ax.set_title(f"{results['benchmark']}: anytime accuracy")
    ax.legend()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_accuracy_forgetting(rows: list[dict], path: Path, title: str) -> Path:
    """One point per strategy: final average accuracy against forgetting, mean ± std over seeds (error bars).

    ``rows`` are :func:`cvm_lightning.app.sweep.summary_rows` (a ``label`` key
    overrides the strategy name). The best place is the bottom right. The
    right panel zooms into the strategies within 0.12 of the most accurate,
    where they crowd; strategies at the same spot share one label.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(row["final_avg_accuracy"], row["forgetting"], row.get("label", row["strategy"])) for row in rows]
    best = max(acc[0] for acc, _, _ in points)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, shown in ((axes[0], points), (axes[1], [p for p in points if p[0][0] >= best - 0.12])):
        labels: dict[tuple[float, float], list[str]] = {}
        for (acc, acc_std), (forget, forget_std), label in shown:
            cvm = label == "cvm"
            ax.errorbar(acc, forget, xerr=acc_std, yerr=forget_std, fmt="*" if cvm else "o", ms=12 if cvm else 6,
                        color="tab:red" if cvm else "tab:blue", capsize=2, lw=0.8)
            spot = (round(acc, 2), round(forget, 2))
            labels.setdefault(spot, []).append(label)
        for (acc, forget), names in labels.items():
            ax.annotate(", ".join(names), (acc, forget), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_xlabel("final average accuracy (higher is better)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("forgetting (lower is better)")
    axes[0].set_title(title)
    axes[1].set_title(f"zoom: within 0.12 of the best ({best:.3f})")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
