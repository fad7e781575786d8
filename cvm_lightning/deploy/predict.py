"""Predict class names for image files with an exported model or a checkpoint.

Predictions are NumPy throughout: an ONNX file runs on onnxruntime, NumPy
and Pillow alone, without importing torch (a checkpoint or TorchScript file
loads torch when it is opened; ``--monitor`` loads it for the drift test).
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cvm_lightning.atomic import atomic_write_text
from cvm_lightning.errors import CVMError, DataError
from cvm_lightning.image_files import IMAGE_SUFFIXES, UnreadableImageError, read_image, unit_pixels
from cvm_lightning.paths import check_input_file
from cvm_lightning.settings import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_Z_THRESHOLD,
    META_FILE,
    MODEL_SUFFIXES,
    check_class_names,
    check_settings,
)

TORCHSCRIPT_SUFFIXES = set(MODEL_SUFFIXES["torchscript"])


def _reason(err: Exception) -> str:
    """A short reason for a file that failed to load, without torch's advice to unpickle it unsafely."""
    text = str(err)
    if "weights_only" in text or "Unpickler" in text:
        return "it holds Python objects other than tensors and plain values, which are not loaded for safety"
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return f"{type(err).__name__}: {first[:160]}"


def load_checkpoint(path: Path):
    """A :class:`CVMModule` from a ``.ckpt`` file, with a clear error for anything else."""
    from cvm_lightning.model import CVMModule

    path = check_input_file(Path(path), "checkpoint", {".ckpt"}, fix="Pass the .ckpt file a training run wrote.")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*weights_only.*")
            return CVMModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except CVMError:
        raise
    except Exception as err:  # torch and Lightning raise several kinds on a damaged or foreign file
        raise DataError(f"{path} is not a readable CVM checkpoint ({_reason(err)}). "
                        "Use another checkpoint of the run, or retrain.") from None


class Predictor:
    """One interface over a ``.ckpt`` checkpoint, a TorchScript file and an ONNX file.

    ``similarities(images)`` gives cosine similarities to the learned classes
    (a B x K NumPy array); ``predict(images)`` gives class ids, names and the
    similarity of the nearest concept. Images are uint8 or float in [0, 1],
    as NumPy arrays or CPU tensors. ``threads`` caps the runtime's threads
    (default: the runtime's own choice); with it, onnxruntime's idle threads
    sleep instead of spinning, so a process beside it (a server's HTTP side)
    keeps its core.
    """

    def __init__(self, path: Path, threads: int | None = None) -> None:
        self.path = Path(path)
        self.threads = threads
        if not self.path.is_file():
            raise DataError(f"No model file at {self.path}: pass a .ckpt checkpoint, a TorchScript (.pt) or an .onnx "
                            "export.")
        suffix = self.path.suffix.lower()
        try:
            if suffix == ".ckpt":
                self._load_checkpoint()
            elif suffix == ".onnx":
                self._load_onnx()
            elif suffix in TORCHSCRIPT_SUFFIXES:
                self._load_torchscript()
            else:
                raise DataError(f"Unknown model file type {suffix!r}: use .ckpt, .pt (TorchScript) or .onnx.")
        except CVMError:
            raise
        except Exception as err:  # each loader raises its own kinds on a damaged or mislabelled file
            raise DataError(f"{self.path} is not a readable CVM model ({_reason(err)}). "
                            "Re-export it with `cvm export` or pass another checkpoint.") from None
        self._columns: list[int] | None = None  # restrict(): the candidate classes' columns
        self.class_ids: list[int] = self.meta["class_ids"]
        self.class_names: list[str] = self.meta["class_names"]
        # Files of format 1 took [-1, 1] pixels; from format 2 on the graph normalises [0, 1] pixels itself.
        self.mean, self.std = float(self.meta["mean"]), float(self.meta["std"])

    def _load_checkpoint(self) -> None:
        from cvm_lightning.deploy.export import DeployedCVM, deployment_metadata

        module = load_checkpoint(self.path)
        self.meta = deployment_metadata(module)
        self._run = _torch_runner(DeployedCVM(module).eval(), self.threads)

    def _load_torchscript(self) -> None:
        import torch

        files = {META_FILE: ""}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.*")
            model = torch.jit.load(str(self.path), map_location="cpu", _extra_files=files)
        self.meta = json.loads(files[META_FILE])
        self._run = _torch_runner(model, self.threads)

    def _load_onnx(self) -> None:
        try:
            import onnxruntime
        except ImportError as err:
            raise DataError("Running an .onnx model needs onnxruntime: pip install onnxruntime.") from err

        options = onnxruntime.SessionOptions()
        if self.threads is not None:
            options.intra_op_num_threads = self.threads
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = onnxruntime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.meta = json.loads(session.get_modelmeta().custom_metadata_map[META_FILE])
        self._run = lambda x: session.run(None, {"images": x})[0]

    def restrict(self, names: Sequence[str]) -> None:
        """Let only the learned classes ``names`` compete from now on."""
        names = check_class_names(names, what="--classes")
        unknown = [n for n in names if n not in self.class_names]
        if unknown:
            raise DataError(f"--classes {unknown} are not learned classes of {self.path}; it knows: "
                            f"{', '.join(self.class_names)}.")
        self._columns = [self.class_names.index(n) for n in names]
        self.class_ids = [self.class_ids[i] for i in self._columns]
        self.class_names = list(names)

    def similarities(self, images: np.ndarray) -> np.ndarray:
        """Cosine similarities (B x K) of images in [0, 1] (or uint8) to the (candidate) learned classes."""
        sims = self._run((unit_pixels(images) - self.mean) / self.std)
        return sims[:, self._columns] if self._columns is not None else sims

    def predict(self, images: np.ndarray) -> tuple[list[int], list[str], np.ndarray]:
        sims = self.similarities(images)
        index = sims.argmax(axis=1).tolist()
        return [self.class_ids[i] for i in index], [self.class_names[i] for i in index], sims.max(axis=1)

    def load_images(self, paths: Sequence[Path]) -> np.ndarray:
        """Decode image files into the uint8 batch the model expects (as training read them).

        A file that cannot be decoded raises :class:`~cvm_lightning.image_files.UnreadableImageError`.
        """
        mode = "L" if self.meta["in_chans"] == 1 else "RGB"
        return np.stack([read_image(path, self.meta["image_size"], mode) for path in paths])

    def load_readable(self, paths: Sequence[Path]) -> tuple[np.ndarray | None, list[Path], list[UnreadableImageError]]:
        """:meth:`load_images` of the files that decode: their batch (``None`` if none does), their paths, and
        what was wrong with each of the others."""
        pixels, readable, unreadable = [], [], []
        for path in paths:
            try:
                pixels.append(self.load_images([path])[0])
                readable.append(path)
            except UnreadableImageError as err:
                unreadable.append(err)
        return (np.stack(pixels) if pixels else None), readable, unreadable


