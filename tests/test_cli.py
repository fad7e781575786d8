import json
import subprocess
import sys

import pytest

from cvm_lightning.app.cli import main

FAST = ["--epochs", "1", "--buffer", "40", "--no-progress", "--backbone", "mobilenetv3_small_050", "--input-size", "16"]


def test_benchmarks_lists_the_default(capsys):
    assert main(["benchmarks"]) == 0
    assert "split-digits" in capsys.readouterr().out


def test_help_documents_every_flag():
    out = subprocess.run(
        [sys.executable, "-m", "cvm_lightning", "run", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in ("--benchmark", "--strategies", "--backbone", "--text-model", "--epochs", "--buffer", "--seed",
                 "--data-root", "--train-per-class", "--out"):
        assert flag in out


def test_every_run_setting_has_a_flag_and_flags_not_given_keep_the_defaults():
    import argparse
    from dataclasses import fields

    from cvm_lightning.app.cli import build_parser, config_from_args
    from cvm_lightning.app.runner import RunConfig

    parser = build_parser()
    run = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["run"]
    assert {f.name for f in fields(RunConfig)} <= {action.dest for action in run._actions}
    assert config_from_args(parser.parse_args(["run"])) == RunConfig()


@pytest.mark.slow
def test_run_writes_results_and_repeats_with_the_same_seed(tmp_path, capsys):
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert main(["run", "--strategies", "cvm,replay", "--train-per-class", "60", "--out", str(out), *FAST]) == 0
        runs.append(json.loads((out / "results.json").read_text()))
        assert (out / "results.md").read_text().count("|") > 10
        assert (out / "accuracy_matrices.png").stat().st_size > 0 and (out / "average_accuracy.png").exists()
    table = capsys.readouterr().out
    assert "final avg acc" in table and "replay" in table
    first = runs[0]
    assert first["benchmark"] == "split-digits" and first["n_experiences"] == 5
    assert first["classes_per_experience"] == [2] * 5
    for name, result in first["strategies"].items():
        assert set(result) >= {
            "final_avg_accuracy",
            "forgetting",
            "bwt",
            "accuracy_matrix",
            "train_seconds",
            "params",
            "peak_rss_mb",
        }
        assert 0.0 <= result["final_avg_accuracy"] <= 1.0
        assert len(result["accuracy_matrix"]) == 5 and all(
            0 <= v <= 1 for row in result["accuracy_matrix"] for v in row
        )
        again = runs[1]["strategies"][name]
        assert again["accuracy_matrix"] == result["accuracy_matrix"], f"{name} is not repeatable"


def test_bad_input_exits_non_zero_with_a_message(tmp_path, capsys):
    assert main(["run", "--benchmark", "split-digit", "--out", str(tmp_path / "x"), *FAST]) == 2
    assert "Did you mean split-digits" in capsys.readouterr().err
    assert main(["run", "--strategies", "cvm,icarl2", "--out", str(tmp_path / "y"), *FAST]) == 2
    assert "Unknown strategies" in capsys.readouterr().err
    assert (
        main(["run", "--backbone", "resnet-18", "--strategies", "cvm", "--out", str(tmp_path / "z"), *FAST[:-4]]) == 2
    )
    assert "resnet18" in capsys.readouterr().err


def test_a_rejected_run_leaves_the_out_folder_free_for_the_fixed_command(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--test-per-class", "0", "--out", str(out), *FAST]) == 2
    assert "--test-per-class must be an integer >= 1" in capsys.readouterr().err
    assert not (out / "run_config.json").exists()


def test_existing_results_are_never_overwritten(tmp_path, capsys):
    (tmp_path / "results.json").write_text('{"kept": true}')
    assert main(["run", "--out", str(tmp_path), *FAST]) == 2
    assert "another --out" in capsys.readouterr().err
    assert json.loads((tmp_path / "results.json").read_text()) == {"kept": True}


def test_output_folder_that_cannot_be_written_is_a_clear_error(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["run", "--out", str(blocker / "out"), *FAST]) == 2
    assert "Cannot write to output folder" in capsys.readouterr().err
    assert blocker.read_text() == "not a folder"


def test_info_describes_the_installed_versions_and_this_cpu(capsys, monkeypatch):
    from importlib import metadata

    from cvm_lightning import hardware

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name in ("torch", "pytorch-lightning", "timm", "avalanche-lib", "onnxruntime"):
        line = next(line for line in out.splitlines() if line.split()[:1] == [name])
        try:
            assert metadata.version(name) in line
        except metadata.PackageNotFoundError:
            assert "not installed" in line
    assert f"cores (this process may use)  {hardware.available_cores()}" in out
    bf16 = "pays here" if hardware.native_bf16() else "no bfloat16 units"
    assert bf16 in next(line for line in out.splitlines() if "--precision" in line)
    # The advice follows the CPU's flags: an AVX2-only CPU gets the other lines.
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "vector features               AVX2\n" in out
    assert "no bfloat16 units" in out and "no VNNI here" in out


def test_output_cut_short_by_its_reader_ends_without_a_traceback(tmp_path, monkeypatch, capsys):
    """`cvm protocols | head -n 1`: once the reader stops, writing raises BrokenPipeError, which ends quietly."""
    import sys

    class ClosedPipe:
        def __init__(self) -> None:
            self.file = open(tmp_path / "stdout", "w")

        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            pass

        def fileno(self) -> int:
            return self.file.fileno()

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["protocols"]) == 0
    assert capsys.readouterr().err == ""
