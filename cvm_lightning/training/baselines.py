"""Avalanche's own strategies, built on the same backbone as CVM for fair comparison."""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from itertools import chain, cycle
from types import SimpleNamespace
from typing import Callable

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from avalanche.models import IncrementalClassifier, SCRModel
from avalanche.training import DER, ER_ACE, ER_AML, EWC, SCR, Cumulative, GDumb, ICaRL, JointTraining, LwF, Naive
from avalanche.training.plugins import ReplayPlugin
from avalanche.training.storage_policy import ClassBalancedBuffer
from avalanche.training.templates import SupervisedTemplate
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from cvm_lightning.errors import ConfigError, did_you_mean
from cvm_lightning.model.batchnorm import recalibrate_on_batches
from cvm_lightning.model.cpu import autocast
from cvm_lightning.model.encoder import VisualEncoder
from cvm_lightning.model.weight_average import WeightAverage
from cvm_lightning.settings import check_memory, check_settings


class ClassifierNet(nn.Module):
    """The baselines' model: CVM's ``VisualEncoder`` (pixels, augmentation, backbone), a linear head over all classes.

    With ``growing_head`` the head is Avalanche's ``IncrementalClassifier``:
    it starts with one unit and gains a unit for each class as its first
    experience arrives, with the classes not trained yet masked (scored
    ``-1000``), as Avalanche's published baselines build it. Its output is
    padded to ``n_classes`` columns with that score, so every metric reads
    one column per class id either way.

    Avalanche's loop has no precision option, so the model applies
    ``precision`` itself: with ``"bf16-mixed"`` its forward runs under
    bfloat16 autocast, as Lightning runs CVM's, and returns float32 logits
    for the strategies' losses.
    """

    def __init__(
        self, backbone: str, n_classes: int, *, in_chans: int = 3, input_size: int | None = None, augment: str = "none",
        normalize: str = "centered", pretrained: bool = False, pretrained_file: str | None = None,
        freeze_backbone: bool = False, channels_last: bool = False, precision: str = "32-true",
        growing_head: bool = False,
    ) -> None:
        super().__init__()
        check_settings({"precision": precision})
        self.encoder = VisualEncoder(
            backbone,
            pretrained=pretrained,
            pretrained_file=pretrained_file,
            in_chans=in_chans,
            input_size=input_size,
            normalize=normalize,
            augment=augment,
            freeze=freeze_backbone,
            channels_last=channels_last,
        )
        self.n_classes = n_classes
        self.classifier = (IncrementalClassifier(self.encoder.width, initial_out_features=1) if growing_head
                           else nn.Linear(self.encoder.width, n_classes))
        self.precision = precision

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(self.precision, x.device.type):
            logits = self.classifier(self.encoder(x)).float()
        missing = self.n_classes - logits.shape[1]
        return F.pad(logits, (0, missing), value=self.classifier.mask_value) if missing > 0 else logits


@dataclass(frozen=True)
class BaselineSettings:
    """What a baseline is built with: the budget every baseline shares, and its own fixed hyperparameters.

    ``hyperparameters`` are keyword arguments of the Avalanche strategy
    itself (``{"alpha": 0.1, "beta": 0.5}`` for DER); ``cvm run`` passes each
    strategy the ones its registry entry records. ``replay_batch_size`` is
    the replayed samples a batch of ER-ACE, ER-AML and SCR (default: the
    batch size); ``drop_last`` leaves out each experience's last, smaller
    batch (pass it to ``strategy.train`` too: Avalanche takes it there).
    ``task_free`` strategies train on mini-experiences of a stream whose
    boundaries they are not told: nothing resets or recalibrates between them.
    ``scr_views`` names SCR's second view of each sample (:data:`SCR_VIEWS`).
    ``ema`` > 0 evaluates with an average of the weights over steps
    (:class:`WeightAveragePlugin`), as ``CVMModule(ema=...)`` does.
    """

    buffer_size: int
    batch_size: int
    epochs: int
    eval_batch_size: int = 256
    replay_batch_size: int | None = None
    drop_last: bool = False
    task_free: bool = False
    device: str = "cpu"
    recalibrate_bn: bool = True
    scr_views: str = "crop-flip"
    ema: float = 0.0
    hyperparameters: Mapping[str, float] = field(default_factory=dict)

    @property
    def memory_batch_size(self) -> int:
        """Replayed samples a batch."""
        return self.replay_batch_size or self.batch_size


