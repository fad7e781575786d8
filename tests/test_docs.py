import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_docs_build_in_strict_mode(tmp_path):
    """Broken links, missing snippets or bad docstrings fail the build."""
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    reference = (tmp_path / "site" / "reference" / "index.html").read_text()
    assert "ConceptBank" in reference and "forgetting" in reference
    assert "argparse" in (tmp_path / "site" / "howto" / "lightning" / "index.html").read_text(), (
        "example snippet included"
    )


@pytest.mark.slow
def test_readme_lightning_snippet_runs_as_written(tmp_path, monkeypatch):
    """The README's "In your own Lightning code" block, executed unchanged (2 epochs per experience)."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## In your own Lightning code", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    summary = namespace["metrics"].summary
    assert summary["avg_acc"] > 0.7, summary  # chance is 0.1 over 10 digits; 0.87 measured at 8x8


def test_readme_own_datasets_snippet_runs_as_written(tmp_path, monkeypatch):
    """The README's ``from_datasets`` block, on a small torchvision ImageFolder it reads from ``photos/``."""
    import numpy as np
    from PIL import Image

    for split, count in (("train", 3), ("test", 1)):
        for index, name in enumerate(("cat", "dog")):
            folder = tmp_path / "photos" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(np.full((12, 12, 3), 60 * index + i, np.uint8)).save(folder / f"{i}.png")
    section = (ROOT / "README.md").read_text().split("## In your own Lightning code", 1)[1]
    code = section.split("```python", 2)[2].split("```", 1)[0]
    assert "from_datasets" in code
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile("from cvm_lightning.data import ClassIncrementalDataModule\n" + code, "README.md", "exec"), namespace)
    dm = namespace["dm"]
    assert dm.class_names == ["cat", "dog"] and dm.in_chans == 3 and dm.n_experiences == 2
    assert sum(len(dm.benchmark.train_stream[i].dataset) for i in range(2)) == 6


def _modules_with_examples() -> list[str]:
    package = Path(__file__).resolve().parent.parent / "cvm_lightning"
    return sorted(".".join(path.relative_to(package.parent).with_suffix("").parts)
                  for path in package.rglob("*.py") if ">>> " in path.read_text())


@pytest.mark.parametrize("name", _modules_with_examples())
def test_docstring_examples_run_as_written(name):
    """The examples in the API's docstrings (torchmetrics' style) give what they show."""
    import doctest
    import importlib

    failures, tried = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert tried and not failures
