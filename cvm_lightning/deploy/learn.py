"""Adding new classes on site: one more experience for a trained model."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from cvm_lightning.atomic import atomic_path
from cvm_lightning.data.datamodule import experience_loader
from cvm_lightning.deploy.export import trained_image_size
from cvm_lightning.deploy.predict import load_checkpoint
from cvm_lightning.errors import ConceptError, DataError
from cvm_lightning.model import CVMModule
from cvm_lightning.paths import check_output_file
from cvm_lightning.settings import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_LEARN_EPOCHS,
    DEFAULT_LEARN_SEED,
    check_class_names,
    check_settings,
)
from cvm_lightning.streams.images import list_class_folders, load_update_folder, read_class_names
from cvm_lightning.training import RunState, fit_to_end


@dataclass
class LearnReport:
    """What ``cvm learn`` did: where the new model is, which classes it learned, and accuracy before and after.

    ``scores`` maps each scored image set (the update's own test images,
    ``--eval-data``, ``--eval-new``) to its accuracy ``(before, after)``;
    before the update, images of a class it adds count as wrong.
    """

    checkpoint: Path
    new_classes: list[str]
    known_classes: list[str]
    scores: dict[str, tuple[float, float]]


def next_free_path(checkpoint: Path) -> Path:
    """``NAME-learned1.ckpt``, ``NAME-learned2.ckpt``, ... beside ``checkpoint``; never an existing file."""
    stem = checkpoint.stem.split("-learned")[0]
    for n in range(1, 10_000):
        candidate = checkpoint.with_name(f"{stem}-learned{n}.ckpt")
        if not candidate.exists():
            return candidate
    raise DataError(f"Too many learned checkpoints beside {checkpoint}.")


def _output_path(checkpoint: Path, out: Path | None, overwrite: bool) -> Path:
    """Where the new checkpoint goes (``out``, or the next free name beside ``checkpoint``), checked before any work."""
    out = next_free_path(checkpoint) if out is None else Path(out)
    return check_output_file(out, inputs=[checkpoint], overwrite=overwrite, suffixes=(".ckpt",), what="checkpoint")


@torch.no_grad()
def accuracy(module: CVMModule, dataset, batch_size: int = 256) -> float:
    """The share of ``dataset``'s images that ``module`` names right."""
    module.eval()
    correct = total = 0
    for x, y in DataLoader(dataset, batch_size=batch_size):
        correct += int((module(x).argmax(dim=1) == y).sum())
        total += len(y)
    return correct / max(total, 1)


def first_shots(dataset, shots: int):
    """The first ``shots`` samples of each class of ``dataset`` (fewer where a class has fewer)."""
    taken: dict[int, int] = {}
    keep = []
    for index, target in enumerate(dataset.targets):
        if taken.get(target, 0) < shots:
            taken[target] = taken.get(target, 0) + 1
            keep.append(index)
    return dataset.subset(keep)


def _relabel(dataset, ids: list[int]):
    dataset.targets = [ids[t] for t in dataset.targets]
    return dataset