BaselineFactory = Callable[[nn.Module, torch.optim.Optimizer, BaselineSettings, list], SupervisedTemplate]


class FreshOptimizerState(SupervisedPlugin):
    """Clears optimiser state (e.g. Adam moments) before each experience.

    Avalanche keeps it across experiences by default; CVM's Lightning path
    builds a fresh optimiser per experience, so the baselines do the same.
    """

    def before_training_exp(self, strategy, *args, **kwargs) -> None:
        strategy.optimizer.state = defaultdict(dict)


class BatchNormRecalibrationPlugin(SupervisedPlugin):
    """Re-estimates BatchNorm statistics after each experience, as CVMModule does.

    See :func:`cvm_lightning.model.batchnorm.recalibrate_batchnorm`; the pass
    runs over the strategy's training dataloader (replay included). With
    ``with_memory``, the strategy's ``storage_policy.buffer`` joins the pass:
    ER-ACE draws its replayed batches apart from its dataloader, as CVM does.
    """

    def __init__(self, with_memory: bool = False) -> None:
        super().__init__()
        self.with_memory = with_memory

    def after_training_exp(self, strategy, *args, **kwargs) -> None:
        batches = strategy.dataloader
        memory = getattr(strategy, "storage_policy", None) if self.with_memory else None
        if memory is not None and len(memory.buffer):
            batches = chain(batches, DataLoader(memory.buffer, batch_size=strategy.train_mb_size))
        recalibrate_on_batches(strategy.model, batches, strategy.device)


class WeightAveragePlugin(SupervisedPlugin):
    """An average of the model's weights over optimiser steps, used everywhere but in the steps themselves.

    The baselines' twin of ``CVMModule(ema=...)``, on the same
    :class:`~cvm_lightning.model.weight_average.WeightAverage`: each step
    trains the raw weights, and the strategy's model holds their average
    outside it, for evaluation, memory updates and the experiences that
    follow. A growing head's new units join the average as they appear.
    """

    def __init__(self, decay: float) -> None:
        super().__init__()
        self.decay = decay
        self.average: WeightAverage | None = None

    def before_forward(self, strategy, *args, **kwargs) -> None:
        if self.average is None:
            self.average = WeightAverage(strategy.model, decay=self.decay)
        self.average.hold_training()

    def after_update(self, strategy, *args, **kwargs) -> None:
        self.average.hold_average()


def _common(settings: BaselineSettings, plugins: list, recalibrate_memory: bool = False) -> dict:
    recalibration = [BatchNormRecalibrationPlugin(recalibrate_memory)] if settings.recalibrate_bn else []
    # Each experience starts with fresh optimiser state, unless the stream hides where experiences start.
    fresh = [] if settings.task_free else [FreshOptimizerState()]
    average = [WeightAveragePlugin(settings.ema)] if settings.ema > 0 else []
    plugins = [*fresh, *average, *recalibration, *plugins]
    return {
        "criterion": nn.CrossEntropyLoss(),
        "train_mb_size": settings.batch_size,
        "train_epochs": settings.epochs,
        "eval_mb_size": settings.eval_batch_size,
        "device": settings.device,
        "plugins": plugins,
        "evaluator": None,
    }


class ClassBalancedMemory(ClassBalancedBuffer):
    """Avalanche's ``ClassBalancedBuffer``, whose ``update`` goes straight to the current ``post_adapt``.

    Avalanche 0.6's ``ReplayPlugin`` and ``ER_ACE`` still call the deprecated
    ``update``, whose warning re-enables every ``DeprecationWarning`` of the process.
    """

    def update(self, strategy, **kwargs) -> None:
        self.post_adapt(strategy, strategy.experience)


