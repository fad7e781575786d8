import pytest

from cvm_lightning.app.runner import RunConfig
from cvm_lightning.app.sweep import _same_settings, run_cells, summary_rows

FAST = RunConfig(
    strategies=("cvm", "replay"), epochs_per_experience=1, input_size=8, train_per_class=20, test_per_class=10,
    n_experiences=2, buffer_size=20, progress=False,
)


def test_cells_are_reused_and_a_cvm_option_reruns_only_cvm(tmp_path):
    ran = []

    def report(line: str) -> None:
        if line.startswith("== ") and ":" in line:
            ran.append(line.rsplit(": ", 1)[1])

    first = run_cells(FAST, [0], {"default": {}}, tmp_path, report=report)
    assert sorted(ran) == ["cvm", "replay"]
    again = run_cells(FAST, [0], {"default": {}}, tmp_path, report=report)
    assert sorted(ran) == ["cvm", "replay"], "finished cells are read back, not rerun"
    assert again == first

    ran.clear()
    table = run_cells(
        FAST,
        [0],
        {"default": {}, "stiffer": {"distill": 5.0}, "more epochs": {"epochs_per_experience": 2}},
        tmp_path,
        report=report,
    )
    assert ran == ["cvm", "cvm", "replay"], "distill is CVM's alone; epochs apply to every strategy"
    assert table["stiffer"]["replay"] == first["default"]["replay"]
    rows = summary_rows(table)
    assert {(r["variant"], r["strategy"]) for r in rows} >= {("stiffer", "cvm"), ("more epochs", "replay")}


def test_a_kept_cell_matches_across_settings_added_or_no_longer_read_only_at_their_defaults():
    now = {"name": "der", "lr": 0.1, "drop_last": False}
    assert _same_settings({"name": "der", "lr": 0.1}, now), "kept before drop_last existed: its default"
    assert not _same_settings({"name": "der", "lr": 0.1}, {**now, "drop_last": True})
    assert _same_settings({**now, "growing_head": False}, now), "no longer read, and kept at the default"
    assert not _same_settings({**now, "growing_head": True}, now), "it ran with a setting it now ignores"


@pytest.mark.slow
def test_run_seeds_gives_the_mean_and_std_of_separate_single_seed_runs(tmp_path, capsys):
    import json

    from cvm_lightning.app.cli import main
    from cvm_lightning.app.tables import mean_std

    tiny = ["--strategies", "cvm,naive", "--epochs", "1", "--input-size", "8", "--train-per-class", "20",
            "--test-per-class", "10", "--no-progress"]
    assert main(["run", *tiny, "--seeds", "0", "1", "--out", str(tmp_path / "both")]) == 0
    assert "Mean ± std over seeds 0, 1" in capsys.readouterr().out
    together = json.loads((tmp_path / "both" / "results.json").read_text())["strategies"]
    single = {}
    for seed in (0, 1):
        assert main(["run", *tiny, "--seed", str(seed), "--out", str(tmp_path / f"seed{seed}")]) == 0
        single[seed] = json.loads((tmp_path / f"seed{seed}" / "results.json").read_text())["strategies"]
    for name in ("cvm", "naive"):
        for metric in ("final_avg_accuracy", "forgetting", "fwt"):
            expected = mean_std([single[s][name][metric] for s in (0, 1)])
            assert together[name][metric] == pytest.approx(list(expected), abs=1e-9), (name, metric)
        assert [c["seed"] for c in together[name]["per_seed"]] == [0, 1]
    assert (tmp_path / "both" / "accuracy_vs_forgetting.png").is_file()


def test_accuracy_forgetting_plot_and_tables_show_what_was_not_measured(tmp_path):
    from cvm_lightning.app.reporting import plot_accuracy_forgetting
    from cvm_lightning.app.sweep import markdown, summary_rows

    nan = float("nan")
    cells = {"cvm": [{"seed": s, "final_avg_accuracy": a, "forgetting": f, "bwt": -f, "zero_shot_accuracy": 0.3,
                      "fwt": 0.1} for s, a, f in ((0, 0.9, 0.05), (1, 0.8, 0.07))],
             "joint": [{"seed": s, "final_avg_accuracy": 0.95, "forgetting": 0.0, "bwt": 0.0, "zero_shot_accuracy": nan,
                        "fwt": nan} for s in (0, 1)]}
    rows = summary_rows({"default": cells})
    assert rows[0]["final_avg_accuracy"] == pytest.approx((0.85, 0.05))
    table = markdown(rows, "strategy")
    assert "| joint | 2 | 0.950 ± 0.000 | 0.000 ± 0.000 | 0.000 ± 0.000 | n/a | n/a |" in table
    # A lifetime's first classes: column 0 at the end against right after the first experience.
    lifetime = summary_rows({"default": {"cvm": [{**cells["cvm"][0], "accuracy_matrix": [[0.9, None], [0.7, 0.8]]}]}})
    assert markdown(lifetime, "strategy", first_classes=True).splitlines()[-1].endswith("| -0.200 ± 0.000 |")
    assert "first classes" not in table
    path = plot_accuracy_forgetting(rows, tmp_path / "plot.png", "two strategies")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
