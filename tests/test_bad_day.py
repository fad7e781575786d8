"""A bad day on site: odd image files in every reader, NaN images, a Ctrl-C in learn, export and fit, the help."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import TINY_RUN, checksums, expect_error, make_image_folder, write_decompression_bomb
from PIL import Image
from torch.utils.data import TensorDataset

from cvm_lightning.app.cli import build_parser, main
from cvm_lightning.data import ClassIncrementalDataModule
from cvm_lightning.errors import DataError

PAUSE_AT = Path(__file__).with_name("pause_at.py")
ODD_FILES = {
    "bomb": write_decompression_bomb,
    "empty": lambda path: path.write_bytes(b""),
    "not an image": lambda path: path.write_bytes(b"this is not a PNG"),
    "truncated": lambda path: path.write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"),
}


@pytest.mark.parametrize("odd", list(ODD_FILES))
def test_predict_names_and_skips_an_unreadable_image_and_predicts_the_others(odd, workspace, tmp_path, capsys):
    images = tmp_path / "line"
    for path in sorted(workspace["images"].glob("*.png")):
        (images / path.name).parent.mkdir(parents=True, exist_ok=True)
        (images / path.name).write_bytes(path.read_bytes())
    bad = images / "0000-odd.png"  # first in the order listed: the batch it starts must still be predicted
    ODD_FILES[odd](bad)
    capsys.readouterr()
    assert main(["predict", "--model", str(workspace["pt"]), str(images), "--batch-size", "2"]) == 0
    captured = capsys.readouterr()
    predicted = [line.split("\t")[0] for line in captured.out.splitlines() if "\t" in line]
    assert predicted == [str(p) for p in sorted(images.glob("*.png")) if p != bad]
    err = [line for line in captured.err.splitlines() if line.startswith("cvm:")]  # tqdm's bar shares stderr
    assert len(err) == 1 and err[0].startswith(f"cvm: skipped an unreadable image: {bad} ("), err
    if odd == "bomb":
        assert "exceeds limit" in err[0]


def test_predict_of_nothing_readable_is_one_error(workspace, tmp_path, capsys):
    bomb = write_decompression_bomb(tmp_path / "only" / "bomb.png")
    expect_error(["predict", "--model", str(workspace["pt"]), str(bomb.parent)], "None of the 1 image files could be "
                 "read", capsys, tmp_path)


def test_the_drift_reference_skips_a_bomb_too(workspace, tmp_path, capsys):
    reference = tmp_path / "reference"
    for path in sorted((workspace["data"] / "test").rglob("*.png")):
        target = reference / path.relative_to(workspace["data"] / "test")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    bomb = write_decompression_bomb(reference / "cat" / "bomb.png")
    capsys.readouterr()
    assert main(["predict", "--model", str(workspace["pt"]), str(workspace["images"]), "--reference",
                 str(reference)]) == 0
    captured = capsys.readouterr()
    assert "drift monitor:" in captured.out and str(bomb) in captured.err


def test_a_bomb_in_a_training_folder_is_refused_with_one_line(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", train=4, test=2)
    bomb = write_decompression_bomb(data / "train" / "dog" / "bomb.png")
    out = tmp_path / "out"
    line = expect_error(["run", *TINY_RUN, "--data-root", str(data), "--out", str(out)], str(bomb), capsys, tmp_path)
    assert "exceeds limit" in line and not out.exists()


def test_learn_refuses_a_bomb_among_its_new_images(workspace, tmp_path, capsys):
    new = make_image_folder(tmp_path / "new", classes=("horse",), train=4, test=2)
    write_decompression_bomb(new / "train" / "horse" / "bomb.png")
    expect_error(["learn", "--checkpoint", str(workspace["ckpt"]), "--data", str(new), "--out",
                  str(tmp_path / "u.ckpt")], "bomb.png", capsys, tmp_path)
    assert not (tmp_path / "u.ckpt").exists()


def _tensor_datasets(bad_index: int | None, split: str):
    x = torch.rand(16, 3, 8, 8)
    y = torch.arange(16) % 4
    test_x = x.clone()
    if bad_index is not None:
        (x if split == "training" else test_x)[bad_index, 1, 2, 3] = float("nan")
    return TensorDataset(x, y), TensorDataset(test_x, y)


@pytest.mark.parametrize("split", ["training", "test"])
@pytest.mark.parametrize("wrap", ["tensors", "pairs"])
def test_nan_images_are_refused_at_setup_with_the_dataset_and_index(split, wrap, monkeypatch):
    train, test = _tensor_datasets(5, split)
    if wrap == "pairs":  # any map-style dataset, read image by image
        train, test = [train[i] for i in range(len(train))], [test[i] for i in range(len(test))]
    with pytest.raises(DataError, match=f"{split.capitalize()} set image 5 holds NaN or infinite pixels"):
        ClassIncrementalDataModule.from_datasets(train, test, ["cat", "dog", "car", "ship"], n_experiences=2)


def test_finite_images_still_set_up():
    train, test = _tensor_datasets(None, "training")
    dm = ClassIncrementalDataModule.from_datasets(train, test, ["cat", "dog", "car", "ship"], n_experiences=2)
    assert dm.n_experiences == 2


def _update(root: Path, with_test: bool, nested: bool) -> Path:
    """An update of one new class: train/<class>/ with or without test/, or the class folder directly."""
    made = make_image_folder(root / "made", classes=("horse",), train=6, test=2)
    target = root / "update"
    (target / ("train" if nested else "")).mkdir(parents=True)
    (made / "train" / "horse").rename(target / ("train" if nested else "") / "horse")
    if with_test:
        (target / "test").mkdir()
        (made / "test" / "horse").rename(target / "test" / "horse")
    return target


@pytest.mark.parametrize(("with_test", "nested"), [(False, True), (False, False), (True, True)])
def test_learn_takes_train_alone_or_class_folders_directly(with_test, nested, workspace, tmp_path, capsys):
    from cvm_lightning.deploy.predict import load_checkpoint

    update = _update(tmp_path, with_test, nested)
    out = tmp_path / "u.ckpt"
    capsys.readouterr()
    assert main(["learn", "--checkpoint", str(workspace["ckpt"]), "--data", str(update), "--epochs", "1",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "horse (new)" in printed
    assert ("this update's test images" in printed) == with_test
    assert "horse" in load_checkpoint(out).class_names


def test_an_update_class_folder_without_images_is_one_error(workspace, tmp_path, capsys):
    update = _update(tmp_path, with_test=False, nested=True)
    (update / "train" / "zebra").mkdir()
    expect_error(["learn", "--checkpoint", str(workspace["ckpt"]), "--data", str(update), "--out",
                  str(tmp_path / "u.ckpt")], "['zebra']", capsys, tmp_path)


def _stop_inside(command: list[str], target: str, call: int, marker: Path, signum=signal.SIGINT):
    """Run ``cvm command`` and send ``signum`` inside the ``call``-th call of ``target``; the ended process."""
    process = subprocess.Popen([sys.executable, str(PAUSE_AT), target, str(call), str(marker), "--", *command],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert process.poll() is None, process.stderr.read()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signum)
    process.wait(timeout=120)
    return process, process.stderr.read().strip().splitlines()


@pytest.mark.slow
def test_ctrl_c_in_learn_writes_nothing_and_the_rerun_gives_the_uninterrupted_model_bit_for_bit(workspace, tmp_path):
    update = _update(tmp_path, with_test=True, nested=True)
    command = ["learn", "--checkpoint", str(workspace["ckpt"]), "--data", str(update), "--epochs", "2"]
    before = checksums(workspace["root"])
    process, lines = _stop_inside([*command, "--out", str(tmp_path / "stopped.ckpt")],
                                  "cvm_lightning.model.module:CVMModule.training_step", 2, tmp_path / "paused")
    assert process.returncode == 130 and lines[-1] == ("cvm: interrupted; nothing was left half-written; run the "
                                                       "same command again"), lines[-5:]
    assert not (tmp_path / "stopped.ckpt").exists() and checksums(workspace["root"]) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")], "no temporary file left behind"
    for name in ("stopped.ckpt", "whole.ckpt"):
        assert main([*command, "--out", str(tmp_path / name)]) == 0
    stopped, whole = (torch.load(tmp_path / n, weights_only=True)["state_dict"] for n in ("stopped.ckpt", "whole.ckpt"))
    assert all(torch.equal(stopped[k], whole[k]) for k in whole)


@pytest.mark.slow
def test_sigterm_in_export_leaves_no_file_and_the_rerun_writes_it(workspace, tmp_path):
    out = tmp_path / "model.onnx"
    command = ["export", "--checkpoint", str(workspace["ckpt"]), "--format", "onnx", "--out", str(out)]
    process, lines = _stop_inside(command, "cvm_lightning.deploy.export:DeployedCVM.forward", 1, tmp_path / "paused",
                                  signal.SIGTERM)
    assert process.returncode == 143 and lines[-1].startswith("cvm: interrupted; "), lines[-5:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["paused"]
    assert main(command) == 0 and out.stat().st_size > 0


@pytest.mark.slow
def test_ctrl_c_in_fit_names_the_checkpoint_to_go_on_from(tmp_path):
    command = ["fit", "--data.benchmark", "split-digits", "--data.epochs_per_experience", "1",
               "--data.train_per_class", "20", "--model.backbone", "reduced_resnet18", "--model.input_size", "8",
               "--trainer.default_root_dir", str(tmp_path / "fit"), "--trainer.enable_progress_bar", "false"]
    process, lines = _stop_inside(command, "cvm_lightning.training.schedule:ExperienceSchedule.on_train_epoch_start",
                                  3, tmp_path / "paused")
    assert process.returncode == 130, lines[-5:]
    prefix = "cvm: interrupted; continue with the same `cvm fit` command and --ckpt_path "
    assert lines[-1].startswith(prefix), lines[-1]
    saved = Path(lines[-1][len(prefix):])
    assert saved.is_file()
    assert main([*command, "--ckpt_path", str(saved)]) == 0


IMPORT_THEN_WAIT = """
import sys, time
sys.path.insert(0, sys.argv[1])
from cvm_lightning.app.interrupts import Interrupted, interruptible
try:
    with interruptible():
        import slow_module
        time.sleep(30)