def _replay(model, optimizer, settings, plugins):
    # Class-balanced like CVM's memory, so only the method differs.
    memory = ReplayPlugin(
        settings.buffer_size, storage_policy=ClassBalancedMemory(settings.buffer_size, adaptive_size=True)
    )
    return Naive(model=model, optimizer=optimizer, **_common(settings, [memory, *plugins]))


def _er_ace(model, optimizer, settings, plugins):
    # Replayed batches as large as the new ones by default, like CVM's and Replay's.
    strategy = ER_ACE(
        model=model,
        optimizer=optimizer,
        mem_size=settings.buffer_size,
        batch_size_mem=settings.memory_batch_size,
        **_common(settings, plugins, recalibrate_memory=True),
    )
    strategy.storage_policy = ClassBalancedMemory(settings.buffer_size, adaptive_size=True)  # what ER_ACE makes, quiet
    return strategy


class EncoderFeatures(nn.Module):
    """A ``ClassifierNet``'s encoder alone, at the net's precision: the feature extractor of iCaRL and SCR."""

    def __init__(self, net: ClassifierNet) -> None:
        super().__init__()
        self.encoder, self.precision = net.encoder, net.precision

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(self.precision, x.device.type):
            return self.encoder(x)


class SmallGroupsERAML(ER_AML):
    """Avalanche's ER-AML, whose positive/negative draws also work when each class holds fewer samples than a batch.

    Avalanche 0.6 loads each class's memory in batches of ``train_mb_size``
    with ``drop_last=True``, so a class of a 100-sample memory over 10
    classes yields nothing and training stops. Here each class loader keeps
    its last, smaller batch; the criterion draws positives and negatives
    from their union, as before.
    """

    def _before_training_exp(self, **kwargs):
        super()._before_training_exp(**kwargs)
        if self.replay_loader is not None:
            self.pos_neg_loaders = [
                cycle(DataLoader(group.buffer, batch_size=self.train_mb_size, shuffle=True, drop_last=False))
                for group in self.storage_policy.buffer_groups.values()
            ]


def _er_aml(model, optimizer, settings, plugins):
    # Same memory and replayed-batch size as ER-ACE; the AML criterion reads the encoder's features.
    strategy = SmallGroupsERAML(
        model=model,
        feature_extractor=EncoderFeatures(model),
        optimizer=optimizer,
        mem_size=settings.buffer_size,
        batch_size_mem=settings.memory_batch_size,
        **settings.hyperparameters,
        **_common(settings, plugins, recalibrate_memory=True),
    )
    strategy.storage_policy = ClassBalancedMemory(settings.buffer_size, adaptive_size=True)  # what ER_AML makes, quiet
    return strategy


