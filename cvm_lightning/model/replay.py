"""A bounded replay memory, balanced over classes (and, optionally, over the experiences that brought them)."""

from __future__ import annotations

from typing import Iterable

import torch

Key = tuple[int, int]  # (class, group)


class ReplayBuffer:
    """Keeps at most ``capacity`` samples, split evenly over the classes seen.

    Each class keeps a uniform random subset of the samples offered to it
    (reservoir sampling), so the memory does not favour the last batches of
    an experience. When a new class arrives, every class's share shrinks to
    ``capacity // n_classes`` by dropping random samples. ``capacity=0``
    stores nothing. Each sample may carry extra tensors (for example the
    embedding the model gave it when it was stored), kept and returned with it.

    Samples may also come in ``group``\\ s (the experience that brought them,
    on site one condition of the camera): a class's share is then split
    evenly over its groups, each a reservoir of its own, so a class's old
    conditions keep their samples when it comes back under a new one. With
    one group (the default) this is the class-balanced memory above.
    """

    def __init__(self, capacity: int, seed: int = 0) -> None:
        if capacity < 0:
            raise ValueError(f"Replay capacity must be >= 0, got {capacity}.")
        self.capacity = capacity
        self.generator = torch.Generator().manual_seed(seed)
        self._samples: dict[Key, list[torch.Tensor]] = {}  # (class, group) -> [x, *extras]
        self._offered: dict[Key, int] = {}

    def __len__(self) -> int:
        return sum(len(fields[0]) for fields in self._samples.values())

    @property
    def classes(self) -> list[int]:
        return sorted({c for c, _ in self._samples})

    def groups_of(self, c: int) -> list[int]:
        """The groups class ``c`` has samples from."""
        return sorted(g for k, g in self._samples if k == c)

    def count(self, c: int, group: int | None = None) -> int:
        """How many samples class ``c`` keeps (of ``group`` alone, when given)."""
        return sum(len(fields[0]) for (k, g), fields in self._samples.items() if k == c and group in (None, g))

    def samples_of(self, c: int) -> torch.Tensor:
        """The stored samples of class ``c`` (every group's)."""
        return torch.cat([self._samples[(c, g)][0] for g in self.groups_of(c)])

    def _quota(self, key: Key) -> int:
        return self.capacity // max(1, len(self.classes)) // len(self.groups_of(key[0]))

    def add(self, x: torch.Tensor, y: torch.Tensor, *extras: torch.Tensor, group: int = 0) -> None:
        """Offer a batch of samples ``x`` with integer labels ``y`` (and per-sample ``extras``), all of ``group``."""
        if self.capacity == 0:
            return
        fields = [t.detach().cpu() for t in (x, *extras)]
        y = y.detach().cpu()
        new_keys = [(c, group) for c in y.unique().tolist() if (c, group) not in self._samples]
        for key in new_keys:
            self._samples[key] = [f[:0].clone() for f in fields]
            self._offered[key] = 0
        if new_keys:
            self._shrink_to_quota()
        for c in y.unique().tolist():
            mask = y == c
            self._reservoir((c, group), [f[mask] for f in fields], self._quota((c, group)))

    def _reservoir(self, key: Key, new: list[torch.Tensor], quota: int) -> None:
        stored, offered, count = self._samples[key], self._offered[key], len(new[0])
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
        self._samples[key] = stored
        self._offered[key] = offered + count

    def _shrink_to_quota(self) -> None:
        for key in sorted(self._samples):
            stored, quota = self._samples[key], self._quota(key)
            if len(stored[0]) > quota:
                keep = torch.randperm(len(stored[0]), generator=self.generator)[:quota].sort().values
                self._samples[key] = [s[keep] for s in stored]

    def sample(self, n: int, exclude: Iterable[int] = ()) -> tuple[torch.Tensor, ...] | None:
        """``n`` random stored samples as ``(x, y, *extras)``, skipping classes in ``exclude``.

        Returns ``None`` when nothing is stored outside ``exclude``.
        """
        excluded = set(exclude)
        # Sorted, not insertion order: a memory restored from a checkpoint must sample the same.
        parts = [(stored, key[0]) for key, stored in sorted(self._samples.items())
                 if key[0] not in excluded and len(stored[0])]
        if not parts or n <= 0:
            return None
        fields = [torch.cat([stored[k] for stored, _ in parts]) for k in range(len(parts[0][0]))]
        ys = torch.cat([torch.full((len(stored[0]),), c, dtype=torch.long) for stored, c in parts])
        idx = torch.randint(len(ys), (min(n, len(ys)),), generator=self.generator)
        return (fields[0][idx], ys[idx], *(f[idx] for f in fields[1:]))

    def state_dict(self) -> dict:
        """Tensors only, so checkpoints load with ``torch.load(weights_only=True)``."""
        keys = sorted(self._samples)
        return {
            "capacity": self.capacity,
            "classes": torch.tensor([c for c, _ in keys], dtype=torch.long),
            "groups": torch.tensor([g for _, g in keys], dtype=torch.long),
            "offered": torch.tensor([self._offered[k] for k in keys], dtype=torch.long),
            "samples": [self._samples[k][0] for k in keys],
            "extras": [self._samples[k][1:] for k in keys],
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.capacity = int(state["capacity"])
        classes = state["classes"].tolist()
        groups = state["groups"].tolist() if "groups" in state else [0] * len(classes)  # saved before groups: one
        keys = list(zip(classes, groups))
        extras = state.get("extras", [[] for _ in classes])
        self._samples = {k: [x, *more] for k, x, more in zip(keys, state["samples"], extras)}
        self._offered = dict(zip(keys, state["offered"].tolist()))
        self.generator.set_state(state["generator"])
