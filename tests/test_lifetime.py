"""The lifetime on site as one stream: a deployed model's training set, then small updates that bring new
conditions and new classes in turn, run by every strategy and reported update by update."""

import json

import pytest
import torch

from cvm_lightning.app.cli import main
from cvm_lightning.errors import ConfigError, DataError
from cvm_lightning.streams import StreamConfig, build_benchmark
from cvm_lightning.streams.benchmarks import GREY_CONDITIONS, SITE_DIGITS
from cvm_lightning.streams.datasets import load_digits_split
from cvm_lightning.streams.lifetime import deal_images, plan_lifetime

FAST = ["--epochs", "1", "--buffer", "40", "--no-progress", "--backbone", "mobilenetv3_small_050", "--input-size", "16"]


def pixels(dataset) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


@pytest.fixture(scope="module")
def stream():
    return build_benchmark("site-digits", StreamConfig(seed=0))


def test_the_first_experience_is_a_deployed_model_and_updates_alternate(stream):
    assert stream.kind == "lifetime" and stream.n_experiences == SITE_DIGITS.updates + 1
    steps = stream.lifetime
    first = steps[0]
    assert first.kind == "first" and first.condition == "clean" and len(first.classes) == SITE_DIGITS.first_classes
    assert len(stream.train_stream[0].dataset) == SITE_DIGITS.first_classes * SITE_DIGITS.first_per_class
    assert [s.kind for s in steps[1:]] == ["condition", "new class"] * (SITE_DIGITS.updates // 2)
    # The conditions come in the stream's order, one new one every second update.
    assert [s.condition for s in steps if s.kind == "condition"] == list(GREY_CONDITIONS[1:])
    known = set(first.classes)
    for step, train, test in zip(steps[1:], stream.train_stream[1:], stream.test_stream[1:]):
        if step.kind == "condition":  # every class known so far, under the new condition
            assert set(step.classes) == known
        else:  # one class never seen before
            assert len(step.classes) == 1 and step.classes[0] not in known
            known |= set(step.classes)
        assert sorted(train.classes_in_this_experience) == sorted(test.classes_in_this_experience) == sorted(
            step.classes)
        assert len(train.dataset) == SITE_DIGITS.update_per_class * len(step.classes)
    # Every second new class arrives under the latest condition, the others in the original one.
    assert [s.condition for s in steps if s.kind == "new class"] == ["clean", "low contrast", "clean", "noise"]


def test_no_update_trains_on_an_image_trained_before(stream):
    train, _ = load_digits_split()
    targets = [int(t) for t in train.targets]
    order = [c for step in stream.lifetime if step.kind != "condition" for c in step.classes]
    steps = plan_lifetime(SITE_DIGITS, order, [str(i) for i in range(10)], SITE_DIGITS.updates)
    parts = deal_images(targets, steps, SITE_DIGITS, SITE_DIGITS.first_per_class, seed=0)
    flat = [i for part in parts for i in part]
    assert len(flat) == len(set(flat)), "an image is dealt out twice"
    assert all(targets[i] in step.classes for step, part in zip(steps, parts) for i in part)
    # The stream's experiences in the original condition hold exactly the images dealt to them.
    train_pixels = pixels(train)
    for step, part, experience in zip(steps, parts, stream.train_stream):
        if step.condition == "clean":
            served = pixels(experience.dataset)
            assert torch.equal((served * 16).round() / 16, train_pixels[part]), step.label


def test_the_conditions_are_seeded_and_reproducible(stream):
    again = build_benchmark("site-digits", StreamConfig(seed=0))
    for a, b in zip(stream.train_stream, again.train_stream):
        assert torch.equal(pixels(a.dataset), pixels(b.dataset))
    other = build_benchmark("site-digits", StreamConfig(seed=1))
    assert other.lifetime[0].classes != stream.lifetime[0].classes or not torch.equal(
        pixels(other.train_stream[0].dataset), pixels(stream.train_stream[0].dataset))


def test_a_lifetime_longer_than_the_data_is_refused(tmp_path, capsys):
    with pytest.raises(ConfigError, match="choose --n-experiences 1 to 9"):
        build_benchmark("site-digits", StreamConfig(n_experiences=12))
    with pytest.raises(DataError, match="too few training images"):
        build_benchmark("site-digits", StreamConfig(train_per_class=130))
    out = tmp_path / "out"
    assert main(["run", "--benchmark", "site-digits", "--n-experiences", "12", "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cvm: error:") and "--n-experiences" in err[0]
    assert not out.exists()


@pytest.mark.slow
def test_every_strategy_runs_the_same_lifetime_and_the_report_follows_the_first_classes(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--benchmark", "site-digits", "--n-experiences", "5", "--strategies", "cvm,naive,cumulative",
                 "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["kind"] == "lifetime" and [s["kind"] for s in results["lifetime"]] == [
        "first", "condition", "new class", "condition", "new class"]
    markdown = (out / "results.md").read_text()
    for heading in ("The first classes in the first condition after each update", "when it arrived",
                    "What each update cost"):
        assert heading in markdown and heading in printed
    assert (out / "first_classes.png").stat().st_size > 0
    for name, result in results["strategies"].items():
        assert len(result["experience_seconds"]) == 5 and all(s > 0 for s in result["experience_seconds"])
        assert len(result["experience_peak_rss_mb"]) == 5 and min(result["experience_peak_rss_mb"]) > 50
        # The table's first-classes row is the accuracy matrix's column 0.
        column = [f"{row[0]:.3f}" for row in result["accuracy_matrix"]]
        row = next(line for line in markdown.splitlines() if line.startswith(f"| {name} |") and column[0] in line)
        assert all(cell in row for cell in column)
    assert "vs cumulative" in markdown