class NearestClassMeanNet(nn.Module):
    """A ``ClassifierNet``'s encoder with a nearest-class-mean classifier: no trained weight.

    Each class is the mean of its images' unit features; a prediction is the
    class whose (normalised) mean is the most cosine-similar. Classes with no
    image yet score ``-inf``. With a frozen pretrained backbone it is the
    training-free reference of the frozen-feature protocol.
    """

    def __init__(self, net: ClassifierNet) -> None:
        super().__init__()
        self.features = EncoderFeatures(net)
        n_classes = net.classifier.out_features
        self.register_buffer("sums", torch.zeros(n_classes, net.encoder.width))
        self.register_buffer("counts", torch.zeros(n_classes))

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.features(x), dim=-1)

    @torch.no_grad()
    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Fold images ``x`` of classes ``y`` into their class means."""
        self.sums.index_add_(0, y, self._features(x))
        self.counts.index_add_(0, y, torch.ones(len(y), device=self.counts.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self._features(x) @ F.normalize(self.sums, dim=-1).T
        return scores.masked_fill(self.counts == 0, float("-inf")) if bool((self.counts > 0).any()) else scores


class ClassMeanUpdate(SupervisedPlugin):
    """After each experience, folds all of its training images into the class means (one pass, no gradient)."""

    def after_training_exp(self, strategy, *args, **kwargs) -> None:
        model = strategy.model
        model.eval()
        for batch in DataLoader(strategy.experience.dataset.eval(), batch_size=strategy.train_mb_size):
            model.add(batch[0].to(strategy.device), batch[1].to(strategy.device))


def _ncm(model, optimizer, settings, plugins):
    # Nothing trains: zero epochs, and the means come from one pass over each experience.
    common = _common(replace(settings, recalibrate_bn=False), [ClassMeanUpdate(), *plugins])
    common["train_epochs"] = 0
    return SupervisedTemplate(model=NearestClassMeanNet(model), optimizer=optimizer, **common)


def _every_class_scored(strategy: SupervisedTemplate, ncm: nn.Module, net: ClassifierNet) -> SupervisedTemplate:
    """Give ``ncm`` a (zero) mean for every class now, as Avalanche gives each class when it first evaluates it.

    Its outputs then have one column per class from the start, so the
    untrained model is scored (zero-shot, FWT) like every other strategy.
    """
    ncm.init_missing_classes(range(net.classifier.out_features), net.encoder.width, torch.device("cpu"))
    return strategy


class ClassOrderOfTheStream(SupervisedPlugin):
    """Gives each training experience the ``benchmark`` that Avalanche's iCaRL reads: classes per experience, in order.

    Avalanche 0.6's iCaRL still reads the attributes of the older
    ``nc_benchmark`` scenarios (``n_classes_per_exp``, ``classes_order``),
    which the streams of ``class_incremental_benchmark`` do not have.
    """

    def before_training_exp(self, strategy, *args, **kwargs) -> None:
        classes = [sorted(int(c) for c in e.classes_in_this_experience) for e in strategy.experience.origin_stream]
        strategy.experience.benchmark = SimpleNamespace(
            n_classes_per_exp=[len(c) for c in classes], classes_order=[c for group in classes for c in group]
        )


def _icarl(model, optimizer, settings, plugins):
    # iCaRL brings its own loss (sigmoid with distillation) and herding exemplars; prediction is their class means.
    common = _common(settings, [ClassOrderOfTheStream(), *plugins])
    del common["criterion"]
    strategy = ICaRL(feature_extractor=EncoderFeatures(model), classifier=model.classifier, optimizer=optimizer,
                     memory_size=settings.buffer_size, buffer_transform=None, fixed_memory=True, **common)
    return _every_class_scored(strategy, strategy.model.eval_classifier, model)


class SCRViews(nn.Module):
    """SCR's second view of each sample in a batch, each sample with its own random draw.

    ``"crop-flip"``: a random resized crop (scale 0.2-1) back to the batch's
    size and a horizontal flip. ``"crop-flip-colour"`` adds colour jitter
    (0.4, 0.4, 0.4, 0.1 at p 0.8) and greyscale at p 0.2: the views of the SCR
    paper and of Avalanche's reference script (Kornia's, which draw per
    sample too). Single-channel images get the brightness and contrast
    jitter alone, since saturation, hue and greyscale need colour.
    """

    def __init__(self, colour: bool = False) -> None:
        super().__init__()
        self.colour = colour

    def _view(self, size: tuple[int, int], channels: int) -> v2.Transform:
        steps = [v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True), v2.RandomHorizontalFlip()]
        if self.colour and channels == 3:
            steps += [v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), v2.RandomGrayscale(p=0.2)]
        elif self.colour:
            steps += [v2.RandomApply([v2.ColorJitter(0.4, 0.4)], p=0.8)]
        return v2.Compose(steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        view = self._view(tuple(x.shape[-2:]), x.shape[1])
        # One call per sample: a v2 transform given a batch draws one crop (and one jitter) for all of it.
        return torch.stack([view(sample) for sample in x])


SCR_VIEWS: dict[str, Callable[[], nn.Module]] = {
    "crop-flip": lambda: SCRViews(colour=False),
    "crop-flip-colour": lambda: SCRViews(colour=True),
}


class _UnitProjection(nn.Module):
    """SCR's projection head: a 2-layer MLP to 128 dimensions, L2-normalised for the contrastive loss."""

    def __init__(self, width: int, out: int = 128) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, out))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(features), dim=-1)


