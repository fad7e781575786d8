"""A bounded, class-balanced replay memory."""

from __future__ import annotations

from typing import Iterable

import torch


class ReplayBuffer:
    """Keeps at most ``capacity`` samples, split evenly over the classes seen.

    Each class keeps a uniform random subset of the samples offered to it
    (reservoir sampling), so the memory does not favour the last batches of
    an experience. When a new class arrives, every class's share shrinks to
    ``capacity // n_classes`` by dropping random samples. ``capacity=0``
    stores nothing.
    """

    def __init__(self, capacity: int, seed: int = 0) -> None:
        if capacity < 0:
            raise ValueError(f"Replay capacity must be >= 0, got {capacity}.")
        self.capacity = capacity
        self.generator = torch.Generator().manual_seed(seed)
        self._samples: dict[int, torch.Tensor] = {}
        self._offered: dict[int, int] = {}

    def __len__(self) -> int:
        return sum(len(samples) for samples in self._samples.values())

    @property
    def classes(self) -> list[int]:
        return sorted(self._samples)

    def _quota(self) -> int:
        return self.capacity // max(1, len(self._samples))

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Offer a batch of samples ``x`` with integer labels ``y``."""
        if self.capacity == 0:
            return
        x, y = x.detach().cpu(), y.detach().cpu()
        new_classes = [c for c in y.unique().tolist() if c not in self._samples]
        for c in new_classes:
            self._samples[c] = x[:0].clone()
            self._offered[c] = 0
        if new_classes:
            self._shrink_to_quota()
        quota = self._quota()
        for c in y.unique().tolist():
            self._reservoir(c, x[y == c], quota)

    def _reservoir(self, c: int, xc: torch.Tensor, quota: int) -> None:
        stored, offered = self._samples[c], self._offered[c]
        room = max(0, min(quota - len(stored), len(xc)))
        if room:
            stored = torch.cat([stored, xc[:room]])
        rest = xc[room:]
        if len(rest):
            seen = offered + room + torch.arange(1, len(rest) + 1)
            slots = (torch.rand(len(rest), generator=self.generator) * seen).long()
            for i in torch.nonzero(slots < quota).flatten().tolist():
                stored[slots[i]] = rest[i]
        self._samples[c] = stored
        self._offered[c] = offered + len(xc)

    def _shrink_to_quota(self) -> None:
        quota = self._quota()
        for c, stored in self._samples.items():
            if len(stored) > quota:
                keep = torch.randperm(len(stored), generator=self.generator)[:quota].sort().values
                self._samples[c] = stored[keep]

    def sample(self, n: int, exclude: Iterable[int] = ()) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``n`` random stored samples (with their labels), skipping classes in ``exclude``.

        Returns ``None`` when nothing is stored outside ``exclude``.
        """
        excluded = set(exclude)
        parts = [(stored, c) for c, stored in self._samples.items() if c not in excluded and len(stored)]
        if not parts or n <= 0:
            return None
        xs = torch.cat([stored for stored, _ in parts])
        ys = torch.cat([torch.full((len(stored),), c, dtype=torch.long) for stored, c in parts])
        idx = torch.randint(len(xs), (min(n, len(xs)),), generator=self.generator)
        return xs[idx], ys[idx]

    def state_dict(self) -> dict:
        """Tensors only, so checkpoints load with ``torch.load(weights_only=True)``."""
        classes = self.classes
        return {
            "capacity": self.capacity,
            "classes": torch.tensor(classes, dtype=torch.long),
            "offered": torch.tensor([self._offered[c] for c in classes], dtype=torch.long),
            "samples": [self._samples[c] for c in classes],
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.capacity = int(state["capacity"])
        classes = state["classes"].tolist()
        self._samples = dict(zip(classes, state["samples"]))
        self._offered = dict(zip(classes, state["offered"].tolist()))
        self.generator.set_state(state["generator"])
