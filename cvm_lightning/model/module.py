"""``CVMModule``: a timm backbone mapped into a fixed concept space."""

from __future__ import annotations

import warnings
from dataclasses import asdict
from typing import Any, Iterable, Sequence

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.warnings import PossibleUserWarning
from torch import nn

from cvm_lightning.concepts import ConceptBank
from cvm_lightning.concepts.defaults import DEFAULT_TEMPLATES, DEFAULT_TEXT_MODEL
from cvm_lightning.concepts.fixed_targets import FIXED_TARGETS
from cvm_lightning.errors import ConceptError, ConfigError, DataError, TrainingDivergedError
from cvm_lightning.heap import release_freed_memory
from cvm_lightning.model.batchnorm import recalibrate_on_batches
from cvm_lightning.model.concept_space import ConceptSpace
from cvm_lightning.model.encoder import VisualEncoder
from cvm_lightning.model.heads import ConceptAlignmentHead
from cvm_lightning.model.losses import LOSSES, semantic_distance, similarity_distillation
from cvm_lightning.model.optimizers import create_optimizer
from cvm_lightning.model.previous import PreviousModel
from cvm_lightning.model.prototypes import ClassPrototypes
from cvm_lightning.model.replay import ReplayBuffer
from cvm_lightning.model.weight_average import WeightAverage
from cvm_lightning.settings import DEFAULT_HEAD, check_class_names, check_settings


