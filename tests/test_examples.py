import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TINY = ["--epochs", "1", "--backbone", "mobilenetv3_small_050", "--no-progress"]


def run_example(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True, timeout=900, cwd=EXAMPLES
    )


@pytest.mark.slow
def test_lightning_dropin_example_runs_and_logs(tmp_path):
    result = run_example("lightning_dropin.py", "--epochs", "1", "--backbone", "mobilenetv3_small_050",
                         "--input-size", "16", "--root", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "after the stream: avg_acc=" in result.stdout
    # Lightning's default logger (TensorBoard here) got the run; the matrix artefact sits beside it.
    assert list(tmp_path.rglob("events.out.tfevents.*"))
    artefacts = list(tmp_path.rglob("accuracy_matrix.json"))
    assert artefacts and '"forgetting"' in artefacts[0].read_text()


@pytest.mark.slow
def test_avalanche_side_by_side_example_scores_every_strategy():
    result = run_example(
        "avalanche_side_by_side.py", "--epochs", "1", "--backbone", "mobilenetv3_small_050", "--input-size", "16"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[-3:]}
    assert set(rows) == {"cvm", "naive", "replay"}
    assert all(0.0 <= float(values[0]) <= 1.0 for values in rows.values())


@pytest.mark.slow
def test_split_digits_example(tmp_path):
    result = run_example(
        "split_digits.py", *TINY, "--strategies", "cvm,naive", "--input-size", "16", "--out", str(tmp_path / "o")
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "o" / "results.json").is_file() and "final avg acc" in result.stdout


@pytest.mark.parametrize(
    "script",
    [
        "split_cifar10.py",
        "domain_cifar10.py",
        "split_cifar100.py",
        "split_tinyimagenet.py",
        "split_fashion_mnist.py",
        "core50.py",
        "own_images.py",
    ],
)
def test_data_examples_without_data_say_where_to_put_it(script, tmp_path, monkeypatch, capsys):
    # In this process, as `python examples/SCRIPT` runs it: a new process a script would spend its time importing.
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.setattr(sys, "argv", [script, "--data-root", str(tmp_path), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(EXAMPLES / script), run_name="__main__")
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "cvm: error:" in err and str(tmp_path) in err and "Traceback" not in err
    assert not (tmp_path / "o").exists(), "nothing is written"


@pytest.mark.shared_data
@pytest.mark.slow
def test_data_examples_on_real_images(cifar10_root, tinyimagenet_root, tmp_path):
    result = run_example("split_cifar10.py", *TINY, "--strategies", "cvm", "--data-root", str(cifar10_root),
                         "--train-per-class", "10", "--test-per-class", "20", "--out", str(tmp_path / "c10"))
    assert result.returncode == 0, result.stderr[-2000:]
    result = run_example("split_tinyimagenet.py", *TINY, "--strategies", "cvm", "--data-root", str(tinyimagenet_root),
                         "--train-per-class", "2", "--test-per-class", "5", "--out", str(tmp_path / "tin"))
    assert result.returncode == 0, result.stderr[-2000:]
    own = tmp_path / "own"
    for folder in ("cat", "dog"):
        for split, count in (("train", 10), ("test", 5)):
            (own / split / folder).mkdir(parents=True)
            for image in sorted((cifar10_root / split / folder).iterdir())[:count]:
                shutil.copy(image, own / split / folder / image.name)
    result = run_example(
        "own_images.py", *TINY, "--strategies", "cvm", "--data-root", str(own), "--out", str(tmp_path / "own-out")
    )
    assert result.returncode == 0, result.stderr[-2000:]
