"""A new model without stopping the line: each inference worker loads, checks and swaps in an updated file.

Two things ask for a swap: the ``--model`` file changing (with ``--watch``,
once it has stayed the same for one look, so a file still being written is
not taken), and ``POST /model``, which leaves a request file in the
server's swap folder and waits for each worker's outcome file. The swap is
one reference assignment: a batch already running keeps the model it
started with, and every answer names the version that computed it. A
request may also bring a new drift reference (the held-out images of the
update, when the line now sends its conditions). A file
that fails :func:`~cvm_lightning.deploy.serving.served_model.load_served_model`'s
checks is logged once and the old model keeps serving.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cvm_lightning.atomic import atomic_write_text
from cvm_lightning.deploy.serving.served_model import ServedModel, load_reference, load_served_model
from cvm_lightning.errors import CVMError

log = logging.getLogger("cvm_lightning.serve")
REQUEST_SUFFIX = ".request.json"


def _signature(path: Path) -> tuple | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


class ModelSwapper:
    """Holds worker ``worker``'s current model and drift reference images, and swaps them when asked;
    ``on_change(event)`` hears of each swap and refusal (``{"event": "swapped" | "refused", ...}``)."""

    def __init__(self, model: ServedModel, reference: np.ndarray | None, *, folder: Path, worker: int, watch: bool,
                 interval: float, on_change: Callable[[dict], None], threads: int | None = None) -> None:
        self.current, self.reference, self.threads = model, reference, threads
        self.folder, self.worker, self.watch, self.interval = folder, worker, watch, interval
        self.on_change = on_change
        self.watched = model.source  # --model, even after a POST /model swapped in another file
        self._seen = _signature(model.source)  # the file as last looked at
        self._judged = self._seen  # the file as last loaded or refused: refused once, not at every look
        self._handled: set[str] = set()
        self._stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._run, name="cvm-model-swap", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception:  # the watcher must outlive any one bad look; the model keeps serving
                log.exception("the model watcher failed once; it goes on")

    def poll(self) -> None:
        """Answer the pending swap requests, then (with ``watch``) look at the model file."""
        for request in sorted(self.folder.glob(f"*{REQUEST_SUFFIX}")):
            request_id = request.name.removesuffix(REQUEST_SUFFIX)
            if request_id not in self._handled:
                self._handled.add(request_id)
                self._answer(request, request_id)
        if self.watch:
            now = _signature(self.watched)
            if now is not None and now == self._seen and now != self._judged:  # changed, then still for one look
                self._judged = now
                self.swap(self.watched)
            self._seen = now

    def _answer(self, request: Path, request_id: str) -> None:
        try:
            asked = json.loads(request.read_text())
            path, reference = Path(asked["path"]), asked.get("reference")
        except (OSError, ValueError, KeyError, TypeError):
            return  # withdrawn or half-written: its waiter times out and says so
        outcome = self.swap(path, Path(reference) if reference else None)
        atomic_write_text(self.folder / f"{request_id}.worker-{self.worker}.json", json.dumps(outcome))

    def swap(self, path: Path, reference: Path | None = None) -> dict:
        """Load, check and swap in ``path`` (with the images of ``reference`` as the new drift reference, where
        given); returns the outcome (and tells ``on_change``)."""
        old = self.current
        try:
            new = load_served_model(path, self.folder.parent / "models", like=old, threads=self.threads)
            pixels = self.reference if reference is None else load_reference(reference, new)
        except CVMError as err:
            event = {"event": "refused", "worker": self.worker, "path": str(path), "reason": str(err),
                     "time": time.time(), "model": old.describe()}
            log.warning("refused %s, still serving version %s: %s", path, old.version[:12], err)
        else:
            self.reference = pixels  # read by on_change only, after the swap
            self.current = new  # one assignment: a batch under way keeps `old`
            event = {"event": "swapped", "worker": self.worker, "path": str(path), "time": new.loaded_at,
                     "model": new.describe(), "previous": old.describe(), "classes": new.predictor.class_names}
            log.warning("swapped in %s: version %s replaces %s", path, new.version[:12], old.version[:12])
            if old.version != new.version and old.predictor.path != new.predictor.path:
                old.predictor.path.unlink(missing_ok=True)  # the old snapshot: loaded already, no longer needed
        self.on_change(event)
        return event


def request_swap(folder: Path, path: Path, reference: Path | None = None) -> str:
    """Leave a swap request for ``path`` (and a new drift ``reference``) in ``folder`` (``POST /model``); returns
    its id."""
    request_id = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}"
    asked = {"path": str(path), "reference": str(reference) if reference is not None else None}
    atomic_write_text(folder / f"{request_id}{REQUEST_SUFFIX}", json.dumps(asked))
    return request_id


def swap_outcomes(folder: Path, request_id: str, workers: int) -> list[dict] | None:
    """Every worker's outcome of request ``request_id`` once all have answered (then the files go), else ``None``."""
    files = [folder / f"{request_id}.worker-{n}.json" for n in range(workers)]
    if not all(f.is_file() for f in files):
        return None
    outcomes = [json.loads(f.read_text()) for f in files]
    for f in [*files, folder / f"{request_id}{REQUEST_SUFFIX}"]:
        f.unlink(missing_ok=True)
    return outcomes


def withdraw_swap(folder: Path, request_id: str) -> None:
    """Remove an unanswered request and whatever outcomes it has."""
    for f in folder.glob(f"{request_id}.*"):
        f.unlink(missing_ok=True)
