"""``ClassIncrementalDataModule``: every experience of a stream served by one Lightning DataModule."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from itertools import accumulate
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import ConcatDataset, DataLoader, RandomSampler, Sampler

from cvm_lightning.errors import ConfigError, DataError
from cvm_lightning.settings import check_settings
from cvm_lightning.streams import Benchmark, StreamConfig, build_benchmark


def experience_seed(seed: int, experience: int) -> int:
    """The seed of experience ``experience``'s shuffle in a run of seed ``seed``."""
    return seed * 100_003 + experience


def experience_loader(
    dataset, *, batch_size: int, train: bool, seed: int = 0, experience: int = 0, num_workers: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A loader of one experience: training loaders shuffle with a generator seeded by ``seed`` and ``experience``.

    ``drop_last`` leaves out a training experience's last, smaller batch.

    Shuffling draws from a generator of its own, never from the global one, so
    the order does not depend on how many iterators Lightning made before
    (a resumed run shuffles as an uninterrupted one does).
    """
    seed = experience_seed(seed, experience)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=RandomSampler(dataset, generator=torch.Generator().manual_seed(seed)) if train else None,
        # Each iterator draws its worker seed from this one: a generator apart from the sampler's.
        generator=torch.Generator().manual_seed(seed),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        drop_last=drop_last and train,
    )


class StreamBatchSampler(Sampler[list[int]]):
    """Batches over experiences concatenated in stream order: each experience shuffled on its own, seeded as
    :func:`experience_loader` shuffles it, and no batch mixing two experiences (with ``drop_last``, each
    experience's short last batch is left out)."""

    def __init__(self, sizes: Sequence[int], batch_size: int, seed: int = 0, drop_last: bool = False) -> None:
        self.sizes, self.batch_size, self.seed, self.drop_last = list(sizes), batch_size, seed, drop_last

    def batches_of(self, size: int) -> int:
        return size // self.batch_size if self.drop_last else math.ceil(size / self.batch_size)

    @property
    def experience_ends(self) -> list[int]:
        """How many batches the stream has served once experience ``k`` is done, for each ``k``."""
        return list(accumulate(self.batches_of(size) for size in self.sizes))

    def __iter__(self) -> Iterator[list[int]]:
        offset = 0
        for k, size in enumerate(self.sizes):
            generator = torch.Generator().manual_seed(experience_seed(self.seed, k))
            order = (torch.randperm(size, generator=generator) + offset).tolist()
            for b in range(self.batches_of(size)):
                yield order[b * self.batch_size : (b + 1) * self.batch_size]
            offset += size

    def __len__(self) -> int:
        return sum(self.batches_of(size) for size in self.sizes)


def _training_view(mini_experience):
    """A mini-experience in Avalanche's training mode, where its boundary attributes raise when read.

    Avalanche hands strategies experiences in its logging mode, where every
    attribute shows. Its position in the online stream (``current_experience``)
    is no boundary, and Avalanche's replay strategies read it, so it stays visible.
    """
    from avalanche.benchmarks.scenarios.generic_scenario import ExperienceAttribute

    view = mini_experience.train()
    view._current_experience = ExperienceAttribute(mini_experience.current_experience, use_in_train=True)
    return view


class ClassIncrementalDataModule(pl.LightningDataModule):
    """A stream for one ``trainer.fit``: epochs ``[k E, (k + 1) E)`` train experience ``k``.

    The stream is class-incremental, or domain-incremental (``domain-digits``,
    ``domain-cifar10``: every experience has every class, under its own
    condition); the name keeps the common case.

    ``train_dataloader()`` serves the experience of the Trainer's current
    epoch, the same loader object for every epoch of one experience, so with
    ``reload_dataloaders_every_n_epochs=1`` Lightning switches experiences
    inside one fit and each experience's epochs shuffle as one loader's. ``val_dataloader()``
    returns every test experience: dataloader ``j`` is test experience ``j``.
    :class:`~cvm_lightning.training.ExperienceSchedule` sets those Trainer
    options from this data module and handles each experience's start and end.

    With ``mini_experience_size`` the stream is task-free: one epoch, one
    pass over every experience in order, with nothing telling the model
    where one ends. ``train_dataloader()`` then serves the whole stream and
    ``experience_end_batches`` says, for the evaluation alone, where each
    experience ended (:class:`~cvm_lightning.metrics.task_free.TaskFreeEvaluation`);
    ``online_train_stream()`` is the same stream as Avalanche's
    mini-experiences, for its strategies.

    Args:
        benchmark: a registered benchmark name (``cvm benchmarks``).
        epochs_per_experience: training epochs of each experience.
        batch_size: training batch size.
        drop_last: leave out each experience's last training batch when it is smaller than batch_size
            (every strategy; published protocols such as Avalanche's baselines do).
        eval_batch_size: batch size of the test experiences.
        eval_every: evaluate on the test stream after every N-th experience and after the last one;
            the rows in between stay empty in the accuracy matrix, and forgetting and BWT use the
            evaluated rows only.
        mini_experience_size: task-free online learning: one pass over the stream, each experience
            shuffled and cut into mini-experiences of this many samples (Avalanche's split_online_stream),
            with the experience boundaries hidden from every strategy; unset: boundary-aware experiences.
        anytime_every: with mini_experience_size, also score the accuracy on the classes seen so far every
            N training samples (anytime accuracy).
        num_workers: ``DataLoader`` workers.
        seed: the class order, subsampling and shuffling.
        shuffle_classes: shuffle the class order with seed; off, the classes come in label order
            (0, 1, 2, ...), as published protocols fix it.
        data_root: folder holding the benchmark's data (``--data-root``).
        train_per_class: keep at most this many training images a class.
        test_per_class: keep at most this many test images a class.
        n_experiences: number of experiences (the benchmark's default if unset).
        download: allow downloading data (needs internet).
    """

    def __init__(
        self,
        benchmark: str = "split-digits",
        *,
        epochs_per_experience: int = 5,
        batch_size: int = 64,
        drop_last: bool = False,
        eval_batch_size: int = 256,
        eval_every: int = 1,
        mini_experience_size: int | None = None,
        anytime_every: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        shuffle_classes: bool = True,
        data_root: str | Path | None = None,
        train_per_class: int | None = None,
        test_per_class: int | None = None,
        n_experiences: int | None = None,
        download: bool = False,
    ) -> None:
        super().__init__()
        check_settings(
            {
                "epochs_per_experience": epochs_per_experience,
                "batch_size": batch_size,
                "eval_batch_size": eval_batch_size,
                "eval_every": eval_every,
                "mini_experience_size": mini_experience_size,
                "anytime_every": anytime_every,
                "num_workers": num_workers,
                "seed": seed,
                "train_per_class": train_per_class,
                "test_per_class": test_per_class,
                "n_experiences": n_experiences,
            }
        )
        data_root = str(data_root) if data_root is not None else None  # checkpoints hold plain values only
        self.save_hyperparameters()
        self._benchmark: Benchmark | None = None
        self._train_loader: tuple[int, DataLoader] | None = None  # (experience, its loader)

    @classmethod
    def from_benchmark(cls, benchmark: Benchmark, **kwargs: Any) -> "ClassIncrementalDataModule":
        """A data module over an already built :class:`~cvm_lightning.streams.Benchmark` (any Avalanche scenario).

        Every float image of its experiences must be finite: the first that is not is named here.
        """
        from cvm_lightning.streams.datasets import check_finite

        module = cls(benchmark.name, **kwargs)
        for stream, what in (("train", "training"), ("test", "test")):
            for index, experience in enumerate(getattr(benchmark, f"{stream}_stream")):
                check_finite(experience.dataset, f"{what} experience {index}")
        module._check(benchmark)
        module._benchmark = benchmark
        return module

    @classmethod
    def from_datasets(
        cls, train, test, class_names: list[str], *, n_experiences: int, seed: int = 0, **kwargs: Any
    ) -> "ClassIncrementalDataModule":
        """A data module over your own map-style datasets of ``(image, label)`` pairs (a torchvision dataset, say).

        Images are C x H x W float tensors in [0, 1] (``ToTensor()``) or
        uint8, without normalisation; labels are class ids into
        ``class_names``. ``seed`` shuffles the class order as for the
        registered benchmarks, and ``train_per_class``/``test_per_class``
        (among ``kwargs``, with every other setting) subsample each class.
        """
        from cvm_lightning.streams.benchmarks import from_datasets

        module = cls("datasets", n_experiences=n_experiences, seed=seed, **kwargs)
        benchmark = from_datasets(train, test, class_names, module.stream_config())
        module._check(benchmark)
        module._benchmark = benchmark
        return module

    def stream_config(self) -> StreamConfig:
        """What a benchmark builder takes from this data module's settings."""
        h = self.hparams
        return StreamConfig(
            seed=h.seed, shuffle_classes=h.shuffle_classes,
            data_root=Path(h.data_root) if h.data_root is not None else None, train_per_class=h.train_per_class,
            test_per_class=h.test_per_class, n_experiences=h.n_experiences, download=h.download,
        )

    @property
    def benchmark(self) -> Benchmark:
        """The stream, built on first use."""
        if self._benchmark is None:
            benchmark = build_benchmark(self.hparams.benchmark, self.stream_config())
            self._check(benchmark)
            self._benchmark = benchmark
        return self._benchmark

    def _check(self, benchmark: Benchmark) -> None:
        if benchmark.n_experiences < 1:
            raise DataError(f"Benchmark {benchmark.name} has no experiences: a stream needs at least one.")
        if len(benchmark.test_stream) != benchmark.n_experiences:
            raise ConfigError(f"Benchmark {benchmark.name} has {benchmark.n_experiences} training but "
                              f"{len(benchmark.test_stream)} test experiences; they must pair up.")
        if self.hparams.drop_last:
            smallest = min(len(exp.dataset) for exp in benchmark.train_stream)
            if smallest < self.hparams.batch_size:
                raise DataError(f"An experience of {benchmark.name} has {smallest} training samples, fewer than a "
                                f"batch of {self.hparams.batch_size}, so --drop-last would leave it no batch: "
                                "lower --batch-size or keep more images a class.")

    @property
    def class_names(self) -> list[str]:
        return list(self.benchmark.class_names)

    @property
    def in_chans(self) -> int:
        return int(self.benchmark.in_chans)

    @property
    def templates(self) -> list[str]:
        """The benchmark's prompt templates for its concepts."""
        return list(self.benchmark.templates)

    @property
    def n_experiences(self) -> int:
        return self.benchmark.n_experiences

    @property
    def epochs_per_experience(self) -> int:
        return int(self.hparams.epochs_per_experience)

    @property
    def task_free(self) -> bool:
        """Whether the stream hides its experience boundaries (``mini_experience_size`` is set)."""
        return self.hparams.mini_experience_size is not None

    @property
    def max_epochs(self) -> int:
        """Epochs of the whole stream: the Trainer's ``max_epochs`` (one pass when task-free)."""
        return 1 if self.task_free else self.n_experiences * self.epochs_per_experience

    def experience_at(self, epoch: int) -> int:
        """The experience that epoch ``epoch`` trains."""
        return min(epoch // self.epochs_per_experience, self.n_experiences - 1)

    def evaluates_after(self, experience: int) -> bool:
        """Whether the test stream is evaluated after training ``experience`` (every ``eval_every``-th and the last)."""
        return (experience + 1) % int(self.hparams.eval_every) == 0 or experience == self.n_experiences - 1

    def classes_of(self, experience: int) -> list[int]:
        """The class ids of training experience ``experience``."""
        return sorted(int(c) for c in self.benchmark.train_stream[experience].classes_in_this_experience)

    def setup(self, stage: str) -> None:
        self.benchmark  # noqa: B018 - builds (and checks) the stream once, on every process
        if stage == "fit":  # a new fit shuffles from the start, as a fresh data module would
            self._train_loader = None

    def train_dataloader(self) -> DataLoader:
        """The loader of the experience the Trainer's current epoch trains (the whole stream when task-free).

        Asked again within the same experience, it returns the same loader,
        whose shuffling goes on from the epoch before. Reloading every epoch
        keeps the experience tied to the epoch alone: a run resumed from a
        checkpoint (where Lightning asks once more for the epoch it saved in)
        switches at the same epochs as one never stopped.
        """
        if self.task_free:
            return self.stream_dataloader()
        experience = self.experience_at(self.trainer.current_epoch if self.trainer is not None else 0)
        if self._train_loader is None or self._train_loader[0] != experience:
            self._train_loader = (experience, self.train_dataloader_of(experience))
        return self._train_loader[1]

    def train_dataloader_of(self, experience: int) -> DataLoader:
        """The training loader of ``experience`` (for one ``fit`` per experience)."""
        dataset = self.benchmark.train_stream[experience].dataset.train()
        if len(dataset) == 0:
            raise DataError(f"Training experience {experience} is empty: every experience needs at least one sample.")
        h = self.hparams
        return experience_loader(dataset, batch_size=h.batch_size, train=True, seed=h.seed, experience=experience,
                                 num_workers=h.num_workers, drop_last=h.drop_last)

    def _stream_sampler(self) -> StreamBatchSampler:
        sizes = [len(exp.dataset) for exp in self.benchmark.train_stream]
        return StreamBatchSampler(sizes, self.hparams.batch_size, self.hparams.seed, self.hparams.drop_last)

    def stream_dataloader(self) -> DataLoader:
        """Every training experience in stream order, each shuffled, in batches that never mix two experiences."""
        dataset = ConcatDataset([exp.dataset.train() for exp in self.benchmark.train_stream])
        return DataLoader(dataset, batch_sampler=self._stream_sampler(), num_workers=self.hparams.num_workers,
                          persistent_workers=self.hparams.num_workers > 0)

    @property
    def experience_end_batches(self) -> list[int]:
        """Batches of :meth:`stream_dataloader` served once each experience is done: the hidden boundaries."""
        return self._stream_sampler().experience_ends

    def online_train_stream(self):
        """The task-free stream as Avalanche's mini-experiences of ``mini_experience_size`` samples.

        Each experience is shuffled (seeded) and cut, and each mini-experience
        comes in Avalanche's training mode, where reading its boundary
        attributes (``origin_experience``, ``is_last_subexp``, ...) raises.
        """
        from avalanche.benchmarks.scenarios import split_online_stream

        h = self.hparams
        stream = split_online_stream(self.benchmark.train_stream, h.mini_experience_size, shuffle=True,
                                     access_task_boundaries=False, seed=h.seed)
        return (_training_view(mini_experience) for mini_experience in stream)

    def val_dataloader(self) -> list[DataLoader]:
        h = self.hparams
        return [
            experience_loader(exp.dataset.eval(), batch_size=h.eval_batch_size, train=False, num_workers=h.num_workers)
            for exp in self.benchmark.test_stream
        ]