except Interrupted:
    print("interrupted after the import:", sys.modules["slow_module"].DONE)
"""


def test_a_signal_during_an_import_stops_the_command_once_the_import_is_done(tmp_path):
    # A module left half-run by an exception breaks every later import of it (numpy's C core cannot load twice).
    marker = tmp_path / "importing"
    (tmp_path / "slow_module.py").write_text(f"import pathlib, time\npathlib.Path({str(marker)!r}).touch()\n"
                                             "time.sleep(1.0)\nDONE = True\n")
    process = subprocess.Popen([sys.executable, "-c", IMPORT_THEN_WAIT, str(tmp_path)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert out.strip() == "interrupted after the import: True", err[-2000:]


def _help_texts() -> dict[str, str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.choices and "run" in a.choices)
    return {name: command.format_help() for name, command in sub.choices.items() if command.add_help}


@pytest.mark.parametrize("command", list(_help_texts()))
def test_no_option_names_its_default_twice_or_as_none(command):
    for option in _help_texts()[command].split("\n  -")[1:]:
        text = " ".join(option.split())
        assert text.count("(default") <= 1, f"cvm {command}: {text}"
        assert "(default: None)" not in text, f"cvm {command}: {text}"


def test_learns_help_says_what_data_layouts_it_takes():
    text = " ".join(_help_texts()["learn"].split())
    assert "optional test/<class>/<image>" in text and "or <class>/<image>" in text


def test_an_image_reader_error_names_the_file(tmp_path):
    from cvm_lightning.image_files import UnreadableImageError, read_image

    bomb = write_decompression_bomb(tmp_path / "bomb.png")
    with pytest.raises(UnreadableImageError) as caught:
        read_image(bomb)
    assert caught.value.path == bomb and "exceeds limit" in caught.value.reason
    with pytest.raises(DataError, match="does not exist"):
        read_image(tmp_path / "missing.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "ok.png")
    assert read_image(tmp_path / "ok.png").shape == (3, 4, 4)
