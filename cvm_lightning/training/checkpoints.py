"""Resumable stream runs on Lightning's own checkpointing: atomic writes, exact resume.

A stream run keeps one ``experience-{i}.ckpt`` per finished experience (the
two newest), written by Lightning's ``ModelCheckpoint`` after the
experience's validation, through :class:`AtomicCheckpointIO`. Each is a
regular Lightning checkpoint: weights, optimiser, loops, the module's
concepts and replay memory (``CVMModule.on_save_checkpoint``) and every
callback's state, the accuracy matrix so far included. :class:`RunState`
adds the random generators and the training time, which is what makes a
resumed seeded run end with the same numbers as an uninterrupted one.
:func:`fit_resumable` is ``trainer.fit`` from the newest readable one.
"""

from __future__ import annotations

import random
import re
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint

from cvm_lightning.atomic import atomic_path
from cvm_lightning.errors import ConfigError

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


@contextmanager
def random_state_kept() -> Iterator[None]:
    """Runs the block, then puts every generator back as it was, so what follows draws as if it never ran."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO``, writing to a temporary name and renaming it onto the target.

    A process killed while writing leaves the previous file whole, never a
    truncated one. Pass it as ``pl.Trainer(plugins=[AtomicCheckpointIO()])``.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        with atomic_path(Path(path), suffix=".ckpt") as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)


class RunState(pl.Callback):
    """Saves the random generators and the training time in every checkpoint; restores them on resume.

    ``train_seconds`` counts training epochs only, not validation, and
    carries over a resume.
    """

    def __init__(self) -> None:
        self.train_seconds = 0.0
        self._saved_rng: dict[str, Any] | None = None
        self._epoch_start: float | None = None

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> "RunState":
        """A ``RunState`` that goes on with the generators and training time that checkpoint ``path`` saved.

        A checkpoint saved without one gives a fresh ``RunState``: the generators stay as they are.
        """
        state = cls()
        saved = torch.load(path, map_location="cpu", weights_only=True).get("callbacks", {}).get(cls.__name__)
        if saved is not None:
            state.load_state_dict(saved)
        return state

    def state_dict(self) -> dict[str, Any]:
        return {"train_seconds": self.train_seconds, "rng": rng_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train_seconds = float(state_dict["train_seconds"])
        self._saved_rng = state_dict["rng"]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Restored here, after everything between loading and training that might draw from them.
        if self._saved_rng is not None:
            set_rng_state(self._saved_rng)
            self._saved_rng = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def _stop_clock(self) -> None:
        if self._epoch_start is not None:
            self.train_seconds += time.perf_counter() - self._epoch_start
            self._epoch_start = None

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop_clock()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop_clock()


def experience_checkpoints(dirpath: str | Path, epochs_per_experience: int, keep: int = 2) -> ModelCheckpoint:
    """Lightning's ``ModelCheckpoint`` saving ``experience-{i}.ckpt`` after each experience's validation.

    It reads the ``experience`` value that
    :class:`~cvm_lightning.training.ExperienceSchedule` logs, and keeps the
    ``keep`` newest files.
    """
    return ModelCheckpoint(
        dirpath=dirpath, filename="experience-{experience:.0f}", auto_insert_metric_name=False,
        monitor="experience", mode="max", save_top_k=keep, every_n_epochs=epochs_per_experience,
        save_on_train_epoch_end=False, enable_version_counter=False,
    )


def latest_checkpoint(dirpath: str | Path) -> Path | None:
    """The newest ``experience-{i}.ckpt`` in ``dirpath`` that loads, or ``None``.

    An unreadable one (damaged on disk) is reported, left in place, and the one before it is used.
    """
    dirpath = Path(dirpath)
    if not dirpath.is_dir():
        return None
    found = sorted(((int(m.group(1)), p) for p in dirpath.iterdir() if (m := _NAME.search(p.name))), reverse=True)
    for _, path in found:
        try:
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            return path
        except Exception as err:  # truncated, corrupt or foreign: all mean "use the previous one"
            warnings.warn(
                f"Checkpoint {path} cannot be read ({type(err).__name__}: {str(err)[:200]}); it is left in "
                "place and the previous checkpoint is used instead.",
                stacklevel=2,
            )
    return None


def _first_mismatch(err: RuntimeError) -> str:
    lines = [line.strip() for line in str(err).splitlines()]
    return lines[1] if len(lines) > 1 else lines[0]


def fit_to_end(trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
    """``trainer.fit(*args, **kwargs)``, raising ``KeyboardInterrupt`` where Ctrl-C stopped it.

    On Ctrl-C Lightning ends ``fit`` early, by ``sys.exit(1)`` or by returning
    as if it had finished; the code after a fit (saving a model, recording an
    experience) must not take either for the end of training.
    """
    try:
        trainer.fit(*args, **kwargs)
    except SystemExit:
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise
    if trainer.interrupted:
        raise KeyboardInterrupt


def fit_resumable(trainer: pl.Trainer, model: pl.LightningModule, datamodule: pl.LightningDataModule,
                  checkpoint_dir: str | Path) -> Path | None:
    """``trainer.fit(model, datamodule=...)``, resumed from the newest readable checkpoint of ``checkpoint_dir``.

    Returns the checkpoint it resumed from (``None``: a fresh start). A
    checkpoint of another model is a :class:`~cvm_lightning.errors.ConfigError`.
    """
    resume = latest_checkpoint(checkpoint_dir)
    try:
        fit_to_end(trainer, model, datamodule=datamodule, ckpt_path=resume)
    except RuntimeError as err:
        if resume is None or "Error(s) in loading state_dict" not in str(err):
            raise
        raise ConfigError(
            f"{resume} was saved by a model with another backbone or concept bank ({_first_mismatch(err)}). "
            "Resume with the configuration that made it, or use a new output folder."
        ) from err
    return resume
