from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cvm_lightning.concepts import ConceptBank
from cvm_lightning.streams.datasets import DIGIT_NAMES

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Every test run gets its own concept cache, so nothing depends on the user's."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CVM_CACHE_DIR", str(tmp_path_factory.mktemp("concept-cache")))
    torch.set_num_threads(2)
    yield
    mp.undo()


@pytest.fixture(scope="session")
def digit_bank() -> ConceptBank:
    return ConceptBank.from_names(list(DIGIT_NAMES), templates=("a handwritten digit {}.",))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (see shared/data/README.md)")
    return SHARED_DATA
