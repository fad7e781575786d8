"""``--eval-every N``: the test stream is evaluated after every N-th experience and the last, nothing else changes."""

import json

from cli_helpers import TINY_RUN, expect_error

from cvm_lightning.app.cli import main

FOUR_EXPERIENCES = [*TINY_RUN, "--n-experiences", "4", "--strategies", "cvm,naive"]


def _run(data, out, *flags) -> dict:
    assert main(["run", *FOUR_EXPERIENCES, "--data-root", str(data), "--out", str(out), *flags]) == 0
    return json.loads((out / "results.json").read_text())["strategies"]


def test_skipped_experiences_leave_empty_rows_and_the_evaluated_ones_unchanged(workspace, tmp_path):
    every = _run(workspace["data"], tmp_path / "every")
    second = _run(workspace["data"], tmp_path / "second", "--eval-every", "2")
    for name in ("cvm", "naive"):
        R, R_every = second[name]["accuracy_matrix"], every[name]["accuracy_matrix"]
        assert R[0] == [None] * 4 and R[2] == [None] * 4, f"{name}: experiences 1 and 3 are not evaluated"
        assert R[1] == R_every[1] and R[3] == R_every[3], f"{name}: skipping an evaluation changes no training"
        assert second[name]["final_avg_accuracy"] == every[name]["final_avg_accuracy"]
        assert second[name]["zero_shot"] == every[name]["zero_shot"], "zero-shot is scored before every experience"
    checkpoints = sorted(p.name for p in (tmp_path / "second" / "checkpoints" / "cvm").iterdir())
    assert checkpoints == ["experience-1.ckpt", "experience-3.ckpt"], "checkpoints come with evaluations"
    assert (tmp_path / "second" / "accuracy_matrices.png").stat().st_size > 0


def test_eval_every_below_one_is_refused(workspace, tmp_path, capsys):
    out = tmp_path / "out"
    expect_error(["run", *FOUR_EXPERIENCES, "--data-root", str(workspace["data"]), "--eval-every", "0",
                  "--out", str(out)], "--eval-every must be an integer >= 1", capsys, tmp_path)
    assert not out.exists()
