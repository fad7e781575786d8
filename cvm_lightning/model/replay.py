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
    stores nothing. Each sample may carry extra tensors (for example the
    embedding the model gave it when it was stored), kept and returned with it.
    """

    def __init__(self, capacity: int, seed: int = 0) -> None:
        if capacity < 0:
            raise ValueError(f"Replay capacity must be >= 0, got {capacity}.")
        self.capacity = capacity
        self.generator = torch.Generator().manual_seed(seed)
        self._samples: dict[int, list[torch.Tensor]] = {}  # class -> [x, *extras]
        self._offered: dict[int, int] = {}

    def __len__(self) -> int:
        return sum(len(fields[0]) for fields in self._samples.values())

    @property
    def classes(self) -> list[int]:
        return sorted(self._samples)

    def samples_of(self, c: int) -> torch.Tensor:
        """The stored samples of class ``c``."""
        return self._samples[c][0]

    def _quota(self) -> int:
        return self.capacity // max(1, len(self._samples))

    def add(self, x: torch.Tensor, y: torch.Tensor, *extras: torch.Tensor) -> None:
        """Offer a batch of samples ``x`` with integer labels ``y`` (and per-sample ``extras``)."""
        if self.capacity == 0:
            return
        fields = [t.detach().cpu() for t in (x, *extras)]
        y = y.detach().cpu()
        new_classes = [c for c in y.unique().tolist() if c not in self._samples]
        for c in new_classes:
            self._samples[c] = [f[:0].clone() for f in fields]
            self._offered[c] = 0
        if new_classes:
            self._shrink_to_quota()
        quota = self._quota()
        for c in y.unique().tolist():
            mask = y == c
            self._reservoir(c, [f[mask] for f in fields], quota)

    def _reservoir(self, c: int, new: list[torch.Tensor], quota: int) -> None:
        stored, offered, count = self._samples[c], self._offered[c], len(new[0])
        room = max(0, min(quota - len(stored[0]), count))
        if room:
            stored = [torch.cat([s, f[:room]]) for s, f in zip(stored, new)]
        rest = count - room
        if rest:
            seen = offered + room + torch.arange(1, rest + 1)
            slots = (torch.rand(rest, generator=self.generator) * seen).long()
            for i in torch.nonzero(slots < quota).flatten().tolist():
                for s, f in zip(stored, new):
                    s[slots[i]] = f[room + i]
        self._samples[c] = stored
        self._offered[c] = offered + count

    def _shrink_to_quota(self) -> None:
        quota = self._quota()
        for c in self.classes:
            stored = self._samples[c]
            if len(stored[0]) > quota:
                keep = torch.randperm(len(stored[0]), generator=self.generator)[:quota].sort().values
                self._samples[c] = [s[keep] for s in stored]

    def sample(self, n: int, exclude: Iterable[int] = ()) -> tuple[torch.Tensor, ...] | None:
        """``n`` random stored samples as ``(x, y, *extras)``, skipping classes in ``exclude``.

        Returns ``None`` when nothing is stored outside ``exclude``.
        """
        excluded = set(exclude)
        # Sorted, not insertion order: a memory restored from a checkpoint must sample the same.
        parts = [(self._samples[c], c) for c in self.classes if c not in excluded and len(self._samples[c][0])]
        if not parts or n <= 0:
            return None
        fields = [torch.cat([stored[k] for stored, _ in parts]) for k in range(len(parts[0][0]))]
        ys = torch.cat([torch.full((len(stored[0]),), c, dtype=torch.long) for stored, c in parts])
        idx = torch.randint(len(ys), (min(n, len(ys)),), generator=self.generator)
        return (fields[0][idx], ys[idx], *(f[idx] for f in fields[1:]))

    def state_dict(self) -> dict:
        """Tensors only, so checkpoints load with ``torch.load(weights_only=True)``."""
        classes = self.classes
        return {
            "capacity": self.capacity,
            "classes": torch.tensor(classes, dtype=torch.long),
            "offered": torch.tensor([self._offered[c] for c in classes], dtype=torch.long),
            "samples": [self._samples[c][0] for c in classes],
            "extras": [self._samples[c][1:] for c in classes],
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.capacity = int(state["capacity"])
        classes = state["classes"].tolist()
        extras = state.get("extras", [[] for _ in classes])
        self._samples = {c: [x, *more] for c, x, more in zip(classes, state["samples"], extras)}
        self._offered = dict(zip(classes, state["offered"].tolist()))
        self.generator.set_state(state["generator"])
