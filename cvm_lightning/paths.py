"""Checks on the files a command reads and writes, made before any work starts.

A command never writes over its own inputs, and writes over another existing
file only when asked (``overwrite=True``, ``--overwrite``); the write itself
is atomic (:mod:`cvm_lightning.atomic`).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
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


LOCK_FILE = ".cvm-run.lock"


@contextmanager
def folder_lock(folder: Path, flag: str = "--out") -> Iterator[None]:
    """Hold ``folder`` for this process alone while the block runs; another process is refused at once.

    The lock is the operating system's (``flock`` on ``folder/.cvm-run.lock``),
    so it ends with the process that holds it: a crashed run leaves nothing
    that stops ``cvm run --resume`` from taking the folder over. A folder
    the lock created is removed again if the block wrote nothing in it.
    """
    import fcntl

    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise ConfigError(f"{folder} is in use by another cvm run ({holder}): wait for it to end, or pass "
                              f"another {flag}.") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        try:
            yield
        finally:
            path.unlink(missing_ok=True)
            if created and not any(folder.iterdir()):  # a run refused before its first file leaves no folder
                folder.rmdir()
    finally:
        os.close(fd)


def check_free_space(folder: Path, needed: int) -> None:
    """``folder``'s file system must have room for ``needed`` bytes more."""
    import shutil

    free = shutil.disk_usage(folder).free
    if free < needed:
        raise DataError(f"{folder} has {free / 2**20:.1f} MB free and the file needs {needed / 2**20:.1f} MB: free "
                        "some space there, or write to another folder.")


def space_error(err: OSError, output: Path | None = None) -> str | None:
    """The one-line message of a write that the file system refused (full, read-only, not allowed), else ``None``.

    ``output`` is the command's output, named where the error names no file.
    """
    where = Path(err.filename) if err.filename else None
    folder = where.parent if where is not None else (output or "the output folder")
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"No space left on the device of {folder} while writing {where.name if where else 'a file'}; "
                "nothing partial was kept. Free some space there, or write to another folder.")
    if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"Cannot write to {folder} ({err.strerror}): choose a folder you may write to."
    return None