def _scr(model, optimizer, settings, plugins):
    # The projection is new, so the optimiser built for the linear head gets its parameters too.
    projection = _UnitProjection(model.encoder.width)
    optimizer.add_param_group({"params": list(projection.parameters())})
    common = _common(settings, plugins)
    del common["criterion"]
    strategy = SCR(
        model=SCRModel(EncoderFeatures(model), projection),
        optimizer=optimizer,
        augmentations=SCR_VIEWS[settings.scr_views](),
        mem_size=settings.buffer_size,
        batch_size_mem=settings.memory_batch_size,
        **settings.hyperparameters,
        **common,
    )
    strategy.replay_plugin.storage_policy = ClassBalancedMemory(
        settings.buffer_size, adaptive_size=True
    )  # quiet, as above
    return _every_class_scored(strategy, strategy.model.ncm, model)


class JointUpperBound(JointTraining):
    """Avalanche's ``JointTraining``: one training on the concatenated stream, shuffled, an offline upper bound.

    Avalanche runs that one training under the stream's first experience;
    here plugins see the last one once it ends, so the single evaluation is
    recorded as the accuracy after the whole stream (the accuracy matrix's
    last row; the rows before it stay empty).
    """

    def _after_training_exp(self, **kwargs) -> None:
        self.experience = self._experiences[-1]
        super()._after_training_exp(**kwargs)


BASELINES: dict[str, BaselineFactory] = {
    "naive": lambda m, o, s, p: Naive(model=m, optimizer=o, **_common(s, p)),
    "replay": _replay,
    "lwf": lambda m, o, s, p: LwF(model=m, optimizer=o, **s.hyperparameters, **_common(s, p)),
    "ewc": lambda m, o, s, p: EWC(model=m, optimizer=o, **s.hyperparameters, **_common(s, p)),
    "der": lambda m, o, s, p: DER(model=m, optimizer=o, mem_size=s.buffer_size, **s.hyperparameters, **_common(s, p)),
    "gdumb": lambda m, o, s, p: GDumb(model=m, optimizer=o, mem_size=s.buffer_size, **_common(s, p)),
    "er_ace": _er_ace,
    "er_aml": _er_aml,
    "icarl": _icarl,
    "scr": _scr,
    "cumulative": lambda m, o, s, p: Cumulative(model=m, optimizer=o, **_common(s, p)),
    "joint": lambda m, o, s, p: JointUpperBound(model=m, optimizer=o, **_common(s, p)),
    "ncm": _ncm,
}


def build_baseline(
    name: str, model: nn.Module, optimizer: torch.optim.Optimizer, settings: BaselineSettings, plugins: list
) -> SupervisedTemplate:
    """An Avalanche strategy by name (see ``BASELINES``)."""
    if name not in BASELINES:
        raise ConfigError(f"Unknown strategy {name!r}.{did_you_mean(name, BASELINES)} Available: "
                          f"{', '.join(BASELINES)}.")
    check_memory([name], settings.buffer_size)
    with warnings.catch_warnings():
        # evaluator=None gives Avalanche's default EvaluationPlugin, which warns that it has no logger: the
        # plugins passed here (an AccuracyMatrixPlugin in `cvm run`) record the metrics instead.
        warnings.filterwarnings("ignore", message="No loggers specified", category=UserWarning)
        return BASELINES[name](model, optimizer, settings, plugins)