def split_batch(batch: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` from a ``(x, y)`` batch or an Avalanche ``(x, y, task)`` batch."""
    return batch[0], batch[1]


class CVMModule(pl.LightningModule):
    """Continual Visual Mapping: learn to map images onto language concepts.

    A ``timm`` backbone and a concept-alignment head embed each image as a
    unit vector; its logits are cosine similarities to the class concepts
    divided by a temperature. Only classes seen so far compete: prediction is
    the nearest seen concept, and the loss pushes each image away from the
    other seen concepts (with ``negatives="asymmetric"``, the default, new
    samples compete only among their own batch's classes). An optional
    class-balanced replay memory mixes stored samples into every training
    batch and keeps their embeddings from drifting (``distill``).

    Images are float in [0, 1] (torchvision's ``ToTensor``) or uint8; the
    model normalises them itself (:mod:`cvm_lightning.model.pixels`).
    Labels are integer class ids in the order of ``concept_bank``.

    Args:
        concept_bank: the knowledge space, built beforehand. When ``None``,
            ``class_names`` with ``text_model`` and ``templates`` build it
            here (cached on disk); this is how a config file or ``cvm fit``
            makes the model. With ``concept_dim`` too, the embeddings come
            from a checkpoint (this is how ``load_from_checkpoint`` works).
        class_names: the class names, in class-id order.
        concept_dim: the concept width of a checkpoint's concepts.
        concept_source: how the concepts were made (text model and
            templates); filled from ``concept_bank`` and kept in checkpoints
            so new classes can be added consistently (``cvm learn``).
        text_model: the text model of the concepts built from ``class_names``:
            a registry name, a Hugging Face id or a local folder. The controls
            without language: ``"random"`` (random unit vectors), ``"etf"``
            (a simplex equiangular tight frame) and ``"orthogonal"``
            (one-hot-like; compare it with ``center_concepts=False``).
        templates: their prompt templates (default: photo prompts).
        backbone: a ``timm`` model name or a registered backbone.
        pretrained: start from the backbone's pretrained weights: a local file
            when there is one (``pretrained_file``, or an installed weights
            package such as ``cvm_lightning[pretrained]`` for
            ``tf_efficientnet_lite0``), else timm's own source. The images are
            normalised with the backbone's own statistics.
        pretrained_file: a timm state dict of the backbone to load with ``pretrained``.
        freeze_backbone: keep the backbone fixed (eval mode, no gradients) and
            compute each image's features once; only the alignment head
            trains. Needs ``augment="none"``.
        in_chans: image channels.
        input_size: the smallest side the backbone sees: smaller images are
            upsampled to it inside the model (timm stems shrink 32x32 inputs
            to 1x1); larger ones pass unchanged. ``None`` leaves every image as it is.
        channels_last: keep the backbone's weights and activations in
            channels-last memory order: faster float32 convolutions on an
            AVX-512 CPU (1.7x MobileNetV3 training at 64 px, 1.3x
            reduced_resnet18), slower than bf16 alone on a ResNet
            (``benchmarks/limits.py``).
        image_size: the side of the images the model was trained on. It is
            recorded from the first training batch when not given; export,
            ``cvm predict`` and ``cvm learn`` resize new images to it.
        normalize: the pixel statistics of a backbone trained here: ``"centered"``
            maps [0, 1] to [-1, 1]; ``"cifar10"`` uses CIFAR-10's channel mean and
            std; ``"cifar10-avalanche"`` the smaller std of Avalanche's CIFAR
            transforms; ``"none"`` leaves [0, 1] as it is. A pretrained backbone
            keeps its own.
        augment: training-batch augmentation, replayed samples included:
            ``"none"``, ``"crop"`` or ``"crop-flip"`` (see
            :mod:`cvm_lightning.model.augment`).
        head: ``"linear"`` or ``"mlp"`` alignment head.
        head_hidden_dim: hidden width of the ``"mlp"`` head.
        loss: ``"ce"`` (cross-entropy over similarities), ``"cosine"``,
            ``"triplet"`` (all negatives) or ``"triplet-hard"`` (hardest
            negative); see :mod:`cvm_lightning.model.losses`.
        temperature: softmax temperature of the similarities.
        margin: cosine-distance margin of the triplet losses.
        learn_temperature: make the temperature a trained parameter.
        negatives: the concepts that compete in the loss: ``"seen"`` classes,
            ``"all"`` concepts of the bank, or ``"asymmetric"`` (see
            :meth:`batch_loss`; replay then also draws the current classes).
        optimizer: ``"adamw"``, ``"adam"`` or ``"sgd"``; recreated at every
            ``fit``, so each experience starts with fresh moments.
        lr: learning rate.
        weight_decay: weight decay.
        momentum: SGD's momentum (``optimizer="sgd"`` only; 0 for plain SGD).
        scheduler: ``"none"`` or ``"cosine"`` (annealed over each ``fit``).
        buffer_size: replay memory size in samples (0 turns replay off).
        replay_batch_size: replayed samples per batch (default: the batch size).
        replay_shares: replay one share of each batch per class instead: a
            batch of B samples of k classes draws about B x m / k stored
            samples when m classes can be replayed, so a small update of one
            new class does not fill half of every batch (``cvm learn`` adds
            classes this way).
        replay_balance: how the memory shares its budget: ``"class"``, evenly
            over the classes; ``"class-experience"``, each class's share
            evenly over the experiences that brought its samples (on site, the
            conditions it was seen in), so a class seen again under a new
            condition keeps samples of the old ones.
        seed: seed of the replay memory's sampling.
        recalibrate_bn: after each ``fit``, re-estimate BatchNorm statistics
            over the training data (and replayed samples); see
            :func:`~cvm_lightning.model.batchnorm.recalibrate_batchnorm`.
        distill: weight of the embedding-drift penalty on replayed samples,
            ``mean(1 - cos(z_now, z_stored))``, where ``z_stored`` is the
            embedding the sample had when it entered the memory. The concept
            space is fixed, so stored embeddings stay comparable (0 turns it off).
        lwf: weight of distillation from the model as it was before the
            experience (Learning without Forgetting on concept similarities,
            :func:`~cvm_lightning.model.losses.similarity_distillation`): every
            training image, new and replayed, keeps the similarities to the
            earlier classes' concepts that the previous model gave it (0 turns
            it off; the first experience has no previous model).
        average_previous: after each experience but the first, set every
            trained weight to ``a * before + (1 - a) * after`` with this ``a``:
            a weight-space ensemble of the model before and after the update,
            as WiSE-FT does after fine-tuning (0 keeps the trained weights).
            BatchNorm statistics are then re-estimated for the merged weights.
        ema: decay of an exponential moving average of the trained weights,
            folded in after every optimiser step
            (:class:`~cvm_lightning.model.weight_average.WeightAverage`): the
            model validates, predicts, exports and starts each update with the
            average, while the optimiser goes on training the raw weights, as
            in Soutif-Cormerais et al. (2023) for online continual learning.
            It is a running mean for its first ``1 / (1 - ema)`` steps (0 turns
            it off; for example 0.99).
        semantic: weight of the semantic-distance term added to ``loss``
            (:func:`~cvm_lightning.model.losses.semantic_distance`): each
            image's similarities to the competing concepts should follow its
            own concept's similarities to them (0 turns it off).
        center_concepts: subtract the mean of the bank's concepts before
            normalising. Prompt-template sentences share much of their
            embedding (CIFAR-10's concepts have pairwise cosines of 0.4-0.8);
            centring spreads them apart and keeps their relative geometry.
        prototypes: keep each class's mean backbone feature over all its
            training images and score every class by its concept plus that
            mean (:mod:`cvm_lightning.model.prototypes`): a nearest-class-mean
            vote beside the language prior. Exact with a frozen backbone;
            with a training one, earlier classes' means come from older
            features.
    """

    def __init__(
        self,
        concept_bank: ConceptBank | None = None,
        *,
        class_names: Sequence[str] | None = None,
        concept_dim: int | None = None,
        concept_source: dict | None = None,
        text_model: str = DEFAULT_TEXT_MODEL,
        templates: Sequence[str] | None = None,
        backbone: str = "reduced_resnet18",
        pretrained: bool = False,
        pretrained_file: str | None = None,
        freeze_backbone: bool = False,
        in_chans: int = 3,
        input_size: int | None = 32,
        channels_last: bool = False,
        image_size: int | None = None,
        normalize: str = "centered",
        augment: str = "none",
        head: str = DEFAULT_HEAD,
        head_hidden_dim: int = 512,
        loss: str = "ce",
        temperature: float = 0.05,
        margin: float = 0.2,
        learn_temperature: bool = False,
        negatives: str = "asymmetric",
        optimizer: str = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        scheduler: str = "none",
        buffer_size: int = 100,
        replay_batch_size: int | None = None,
        replay_shares: bool = False,
        replay_balance: str = "class",
        seed: int = 0,
        recalibrate_bn: bool = True,
        distill: float = 1.0,
        lwf: float = 0.0,
        average_previous: float = 0.0,
        ema: float = 0.0,
        semantic: float = 0.0,
        center_concepts: bool = True,
        prototypes: bool = False,
    ) -> None:
        super().__init__()
        check_settings({name: value for name, value in locals().items() if name not in ("self", "concept_bank")})
        if concept_bank is None and class_names is not None and concept_dim is None:
            # Plain values (a config file, LightningCLI): build the concepts now; they are cached on disk.
            concept_bank = ConceptBank.from_names(
                class_names, text_model=text_model, templates=tuple(templates or DEFAULT_TEMPLATES)
            )
        if concept_bank is not None:
            class_names, concept_dim = concept_bank.class_names, concept_bank.dim
            concept_source = {"text_model": asdict(concept_bank.text_model), "templates": list(concept_bank.templates)}
        if class_names is None or concept_dim is None:
            raise ConfigError("CVMModule needs class_names (with text_model and templates) or a concept_bank.")
        class_names = check_class_names(class_names)
        self.save_hyperparameters(ignore=["concept_bank"])
        self.hparams["class_names"] = list(class_names)
        self.hparams["concept_dim"] = int(concept_dim)
        self.hparams["concept_source"] = concept_source
        # What grows after construction lives beside the hyperparameters, saved by on_save_checkpoint:
        # the classes added on site, and the side of the images training saw.
        self._class_names = list(class_names)
        self.image_size: int | None = image_size

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
        self.head = ConceptAlignmentHead(self.encoder.width, concept_dim, kind=head, hidden_dim=head_hidden_dim)
        embeddings = concept_bank.embeddings if concept_bank is not None else torch.zeros(len(class_names), concept_dim)
        self.space = ConceptSpace(embeddings, temperature=temperature, learn_temperature=learn_temperature,
                                  center=center_concepts)
        self.prototypes = ClassPrototypes(len(class_names), self.encoder.width, concept_dim)
        self.loss_fn = LOSSES[loss]
        self.replay = ReplayBuffer(buffer_size, seed=seed)
        self.current_experience: int | None = None
        self._fit_classes: set[int] = set()  # classes the current experience brings new: never replayed
        self.previous: PreviousModel | None = None  # the model before this experience, for lwf and average_previous
        self.weight_average: WeightAverage | None = None  # with ema: the raw weights, while the module holds the mean
        self._experience_started = False
        self._first_epoch = 0
        self.experiences_trained = 0  # experiences ended, not interrupted; from the second on, one has a previous model
        self._ended_at_step = -1
        self._recalibrated_at_step = -1
        self._prototypes_at_step = -1

    # ----------------------------------------------------------------- concepts
    @property
    def class_names(self) -> list[str]:
        """Every class's name, by class id: those it was built with, then any added since."""
        return list(self._class_names)

    @property
    def temperature(self) -> torch.Tensor:
        return self.space.temperature

    @property
    def concepts(self) -> torch.Tensor:
        """Unit concept vectors, one row per class id."""
        return self.space.concepts

    @property
    def seen(self) -> torch.Tensor:
        """Which classes have been seen (they alone compete in predictions)."""
        return self.space.seen

    @property
    def backbone(self) -> nn.Module:
        return self.encoder.backbone

    def start_experience(self, classes: Sequence[int], experience: int | None = None) -> None:
        """Mark ``classes`` as seen before training on a new experience."""
        self._fit_classes = set()
        if self.experiences_trained:
            self._keep_previous()
        self._mark_seen([int(c) for c in classes])
        self._experience_started = True
        self._first_epoch = self.current_epoch  # replay stores samples in an experience's first epoch
        if experience is not None:
            self.current_experience = experience

    @property
    def uses_previous(self) -> bool:
        """Whether a setting reads the model before the experience (``lwf`` or ``average_previous``)."""
        return self.hparams.get("lwf", 0) > 0 or self.hparams.get("average_previous", 0) > 0

    def _keep_previous(self) -> None:
        self.previous = PreviousModel(self.encoder, self.head, self.seen) if self.uses_previous else None

    def merge_previous(self) -> None:
        """At an experience's end: merge the weights with the previous model's (``average_previous``), then drop it."""
        weight = self.hparams.get("average_previous", 0)
        if self.previous is not None and weight > 0:
            self.previous.merge_into(self.encoder, self.head, weight)
        self.previous = None

    def _mark_seen(self, classes: list[int]) -> None:
        # Only classes new to the model are the experience's own (kept out of replay under negatives="seen"):
        # in a domain-incremental stream or an update of known classes, the memory's samples of the same
        # classes are the older conditions, which replay must keep.
        self._fit_classes.update(self.space.mark_seen(classes))

    def add_classes(self, names: Sequence[str], descriptions: dict[str, str] | None = None) -> list[int]:
        """Add classes known by name only, ready to predict at once; returns their ids.

        Their concepts come from the model's own text model and prompt
        templates (recorded in ``concept_source``) and are centred like the
        others; nothing is trained. Images learned later refine them
        (``cvm learn``), and checkpoints and exports keep them.
        """
        from cvm_lightning.concepts import TextModelSpec

        names = check_class_names(names, known=self.class_names, what="new class names")
        source = self.hparams.get("concept_source")
        if not source:
            raise ConceptError("This model does not record how its concepts were made; retrain it with this version.")
        if source["text_model"]["name"] in FIXED_TARGETS:
            raise ConceptError(f"This model's concepts are the fixed {source['text_model']['name']} targets, which "
                               "know no names: classes can be added by name only to a model with a text model.")
        bank = ConceptBank.from_names(
            names,
            text_model=TextModelSpec(**source["text_model"]),
            templates=source["templates"],
            descriptions=descriptions,
        )
        ids = self.add_concepts(names, bank.embeddings)
        self.seen[ids] = True
        return ids

    def add_concepts(self, names: Sequence[str], embeddings: torch.Tensor) -> list[int]:
        """Append new class concepts (unit rows of ``embeddings``), not yet seen; returns their ids."""
        names = check_class_names(names, known=self.class_names, what="new class names")
        if embeddings.shape != (len(names), self.concepts.shape[1]):
            raise ConceptError(
                f"Expected embeddings of shape ({len(names)}, {self.concepts.shape[1]}), got {tuple(embeddings.shape)}."
            )
        ids = self.space.add(embeddings)
        self.prototypes.add_classes(len(ids))
        self._class_names += names
        return ids

    # ------------------------------------------------------------------ forward
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Unit vectors in concept space for images ``x`` (B x C x H x W, in [0, 1] or uint8)."""
        return self.head(self.encoder(x))

    def similarities(self, x: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of each image to every concept (B x n_classes).

        Once :meth:`fit_prototypes` has run, each class's score is its
        centred concept similarity plus its prototype similarity
        (:class:`~cvm_lightning.model.prototypes.ClassPrototypes`).
        """
        features = self.encoder(x)
        z = self.head(features)
        if self.prototypes.active:
            return self.prototypes.scores(features, z, self.concepts)
        return self.space.similarities(z)

    @property
    def keeps_prototypes(self) -> bool:
        """Whether training adds its images to the class prototypes (``prototypes=True``, or once fitted)."""
        return bool(self.hparams.get("prototypes")) or self.prototypes.active

    @torch.no_grad()
    def fit_prototypes(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> None:
        """Add images ``x`` of classes ``y`` to the class prototypes (training-free few-shot learning).

        The concepts stay as the prior; the images add a nearest-class-mean
        vote beside them. A class with no image so far is scored by its
        concept alone, so the first call should cover every class that
        should have a prototype (the replay memory and the new images).
        """
        self.space.check_known(y.unique().tolist())
        features, embeddings = self.encode(x, batch_size)
        self.prototypes.accumulate(features, y.to(self.device))
        self.update_prototypes(extra_embeddings=embeddings)

    def update_prototypes(self, extra_embeddings: torch.Tensor | None = None) -> None:
        """Recompute the prototypes and centres; the embedding centre is over the memory (and ``extra_embeddings``)."""
        reference = [extra_embeddings] if extra_embeddings is not None else []
        if self.replay.classes:
            reference.append(self.encode(self.memory_samples()[0])[1])
        self.prototypes.update(torch.cat(reference) if reference else None)
        self._prototypes_at_step = self.global_step if self._trainer is not None else -1

    def end_experience(self, batches: Iterable | None = None) -> None:
        """After an experience's last batch: weight merge, BatchNorm recalibration and prototypes, where they are on.

        BatchNorm statistics are re-estimated over ``batches`` (default: the
        Trainer's training loader, averaged across processes). Then the pages
        freed during the experience go back to the operating system
        (:func:`cvm_lightning.heap.release_freed_memory`).
        """
        self.merge_previous()
        if self.hparams["recalibrate_bn"] and batches is not None:
            recalibrate_on_batches(self, batches, self.device)
        elif self.hparams["recalibrate_bn"]:
            self.recalibrate_batchnorm()
        if self.keeps_prototypes:
            self.update_prototypes()
        self.experiences_trained += 1
        self._ended_at_step = self.global_step
        # Without it, a process that updates again and again keeps each update's freed pages and grows.
        release_freed_memory()

    @torch.no_grad()
    def encode(self, x: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone features and unit embeddings of images ``x``, in eval mode and in batches (float32)."""
        was_training = self.training
        self.eval()
        features, embeddings = [], []
        for start in range(0, len(x), batch_size):
            f = self.encoder(x[start : start + batch_size].to(self.device))
            features.append(f.float())
            embeddings.append(self.head(f).float())
        self.train(was_training)
        return torch.cat(features), torch.cat(embeddings)

    def memory_samples(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every sample in the replay memory and its class id."""
        classes = self.replay.classes
        if not classes:
            raise DataError("The replay memory is empty (--buffer 0?): there are no stored images to learn from.")
        x = torch.cat([self.replay.samples_of(c) for c in classes])
        y = torch.cat([torch.full((len(self.replay.samples_of(c)),), c, dtype=torch.long) for c in classes])
        return x, y

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """Logits of unit embeddings ``z``: similarity / temperature, unseen classes at -inf."""
        return self.space.logits(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits indexed by class id; the argmax is the nearest seen concept.

        Avalanche's metrics and any classifier tooling read these outputs as
        usual.
        """
        return self.logits(self.embed(x))

    def observe(self, y: torch.Tensor) -> None:
        """Mark the labels of a training batch as seen classes of this experience."""
        if y.is_floating_point() or y.dtype == torch.bool or y.ndim != 1:
            raise DataError(
                f"Labels must be a 1-D tensor of integer class ids (torch.long), got {y.dtype} of shape "
                f"{tuple(y.shape)}. Convert them with y.long(); ids follow the concept bank's order."
            )
        self._mark_seen(y.unique().tolist())

    def mix_replay(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Append replayed samples of earlier classes to a batch.

        Returns the mixed ``(x, y)`` and the stored embeddings of the replayed
        part (``None`` when nothing was replayed).
        """
        # The asymmetric loss needs current classes in the replayed part too: it is where they meet old ones.
        exclude = () if self.hparams["negatives"] == "asymmetric" else self._fit_classes
        count = self.hparams["replay_batch_size"] or len(x)
        if self.hparams.get("replay_shares"):  # saved before the setting existed: off
            replayable = sum(c not in exclude for c in self.replay.classes)
            count = max(1, round(len(x) * replayable / len(y.unique())))
        replayed = self.replay.sample(count, exclude=exclude)
        if replayed is None:
            return x, y, None
        return torch.cat([x, replayed[0].to(x)]), torch.cat([y, replayed[1].to(y)]), replayed[2].to(x)

    def training_loss(self, x: torch.Tensor, y: torch.Tensor, offer: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss of one training batch with replay mixed in; returns ``(loss, embeddings)``.

        ``offer`` stores the batch (with its embeddings) in the replay memory.
        The embeddings cover the batch first, then the replayed samples.
        """
        self.observe(y)
        if self.image_size is None:
            self.image_size = int(x.shape[-1])
        n = len(x)
        mixed_x, mixed_y, stored = self.mix_replay(x, y)
        features = self.encoder(mixed_x)
        z = self.head(features)
        if offer and self.keeps_prototypes:
            self.prototypes.accumulate(features[:n], y)
        with torch.autocast(z.device.type, enabled=False):  # the loss compares unit vectors: float32 under bf16 too
            loss = self.batch_loss(z, mixed_y, n)
        if stored is not None and self.hparams["distill"] > 0:
            loss = loss + self.hparams["distill"] * (1.0 - (z[n:] * stored).sum(dim=-1)).mean()
        if self.previous is not None and self.hparams.get("lwf", 0) > 0:
            loss = loss + self.hparams["lwf"] * self.distillation_loss(mixed_x, z)
        if offer:
            by_experience = self.hparams.get("replay_balance") == "class-experience"
            group = (self.current_experience or 0) if by_experience else 0
            self.replay.add(x, y, z[:n].detach(), group=group)
        return loss, z

    def distillation_loss(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``lwf``'s term: how far embeddings ``z`` of images ``x`` answer from the previous model, on its classes."""
        known = self.previous.seen.nonzero().flatten()
        return similarity_distillation(z.float(), self.previous.embed(x), self.concepts[known], self.temperature)

    def batch_loss(self, z: torch.Tensor, y: torch.Tensor, n_new: int) -> torch.Tensor:
        """The alignment loss of a batch whose first ``n_new`` samples are new and the rest replayed.

        With ``negatives="asymmetric"`` (ER-ACE, Caccia et al. 2022) the new
        samples compete only among the classes of their own batch, so they never
        push old concepts' samples away; the replayed samples (current classes
        included) compete among all seen classes. The two parts weigh equally.
        """
        if self.hparams["negatives"] != "asymmetric" or len(y) == n_new:
            return self.alignment_loss(z, y)
        among = torch.zeros_like(self.seen)
        among[y[:n_new].unique()] = True
        return (self.alignment_loss(z[:n_new], y[:n_new], among) + self.alignment_loss(z[n_new:], y[n_new:])) / 2

    def alignment_loss(self, z: torch.Tensor, y: torch.Tensor, competing: torch.Tensor | None = None) -> torch.Tensor:
        """The training loss of unit embeddings ``z`` with class ids ``y`` against the ``competing`` concepts.

        ``competing`` (a mask over classes) defaults to the seen classes, or all with ``negatives="all"``.
        """
        if competing is None:
            competing = torch.ones_like(self.seen) if self.hparams["negatives"] == "all" else self.seen
        ids = competing.nonzero().flatten()
        local = torch.full_like(self.seen, -1, dtype=torch.long)
        local[ids] = torch.arange(len(ids), device=ids.device)
        concepts, target = self.concepts[ids], local[y]
        loss = self.loss_fn(z, concepts, target, self.temperature, self.hparams["margin"])
        if self.hparams["semantic"] > 0:
            loss = loss + self.hparams["semantic"] * semantic_distance(z, concepts, target, self.temperature)
        if not torch.isfinite(loss):
            raise TrainingDivergedError(
                f"Loss is {loss.item()} at experience {self.current_experience}, step {self.global_step}. "
                "Lower the learning rate (--lr) or raise the temperature; saved checkpoints were left untouched."
            )
        return loss

    # ----------------------------------------------------------------- training
    def on_fit_start(self) -> None:
        if self.hparams.get("ema", 0) > 0 and self.trainer.accumulate_grad_batches > 1:
            # The batches between two steps would run their forward and backward on the average.
            raise ConfigError("ema needs one optimiser step per batch: drop accumulate_grad_batches or ema.")
        if self.encoder.frozen:
            # Lightning warns about modules left in eval mode; a frozen backbone is, by design.
            warnings.filterwarnings(
                "ignore", message=r"Found \d+ module\(s\) in eval mode", category=PossibleUserWarning
            )

    def on_train_start(self) -> None:
        # Without start_experience, each fit is one experience of the classes it sees.
        if not self._experience_started:
            self._fit_classes = set()
            if self.experiences_trained:
                self._keep_previous()
        self._experience_started = False
        self._first_epoch = self.current_epoch

    def on_train_end(self) -> None:
        # A stream trained in one fit ended each experience already; an interrupted fit has not ended its own.
        if self._ended_at_step != self.global_step and not self.trainer.interrupted:
            self.merge_previous()
            self.experiences_trained += 1
        if self.hparams["recalibrate_bn"] and self._recalibrated_at_step != self.global_step:
            self.recalibrate_batchnorm()
        if self.keeps_prototypes and self._prototypes_at_step != self.global_step:
            self.update_prototypes()

    def recalibrate_batchnorm(self) -> None:
        """Re-estimate BatchNorm statistics over the current training data (and replay), averaged across processes."""
        recalibrate_on_batches(self, self.trainer.train_dataloader, self.device)
        self._average_batchnorm_across_processes()
        self._recalibrated_at_step = self.global_step

    def _average_batchnorm_across_processes(self) -> None:
        # Under DDP each process recalibrated on its own shard; all must predict alike.
        if self.trainer.world_size < 2:
            return
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
                for name in ("running_mean", "running_var"):
                    buffer = getattr(module, name)
                    buffer.copy_(self.trainer.strategy.reduce(buffer.clone(), reduce_op="mean"))

    def hold_training_weights(self) -> None:
        """With ``ema``: take the raw weights for a training step (the average is kept aside)."""
        if self.hparams.get("ema", 0) > 0:
            if self.weight_average is None:
                self.weight_average = WeightAverage(self.encoder, self.head, decay=self.hparams["ema"])
            self.weight_average.hold_training()

    def hold_averaged_weights(self, stepped: bool = True) -> None:
        """With ``ema``: after a step, fold the raw weights into the average (if ``stepped``) and take the average."""
        if self.weight_average is not None:
            self.weight_average.hold_average(update=stepped)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        # The closure runs training_step and backward: both, and the step, see the raw weights; outside it, every
        # hook, callback and checkpoint sees the average.
        self.hold_training_weights()
        stepped = False
        try:
            super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
            stepped = True
        finally:
            self.hold_averaged_weights(stepped)

    def training_step(self, batch: Sequence[Any], batch_idx: int) -> torch.Tensor:
        x, y = split_batch(batch)
        loss, _ = self.training_loss(x, y, offer=self.current_epoch == self._first_epoch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _eval_step(self, batch: Sequence[Any], stage: str) -> dict[str, torch.Tensor]:
        x, y = split_batch(batch)
        sims = self.similarities(x)
        preds = self.space.mask_unseen(sims).argmax(dim=1)
        # One value per test experience: logged, but the progress bar shows the stream's average (cl/avg_acc).
        self.log(f"{stage}/acc", (preds == y).float().mean())
        return {"preds": preds, "target": y, "similarities": sims[:, self.seen]}

    def validation_step(self, batch: Sequence[Any], batch_idx: int, dataloader_idx: int = 0) -> dict:
        return self._eval_step(batch, "val")

    def test_step(self, batch: Sequence[Any], batch_idx: int, dataloader_idx: int = 0) -> dict:
        return self._eval_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Nearest seen concept per image: ``class_ids``, ``class_names``, ``similarity``.

        ``similarities`` holds the similarity to every learned class (B x K).
        """
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        sims = self.similarities(x)
        best = self.space.mask_unseen(sims).argmax(dim=1)
        names = self.class_names
        return {
            "class_ids": best,
            "class_names": [names[i] for i in best.tolist()],
            "similarity": sims.gather(1, best[:, None]).squeeze(1),
            "similarities": sims[:, self.seen],
        }

    def build_optimizer(self) -> torch.optim.Optimizer:
        """A fresh optimiser over all trainable parameters."""
        trainable = [p for p in self.parameters() if p.requires_grad]
        h = self.hparams
        return create_optimizer(h["optimizer"], trainable, lr=h["lr"], weight_decay=h["weight_decay"],
                                momentum=h["momentum"])

    def configure_optimizers(self) -> Any:
        optimizer = self.build_optimizer()
        if self.hparams["scheduler"] == "none":
            return optimizer
        self.trainer.estimated_stepping_batches  # noqa: B018 - loads the train dataloader
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.build_scheduler(optimizer), "interval": "step"},
        }

    def build_scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        """The cosine schedule of one experience, from the first step of the current epoch.

        One experience is the rest of this ``fit``, or, when a data module
        gives ``epochs_per_experience``, that many epochs.
        """
        datamodule = getattr(self.trainer, "datamodule", None)
        epochs = getattr(datamodule, "epochs_per_experience", None) or (self.trainer.max_epochs - self.current_epoch)
        steps = max(1, epochs * int(self.trainer.num_training_batches))
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)

    # -------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["cvm_replay"] = self.replay.state_dict()
        if self.previous is not None:  # saved inside an experience: the rest of it needs the model before it
            checkpoint["cvm_previous"] = self.previous.state_dict()
        if self.weight_average is not None:  # state_dict holds the average; training goes on from the raw weights
            checkpoint["cvm_weight_average"] = self.weight_average.state_dict()
        checkpoint["cvm_state"] = {"current_experience": self.current_experience, "class_names": self.class_names,
                                   "image_size": self.image_size, "experiences_trained": self.experiences_trained}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict", {})
        saved = checkpoint.get("cvm_state", {})
        # Older checkpoints kept the grown class list and the image size in their hyperparameters.
        hparams = checkpoint.get("hyper_parameters", {})
        names = saved.get("class_names", hparams.get("class_names", self.class_names))
        added = names[len(self.class_names):]
        if names[:len(self.class_names)] == self.class_names and added:  # classes added after construction
            self.add_concepts(added, torch.zeros(len(added), self.concepts.shape[1]))  # the state dict fills them
        self.image_size = saved.get("image_size", hparams.get("image_size", self.image_size))
        _rename_flat_keys(state)
        if "space.concepts" in state:
            state.setdefault(
                "space.concept_center", torch.zeros(state["space.concepts"].shape[1])
            )  # saved before centring existed
        for name, buffer in self.prototypes.state_dict().items():
            state.setdefault("prototypes." + name, buffer)  # saved before prototypes existed
        if "space.concepts" in state and state["space.concepts"].shape != self.concepts.shape:
            raise ConceptError(
                f"The checkpoint has {tuple(state['space.concepts'].shape)} concepts but this model has "
                f"{tuple(self.concepts.shape)}: it was trained with another concept bank. Load it with "
                "CVMModule.load_from_checkpoint(path) so the model takes the checkpoint's classes."
            )
        if "cvm_replay" in checkpoint:
            self.replay.load_state_dict(checkpoint["cvm_replay"])
        if "cvm_previous" in checkpoint:
            self.previous = PreviousModel.from_state_dict(checkpoint["cvm_previous"], self.encoder, self.head)
        if "cvm_weight_average" in checkpoint:
            self.weight_average = WeightAverage(self.encoder, self.head, decay=self.hparams["ema"])
            self.weight_average.load_state_dict(checkpoint["cvm_weight_average"])
        self.current_experience = saved.get("current_experience")
        # Saved before the count existed: a checkpoint of a model that trained has ended an experience.
        self.experiences_trained = saved.get("experiences_trained", int(checkpoint.get("global_step", 0) > 0))


def _rename_flat_keys(state: dict[str, Any]) -> None:
    """Checkpoints written before the encoder and concept space became submodules: move their keys."""
    for key in list(state):
        if key in ("concepts", "concept_center", "seen", "log_temperature"):
            state["space." + key] = state.pop(key)
        elif key.startswith("backbone."):
            state["encoder." + key] = state.pop(key)
