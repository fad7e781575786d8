"""Live drift: the statistic of ``cvm predict --monitor`` over a sliding window of the images served.

One window holds the latest images whatever their class, compared with
all the reference images, as ``cvm predict --monitor`` compares a folder
(:func:`~cvm_lightning.metrics.drift_statistic.drift_report`). Each class
also keeps the latest images predicted as it, compared with the reference
images predicted as the same class. The overall window catches images that
drift into looking like one class; a class's own window, a drift of that
class alone. NumPy only: it runs in LitServe's logger process.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping, Sequence

import numpy as np

from cvm_lightning.metrics.drift_statistic import SIGNALS, drift_report

MIN_IMAGES = 16  # a class's window is judged from this many images on
MIN_REFERENCE = 20  # fewer reference images of a class (too few for a standard deviation): compared with them all
STATES = ("ok", "drift", "too few images")
END_FRACTION = 0.5  # a drift ends once |z| is back under this share of the threshold: a window hovering at it
# does not flap between drift and ok
ALL = "all images"  # the overall window's name in reports and events


class DriftWindow:
    """Per-class sliding windows of served images' signals, judged against a reference.

    >>> ref = {"version": "v1", "count": 40, "all": {"nearest": (0.8, 0.05), "margin": (0.3, 0.05)}, "by_class": {}}
    >>> window = DriftWindow({3: "cat"}, size=32, z_threshold=3.0)
    >>> window.set_reference(ref)
    >>> events = window.add([3] * 20, [0.5] * 20, [0.1] * 20)
    >>> report = window.report()
    >>> report["all"]["state"], report["classes"]["cat"]["state"], [e["window"] for e in events]
    ('drift', 'drift', ['all images', 'cat'])
    """

    def __init__(self, class_names: Mapping[int, str], size: int, z_threshold: float) -> None:
        self.class_names = dict(class_names)
        self.size, self.z_threshold = size, z_threshold
        self.reference: dict | None = None
        self.windows: dict[int | None, deque] = {}  # None: the overall window
        self.served = 0
        self.drifting: dict[int | None, float] = {}  # window: since when (time.time())

    def set_reference(self, reference: dict | None, class_names: Mapping[int, str] | None = None) -> None:
        """A new model's reference statistics (``None``: none) and classes: the windows start over, as the old
        model's signals no longer apply."""
        if class_names is not None:
            self.class_names = dict(class_names)
        self.reference, self.windows, self.drifting = reference, {}, {}

    def _reference_of(self, class_id: int | None) -> dict:
        own = None if class_id is None else self.reference["by_class"].get(str(class_id))
        return own if own is not None and own["count"] >= MIN_REFERENCE else self.reference["all"]

    def add(self, class_ids: Sequence[int], nearest: Sequence[float], margin: Sequence[float]) -> list[dict]:
        """Take a batch's predicted classes and signals; returns the drift events it starts or ends."""
        self.served += len(class_ids)
        overall = self.windows.setdefault(None, deque(maxlen=self.size))
        for class_id, near, marg in zip(class_ids, nearest, margin):
            self.windows.setdefault(int(class_id), deque(maxlen=self.size)).append((near, marg))
            overall.append((near, marg))
        if self.reference is None:
            return []
        events = []
        for key in [None, *sorted({int(c) for c in class_ids})]:
            drifted = self._judge(key)["state"] == "drift"
            name = self._name(key)
            if drifted and key not in self.drifting:
                self.drifting[key] = time.time()
                events.append({"event": "drift started", "window": name, "time": self.drifting[key]})
            elif not drifted and key in self.drifting:
                since = self.drifting.pop(key)
                events.append({"event": "drift ended", "window": name, "time": time.time(), "since": since})
        return events

    def _name(self, key: int | None) -> str:
        return ALL if key is None else self.class_names.get(key, str(key))

    def _judge(self, class_id: int | None) -> dict:
        window = self.windows.get(class_id, ())
        if len(window) < MIN_IMAGES:
            return {"state": STATES[2], "images": len(window)}
        values = np.asarray(window, dtype=np.float64)
        means = dict(zip(SIGNALS, values.mean(axis=0).tolist()))
        threshold = self.z_threshold * (END_FRACTION if class_id in self.drifting else 1.0)
        report = drift_report(means, len(values), self._reference_of(class_id), threshold)
        state = STATES[1] if report.pop("drifted") else STATES[0]
        return {"state": state, "images": len(values), **{k: round(float(v), 4) for k, v in report.items()}}

    def _judged(self, key: int | None) -> dict:
        judged = self._judge(key) if self.reference is not None else {"state": STATES[2], "images": 0}
        if key in self.drifting:
            judged["since"] = self.drifting[key]
        return judged

    def report(self) -> dict:
        """The overall window's state (``ok``, ``drift``, ``too few images``) and every learned class's, each with
        its image count and z-scores; the drifted windows; and what to do about them."""
        classes = {name: self._judged(class_id) for class_id, name in self.class_names.items()}
        overall = self._judged(None)
        drifted = ([ALL] if overall["state"] == "drift" else []) + [n for n, c in classes.items()
                                                                      if c["state"] == "drift"]
        counts = {name: len(self.windows.get(class_id, ())) for class_id, name in self.class_names.items()}
        return {
            "served": self.served,
            "window": self.size,
            "z_threshold": self.z_threshold,
            "reference_images": self.reference["count"] if self.reference else 0,
            "drifted": drifted,
            "all": overall,
            "classes": classes,
            "next_step": next_step(drifted, counts),
        }


def next_step(drifted: Sequence[str], counts: Mapping[str, int]) -> str | None:
    """What to do about drifted windows: collect their images, update the checkpoint, export, and swap.

    ``counts``: how many of the latest images each class was predicted for
    (an overall drift names the classes the line sends now).
    """
    if not drifted:
        return None
    names = [n for n in drifted if n != ALL] or [n for n, c in sorted(counts.items(), key=lambda kv: -kv[1]) if c]
    return (f"The images served ({'as ' + ', '.join(names) if names else 'lately'}) no longer look like the "
            "reference images. Collect some of them, sorted by their true class, into NEW/train/<class>/ (and a few "
            "into NEW/test/<class>/), then run `cvm learn --checkpoint CHECKPOINT.ckpt --data NEW`, `cvm export` "
            "the new checkpoint over the served file (with --watch) or POST its path to /model.")
