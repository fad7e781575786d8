from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest
import torch
from cli_helpers import TINY_RUN, make_image_folder

from cvm_lightning.app.cli import main
from cvm_lightning.concepts import ConceptBank
from cvm_lightning.streams.datasets import DIGIT_NAMES

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Every test run gets its own concept cache, so nothing depends on the user's."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CVM_CACHE_DIR", str(tmp_path_factory.mktemp("concept-cache")))
    # Under pytest-xdist (make test runs 2 workers on 2 cores) each worker, and every process it starts,
    # uses one thread: two workers of 2 threads each oversubscribe the cores.
    threads = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2
    mp.setenv("OMP_NUM_THREADS", str(threads))
    torch.set_num_threads(threads)
    yield
    mp.undo()


@pytest.fixture(scope="session")
def digit_bank() -> ConceptBank:
    return ConceptBank.from_names(list(DIGIT_NAMES), templates=("a handwritten digit {}.",))


def _unpack(archive: str, target: Path) -> Path:
    path = SHARED_DATA / archive
    if not path.is_file():
        pytest.skip(f"real data not found: {path} (see shared/data/README.md); only present on project machines")
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path) as tar:
        tar.extractall(target, filter="data")
    return target


@pytest.fixture(scope="session")
def cifar10_root(tmp_path_factory) -> Path:
    """Real CIFAR-10 (ImageFolder layout) unpacked from ../shared/data into a temporary folder."""
    return _unpack("cifar10-jpg.tar.gz", tmp_path_factory.mktemp("cifar10"))


@pytest.fixture(scope="session")
def tinyimagenet_root(tmp_path_factory) -> Path:
    """The real Tiny-ImageNet subset from ../shared/data, unpacked."""
    return _unpack("tinyimagenet-sub-jpg.tar.gz", tmp_path_factory.mktemp("tin")) / "tinyimagenet-sub"


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path, monkeypatch):
    """Trainers and runs write relative files (checkpoints/, runs/): keep them out of the repository."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def workspace(tmp_path_factory, _isolated_cache):
    """A trained run: data, OUT/final.ckpt (trained at --input-size 16 on 32-px images) and an export."""
    root = tmp_path_factory.mktemp("workspace")
    data = make_image_folder(root / "data")
    assert main(["run", *TINY_RUN, "--data-root", str(data), "--out", str(root / "run")]) == 0
    checkpoint = root / "run" / "final.ckpt"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(root / "model.pt")]) == 0
    new = make_image_folder(root / "new", classes=("horse", "truck"), train=8, test=4)
    return {"root": root, "data": data, "ckpt": checkpoint, "pt": root / "model.pt", "new": new,
            "images": data / "test" / "cat"}