def _stacked(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """All of a decoded dataset as one image batch and its labels."""
    x, y = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(x), torch.tensor(y, dtype=torch.long)


def _eval_data(root: Path, names: list[str], image_size: int, flag: str):
    """Test images ``root/<class>/*`` of classes among ``names`` (the model's, with this update's), labelled by id."""
    from cvm_lightning.streams.images import ImageFileDataset, scan_split

    folders = list_class_folders(root)
    folder_names, _ = read_class_names(root, folders)
    unknown = [n for n in folder_names if n not in names]
    if unknown:
        raise ConceptError(f"{flag} folders {unknown} are not classes of this model; it knows: {', '.join(names)}.")
    paths, targets = scan_split(root, folders)
    if not paths:
        raise DataError(f"{flag} {root} holds no images: put them in {root}/<class name>/.")
    return ImageFileDataset(paths, [names.index(folder_names[t]) for t in targets], image_size)


def _image_size(module: CVMModule) -> int:
    """The side new images must have: the size the replay memory holds, else the size trained on."""
    for c in module.replay.classes:
        return int(module.replay.samples_of(c).shape[-1])
    return trained_image_size(module)


def learn_images(
    checkpoint: Path,
    data: Path,
    *,
    names_file: Path | None = None,
    eval_data: Path | None = None,
    eval_new: Path | None = None,
    epochs: int = DEFAULT_LEARN_EPOCHS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    shots: int | None = None,
    method: str = "finetune",
    lr: float | None = None,
    without_memory: bool = False,
    out: Path | None = None,
    overwrite: bool = False,
    seed: int = DEFAULT_LEARN_SEED,
) -> LearnReport:
    """Continue ``checkpoint`` on one more experience: the images in ``data``.

    ``data`` holds ``train/<class>/<image>``, optionally with
    ``test/<class>/<image>`` (scored before and after), or the class
    folders ``<class>/<image>`` themselves, all for training.

    Each class folder is a new class or one the model knows already (fresh
    images of it, under new conditions, say). Only the new classes' concepts
    are computed, with the text model and templates the checkpoint records.
    The replay memory in the checkpoint mixes old samples into every batch
    and takes the new ones in, class-balanced within its budget. The result
    is written to ``out`` (default: a new ``NAME-learnedN.ckpt`` beside the
    checkpoint); the old checkpoint is never touched. Every input is checked
    before training starts. With ``shots``, only the first ``shots`` training
    images of each class (in file-name order) are used. ``seed`` fixes the
    shuffling, as a stream of that seed shuffles its next experience; the
    memory's sampling and the augmentation go on from the generators the
    checkpoint saved. The same update gives the same model, and an update on
    the next experience's images of a ``cvm run`` stream, from that run's
    checkpoint with its seed, epochs and batch size, gives the model the run
    trained (for classes the checkpoint names already: adding classes also
    switches the loss, as below).

    ``method`` is how the images are learned: ``finetune`` trains the model
    ``epochs`` epochs with the memory replayed, at learning rate ``lr``
    (default: the checkpoint's own); ``prototypes`` trains nothing
    and gives every class a prototype from its images (the memory's for the
    other classes), scored beside its concept
    (:meth:`~cvm_lightning.model.CVMModule.fit_prototypes`); the new images
    join the memory.

    The update's test images (where ``data`` has them), ``eval_data`` (old conditions) and ``eval_new``
    (new conditions), both ``<class name>/<image>``, are scored before and
    after. A checkpoint without a memory is refused unless ``without_memory``:
    an update without replay forgets what the model knew.
    """
    check_settings({"epochs": epochs, "batch_size": batch_size, "shots": shots, "learn_method": method,
                    "learn_lr": lr, "seed": seed})
    out = _output_path(Path(checkpoint), out, overwrite)
    module = load_checkpoint(checkpoint)
    if not len(module.replay) and not without_memory:
        raise ConceptError(
            f"{checkpoint} keeps no replay memory (it was trained with --buffer 0), so an update would forget what "
            "it learned before. Train with --buffer N next time, or pass --without-memory to update it anyway."
        )
    image_size = _image_size(module)
    folders, train, test = load_update_folder(Path(data), image_size=image_size)
    names, descriptions = read_class_names(Path(data), folders, names_file)
    check_class_names(names, what="class names of --data")
    new = [name for name in names if name not in module.class_names]
    known = [name for name in names if name in module.class_names]
    if shots is not None:
        train = first_shots(train, shots)
    after_names = [*module.class_names, *new]
    evaluated = {"this update's test images": test} if test is not None else {}
    for label, root in (("--eval-data", eval_data), ("--eval-new", eval_new)):
        if root is not None:
            evaluated[label] = _eval_data(Path(root), after_names, image_size, label)
    for dataset in (train, *evaluated.values()):
        dataset.decode_all()  # a broken file stops here, before training
    if without_memory and not len(module.replay):
        warnings.warn("Updating without a replay memory: the model will forget much of what it knew.", stacklevel=2)
    ids = [after_names.index(name) for name in names]
    for dataset in (train, test) if test is not None else (train,):
        _relabel(dataset, ids)
    pl.seed_everything(seed, verbose=False)
    # Before the update the model has no output for the classes it adds, so their images count as wrong.
    before = {label: accuracy(module, dataset) for label, dataset in evaluated.items()}
    if method == "prototypes":
        # The other classes' prototypes come from the memory; a model trained with them has them already.
        memory = None if module.prototypes.active else module.memory_samples()  # an empty memory stops here
        if new:
            module.add_classes(new, descriptions)
        new_x, new_y = _stacked(train)
        if memory is None:
            module.fit_prototypes(new_x, new_y)
        else:
            module.fit_prototypes(torch.cat([memory[0], new_x]), torch.cat([memory[1], new_y]))
        # Kept for the next learning on site, with the embeddings that the drift penalty reads.
        module.replay.add(new_x, new_y, module.encode(new_x)[1])
        save_module_checkpoint(module, Path(checkpoint), out)
    else:
        if new:
            # A few epochs on a few images: with the asymmetric loss the new concepts never catch up.
            module.hparams["negatives"] = "seen"
            module.add_classes(new, descriptions)
            # One share of each batch per class: replaying only as many samples as the update brings would give
            # a new class half of every batch, and the model would then name it too often.
            module.hparams["replay_shares"] = True
        if lr is not None:  # recorded with the checkpoint: what its last experience trained at
            module.hparams["lr"] = lr
        experience = (module.current_experience if module.current_experience is not None else 0) + 1
        module.start_experience(sorted(ids), experience=experience)
        module.train()  # scoring put it in eval mode, which Lightning keeps: it would train on frozen statistics
        # The generators (the augmentation's draws) go on from where the checkpoint saved them, as a stream goes
        # on from one experience to the next; the new checkpoint saves them for the next update.
        trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_model_summary=False,
                             enable_progress_bar=False, accelerator="cpu",
                             callbacks=[RunState.from_checkpoint(checkpoint)])
        # The update's test images, where there are some, are the validation set: scored after each epoch.
        # Shuffled as the stream shuffles its experience `experience` in a run of seed `seed`: an update of the
        # stream's images gives the stream's model.
        loader = experience_loader(train, batch_size=batch_size, train=True, seed=seed, experience=experience)
        fit_to_end(trainer, module, loader, DataLoader(test, batch_size=256) if test is not None else None)
        with atomic_path(out, suffix=".ckpt") as tmp:
            trainer.save_checkpoint(tmp, weights_only=False)  # optimiser state kept: learning can go on from it
    scores = {label: (before[label], accuracy(module, dataset)) for label, dataset in evaluated.items()}
    return LearnReport(out, new, known, scores)


def save_module_checkpoint(module: CVMModule, source: Path, out: Path) -> Path:
    """Write ``module`` as a copy of checkpoint ``source``, its weights, concepts and names replaced (atomically)."""
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    checkpoint["state_dict"] = module.state_dict()
    checkpoint["hyper_parameters"] = dict(module.hparams)
    module.on_save_checkpoint(checkpoint)
    with atomic_path(out, suffix=".ckpt") as tmp:
        torch.save(checkpoint, tmp)
    return out


def learn_names(checkpoint: Path, names: list[str], *, out: Path | None = None, overwrite: bool = False) -> Path:
    """Add classes known by name only to ``checkpoint`` (no images, no training); returns the new checkpoint.

    The new concepts come from the checkpoint's text model and templates,
    and the classes are predicted at once. The old checkpoint is never touched.
    """
    out = _output_path(Path(checkpoint), out, overwrite)
    module = load_checkpoint(checkpoint)
    module.add_classes(names)
    return save_module_checkpoint(module, Path(checkpoint), out)
