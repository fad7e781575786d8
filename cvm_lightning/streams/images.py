"""Image files on disk: ImageFolder layouts and class-name files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import Dataset

from cvm_lightning.errors import DataError
from cvm_lightning.image_files import IMAGE_SUFFIXES, UnreadableImageError, read_image

# Decoded images are kept in memory up to this many bytes per dataset; beyond it they are only checked.
DECODED_CACHE_BYTES = 1 << 30


class ImageFileDataset(Dataset):
    """Image files with integer labels, decoded with Pillow.

    ``targets`` is a list, as Avalanche expects. Images are converted to RGB
    (greyscale files included), resized to ``image_size`` when given (by
    :func:`~cvm_lightning.image_files.read_image`, as ``cvm predict`` reads
    them), and scaled to [0, 1]. :meth:`decode_all` checks every file before training
    and keeps the decoded pixels (uint8) for every later epoch.
    """

    def __init__(self, paths: Sequence[Path], targets: Sequence[int], image_size: int | None = None) -> None:
        self.paths = list(paths)
        self.targets = [int(t) for t in targets]
        self.image_size = image_size
        self.decoded: list[torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Sequence[int]) -> "ImageFileDataset":
        """The same dataset restricted to ``indices``."""
        out = ImageFileDataset([self.paths[i] for i in indices], [self.targets[i] for i in indices], self.image_size)
        if self.decoded is not None:
            out.decoded = [self.decoded[i] for i in indices]
        return out

    def _decode(self, path: Path) -> torch.Tensor:
        return torch.from_numpy(read_image(path, self.image_size))

    def decode_all(self) -> None:
        """Decode every file now: a broken one stops here, named, before any training.

        The pixels are kept (uint8) when they fit in ``DECODED_CACHE_BYTES``.
        """
        if self.decoded is not None:
            return
        keep = self.image_size is not None and len(self) * 3 * self.image_size**2 <= DECODED_CACHE_BYTES
        decoded, bad = [], []
        for path in self.paths:
            try:
                pixels = self._decode(path)
            except UnreadableImageError as err:
                bad.append(str(err))
                continue
            if keep:
                decoded.append(pixels)
        if bad:
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            raise DataError(
                f"{len(bad)} image file(s) cannot be read: {'; '.join(bad[:3])}{more}. "
                "Remove or replace them (empty, truncated, too large or not an image), then run again."
            )
        if keep:
            self.decoded = decoded

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        pixels = self.decoded[index] if self.decoded is not None else self._decode(self.paths[index])
        return pixels.float() / 255.0, self.targets[index]


def list_class_folders(split_dir: Path) -> list[str]:
    """Sorted sub-folder names of ``split_dir`` (one per class)."""
    if not split_dir.is_dir():
        raise DataError(f"Missing folder {split_dir}.")
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan_split(split_dir: Path, folders: Sequence[str]) -> tuple[list[Path], list[int]]:
    """Image paths under ``split_dir/<folder>/`` (recursively) with the folder's index as label."""
    paths, targets = [], []
    for label, folder in enumerate(folders):
        files = sorted(p for p in (split_dir / folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        targets += [label] * len(files)
    return paths, targets


def read_class_names(
    root: Path, folders: Sequence[str], names_file: Path | None = None
) -> tuple[list[str], dict[str, str]]:
    """Class names (and descriptions) for ``folders``, in the same order.

    Looks in ``root`` for, in order:

    * ``classes.json``: ``{"folder": "name"}`` or ``{"folder": {"name": ..., "description": ...}}``;
    * ``classes.txt`` or ``classes.tsv``: lines ``folder<TAB>name[<TAB>description]``;
      a name with commas (WordNet style, ``"tabby, tabby cat"``) keeps its first part;
    * otherwise the folder names, underscores turned into spaces.

    ``names_file`` names a tab-separated file to read instead of looking in ``root``.
    """
    entries: dict[str, tuple[str, str | None]] = {}
    if (root / "classes.json").is_file():
        for folder, value in json.loads((root / "classes.json").read_text()).items():
            if isinstance(value, dict):
                entries[folder] = (value["name"], value.get("description"))
            else:
                entries[folder] = (str(value), None)
    else:
        candidates = [names_file] if names_file else [root / "classes.txt", root / "classes.tsv"]
        table = next((path for path in candidates if path.is_file()), None)
        for line in table.read_text().splitlines() if table else []:
            parts = line.split("\t")
            if len(parts) >= 2:
                description = parts[2].strip() if len(parts) > 2 else None
                entries[parts[0].strip()] = (parts[1].split(",")[0].strip(), description)
    names, descriptions = [], {}
    for folder in folders:
        name, description = entries.get(folder, (folder.replace("_", " "), None))
        names.append(name)
        if description:
            descriptions[name] = description
    return _disambiguate(names, folders), descriptions


def _disambiguate(names: list[str], folders: Sequence[str]) -> list[str]:
    """Make repeated names unique by adding their folder (two WordNet ids can share a name)."""
    counts = {name: names.count(name) for name in names}
    return [f"{name} ({folder})" if counts[name] > 1 else name for name, folder in zip(names, folders)]


def _split(split_dir: Path, folders: Sequence[str], image_size: int | None, layout_help: str) -> ImageFileDataset:
    """The images of ``split_dir/<folder>/`` for each of ``folders``, labelled by position; a folder without one
    is an error."""
    paths, targets = scan_split(split_dir, folders)
    present = set(targets)
    empty = [folders[c] for c in range(len(folders)) if c not in present]
    if empty:
        raise DataError(f"Class folders {empty[:5]} in {split_dir} hold no images "
                        f"({', '.join(sorted(IMAGE_SUFFIXES))}). {layout_help}")
    return ImageFileDataset(paths, targets, image_size)


def load_image_folder(
    root: Path, image_size: int | None = None, class_names: Sequence[str] | None = None
) -> tuple[ImageFileDataset, ImageFileDataset, list[str], dict[str, str]]:
    """``root/train/<class>/*`` and ``root/test/<class>/*`` as datasets, plus class names.

    ``class_names`` fixes the class order (the folder names); otherwise the
    sorted train folders are the classes.
    """
    layout_help = (
        f"Expected an ImageFolder layout under {root}: train/<class>/<image> and test/<class>/<image>, "
        "the same class folders in both, and optionally classes.txt or classes.json with the class names."
    )
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise DataError(f"No train/ and test/ folders in {root}. {layout_help}")
    folders = list(class_names) if class_names is not None else list_class_folders(root / "train")
    test_folders = set(list_class_folders(root / "test"))
    missing = [f for f in folders if f not in test_folders or not (root / "train" / f).is_dir()]
    if missing:
        raise DataError(f"Class folders {missing[:5]} are missing from train/ or test/. {layout_help}")
    names, descriptions = read_class_names(root, folders)
    return (_split(root / "train", folders, image_size, layout_help), _split(root / "test", folders, image_size,
                                                                             layout_help), names, descriptions)


def load_update_folder(
    root: Path, image_size: int | None = None
) -> tuple[list[str], ImageFileDataset, ImageFileDataset | None]:
    """An update's class folders and images: ``root/train/<class>/*`` with an optional ``root/test/<class>/*``,
    or ``root/<class>/*``. Every class folder must hold an image; the test set may leave classes out."""
    nested = (root / "train").is_dir()
    train_root = root / "train" if nested else root
    test_root = root / "test" if nested and (root / "test").is_dir() else None
    layout_help = ("An update folder holds train/<class>/<image>, optionally with test/<class>/<image> to score it, "
                   "or <class>/<image> directly.")
    folders = list_class_folders(train_root)
    if not folders:
        raise DataError(f"{train_root} holds no class folders. {layout_help}")
    train = _split(train_root, folders, image_size, layout_help)
    if test_root is None:
        return folders, train, None
    unknown = [f for f in list_class_folders(test_root) if f not in folders]
    if unknown:
        raise DataError(f"Test class folders {unknown[:5]} have no training folder in {train_root}. {layout_help}")
    tested = [f for f in folders if (test_root / f).is_dir()]
    test = _split(test_root, tested, image_size, layout_help)
    test.targets = [folders.index(tested[t]) for t in test.targets]  # labelled as the training folders are
    return folders, train, test
