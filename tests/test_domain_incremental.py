"""Domain-incremental streams: the same classes in every experience, each under its own seeded condition."""

import json
import math

import pytest
import torch

from cvm_lightning.app.cli import main
from cvm_lightning.errors import ConfigError, DataError
from cvm_lightning.metrics.functional import forgetting, forgetting_per_experience
from cvm_lightning.metrics.zero_shot import ZeroShotRecorder
from cvm_lightning.streams import StreamConfig, build_benchmark
from cvm_lightning.streams.benchmarks import GREY_CONDITIONS
from cvm_lightning.streams.corruptions import CORRUPTIONS, corrupt
from cvm_lightning.streams.datasets import load_digits_split


def pixels(dataset) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


@pytest.fixture(scope="module")
def stream():
    return build_benchmark("domain-digits", StreamConfig(seed=0))


def test_every_experience_holds_every_class_under_its_own_condition(stream):
    assert stream.kind == "domain-incremental" and stream.conditions == GREY_CONDITIONS
    assert stream.n_experiences == len(GREY_CONDITIONS) == len(stream.test_stream)
    for split in (stream.train_stream, stream.test_stream):
        assert [sorted(e.classes_in_this_experience) for e in split] == [list(range(10))] * stream.n_experiences
    x, y, task = stream.train_stream[1].dataset[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and task == 0

    train, test = load_digits_split()
    # The training images are shared out: each experience a class-balanced part, none seen twice.
    sizes = [len(e.dataset) for e in stream.train_stream]
    assert sum(sizes) == len(train) and max(sizes) - min(sizes) <= 10
    # Every test experience is the same test images, under its condition.
    clean, dark = pixels(stream.test_stream[0].dataset), pixels(stream.test_stream[1].dataset)
    assert torch.allclose(clean, test.images, atol=1 / 255)
    assert torch.allclose(dark, clean * 0.45, atol=1 / 255)
    blurred = pixels(stream.test_stream[3].dataset)
    assert not torch.allclose(blurred, clean, atol=0.05) and abs(blurred.mean() - clean.mean()) < 0.05


def test_the_seed_fixes_the_split_and_the_noise(stream):
    again = build_benchmark("domain-digits", StreamConfig(seed=0))
    other = build_benchmark("domain-digits", StreamConfig(seed=1))
    noisy = GREY_CONDITIONS.index("noise")
    assert torch.equal(pixels(stream.test_stream[noisy].dataset), pixels(again.test_stream[noisy].dataset))
    assert torch.equal(pixels(stream.train_stream[0].dataset), pixels(again.train_stream[0].dataset))
    assert not torch.equal(pixels(stream.test_stream[noisy].dataset), pixels(other.test_stream[noisy].dataset))
    assert not torch.equal(pixels(stream.train_stream[0].dataset), pixels(other.train_stream[0].dataset))


def test_corruptions_are_deterministic_uint8_and_in_range():
    images = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for name in CORRUPTIONS:
        first, second = corrupt(images, name, seed=3), corrupt(images, name, seed=3)
        assert first.dtype == torch.uint8 and first.shape == images.shape
        assert torch.equal(first, second), name
    assert torch.equal(corrupt(images, "clean", seed=0), (images * 255).round().to(torch.uint8))
    assert not torch.equal(corrupt(images, "noise", seed=3), corrupt(images, "noise", seed=4))
    with pytest.raises(ConfigError, match="Unknown condition 'nosie'.*noise"):
        corrupt(images, "nosie", seed=0)
    with pytest.raises(ConfigError, match="RGB"):
        corrupt(images[:, :1], "colour cast", seed=0)


def test_fewer_experiences_keep_the_first_conditions_and_bad_counts_name_the_range():
    three = build_benchmark("domain-digits", StreamConfig(n_experiences=3))
    assert three.conditions == GREY_CONDITIONS[:3] and three.n_experiences == 3
    with pytest.raises(ConfigError, match="choose 1 to 5"):
        build_benchmark("domain-digits", StreamConfig(n_experiences=6))
    with pytest.raises(DataError, match="fewer training images than the 5 conditions"):
        build_benchmark("domain-digits", StreamConfig(train_per_class=3))


def test_forgetting_per_experience_is_each_conditions_drop_from_its_best():
    R = torch.tensor([[0.9, 0.2, 0.1], [0.95, 0.8, 0.3], [0.7, 0.6, 0.9]], dtype=torch.float64)
    per = forgetting_per_experience(R)
    assert torch.allclose(per, torch.tensor([0.25, 0.2, 0.0], dtype=torch.float64))
    assert torch.allclose(forgetting_per_experience(R, mode="avalanche"),
                          torch.tensor([0.2, 0.2, 0.0], dtype=torch.float64))
    assert math.isclose(float(forgetting(R)), 0.225)


def test_zero_shot_rows_are_empty_where_no_class_is_new():
    recorder = ZeroShotRecorder([[], [], []], [[0, 1], [0, 1], [0, 1]])
    assert recorder.unseen_before(0) == [0, 1] and recorder.unseen_before(1) == []
    recorder.own, recorder.unseen, recorder.reference = [0.5, 0.6, 0.7], [0.5, math.nan, math.nan], [0.5] * 3
    summary = recorder.summary()
    assert math.isnan(summary["zero_shot_accuracy"]) and math.isnan(summary["fwt"])
    assert math.isclose(summary["zero_shot_own_accuracy"], 0.65)
    class_incremental = ZeroShotRecorder([[], []], [[0, 1], [2, 3]])
    assert class_incremental.unseen_before(1) == [2, 3]


def test_benchmarks_lists_each_streams_kind(capsys):
    assert main(["benchmarks"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "domain-incremental" in lines["domain-digits"] and "domain-incremental" in lines["domain-cifar10"]
    assert "class-incremental" in lines["split-digits"]


def test_too_many_experiences_is_one_line_and_writes_nothing(tmp_path, capsys):
    assert main(["run", "--benchmark", "domain-digits", "--n-experiences", "9", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cvm: error:") and "choose 1 to 5" in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_strategies_run_on_a_domain_stream_with_a_table_per_condition(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--benchmark", "domain-digits", "--n-experiences", "2", "--strategies", "cvm,replay",
                 "--epochs", "2", "--buffer", "100", "--input-size", "8", "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Each condition: final accuracy (forgetting)" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["kind"] == "domain-incremental" and results["conditions"] == list(GREY_CONDITIONS[:2])
    for name, r in results["strategies"].items():
        R = r["accuracy_matrix"]
        assert len(R) == 2 and all(v is not None for row in R for v in row), name
        assert math.isnan(r["zero_shot_accuracy"]), "no class is new after the first experience"
        assert R[-1][0] > 0.5 and R[-1][1] > 0.5, f"{name} learns both conditions (chance is 0.1)"
    report = (out / "results.md").read_text()
    assert "## Each condition" in report and "| strategy | clean | dark |" in report
