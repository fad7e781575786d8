from cvm_lightning.runner import RunConfig
from cvm_lightning.sweep import run_cells, summary_rows

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
    table = run_cells(FAST, [0], {"default": {}, "stiffer": {"distill": 5.0}, "more epochs": {"epochs_per_experience": 2}}, tmp_path, report=report)
    assert ran == ["cvm", "cvm", "replay"], "distill is CVM's alone; epochs apply to every strategy"
    assert table["stiffer"]["replay"] == first["default"]["replay"]
    rows = summary_rows(table)
    assert {(r["variant"], r["strategy"]) for r in rows} >= {("stiffer", "cvm"), ("more epochs", "replay")}
