"""Crash-safe resume: a run killed with SIGKILL and resumed ends with the same numbers."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

RUN = [
    sys.executable, "-m", "cvm_lightning", "run", "--strategies", "cvm,replay", "--epochs", "1", "--buffer", "50",
    "--backbone", "reduced_resnet18", "--input-size", "8", "--train-per-class", "60", "--seed", "3", "--no-progress",
]


def accuracies(out: Path) -> dict:
    results = json.loads((out / "results.json").read_text())
    return {name: r["accuracy_matrix"] for name, r in results["strategies"].items()}


def run_to_end(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([*RUN[:4], *args] if args and args[0] == "--resume" else [*RUN, *args],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def kill_when(out: Path, marker: str, delay: float = 0.0) -> None:
    """Start a run into ``out`` and SIGKILL it once ``out/marker`` exists (plus ``delay`` seconds)."""
    process = subprocess.Popen([*RUN, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (out / marker).exists():
        assert process.poll() is None, f"the run ended before {marker} appeared"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "results.json").exists()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("uninterrupted")
    run_to_end("--out", str(out))
    return accuracies(out)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("marker", "delay"),
    [
        ("checkpoints/cvm/experience-1.ckpt", 0.0),  # at an experience boundary
        ("checkpoints/cvm/experience-2.ckpt", 0.1),  # during experience 3
        ("state/cvm.json", 0.2),  # while a baseline trains
    ],
)
def test_killed_run_resumes_to_identical_results(tmp_path, reference, marker, delay):
    out = tmp_path / "run"
    kill_when(out, marker, delay)
    run_to_end("--resume", str(out))
    assert accuracies(out) == reference


@pytest.mark.slow
def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, reference):
    out = tmp_path / "run"
    kill_when(out, "checkpoints/cvm/experience-2.ckpt")
    newest = out / "checkpoints" / "cvm" / "experience-2.ckpt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as by a full disk
    result = run_to_end("--resume", str(out))
    assert "experience-2.ckpt cannot be read" in result.stderr
    assert "the previous checkpoint is used" in result.stderr
    assert accuracies(out) == reference


def test_resume_refuses_a_folder_without_a_run(tmp_path):
    result = subprocess.run([*RUN[:4], "--resume", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "holds no run to resume" in result.stderr


def test_out_folder_of_another_configuration_is_refused_and_left_alone(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    saved = '{"benchmark": "split-digits", "seed": 99, "strategies": ["cvm"]}'
    (out / "run_config.json").write_text(saved)
    result = subprocess.run([*RUN, "--out", str(out)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "another configuration" in result.stderr and "--resume" in result.stderr
    assert (out / "run_config.json").read_text() == saved


def test_atomic_writes_leave_no_temporary_file_and_an_ordinarily_readable_result(tmp_path):
    import os
    import stat

    from cvm_lightning.atomic import atomic_path, atomic_write_text

    target = tmp_path / "result.json"
    atomic_write_text(target, "{}")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask, "not mkstemp's private 0600"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash while writing")
    assert target.read_text() == "{}" and sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]
