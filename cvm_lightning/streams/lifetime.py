"""The lifetime of a model on site as one stream: a deployed model's training set, then many small updates.

Experience 0 is the training set of the model first deployed: a few
classes, many images each, in the original condition. Each update after it
is small (a few images a class) and brings what a line brings:

- an odd update: the classes known so far under the next condition (the
  light, the focus, the sensor change: :mod:`cvm_lightning.streams.corruptions`);
- an even update: the next new class, in the original condition, or, every
  second time, under the latest condition (a new product under the new camera).

The images an update trains on were never trained before: each class's
training images are dealt out once, in a seeded order. Test experience
``k`` holds what update ``k`` brought (its classes under its condition), so
the accuracy matrix's column 0 is the first classes in the first condition
after every update, ``R[k][k]`` an update's accuracy when it arrived and
``R[-1][k]`` at the end. The noise is seeded by the stream's seed: the
same seed always gives the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

from cvm_lightning.errors import ConfigError, DataError
from cvm_lightning.streams.registry import Benchmark, StreamConfig, class_order, split_by_condition

ORIGINAL = "clean"  # the condition the deployed model was trained in


@dataclass(frozen=True)
class LifetimeSpec:
    """The shape of a lifetime stream, declared with each benchmark.

    ``first_classes`` classes of ``first_per_class`` training images each
    (``--train-per-class`` overrides it) make experience 0; each update
    trains on ``update_per_class`` new images of each class it brings, for
    the run's ``--epochs``; ``updates`` is the default count
    (``--n-experiences`` is one more); ``conditions`` come in this order.
    """

    first_classes: int
    first_per_class: int
    update_per_class: int
    updates: int
    conditions: tuple[str, ...]


@dataclass(frozen=True)
class LifetimeStep:
    """What one experience of a lifetime stream brings: its classes (ids), its condition and how it reads."""

    kind: str  # "first", "condition" or "new class"
    classes: tuple[int, ...]
    condition: str
    label: str


def plan_lifetime(spec: LifetimeSpec, order: list[int], class_names: list[str], updates: int) -> list[LifetimeStep]:
    """The experiences of a lifetime of ``updates`` updates over the classes in ``order`` (first ones first)."""
    needed_conditions = (updates + 1) // 2
    needed_classes = spec.first_classes + updates // 2
    if needed_conditions > len(spec.conditions) or needed_classes > len(order):
        most = min(2 * len(spec.conditions), 2 * (len(order) - spec.first_classes) + 1)
        raise ConfigError(
            f"A lifetime of {updates} updates needs {needed_conditions} conditions and {needed_classes} classes; "
            f"this stream has {len(spec.conditions)} conditions and {len(order)} classes: choose --n-experiences "
            f"1 to {most + 1}.")
    first = tuple(sorted(order[: spec.first_classes]))
    steps = [LifetimeStep("first", first, ORIGINAL, f"first classes: {', '.join(class_names[c] for c in first)}")]
    known, condition, new_classes = list(first), ORIGINAL, 0
    for number in range(1, updates + 1):
        if number % 2:
            condition = spec.conditions[number // 2]
            steps.append(LifetimeStep("condition", tuple(sorted(known)), condition,
                                      f"{condition}: {len(known)} known classes"))
        else:
            new = order[spec.first_classes + new_classes]
            new_classes += 1
            # Every second new class arrives under the line's latest condition, the others as first seen.
            arrives_in = condition if new_classes % 2 == 0 else ORIGINAL
            known.append(new)
            steps.append(LifetimeStep("new class", (new,), arrives_in, f"new class {class_names[new]} ({arrives_in})"))
    return steps


def deal_images(targets: list[int], steps: list[LifetimeStep], spec: LifetimeSpec, first_per_class: int,
                seed: int) -> list[list[int]]:
    """Each experience's training indices: every class's images in a seeded order, each dealt out once."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    queues: dict[int, list[int]] = {}
    for label in sorted({c for step in steps for c in step.classes}):
        members = torch.tensor([i for i, t in enumerate(targets) if t == label], dtype=torch.long)
        queues[label] = members[torch.randperm(len(members), generator=generator)].tolist()
    parts = []
    for step in steps:
        take = first_per_class if step.kind == "first" else spec.update_per_class
        part = []
        for label in step.classes:
            if len(queues[label]) < take:
                raise DataError(f"Class {label} has too few training images for this lifetime: {step.label} needs "
                                f"{take} new ones and {len(queues[label])} are left. Choose fewer --n-experiences or "
                                "a smaller --train-per-class.")
            part += queues[label][:take]
            queues[label] = queues[label][take:]
        parts.append(sorted(part))
    return parts


def lifetime_stream(name: str, config: StreamConfig, train, test, class_names: list[str], spec: LifetimeSpec, *,
                    in_chans: int, image_size: int, templates: tuple[str, ...]) -> Benchmark:
    """A lifetime :class:`Benchmark` over ``train`` and ``test`` (map-style datasets of ``(image, label)``)."""
    from cvm_lightning.streams.corruptions import check_conditions, corrupt
    from cvm_lightning.streams.datasets import TensorImageDataset, stacked_pixels, uint8_to_unit

    check_conditions(spec.conditions)
    updates = (config.n_experiences or spec.updates + 1) - 1
    order = class_order(len(class_names), config.seed) if config.shuffle_classes else list(range(len(class_names)))
    steps = plan_lifetime(spec, order, class_names, updates)
    (train_pixels, train_targets), (test_pixels, test_targets) = (stacked_pixels(data) for data in (train, test))
    parts = deal_images(train_targets.tolist(), steps, spec, config.train_per_class or spec.first_per_class,
                        config.seed)
    test_ids = test_targets.tolist()
    seed = config.seed * 100_003  # each experience's training and test images draw their own noise
    train_sets, test_sets = [], []
    for k, (step, part) in enumerate(zip(steps, parts)):
        train_sets.append(TensorImageDataset(corrupt(train_pixels[part], step.condition, seed + 2 * k),
                                             train_targets[part], uint8_to_unit))
        chosen = _keep_each(test_ids, step.classes, config.test_per_class)
        if not chosen:
            raise DataError(f"The test set has no image of the classes of {step.label}: every class needs some.")
        test_sets.append(TensorImageDataset(corrupt(test_pixels[chosen], step.condition, seed + 2 * k + 1),
                                            test_targets[chosen], uint8_to_unit))
    return Benchmark(name, split_by_condition(train_sets, test_sets), class_names, in_chans, image_size, templates,
                     lifetime=tuple(steps))


def _keep_each(targets: list[int], classes: tuple[int, ...], per_class: int | None) -> list[int]:
    """The indices of the first ``per_class`` test images of each of ``classes`` (all of them without a limit)."""
    kept: dict[int, int] = {}
    chosen = []
    for index, target in enumerate(targets):
        if target in classes and (per_class is None or kept.get(target, 0) < per_class):
            kept[target] = kept.get(target, 0) + 1
            chosen.append(index)
    return chosen
