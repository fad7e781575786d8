import json
import shutil

import pytest
import torch

from cvm_lightning.app.cli import main
from cvm_lightning.errors import ConfigError, DataError
from cvm_lightning.streams import BENCHMARKS, StreamConfig, build_benchmark
from cvm_lightning.streams.benchmarks import FASHION_MNIST_DEBIAN
from cvm_lightning.streams.images import read_class_names


def test_every_listed_benchmark_is_registered():
    assert {
        "split-digits",
        "split-cifar10",
        "split-cifar100",
        "split-tinyimagenet",
        "split-fashion-mnist",
        "core50",
        "imagefolder",
    } <= set(BENCHMARKS)


@pytest.mark.parametrize(
    ("name", "layout"),
    [("split-cifar10", "cifar-10-batches-py"), ("split-cifar100", "cifar-100-python"),
     ("split-tinyimagenet", "classes.tsv"), ("core50", "core50_128x128"), ("imagefolder", "train/<class>")],
)
def test_missing_data_says_what_to_put_where(name, layout, tmp_path):
    with pytest.raises(DataError, match="--data-root"):
        build_benchmark(name, StreamConfig())
    with pytest.raises(DataError, match=layout):
        build_benchmark(name, StreamConfig(data_root=tmp_path, n_experiences=2))


def test_train_and_test_per_class_subsample_each_class():
    bench = build_benchmark("split-digits", StreamConfig(train_per_class=30, test_per_class=7, seed=1))
    for stream, per_class in ((bench.train_stream, 30), (bench.test_stream, 7)):
        targets = [int(t) for exp in stream for t in exp.dataset.targets]
        assert sorted(torch.bincount(torch.tensor(targets)).tolist()) == [per_class] * 10
    with pytest.raises(ConfigError, match="--test-per-class"):
        build_benchmark("split-digits", StreamConfig(test_per_class=0))


def test_class_names_from_folders_and_files(tmp_path):
    folders = ["sports_car", "n01", "n02"]
    assert read_class_names(tmp_path, folders)[0] == ["sports car", "n01", "n02"]
    (tmp_path / "classes.txt").write_text("n01\tEgyptian cat, cat\tsmall and striped\nn02\treel\n")
    names, descriptions = read_class_names(tmp_path, folders)
    assert names == ["sports car", "Egyptian cat", "reel"]
    assert descriptions == {"Egyptian cat": "small and striped"}
    (tmp_path / "classes.json").write_text(json.dumps({"n01": {"name": "cat", "description": "a pet"}, "n02": "cat"}))
    names, _ = read_class_names(tmp_path, folders)
    assert names == ["sports car", "cat (n01)", "cat (n02)"], "repeated names are made unique"


@pytest.mark.shared_data
def test_split_cifar10_from_real_images(cifar10_root):
    bench = build_benchmark("split-cifar10", StreamConfig(data_root=cifar10_root, train_per_class=20, seed=0))
    assert bench.class_names[:3] == ["airplane", "automobile", "bird"]
    assert bench.n_experiences == 5 and bench.classes_per_experience == [2] * 5
    assert sum(len(exp.dataset) for exp in bench.train_stream) == 200
    assert sum(len(exp.dataset) for exp in bench.test_stream) == 10_000
    x, y, task = bench.train_stream[0].dataset[0]
    assert x.shape == (3, 32, 32) and x.min() >= -1 and x.max() <= 1 and x.std() > 0.05


@pytest.mark.shared_data
def test_split_tinyimagenet_names_come_from_classes_tsv(tinyimagenet_root):
    bench = build_benchmark("split-tinyimagenet", StreamConfig(data_root=tinyimagenet_root.parent, train_per_class=2))
    assert len(bench.class_names) == 200 and len(set(bench.class_names)) == 200
    assert "Egyptian cat" in bench.class_names
    assert bench.n_experiences == 10 and bench.classes_per_experience == [20] * 10
    x, _, _ = bench.test_stream[0].dataset[0]
    assert x.shape == (3, 64, 64), "greyscale files become RGB"


@pytest.mark.shared_data
@pytest.mark.slow
def test_imagefolder_of_real_cifar_images_runs_through_the_cli(cifar10_root, tmp_path, capsys):
    root = tmp_path / "inspection-line"
    for folder in ("cat", "dog", "ship", "truck"):
        for split, count in (("train", 30), ("test", 10)):
            (root / split / f"kind_{folder}").mkdir(parents=True)
            for image in sorted((cifar10_root / split / folder).iterdir())[:count]:
                shutil.copy(image, root / split / f"kind_{folder}" / image.name)
    (root / "classes.txt").write_text("kind_cat\tcat\tsmall pet with whiskers\nkind_ship\tship\n")
    bench = build_benchmark("imagefolder", StreamConfig(data_root=root, n_experiences=2))
    assert bench.class_names == ["cat", "kind dog", "ship", "kind truck"]
    assert bench.descriptions == {"cat": "small pet with whiskers"}
    with pytest.raises(ConfigError, match="n-experiences"):
        build_benchmark("imagefolder", StreamConfig(data_root=root))
    out = tmp_path / "out"
    args = ["run", "--benchmark", "imagefolder", "--data-root", str(root), "--n-experiences", "2", "--strategies",
            "cvm,naive", "--epochs", "1", "--backbone", "mobilenetv3_small_050", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["benchmark"] == "imagefolder" and results["classes_per_experience"] == [2, 2]
    assert torch.tensor(results["strategies"]["cvm"]["accuracy_matrix"]).shape == (2, 2)


def _write_idx(path, array):
    dims = array.shape
    header = bytes([0, 0, 8, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
    path.write_bytes(header + array.astype("uint8").tobytes())


def test_split_fashion_mnist_reads_idx_files_from_data_root(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("t10k", 20)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 256, (n, 28, 28))
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte", images)
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte", labels)
    benchmark = build_benchmark("split-fashion-mnist", StreamConfig(data_root=tmp_path))
    assert benchmark.n_experiences == 5 and benchmark.in_chans == 1
    assert "ankle boot" in benchmark.class_names
    x, y, _ = benchmark.train_stream[0].dataset[0]
    assert x.shape == (1, 28, 28) and -1.0 <= float(x.min()) <= float(x.max()) <= 1.0
    assert sum(len(e.dataset) for e in benchmark.test_stream) == 20
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        build_benchmark("split-fashion-mnist", StreamConfig(data_root=tmp_path))


@pytest.mark.skipif(
    not (FASHION_MNIST_DEBIAN / "train-labels-idx1-ubyte.gz").exists(),
    reason="Debian's dataset-fashion-mnist package is not installed (apt-get install dataset-fashion-mnist)",
)
def test_split_fashion_mnist_from_the_debian_package():
    benchmark = build_benchmark("split-fashion-mnist", StreamConfig(train_per_class=50))
    assert [len(e.dataset) for e in benchmark.train_stream] == [100] * 5
    assert sum(len(e.dataset) for e in benchmark.test_stream) == 10_000
