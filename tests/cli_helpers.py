"""Shared by the command-line tests: tiny image folders, file checksums, the bad-input check."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from cvm_lightning.app.cli import main

CLASSES = ("cat", "dog", "frog", "ship")
TINY_RUN = ["--benchmark", "imagefolder", "--n-experiences", "2", "--strategies", "cvm", "--epochs", "1",
            "--buffer", "16", "--input-size", "16", "--no-progress"]


def _write_images(folder: Path, count: int, colour: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = np.clip(rng.normal(colour, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")


def make_image_folder(root: Path, classes=CLASSES, train: int = 12, test: int = 4) -> Path:
    """An ImageFolder of 32x32 PNGs, one mean colour per class (learnable in one epoch)."""
    for c, name in enumerate(classes):
        _write_images(root / "train" / name, train, 40 + 50 * c, c)
        _write_images(root / "test" / name, test, 40 + 50 * c, 100 + c)
    return root


def checksums(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def expect_error(args: list[str], fix: str, capsys, root: Path) -> str:
    """Run ``cvm args``: exit 2, one error line that contains ``fix``, nothing under ``root`` changed."""
    before = checksums(root)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cvm: error: "), err
    assert fix in err[0], err[0]
    assert checksums(root) == before, "a rejected command changed files"
    return err[0]


def write_decompression_bomb(path: Path, side: int = 20_000) -> Path:
    """A PNG whose header declares ``side`` x ``side`` pixels (400 million by default), a few hundred bytes on disk.

    Pillow refuses to open it (``DecompressionBombError``), as it does a real one.
    """
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path
