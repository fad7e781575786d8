"""Checks on the files a command reads and writes, made before any work starts.

A command never writes over its own inputs, and writes over another existing
file only when asked (``overwrite=True``, ``--overwrite``); the write itself
is atomic (:mod:`cvm_lightning.atomic`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from cvm_lightning.errors import ConfigError, DataError


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_input_file(path: Path, what: str, suffixes: Iterable[str] | None = None, fix: str = "") -> Path:
    """``path`` must be an existing, readable file (with one of ``suffixes``, when given)."""
    path = Path(path)
    fix = f" {fix}" if fix else ""
    if not path.exists():
        raise DataError(f"No {what} at {path}.{fix}")
    if path.is_dir():
        raise DataError(f"{path} is a folder; pass the {what} file itself.{fix}")
    if suffixes is not None and path.suffix.lower() not in set(suffixes):
        raise DataError(f"{path} is not a {what} (expected {', '.join(sorted(set(suffixes)))}).{fix}")
    if not os.access(path, os.R_OK):
        raise DataError(f"{path} cannot be read (permission denied).")
    return path


def check_input_folder(path: Path, what: str, fix: str = "") -> Path:
    """``path`` must be an existing folder."""
    path = Path(path)
    fix = f" {fix}" if fix else ""
    if not path.exists():
        raise DataError(f"No {what} at {path}.{fix}")
    if not path.is_dir():
        raise DataError(f"{path} is a file; pass the {what} (a folder).{fix}")
    return path


def check_output_file(
    path: Path,
    *,
    inputs: Iterable[Path] = (),
    overwrite: bool = False,
    suffixes: Iterable[str] | None = None,
    what: str = "output",
    flag: str = "--out",
) -> Path:
    """Refuse an output path that would lose data or could not be written.

    It may not be one of ``inputs`` (even with ``overwrite``), may not exist
    unless ``overwrite``, must end in one of ``suffixes`` (when given), and its
    folder must be writable.
    """
    path = Path(path)
    for source in inputs:
        if _same_file(path, Path(source)) or path.resolve() == Path(source).resolve():
            raise ConfigError(f"{flag} {path} is also an input of this command; write to another file so the input is "
                              "kept.")
    if suffixes is not None:
        allowed = sorted(set(suffixes))
        if path.suffix.lower() not in allowed:
            raise ConfigError(f"{flag} {path}: a {what} needs one of the suffixes {', '.join(allowed)}.")
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; name a file, e.g. {path / ('out' + (path.suffix or ''))}.")
    if path.exists() and not overwrite:
        raise ConfigError(f"{flag} {path} already exists; pass --overwrite to replace it, or choose another file.")
    parent = path.parent
    existing = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigError(f"{flag} {path}: {existing} is a file, not a folder. Choose another location.")
    if existing is not None and not os.access(existing, os.W_OK):
        raise ConfigError(f"{flag} {path}: {existing} is not writable. Choose another location.")
    return path


def check_output_folder(path: Path, flag: str = "--out") -> Path:
    """``path`` must be a folder, or creatable as one, that this process can write into (nothing is created)."""
    path = Path(path)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigError(f"Cannot write to output folder {path}: {existing} is a file. Pass a writable {flag}.")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"Cannot write to output folder {path}: {existing} is not writable. Pass a writable {flag}.")
    return path
