"""Crash-safe resume: a run stopped at any point (SIGKILL, Ctrl-C, SIGTERM) and resumed ends with the same numbers.

Each stop is placed by ``tests/pause_at.py``, which pauses a chosen call of a
method until the signal arrives, so the matrix hits the same points on any
machine; a truncated newest checkpoint falls back to the one before it.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

RUN = [
    sys.executable, "-m", "cvm_lightning", "run", "--strategies", "cvm,replay", "--epochs", "2", "--buffer", "50",
    "--backbone", "reduced_resnet18", "--input-size", "8", "--train-per-class", "60", "--seed", "3", "--no-progress",
]
PAUSE_AT = Path(__file__).with_name("pause_at.py")


def accuracies(out: Path) -> dict:
    results = json.loads((out / "results.json").read_text())
    return {name: r["accuracy_matrix"] for name, r in results["strategies"].items()}


def run_to_end(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([*RUN[:4], *args] if args and args[0] == "--resume" else [*RUN, *args],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def finish(out: Path) -> None:
    """What a user does after a stop: resume the run where it claimed its folder, else run the command again."""
    run_to_end("--resume", str(out)) if (out / "run_config.json").is_file() else run_to_end("--out", str(out))


def stop_at(out: Path, signum: int, target: str = "-", call: int = 0, delay: float = 0.0) -> subprocess.Popen:
    """Run ``RUN --out out`` (a new run, or the one in ``out`` continued) and send ``signum`` inside the
    ``call``-th call of ``target`` in that process (``-``: ``delay`` seconds after the command starts); returns the
    ended process."""
    marker = out.with_name(f"{out.name}.paused-{target}-{call}")
    marker.unlink(missing_ok=True)
    command = [sys.executable, str(PAUSE_AT), target, str(call), str(marker), "--", *RUN[3:], "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert process.poll() is None, f"the run ended before {target} call {call}: {process.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    if target == "-":
        time.sleep(delay)
    process.send_signal(signum)
    process.wait(timeout=120)
    assert not (out / "results.json").exists()
    return process


def assert_stopped_with_one_line(process: subprocess.Popen, signum: int, out: Path) -> list[str]:
    """Exit 128 + signal, no traceback, and the last line says how to go on; returns what it printed."""
    lines = process.stderr.read().strip().splitlines()
    assert process.returncode == 128 + signum, lines[-5:]
    assert "Traceback" not in "\n".join(lines)
    resume = f"continue with cvm run --resume {out}"
    expected = resume if (out / "run_config.json").is_file() else "run the same command again"
    assert lines[-1].startswith("cvm: interrupted; ") and lines[-1].endswith(expected), lines[-1]
    return lines


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("uninterrupted")
    run_to_end("--out", str(out))
    return accuracies(out)


SCHEDULE = "cvm_lightning.training.schedule:ExperienceSchedule.on_train_epoch_start"
# One run stopped again and again, each time continued: every stop is counted in the process it hits. The
# stream trains 5 experiences of 2 epochs, 2 batches an epoch, then the replay baseline. The batch of
# experience 2 that the mid-experience stop hits is drawn from a seeded generator.
STOPS = [
    ("during the imports", signal.SIGINT, "-", 0),
    ("as experience 1 begins", signal.SIGKILL, SCHEDULE, 3),
    ("during the evaluation after experience 2", signal.SIGINT,
     "cvm_lightning.metrics.callback:ContinualMetricsCallback.on_validation_epoch_start", 2),
    ("in the middle of experience 2", signal.SIGINT, "cvm_lightning.model.module:CVMModule.training_step",
     random.Random(46).randint(1, 4)),
    ("while the baseline trains", signal.SIGTERM, "cvm_lightning.training.baselines:ClassifierNet.forward", 15),
]


@pytest.mark.slow
def test_a_run_stopped_at_each_point_in_turn_resumes_to_identical_results(tmp_path, reference):
    out = tmp_path / "run"
    for where, signum, target, call in STOPS:
        if where == "while the baseline trains":  # and the newest checkpoint truncated, as by a full disk
            newest = out / "checkpoints" / "cvm" / "experience-1.ckpt"
            newest.write_bytes(newest.read_bytes()[:1000])
        process = stop_at(out, signum, target, call, delay=0.8)
        if signum != signal.SIGKILL:
            lines = assert_stopped_with_one_line(process, signum, out)
        assert not (out / "state" / "replay.json").exists(), f"stopped {where}, yet the baseline finished"
    printed = "\n".join(lines)
    assert "experience-1.ckpt cannot be read" in printed and "the previous checkpoint is used" in printed
    finish(out)
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
