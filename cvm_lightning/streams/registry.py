"""Registry of benchmarks (class- and domain-incremental streams), built as Avalanche scenarios."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cvm_lightning.concepts.defaults import DEFAULT_TEMPLATES
from cvm_lightning.errors import ConfigError, DataError, did_you_mean


@dataclass(frozen=True)
class StreamConfig:
    """What every benchmark builder takes.

    ``seed`` shuffles the class order (unless ``shuffle_classes`` is off:
    then the classes come in label order, 0, 1, 2, ...); ``train_per_class``
    and ``test_per_class`` keep at most that many training and test images
    per class (for CPU-scaled runs).
    """

    seed: int = 0
    shuffle_classes: bool = True
    data_root: Path | None = None
    train_per_class: int | None = None
    test_per_class: int | None = None
    n_experiences: int | None = None
    download: bool = False


@dataclass
class Benchmark:
    """An Avalanche scenario plus what CVM needs to know about its classes."""

    name: str
    scenario: object
    class_names: list[str]
    in_chans: int
    image_size: int
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    descriptions: dict[str, str] = field(default_factory=dict)
    conditions: tuple[str, ...] = ()  # domain-incremental: the condition of each experience
    lifetime: tuple = ()  # a lifetime stream: what each experience brings (streams.lifetime.LifetimeStep)

    @property
    def kind(self) -> str:
        """``"domain-incremental"`` (the same classes, a new condition each experience), ``"lifetime"`` (new
        conditions and new classes in turn, :mod:`cvm_lightning.streams.lifetime`) or ``"class-incremental"``."""
        if self.lifetime:
            return LIFETIME
        return DOMAIN_INCREMENTAL if self.conditions else CLASS_INCREMENTAL

    @property
    def train_stream(self):
        return self.scenario.train_stream

    @property
    def test_stream(self):
        return self.scenario.test_stream

    @property
    def n_experiences(self) -> int:
        return len(self.scenario.train_stream)

    @property
    def classes_per_experience(self) -> list[int]:
        return [len(exp.classes_in_this_experience) for exp in self.scenario.train_stream]


BenchmarkBuilder = Callable[[StreamConfig], Benchmark]
CLASS_INCREMENTAL, DOMAIN_INCREMENTAL, LIFETIME = "class-incremental", "domain-incremental", "lifetime"


@dataclass(frozen=True)
class BenchmarkEntry:
    """A registered benchmark: how to build it and what ``cvm benchmarks`` says of it."""

    builder: BenchmarkBuilder
    description: str
    augment: str
    kind: str


BENCHMARKS: dict[str, BenchmarkEntry] = {}


def register_benchmark(
    name: str, description: str, augment: str = "crop-flip", kind: str = CLASS_INCREMENTAL
) -> Callable[[BenchmarkBuilder], BenchmarkBuilder]:
    """Decorator: make ``builder`` available as ``--benchmark name``.

    ``augment`` is the training augmentation runs on it use unless told
    otherwise (see :mod:`cvm_lightning.model.augment`); ``kind`` says what
    changes from one experience to the next: the classes
    (``"class-incremental"``), the conditions (``"domain-incremental"``) or
    either in turn (``"lifetime"``).
    """

    def wrap(builder: BenchmarkBuilder) -> BenchmarkBuilder:
        BENCHMARKS[name] = BenchmarkEntry(builder, description, augment, kind)
        return builder

    return wrap


def build_benchmark(name: str, config: StreamConfig | None = None) -> Benchmark:
    """Build the benchmark ``name`` (see ``cvm benchmarks``)."""
    if name not in BENCHMARKS:
        raise ConfigError(
            f"Unknown benchmark {name!r}.{did_you_mean(name, BENCHMARKS)} Available: {', '.join(sorted(BENCHMARKS))}."
        )
    return BENCHMARKS[name].builder(config or StreamConfig())


def class_order(n_classes: int, seed: int) -> list[int]:
    """A seeded permutation of the class ids (without touching the global RNG)."""
    import torch

    return torch.randperm(n_classes, generator=torch.Generator().manual_seed(seed)).tolist()


def subsample_per_class(
    targets: list[int], per_class: int | None, seed: int, flag: str = "--train-per-class"
) -> list[int]:
    """Indices keeping at most ``per_class`` random samples of each class (``flag`` names it in errors)."""
    import torch

    if per_class is None:
        return list(range(len(targets)))
    if per_class < 1:
        raise ConfigError(f"{flag} must be >= 1, got {per_class}.")
    order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(seed)).tolist()
    kept: dict[int, int] = {}
    chosen = []
    for i in order:
        if kept.get(targets[i], 0) < per_class:
            kept[targets[i]] = kept.get(targets[i], 0) + 1
            chosen.append(i)
    return sorted(chosen)


def split_by_class(train, test, n_classes: int, n_experiences: int, seed: int, shuffle_classes: bool = True):
    """A class-incremental Avalanche scenario: ``n_experiences`` equal class splits.

    The classes come in a ``seed``-shuffled order, or in label order without ``shuffle_classes``.
    """
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark

    if n_experiences < 1:
        raise ConfigError(f"--n-experiences must be an integer >= 1, got {n_experiences}.")
    if n_experiences > n_classes:
        raise ConfigError(f"--n-experiences {n_experiences} is more than the {n_classes} classes; each experience "
                          "needs a class.")
    if n_classes % n_experiences:
        raise ConfigError(
            f"{n_classes} classes do not split evenly into {n_experiences} experiences "
            "(Avalanche would drop the leftover classes); choose a divisor of the class count."
        )
    for name, data in (("training", train), ("test", test)):
        if len(data) == 0:
            raise DataError(f"The {name} set is empty: check the dataset folder.")
    return class_incremental_benchmark(
        # Plain datasets become task-aware ones: batches are (x, y, task).
        {"train": train, "test": test},
        class_order=class_order(n_classes, seed) if shuffle_classes else list(range(n_classes)),
        num_experiences=n_experiences,
    )



def split_per_class(targets: list[int], n_parts: int, seed: int) -> list[list[int]]:
    """Indices cut into ``n_parts`` disjoint parts, each holding a seeded, near-equal share of every class."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    parts: list[list[int]] = [[] for _ in range(n_parts)]
    for label in sorted(set(targets)):
        members = torch.tensor([i for i, t in enumerate(targets) if t == label])
        members = members[torch.randperm(len(members), generator=generator)]
        for part, chunk in zip(parts, torch.tensor_split(members, n_parts)):
            part.extend(chunk.tolist())
    return [sorted(part) for part in parts]


def split_by_condition(train: list, test: list):
    """A domain-incremental Avalanche scenario: training and test experience ``k`` are ``train[k]`` and ``test[k]``.

    Every experience holds the same classes (under its own condition), and
    each experience knows its classes as in a class-incremental stream.
    """
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.scenarios.supervised import with_classes_timeline

    # What class_incremental_benchmark makes of plain datasets: batches are (x, y, task).
    from avalanche.benchmarks.utils.classification_dataset import (
        _as_taskaware_supervised_classification_dataset as task_aware,
    )

    for name, datasets in (("training", train), ("test", test)):
        if any(len(data) == 0 for data in datasets):
            raise DataError(f"A {name} condition is empty: keep more images a class.")
    return with_classes_timeline(
        benchmark_from_datasets(train=[task_aware(data) for data in train], test=[task_aware(data) for data in test])
    )