def _torch_runner(model, threads: int | None = None):
    """A NumPy-in, NumPy-out call of a torch model, without gradients (on ``threads`` threads, where given)."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    return run


@dataclass
class PredictionReport:
    """What ``cvm predict`` found: one row per image, and the drift monitor's verdict when asked."""

    rows: list[dict]
    batch_size: int
    z_threshold: float = DEFAULT_Z_THRESHOLD
    drift: dict | None = None
    reference: dict | None = None
    flagged: list[int] = field(default_factory=list)
    reference_folder: Path | None = None
    model: Path | None = None
    spans: list[tuple[int, int]] = field(default_factory=list)  # the rows of each batch (bad files leave them short)
    unreadable: list[UnreadableImageError] = field(default_factory=list)  # files named and skipped

    def write(self, path: Path) -> None:
        """The rows as ``.json`` or ``.csv``, written atomically."""
        if Path(path).suffix.lower() == ".json":
            atomic_write_text(Path(path), json.dumps(self.rows, indent=2))
            return
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(self.rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(Path(path), buffer.getvalue())

    def drifted_folders(self) -> list[str]:
        """The folders of the drifted images: those of the batches that drifted on their own, else of every image."""
        rows = [self.rows[i] for b in self.flagged for i in range(*self.spans[b])]
        return sorted({str(Path(row["path"]).parent) for row in rows or self.rows})

    def update_lines(self) -> list[str]:
        """How to update the model on the drifted images with ``cvm learn``."""
        folders = self.drifted_folders()
        shown = ", ".join(folders[:5]) + (f" and {len(folders) - 5} more" if len(folders) > 5 else "")
        reference = f" --eval-data {self.reference_folder}" if self.reference_folder is not None else ""
        # An exported file cannot be updated: the checkpoint it came from can.
        checkpoint = self.model if self.model is not None and self.model.suffix == ".ckpt" else "CHECKPOINT.ckpt"
        return [
            f"drift monitor: the drifted images are in {shown}.",
            "drift monitor: to update the model, sort some of them by class into NEW/train/<class>/ and a few more "
            "into NEW/test/<class>/, then run: "
            f"cvm learn --checkpoint {checkpoint} --data NEW{reference} --eval-new NEW/test",
        ]

    def drift_lines(self) -> list[str]:
        """The drift monitor's report in words (empty without ``--monitor``)."""
        if self.drift is None or self.reference is None:
            return []
        d, (near_mean, near_std), (margin_mean, margin_std) = (
            self.drift,
            self.reference["nearest"],
            self.reference["margin"],
        )
        lines = [
            f"drift monitor: the reference images sit at similarity {near_mean:.3f}±{near_std:.3f} to their nearest "
            f"concept (margin to the second {margin_mean:.3f}±{margin_std:.3f}); these images at {d['nearest']:.3f} "
            f"(z={d['z_nearest']:.1f}), margin {d['margin']:.3f} (z={d['z_margin']:.1f}); drift means |z| > "
            f"{self.z_threshold:g}."
        ]
        if d["drifted"]:
            lines.append(
                "drift monitor: DRIFT: these images differ from the reference ones, so predictions on them are "
                "less trustworthy. Check the camera and lighting, or update the model on them."
            )
            lines += self.update_lines()
        else:
            lines.append("drift monitor: no drift: these images look like the reference ones.")
        if self.flagged:
            spans = ", ".join(f"{self.spans[b][0] + 1}-{self.spans[b][1]}" for b in self.flagged)
            lines.append(f"drift monitor: on their own, {len(self.flagged)} batch(es) of --batch-size "
                         f"{self.batch_size} "
                         f"images drifted: images {spans} in the order listed.")
        return lines


def predict_files(
    model: Path,
    files: Sequence[Path],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    reference: Path | None = None,
    z_threshold: float = DEFAULT_Z_THRESHOLD,
    classes: Sequence[str] | None = None,
) -> PredictionReport:
    """Predict every image file with ``model``; with ``reference``, also test the images for concept drift.

    ``classes`` limits the candidates to those learned classes. A file that
    cannot be decoded (here or among the reference images) is skipped and
    kept in the report's ``unreadable``; none readable at all is an error.
    """
    from tqdm import tqdm

    check_settings({"batch_size": batch_size, "z_threshold": z_threshold})
    predictor = Predictor(model)
    if classes is not None:
        predictor.restrict(classes)
    monitor = reference_stats = None
    skipped: list[UnreadableImageError] = []  # named and left out, as a broken file would be on the line
    if reference is not None:
        import torch  # the drift monitor is a torchmetrics Metric

        from cvm_lightning.metrics.drift import ConceptDriftMonitor

        monitor = ConceptDriftMonitor(z_threshold)
        for batch in batched(image_files([reference]), batch_size):
            pixels, _, bad = predictor.load_readable(batch)
            skipped += bad
            if pixels is not None:
                monitor.update(torch.from_numpy(predictor.similarities(pixels)))
        if not monitor.count:
            raise DataError(f"No image in --reference {reference} could be read; it needs readable held-out images.")
        reference_stats = monitor.set_reference()
    report = PredictionReport([], batch_size, z_threshold, reference=reference_stats, unreadable=skipped,
                              reference_folder=Path(reference) if reference is not None else None, model=Path(model))
    batches = list(batched(files, batch_size))
    for number, batch in enumerate(tqdm(batches, desc="predict", unit="batch", disable=len(batches) < 2)):
        pixels, batch, bad = predictor.load_readable(batch)
        report.unreadable += bad
        report.spans.append((len(report.rows), len(report.rows) + len(batch)))
        if pixels is None:
            continue
        sims_all = predictor.similarities(pixels)
        index, sims = sims_all.argmax(axis=1).tolist(), sims_all.max(axis=1)
        report.rows += [{"path": str(p), "class_id": predictor.class_ids[i], "class_name": predictor.class_names[i],
                         "similarity": round(float(s), 4)} for p, i, s in zip(batch, index, sims)]
        if monitor is not None:
            batch_monitor = ConceptDriftMonitor(z_threshold)
            batch_monitor.reference = reference_stats
            batch_monitor.update(torch.from_numpy(sims_all))
            if batch_monitor.compute()["drifted"]:
                report.flagged.append(number)
            monitor.update(torch.from_numpy(sims_all))
    if not report.rows:
        named = "; ".join(map(str, report.unreadable[:3]))
        raise DataError(f"None of the {len(files)} image files could be read: {named}. Pass readable PNG or JPEG "
                        "files.")
    if monitor is not None:
        report.drift = monitor.compute()
    return report


def image_files(inputs: Sequence[Path]) -> list[Path]:
    """Image files named in ``inputs``; folders are searched recursively."""
    found = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            found.append(item)
        else:
            raise DataError(f"{item} does not exist.")
    if not found:
        raise DataError(f"No image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {', '.join(map(str, inputs))}.")
    return found


def batched(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
