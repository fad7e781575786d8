"""Predict class names for image files with an exported model or a checkpoint."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from cvm_lightning.deploy.export import META_FILE, DeployedCVM, deployment_metadata
from cvm_lightning.errors import DataError
from cvm_lightning.streams.images import IMAGE_SUFFIXES, image_transform

TORCHSCRIPT_SUFFIXES = {".pt", ".ts", ".torchscript", ".jit"}


def load_checkpoint(path: Path):
    """A :class:`CVMModule` from a ``.ckpt`` file, with a clear error for anything else."""
    from cvm_lightning.model import CVMModule

    path = Path(path)
    if path.suffix.lower() != ".ckpt" or not path.is_file():
        raise DataError(f"No checkpoint at {path}: pass the .ckpt file a training run wrote.")
    try:
        return CVMModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch and Lightning raise several kinds on a damaged file
        raise DataError(f"{path} is not a readable CVM checkpoint ({type(err).__name__}: {err}). "
                        "Use an earlier checkpoint of the run, or retrain.") from err


class Predictor:
    """One interface over a ``.ckpt`` checkpoint, a TorchScript file and an ONNX file.

    ``similarities(images)`` gives cosine similarities to the learned classes
    (B x K); ``predict(images)`` gives class ids, names and the similarity of
    the nearest concept.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"No model file at {self.path}: pass a .ckpt checkpoint, a TorchScript (.pt) or an .onnx export.")
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
        except DataError:
            raise
        except Exception as err:  # each loader raises its own kinds on a damaged file
            raise DataError(f"{self.path} is not a readable CVM model ({type(err).__name__}: {err}). "
                            "Re-export it with `cvm export` or pass another checkpoint.") from err
        self.class_ids: list[int] = self.meta["class_ids"]
        self.class_names: list[str] = self.meta["class_names"]
        self.transform = image_transform(self.meta["image_size"])

    def _load_checkpoint(self) -> None:
        module = load_checkpoint(self.path)
        self.meta = deployment_metadata(module, module.hparams["input_size"] or 32)
        model = DeployedCVM(module).eval()
        self._run = lambda x: model(x)

    def _load_torchscript(self) -> None:
        files = {META_FILE: ""}
        model = torch.jit.load(str(self.path), map_location="cpu", _extra_files=files)
        self.meta = json.loads(files[META_FILE])
        self._run = lambda x: model(x)

    def _load_onnx(self) -> None:
        try:
            import onnxruntime
        except ImportError as err:
            raise DataError("Running an .onnx model needs onnxruntime: pip install onnxruntime.") from err

        session = onnxruntime.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        self.meta = json.loads(session.get_modelmeta().custom_metadata_map[META_FILE])
        self._run = lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])

    @torch.no_grad()
    def similarities(self, images: torch.Tensor) -> torch.Tensor:
        return self._run(images.float())

    def predict(self, images: torch.Tensor) -> tuple[list[int], list[str], torch.Tensor]:
        best, index = self.similarities(images).max(dim=1)
        return [self.class_ids[i] for i in index.tolist()], [self.class_names[i] for i in index.tolist()], best

    def load_images(self, paths: Sequence[Path]) -> torch.Tensor:
        """Decode image files into the batch the model expects."""
        mode = "L" if self.meta["in_chans"] == 1 else "RGB"
        batch = []
        for path in paths:
            try:
                with Image.open(path) as image:
                    batch.append(self.transform(image.convert(mode)))
            except (UnidentifiedImageError, OSError) as err:
                raise DataError(f"Cannot read image {path}: {err}. Remove it or convert it to PNG/JPEG.") from err
        return torch.stack(batch)


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
