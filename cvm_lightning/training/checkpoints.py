"""Experience-boundary checkpoints of a stream: written atomically, resumed exactly.

A checkpoint is a regular Lightning checkpoint (``trainer.save_checkpoint``):
the module's weights, concepts and replay memory (``CVMModule.on_save_checkpoint``)
and every callback's state, including the metrics so far and a
:class:`StreamPosition` with the next experience, the training time and the
random-number generators' states. Restoring those states is what makes a
resumed seeded run end with the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

_NAME = re.compile(r"experience-(\d+)\.ckpt$")


def rng_state() -> dict[str, Any]:
    """torch, NumPy and Python generator states, as tensors and lists (``weights_only``-loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))


class StreamPosition(pl.Callback):
    """Where a stream run is: saved in every checkpoint, restored on resume."""

    def __init__(self) -> None:
        self.next_experience = 0
        self.train_seconds = 0.0
        self.saved_rng: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"next_experience": self.next_experience, "train_seconds": self.train_seconds, "rng": rng_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.next_experience = int(state_dict["next_experience"])
        self.train_seconds = float(state_dict["train_seconds"])
        self.saved_rng = state_dict["rng"]


def save_atomically(trainer: pl.Trainer, path: Path) -> Path:
    """``trainer.save_checkpoint`` to a temporary name, then renamed onto ``path``; every process must call this."""
    tmp = path.with_name(f".{path.name}.tmp")
    trainer.save_checkpoint(tmp, weights_only=False)  # rank 0 writes; all ranks wait for it
    if trainer.is_global_zero:
        tmp.replace(path)
    return path


class ExperienceCheckpoints:
    """``experience-{i}.ckpt`` files in ``dirpath``, the ``keep`` newest kept.

    Each file is written under a temporary name and renamed, so a crash
    leaves either the old set or the new one. :meth:`latest` returns the
    newest checkpoint that loads; an unreadable one is reported, left in
    place for inspection, and the one before it is used.
    """

    def __init__(self, dirpath: Path, keep: int = 2) -> None:
        self.dirpath = Path(dirpath)
        self.keep = max(1, keep)

    def paths(self) -> list[Path]:
        """Checkpoint files, newest experience first."""
        if not self.dirpath.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.dirpath.iterdir() if (m := _NAME.search(p.name))]
        return [p for _, p in sorted(found, reverse=True)]

    def save(self, trainer: pl.Trainer, experience: int) -> Path:
        """Checkpoint the trainer after ``experience``; every process must call this."""
        path = save_atomically(trainer, self.dirpath / f"experience-{experience}.ckpt")
        if trainer.is_global_zero:
            for old in self.paths()[self.keep :]:
                old.unlink()
        trainer.strategy.barrier("cvm-checkpoint")
        return path

    def latest(self) -> dict[str, Any] | None:
        """The newest readable checkpoint, or ``None`` when there is none."""
        for path in self.paths():
            try:
                checkpoint = torch.load(path, map_location="cpu", weights_only=True)
                checkpoint["cvm_path"] = str(path)
                return checkpoint
            except Exception as err:  # truncated, corrupt or foreign: all mean "use the previous one"
                warnings.warn(
                    f"Checkpoint {path} cannot be read ({type(err).__name__}: {str(err)[:200]}); it is left in "
                    "place and the previous checkpoint is used instead.",
                    stacklevel=2,
                )
        return None
