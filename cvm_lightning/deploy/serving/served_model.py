"""The model a server answers with: a :class:`~cvm_lightning.deploy.predict.Predictor`, its version, its checks.

A served file is first copied into the server's own folder, hashed as it is
copied: the version (the sha256 of the bytes) is always that of the bytes
that answer, whatever later happens to the original file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvm_lightning.deploy.predict import Predictor, image_files
from cvm_lightning.errors import CVMError, DataError
from cvm_lightning.metrics.drift_statistic import SIGNALS, nearest_and_margin, signal_stats

SMOKE_BATCH = 2  # the smoke prediction of a new model: this many blank images


class ModelRefused(DataError):
    """A model file that failed a check; the served model stays as it was."""


@dataclass(frozen=True)
class ServedModel:
    """A loaded, checked model: its predictor, where it came from, its version and when it was loaded."""

    predictor: Predictor
    source: Path
    version: str
    loaded_at: float

    @property
    def name(self) -> str:
        return self.source.name

    def describe(self) -> dict:
        """The ``model`` object of every answer: the file's name and version."""
        return {"name": self.name, "version": self.version}

    @property
    def input_shape(self) -> tuple[int, int, int]:
        meta = self.predictor.meta
        return int(meta["in_chans"]), int(meta["image_size"]), int(meta["image_size"])


def _snapshot(source: Path, folder: Path) -> tuple[Path, str]:
    """Copy ``source`` into ``folder`` under its sha256; returns the copy and the digest."""
    digest = hashlib.sha256()
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".incoming-")
    try:
        with os.fdopen(fd, "wb") as copy, open(source, "rb") as original:
            for block in iter(lambda: original.read(1 << 20), b""):
                digest.update(block)
                copy.write(block)
        target = folder / f"{digest.hexdigest()}{source.suffix.lower()}"
        os.replace(tmp, target)  # workers that copy the same file at once write the same bytes
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target, digest.hexdigest()


def load_served_model(source: Path, snapshots: Path, like: ServedModel | None = None,
                      threads: int | None = None) -> ServedModel:
    """Load ``source`` (its runtime on ``threads`` threads), check it and return it; ``like``: the model it
    replaces, whose input it must take.

    The checks: it loads, its input (channels and image size) is ``like``'s,
    and a smoke prediction gives one finite similarity per class. A failure
    raises :class:`ModelRefused` with the reason.
    """
    source = Path(source)
    try:
        copy, version = _snapshot(source, snapshots)
    except OSError as err:
        raise ModelRefused(f"{source} cannot be read ({err.strerror or err}).") from None
    try:
        predictor = Predictor(copy, threads)
    except CVMError as err:
        raise ModelRefused(str(err).replace(str(copy), str(source))) from None
    model = ServedModel(predictor, source, version, time.time())
    if like is not None and model.input_shape != like.input_shape:
        raise ModelRefused(f"{source} takes {_shape(model.input_shape)} images, the served model "
                           f"{_shape(like.input_shape)}: export it at --image-size {like.input_shape[1]}.")
    blank = np.zeros((SMOKE_BATCH, *model.input_shape), dtype=np.uint8)
    try:
        sims = predictor.similarities(blank)
    except Exception as err:  # a runtime raises its own kinds on a graph that loads but cannot run
        raise ModelRefused(f"{source} failed its smoke prediction ({type(err).__name__}: "
                           f"{str(err).splitlines()[0][:160] if str(err) else ''}).") from None
    expected = (SMOKE_BATCH, len(predictor.class_names))
    if sims.shape != expected or not np.isfinite(sims).all():
        what = "non-finite similarities" if sims.shape == expected else "similarities"
        raise ModelRefused(f"{source} failed its smoke prediction: it gave {what} of shape {tuple(sims.shape)} for "
                           f"{expected[0]} images of {expected[1]} classes.")
    return model


def _shape(shape: tuple[int, int, int]) -> str:
    return f"{shape[0]}-channel {shape[1]}x{shape[2]}"


def load_reference(folder: Path, model: ServedModel) -> np.ndarray:
    """The readable images of ``folder`` as the uint8 batch ``model`` takes (unreadable ones are skipped)."""
    pixels, _, _ = model.predictor.load_readable(image_files([folder]))
    if pixels is None:
        raise DataError(f"No image in --reference {folder} could be read; it needs readable held-out images.")
    return pixels


def reference_stats(model: ServedModel, pixels: np.ndarray, batch_size: int = 64) -> dict:
    """The drift reference of ``model`` on the reference images: the signals' ``(mean, std)`` over all of them
    (``"all"``) and per predicted class id (``"by_class"``), with each one's image count."""
    sims = np.concatenate([model.predictor.similarities(pixels[i : i + batch_size])
                           for i in range(0, len(pixels), batch_size)])
    signals = dict(zip(SIGNALS, nearest_and_margin(sims)))
    ids = np.asarray(model.predictor.class_ids)[sims.argmax(axis=1)]
    by_class = {}
    for class_id in np.unique(ids).tolist():
        chosen = ids == class_id
        by_class[str(class_id)] = {"count": int(chosen.sum()),
                                   **signal_stats({s: v[chosen] for s, v in signals.items()})}
    return {"version": model.version, "count": len(sims), "all": signal_stats(signals), "by_class": by_class}
