"""``cvm learn`` on fresh images of known classes: one more experience, the memory kept, scored before and after."""

from __future__ import annotations

import pytest
import torch
from cli_helpers import TINY_RUN, checksums, expect_error, make_image_folder
from PIL import Image, ImageEnhance

from cvm_lightning.app.cli import main


def drifted_copy(source, target, factor: float = 0.45):
    """``source``'s images, darker: the same classes under another light."""
    for path in sorted(source.rglob("*.png")):
        out = target / path.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        ImageEnhance.Brightness(Image.open(path).convert("RGB")).enhance(factor).save(out)
    return target


def scores(out: str) -> dict[str, tuple[float, float]]:
    rows = {}
    for line in out.splitlines():
        parts = line.rsplit(None, 2)
        if len(parts) == 3 and parts[0].strip() in ("this update's test images", "--eval-data", "--eval-new"):
            rows[parts[0].strip()] = (float(parts[1]), float(parts[2]))
    return rows


def test_an_update_on_known_classes_trains_one_more_experience_with_the_memory(workspace, tmp_path, capsys):
    from cvm_lightning.deploy.predict import load_checkpoint

    drifted = drifted_copy(workspace["data"], tmp_path / "drifted")
    before = checksums(workspace["root"])
    old = load_checkpoint(workspace["ckpt"])
    out = tmp_path / "updated.ckpt"
    capsys.readouterr()
    assert main(["learn", "--checkpoint", str(workspace["ckpt"]), "--data", str(drifted), "--epochs", "3",
                 "--eval-data", str(workspace["data"] / "test"), "--eval-new", str(drifted / "test"),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "(new images of known classes)" in printed and "(new)" not in printed
    assert checksums(workspace["root"]) == before, "the input checkpoint and data are never written"
    table = scores(printed)
    assert set(table) == {"this update's test images", "--eval-data", "--eval-new"}
    assert table["--eval-new"] == table["this update's test images"], "the same drifted test images, scored alike"
    updated = load_checkpoint(out)
    assert updated.class_names == old.class_names, "known classes add no concept"
    assert updated.current_experience == old.current_experience + 1
    counts = [len(updated.replay.samples_of(c)) for c in updated.replay.classes]
    assert sorted(updated.replay.classes) == sorted(old.replay.classes)
    assert sum(counts) <= updated.replay.capacity and max(counts) - min(counts) <= 1, counts
    assert any(not torch.equal(updated.replay.samples_of(c), old.replay.samples_of(c)) for c in old.replay.classes), \
        "the memory takes some of the new images in"
    new_before, new_after = table["--eval-new"]
    assert new_after > new_before, "the update learns the new conditions"
    assert 0 <= table["--eval-data"][1] <= 1


@pytest.mark.parametrize("lr", [None, "3e-4"])
def test_an_update_may_bring_new_classes_alone_with_or_without_a_learning_rate(workspace, tmp_path, capsys, lr):
    from cvm_lightning.deploy.predict import load_checkpoint

    data = make_image_folder(tmp_path / "new", classes=("horse",), train=8, test=4)
    lr_flag = ["--lr", lr] if lr else []
    out = tmp_path / "horse.ckpt"
    assert main(["learn", "--checkpoint", str(workspace["ckpt"]), "--data", str(data), "--epochs", "1", *lr_flag,
                 "--out", str(out)]) == 0
    assert "horse (new)" in capsys.readouterr().out
    updated = load_checkpoint(out)
    assert updated.class_names[-1] == "horse"
    # One share of each batch per class: 8 horse images beside 8 replayed samples of each class in the memory.
    memory_classes = updated.replay.classes
    assert len(memory_classes) >= 3 and updated.hparams["replay_shares"]
    _, y, _ = updated.mix_replay(torch.zeros(8, 3, 32, 32), torch.full((8,), len(updated.class_names) - 1))
    assert len(y) == 8 + min(8 * len(memory_classes), len(updated.replay)), "the replayed part is that large"
    assert main(["learn", "--checkpoint", str(out), "--data", str(data), "--epochs", "1", *lr_flag,
                 "--out", str(tmp_path / "again.ckpt")]) == 0, "and then an update of that known class"
    assert "horse (new images of known classes)" in capsys.readouterr().out


def test_an_update_may_mix_known_and_new_classes(workspace, tmp_path, capsys):
    data = make_image_folder(tmp_path / "mixed", classes=("cat", "horse"), train=8, test=4)
    out = tmp_path / "mixed.ckpt"
    capsys.readouterr()
    assert main(["learn", "--checkpoint", str(workspace["ckpt"]), "--data", str(data), "--epochs", "1",
                 "--lr", "3e-4", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "horse (new) and cat (new images of known classes)" in printed
    from cvm_lightning.deploy.predict import load_checkpoint

    assert load_checkpoint(out).class_names[-1] == "horse"
    saved = torch.load(out, map_location="cpu", weights_only=False)
    assert [group["lr"] for group in saved["optimizer_states"][0]["param_groups"]] == [3e-4], "--lr trained the update"


def test_update_bad_input_is_one_line_and_writes_nothing(workspace, tmp_path, capsys):
    ckpt, root = str(workspace["ckpt"]), workspace["root"]
    empty = tmp_path / "empty"
    for split in ("train", "test"):
        (empty / split / "cat").mkdir(parents=True)
    expect_error(["learn", "--checkpoint", ckpt, "--data", str(empty)], "hold no images", capsys, root)
    (tmp_path / "no-images" / "cat").mkdir(parents=True)
    expect_error(["learn", "--checkpoint", ckpt, "--data", str(workspace["data"]), "--eval-new",
                  str(tmp_path / "no-images")], "holds no images", capsys, root)
    expect_error(["learn", "--checkpoint", ckpt, "--data", str(workspace["data"]), "--eval-new",
                  str(tmp_path / "nowhere")], "No --eval-new folder", capsys, root)
    expect_error(["learn", "--checkpoint", ckpt, "--data", str(workspace["data"]), "--lr", "-1"],
                 "--lr must be a number > 0", capsys, root)
    assert not any(p.name.endswith("-learned1.ckpt") for p in root.rglob("*"))


@pytest.fixture(scope="module")
def memoryless(tmp_path_factory):
    root = tmp_path_factory.mktemp("memoryless")
    data = make_image_folder(root / "data")
    assert main(["run", *TINY_RUN, "--buffer", "0", "--data-root", str(data), "--out", str(root / "run")]) == 0
    return root


def test_a_checkpoint_without_memory_says_how_to_proceed(memoryless, tmp_path, capsys):
    ckpt = str(memoryless / "run" / "final.ckpt")
    args = ["learn", "--checkpoint", ckpt, "--data", str(memoryless / "data"), "--epochs", "1"]
    line = expect_error(args, "keeps no replay memory", capsys, memoryless)
    assert "--buffer N" in line and "--without-memory" in line
    with pytest.warns(UserWarning, match="forget"):
        assert main([*args, "--without-memory", "--out", str(tmp_path / "anyway.ckpt")]) == 0
    assert (tmp_path / "anyway.ckpt").is_file()


def test_the_site_update_benchmark_scores_both_conditions_before_and_after(workspace, tmp_path):
    """``benchmarks/site_update.py`` at tiny scale: one condition, two seeds, each an update from the same model."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    data = make_image_folder(tmp_path / "data", classes=("cat", "dog", "frog", "ship"), train=12, test=4)
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "site_update.py"
    done = subprocess.run([sys.executable, str(script), "--checkpoint", str(workspace["ckpt"]), "--data-root",
                           str(data), "--conditions", "dark", "--per-class", "4", "--test-per-class", "3",
                           "--epochs", "1", "--seeds", "0", "1", "--json", str(tmp_path / "out.json")],
                          capture_output=True, text=True, timeout=300, cwd=script.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "out.json").read_text())
    assert [(c["condition"], c["seed"]) for c in result["cells"]] == [("dark", 0), ("dark", 1)]
    for cell in result["cells"]:
        assert set(cell["before"]) == set(cell["after"]) == {"original", "shifted"}
        assert cell["before"] == result["cells"][0]["before"], "every seed starts from the same model and images"
    assert "share won back" in done.stdout and len(result["rows"]) == 1
    assert workspace["ckpt"].is_file() and not list(workspace["ckpt"].parent.glob("*learned*")), "input untouched"


def test_an_update_applies_the_checkpoints_weight_merge_and_memory_balance(workspace, tmp_path):
    """A model trained with average_previous and replay_balance="class-experience" keeps them: cvm learn merges the
    weights it trains with the checkpoint's by the declared amount, and files the update's images under it."""
    from cvm_lightning.deploy.learn import learn_images
    from cvm_lightning.deploy.predict import load_checkpoint

    drifted = drifted_copy(workspace["data"], tmp_path / "drifted")
    checkpoint = torch.load(workspace["ckpt"], map_location="cpu", weights_only=True)
    start = load_checkpoint(workspace["ckpt"])
    trained = {}
    for weight in (0.0, 0.4):
        checkpoint["hyper_parameters"].update(average_previous=weight, replay_balance="class-experience")
        source = tmp_path / f"source-{weight}.ckpt"
        torch.save(checkpoint, source)
        report = learn_images(source, drifted, epochs=2, out=tmp_path / f"learned-{weight}.ckpt")
        trained[weight] = load_checkpoint(report.checkpoint)
    old = dict(start.named_parameters())
    moved = 0.0
    for name, merged in trained[0.4].named_parameters():
        if merged.requires_grad:
            plain = dict(trained[0.0].named_parameters())[name]
            torch.testing.assert_close(merged, 0.4 * old[name] + 0.6 * plain, rtol=1e-4, atol=1e-5)
            moved = max(moved, float((plain - old[name]).detach().abs().max()))
    assert moved > 1e-4, "the update trained the weights, so the merge is not a no-op"
    update = trained[0.4].current_experience
    assert all(trained[0.4].replay.groups_of(c)[-1] == update for c in trained[0.4].replay.classes), \
        "each class keeps samples of the update under its own experience"
    assert len(trained[0.4].replay) <= trained[0.4].replay.capacity


def test_learn_on_the_streams_next_images_ends_with_the_streams_model(tmp_path):
    """``cvm learn`` is one experience of a stream: from the run's checkpoint after experience 0, an update on
    experience 1's images with the run's seed and budget gives the weights, memory and statistics the run trained."""
    import shutil

    from cvm_lightning.deploy.predict import load_checkpoint

    data = make_image_folder(tmp_path / "data")
    budget = ["--epochs", "2", "--batch-size", "8", "--seed", "3"]
    levers = ["--replay-shares", "--average-previous", "0.5", "--lwf", "0.5", "--ema", "0.9"]
    assert main(["run", *TINY_RUN, *budget, *levers, "--data-root", str(data), "--out", str(tmp_path / "run")]) == 0
    first = tmp_path / "run" / "checkpoints" / "cvm" / "experience-0.ckpt"
    deployed = load_checkpoint(first)
    update = tmp_path / "update"
    for name, seen in zip(deployed.class_names, deployed.seen.tolist()):
        if not seen:  # experience 1's classes: named by the stream from the start, never trained
            shutil.copytree(data / "train" / name, update / "train" / name)
    assert len(list(update.glob("train/*"))) == 2
    assert main(["learn", "--checkpoint", str(first), "--data", str(update), *budget, "--out",
                 str(tmp_path / "learned.ckpt")]) == 0
    streamed, learned = (load_checkpoint(path) for path in (first.with_name("experience-1.ckpt"),
                                                             tmp_path / "learned.ckpt"))
    expected, got = streamed.state_dict(), learned.state_dict()
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=1e-6, msg=key)
    memory = streamed.replay.classes
    assert learned.replay.classes == memory
    assert all(torch.equal(streamed.replay.samples_of(c), learned.replay.samples_of(c)) for c in memory)
