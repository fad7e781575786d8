"""Bad input, as a new user types it: one `cvm: error:` line naming the fix, exit code 2, no file changed.

Each case runs the real command in-process (an uncaught exception would fail
the test, so no case can end in a traceback) and compares checksums of every
file under the test folder before and after.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import TINY_RUN, expect_error, make_image_folder
from PIL import Image

from cvm_lightning.app.cli import main
from cvm_lightning.errors import ConceptError, ConfigError, DataError

RUN_CASES = {
    "negative lr": (["--lr", "-0.1"], "--lr must be a number > 0"),
    "zero lr": (["--lr", "0"], "--lr must be a number > 0"),
    "nan lr": (["--lr", "nan"], "--lr must be a number > 0"),
    "zero temperature": (["--temperature", "0"], "--temperature must be a number > 0"),
    "negative temperature": (["--temperature", "-1"], "--temperature must be a number > 0"),
    "zero experiences": (["--n-experiences", "0"], "--n-experiences must be an integer >= 1"),
    "negative experiences": (["--n-experiences", "-2"], "--n-experiences must be an integer >= 1"),
    "negative input size": (["--input-size", "-8"], "--input-size must be an integer >= 1"),
    "zero input size": (["--input-size", "0"], "--input-size must be an integer >= 1"),
    "zero epochs": (["--epochs", "0"], "--epochs must be an integer >= 1"),
    "zero batch": (["--batch-size", "0"], "--batch-size must be an integer >= 1"),
    "negative seed": (["--seed", "-1"], "--seed must be an integer >= 0"),
    "negative distill": (["--distill", "-1"], "--distill must be a number >= 0"),
    "lightning strategy": (["--strategy", "foo"], "Unknown --strategy 'foo'"),
    "unknown strategy": (["--strategies", "cvm,icarl2"], "Unknown strategies"),
    "empty strategies": (["--strategies", ","], "--strategies is empty"),
    "duplicate strategies": (["--strategies", "cvm,cvm"], "more than once"),
    "memory without buffer": (["--strategies", "replay", "--buffer", "0"], "need a memory: pass --buffer"),
    "unknown backbone": (["--backbone", "resnet-18"], "Did you mean"),
    "unknown text model": (["--text-model", "no-such/text-model"], "could not be loaded offline"),
    "unknown benchmark": (["--benchmark", "split-digit"], "Did you mean split-digits"),
    "duplicate seeds": (["--seeds", "0", "1", "0"], "repeats a seed; list each seed once"),
    "zero eval every": (["--eval-every", "0"], "--eval-every must be an integer >= 1"),
}


@pytest.mark.parametrize("case", sorted(RUN_CASES))
def test_run_rejects_bad_values_before_writing_anything(case, tmp_path, capsys):
    extra, fix = RUN_CASES[case]
    out = tmp_path / "out"
    args = ["run", "--epochs", "1", "--no-progress", "--out", str(out), *extra]
    expect_error(args, fix, capsys, tmp_path)
    assert not out.exists(), "nothing is written before every setting is checked"


def test_a_rejected_value_leaves_an_existing_run_folder_as_it_was(workspace, capsys):
    expect_error(["run", *TINY_RUN, "--data-root", str(workspace["data"]), "--lr", "-1", "--out",
                  str(workspace["root"] / "run")], "--lr must be", capsys, workspace["root"])


@pytest.mark.parametrize("damage", ["corrupt", "empty", "truncated"])
def test_broken_image_files_are_named_before_training(damage, tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", train=4, test=2)
    victim = data / "train" / "dog" / "bad.jpg"
    good = data / "train" / "dog" / "good.jpg"
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(good)
    victim.write_bytes({"corrupt": b"this is not a JPEG", "empty": b"", "truncated": good.read_bytes()[:200]}[damage])
    out = tmp_path / "out"
    line = expect_error(["run", *TINY_RUN, "--data-root", str(data), "--out", str(out)], str(victim), capsys, tmp_path)
    assert "Remove or replace" in line
    assert not (out / "run_config.json").exists()


def test_deploy_commands_never_write_over_their_inputs_or_existing_files(workspace, capsys):
    ckpt, pt, images, root = str(workspace["ckpt"]), str(workspace["pt"]), str(workspace["images"]), workspace["root"]
    kept = root / "kept.csv"
    kept.write_text("earlier predictions")
    cases = [
        (["export", "--checkpoint", ckpt, "--out", ckpt], "is also an input"),
        (["export", "--checkpoint", ckpt, "--out", pt], "already exists; pass --overwrite"),
        (
            ["export", "--checkpoint", ckpt, "--format", "onnx", "--out", str(root / "x.pt")],
            "needs one of the suffixes .onnx",
        ),
        (["export", "--checkpoint", pt, "--out", str(root / "y.pt")], "is not a checkpoint (expected .ckpt)"),
        (["export", "--checkpoint", str(root / "missing.ckpt"), "--out", str(root / "y.pt")], "No checkpoint at"),
        (["export", "--checkpoint", ckpt, "--out", str(root / "y.pt"), "--image-size", "0"], "--image-size must be"),
        (["export", "--checkpoint", ckpt, "--out", str(Path(ckpt) / "y.pt")], "is a file, not a folder"),
        (["predict", "--model", pt, images, "--output", pt], "is also an input"),
        (["predict", "--model", pt, images, "--output", str(kept)], "already exists; pass --overwrite"),
        (["predict", "--model", pt, images, "--output", str(root / "p.txt")], "suffixes .csv, .json"),
        (["predict", "--model", pt, images, "--batch-size", "0"], "--batch-size must be an integer >= 1"),
        (["predict", "--model", pt, images, "--batch-size", "-3"], "--batch-size must be an integer >= 1"),
        (["predict", "--model", pt, images, "--z-threshold", "-1"], "--z-threshold must be a number > 0"),
        (["predict", "--model", pt, images, "--monitor"], "--monitor needs --reference"),
        (["predict", "--model", str(root / "data"), images], "is a folder"),
        (["predict", "--model", str(root / "run" / "run_config.json"), images], "is not a model file"),
        (["predict", "--model", pt, str(root / "nowhere")], "does not exist"),
        (
            ["learn", "--checkpoint", ckpt, "--data", str(workspace["new"]), "--epochs", "0"],
            "--epochs must be an integer >= 1",
        ),
        (
            ["learn", "--checkpoint", ckpt, "--data", str(workspace["new"]), "--eval-data", str(root / "typo")],
            "No --eval-data folder",
        ),
        (["learn", "--checkpoint", ckpt, "--data", str(root / "nowhere")], "No folder of images to learn"),
        (
            ["learn", "--checkpoint", ckpt, "--data", str(workspace["new"]), "--names-file", str(root / "n.txt")],
            "No class-names file",
        ),
        (["learn", "--checkpoint", ckpt, "--data", str(workspace["new"]), "--out", ckpt], "is also an input"),
    ]
    for args, fix in cases:
        expect_error(args, fix, capsys, root)


def test_files_that_are_not_models_get_our_own_one_line(workspace, tmp_path, capsys):
    fake_ckpt = tmp_path / "fake.ckpt"
    torch.save({"state_dict": {}, "note": Path("x")}, fake_ckpt)  # a pickle of a Python object
    fake_pt = tmp_path / "fake.pt"
    fake_pt.write_text("not TorchScript")
    for args in (["export", "--checkpoint", str(fake_ckpt), "--out", str(tmp_path / "m.pt")],
                 ["predict", "--model", str(fake_pt), str(workspace["images"])]):
        line = expect_error(args, "not a readable CVM", capsys, tmp_path)
        assert "weights_only=False" not in line, "never advise unpickling an untrusted file"


def test_learn_checks_its_new_images_before_training(workspace, tmp_path, capsys):
    new = make_image_folder(tmp_path / "new", classes=("horse", "truck"), train=4, test=2)
    (new / "train" / "truck" / "broken.png").write_bytes(b"")
    expect_error(
        ["learn", "--checkpoint", str(workspace["ckpt"]), "--data", str(new)], "broken.png", capsys, workspace["root"]
    )
    assert not list(workspace["ckpt"].parent.glob("*-learned*.ckpt")), "no checkpoint nobody asked for"


def test_bad_concept_cache_locations_are_one_clear_error(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("CVM_CACHE_DIR", str(blocker))
    expect_error(
        ["run", "--strategies", "cvm", "--epochs", "1", "--out", str(tmp_path / "out")],
        "CVM_CACHE_DIR",
        capsys,
        tmp_path,
    )
    from cvm_lightning.concepts import EmbeddingCache

    cache = EmbeddingCache("identity", tmp_path / "cache")
    cache.path.mkdir(parents=True)
    with pytest.raises(ConfigError, match="is a folder"):
        EmbeddingCache("identity", tmp_path / "cache")


@pytest.mark.parametrize("names", ["cat", [], ["", "dog"], ["cat ", "dog"], [1, 2], ["cat", "cat"], ["a\tb"]])
def test_bad_class_names_are_concept_errors(names, digit_bank):
    from cvm_lightning import ConceptBank, CVMModule

    with pytest.raises(ConceptError):
        ConceptBank.from_names(names, text_model="random")
    with pytest.raises(ConceptError):
        CVMModule(class_names=names, concept_dim=8)


def test_module_arguments_go_through_the_same_checks(digit_bank):
    from cvm_lightning import CVMModule

    for bad in ({"temperature": 0}, {"lr": -1.0}, {"input_size": 0}, {"buffer_size": -1}, {"loss": "hinge"}):
        with pytest.raises(ConfigError):
            CVMModule(digit_bank, backbone="reduced_resnet18", in_chans=1, **bad)
    module = CVMModule(digit_bank, backbone="reduced_resnet18", in_chans=1, input_size=16)
    with pytest.raises(ConceptError, match="already classes"):
        module.add_concepts(["zero"], torch.randn(1, digit_bank.dim))


def test_float_labels_and_nan_images_are_data_errors(digit_bank):
    from cvm_lightning import CVMModule

    module = CVMModule(digit_bank, backbone="reduced_resnet18", in_chans=1, input_size=16)
    module.start_experience([0, 1])
    with pytest.raises(DataError, match="integer class ids"):
        module.training_loss(torch.rand(4, 1, 8, 8), torch.tensor([0.0, 1.0, 0.0, 1.0]), offer=False)
    module.eval()
    with pytest.raises(DataError, match="NaN"):
        module(torch.full((2, 1, 8, 8), float("nan")))
    with pytest.raises(DataError, match="NaN"):
        module.predict_step(torch.full((2, 1, 8, 8), float("nan")), 0)


def test_pixels_outside_zero_one_are_warned_about(digit_bank):
    from cvm_lightning import CVMModule

    module = CVMModule(digit_bank, backbone="reduced_resnet18", in_chans=1, input_size=16).eval()
    with pytest.warns(UserWarning, match=r"take pixels in \[0, 1\]"):
        module(torch.rand(2, 1, 8, 8) * 2 - 1)
    uint8 = (torch.rand(2, 1, 8, 8) * 255).to(torch.uint8)
    assert torch.allclose(module(uint8), module(uint8.float() / 255), atol=1e-5), "uint8 and [0, 1] are the same image"


def test_happy_path_says_what_it_wrote(workspace, tmp_path, capsys):
    run_out = capsys.readouterr()  # the fixture's output is gone; check the files it promised
    assert workspace["ckpt"].is_file(), "cvm run names final.ckpt and writes it"
    del run_out
    out = tmp_path / "p.csv"
    assert main(["predict", "--model", str(workspace["pt"]), str(workspace["images"]), "--output", str(out)]) == 0
    assert f"Wrote 4 predictions to {out}" in capsys.readouterr().out
    assert (
        main(
            ["predict", "--model", str(workspace["pt"]), str(workspace["images"]), "--output", str(out), "--overwrite"]
        )
        == 0
    )
    assert len(out.read_text().splitlines()) == 5
    files = {"cvm_meta.json": ""}
    torch.jit.load(str(workspace["pt"]), _extra_files=files)
    meta = json.loads(files["cvm_meta.json"])
    assert meta["image_size"] == 32, "the export resizes to the size trained on, not to --input-size"


def test_learn_on_a_model_trained_with_a_small_input_size(workspace, tmp_path, capsys):
    out = tmp_path / "learned.ckpt"
    assert main(["learn", "--checkpoint", str(workspace["ckpt"]), "--data", str(workspace["new"]), "--epochs", "1",
                 "--out", str(out)]) == 0
    assert "Learned horse, truck" in capsys.readouterr().out and out.is_file()


QUIET_SESSION = r'''
import sys
from cvm_lightning.app.cli import main
data, root = sys.argv[1], sys.argv[2]
assert main(["run", "--benchmark", "imagefolder", "--n-experiences", "2", "--strategies", "cvm,replay", "--epochs", "1",
             "--buffer", "16", "--no-progress", "--data-root", data, "--out", root + "/run"]) == 0
assert main(["export", "--checkpoint", root + "/run/final.ckpt", "--out", root + "/m.pt"]) == 0
assert main(["predict", "--model", root + "/m.pt", data + "/test", "--output", root + "/p.csv"]) == 0
assert main(["learn", "--checkpoint", root + "/run/final.ckpt", "--data", sys.argv[3], "--epochs", "1"]) == 0
'''


@pytest.mark.slow
def test_the_happy_path_prints_what_informs_and_nothing_else(workspace, tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", QUIET_SESSION, str(workspace["data"]), str(tmp_path), str(workspace["new"])],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out, err = result.stdout, result.stderr
    assert f"CVM's trained model: {tmp_path}/run/final.ckpt" in out
    assert f"Wrote 16 predictions to {tmp_path}/p.csv" in out and "Learned horse, truck" in out
    for noise in ("Warning", "Tip:", "Loading weights", "GPU available", "weights_only"):
        assert noise not in out + err, f"{noise!r} in the output:\n{err[-2000:]}"


def test_python_and_cvm_predict_see_the_same_pixels(workspace, capsys):
    from cvm_lightning.deploy.predict import load_checkpoint
    from cvm_lightning.streams.images import load_image_folder

    module = load_checkpoint(workspace["ckpt"]).eval()
    _, test, names, _ = load_image_folder(workspace["data"], image_size=32)
    with torch.no_grad():
        python = [names[i] for i in module(torch.stack([x for x, _ in test])).argmax(1).tolist()]
    capsys.readouterr()
    assert main(["predict", "--model", str(workspace["ckpt"]), *map(str, test.paths)]) == 0
    cli = [line.split("\t")[1] for line in capsys.readouterr().out.splitlines()]
    assert cli == python


@pytest.mark.parametrize("argv,fix", [
    (["run", "--precision", "16-mixed"], "choose from '32-true', 'bf16-mixed'"),
    (["run", "--optimizer", "adamx"], "choose from 'adamw', 'adam', 'sgd'"),
    (["run", "--bogus"], "unrecognized arguments: --bogus"),
    (["run", "--lr"], "--lr: expected one argument"),
    (["run", "--seeds"], "--seeds: expected at least one argument"),
    (["export", "--checkpoint", "m.ckpt"], "required: --out"),
    (["learn", "--checkpoint", "m.ckpt", "--method", "protoypes"], "choose from 'finetune', 'prototypes'"),
    ([], "required: command"),
])
def test_flag_errors_are_one_line_with_exit_code_2(argv, fix, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cvm: error: ") and fix in err[0], err


@pytest.fixture
def full_disk(tmp_path):
    """A folder on a 256 KiB file system that is already full (a tmpfs; needs the right to mount one)."""
    import shutil
    import subprocess

    folder = tmp_path / "full"
    folder.mkdir()
    if shutil.which("mount") is None or subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)], capture_output=True
    ).returncode:
        pytest.skip("a small file system cannot be mounted here (needs root): the full-disk cases are not tried")
    try:
        (folder / "filler").write_bytes(b"\0" * (shutil.disk_usage(folder).free - 4096))
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(workspace, full_disk, capsys):
    before = sorted(p.name for p in full_disk.iterdir())
    line = expect_error(["export", "--checkpoint", str(workspace["ckpt"]), "--format", "torchscript",
                         "--out", str(full_disk / "model.pt")], "free some space there", capsys, workspace["root"])
    assert str(full_disk) in line and "MB free" in line
    line = expect_error(["run", *TINY_RUN, "--data-root", str(workspace["data"]), "--out", str(full_disk / "run")],
                        "No space left", capsys, workspace["root"])
    assert str(full_disk) in line
    leftovers = sorted(p.name for p in full_disk.rglob("*") if p.is_file() and p.name != "filler")
    assert all(name in ("run_config.json",) for name in leftovers), f"partial files left behind: {leftovers}"
    assert sorted(p.name for p in full_disk.iterdir() if p.name != "run") == before


def test_an_output_folder_in_use_by_another_run_is_refused(workspace, tmp_path, capsys):
    import subprocess
    import sys

    from cvm_lightning.paths import LOCK_FILE, folder_lock

    out = tmp_path / "busy"
    hold = ("import sys, time; from pathlib import Path; from cvm_lightning.paths import folder_lock\n"
            "with folder_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        line = expect_error(["run", *TINY_RUN, "--data-root", str(workspace["data"]), "--out", str(out)],
                            "in use by another cvm run", capsys, tmp_path)
        assert f"pid {holder.pid}" in line
    finally:
        holder.kill()
        holder.wait()
    # The lock died with its process: the folder is free again, and a lock the block did not use leaves nothing.
    with folder_lock(out):
        assert (out / LOCK_FILE).read_text() == f"pid {__import__('os').getpid()}"
    assert not (out / LOCK_FILE).exists()
