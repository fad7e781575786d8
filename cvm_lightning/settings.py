"""One validation layer for every setting, shared by the Python API and the ``cvm`` command line.

Each named setting has one rule here (a number range or a vocabulary of
names). ``RunConfig``, ``CVMModule``, ``ConceptBank``, the deploy functions
and every ``cvm`` sub-command pass their values through
:func:`check_settings` before anything is built or written, so a bad value
gives the same one-line :class:`~cvm_lightning.errors.ConfigError` wherever it
comes from. The module imports nothing heavy: the command line validates
before torch is loaded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cvm_lightning.errors import ConceptError, ConfigError, did_you_mean

# The vocabularies of the named settings. The registries that implement them
# (losses, heads, augmentations, optimisers, ...) are keyed by these names;
# tests/test_settings.py checks that each registry matches its vocabulary.
CHOICES: dict[str, tuple[str, ...]] = {
    "augment": ("none", "crop", "crop-flip"),
    "head": ("linear", "mlp"),
    "loss": ("ce", "cosine", "triplet", "triplet-hard"),
    "negatives": ("seen", "all", "asymmetric"),
    "optimizer": ("adamw", "adam", "sgd"),
    "normalize": ("centered", "cifar10", "cifar10-avalanche", "none"),  # the keys of PIXEL_STATISTICS
    "scr_views": ("crop-flip", "crop-flip-colour"),  # the keys of training.baselines.SCR_VIEWS
    "scheduler": ("none", "cosine"),
    "format": ("torchscript", "onnx"),
    "precision": ("32-true", "bf16-mixed"),  # Lightning's names; hardware.py says where bf16 pays
    "accelerator": ("cpu", "gpu"),  # Lightning's names; hardware.TORCH_DEVICES maps them to torch's
    "quantize": ("none", "int8"),
    "replay_balance": ("class", "class-experience"),
    "learn_method": (
        "finetune",
        "prototypes",
    ),  # cvm learn: train on the new images, or class prototypes beside the concepts
}

# Defaults that several entry points share (a library function or Metric and a `cvm` flag), declared once.
DEFAULT_HEAD = "linear"  # the alignment head: CVMModule's, and ConceptAlignmentHead's
DEFAULT_Z_THRESHOLD = 3.0  # concept drift: a batch this many standard errors from the reference
DEFAULT_BATCH_SIZE = 64  # images a batch of `cvm predict` and `cvm learn`
DEFAULT_LEARN_EPOCHS = 5  # `cvm learn --method finetune`: a small budget, since it runs on site
DEFAULT_LEARN_SEED = 0  # `cvm learn`: the shuffling and memory sampling of an update, so a rerun gives the same model

# The pixel statistics a model trained here normalises its [0, 1] inputs with, ``(mean, std)`` per channel (one
# number serves every channel). A pretrained backbone keeps its own. "cifar10" is CIFAR-10's channel mean and
# standard deviation (torchvision's and Mammoth's transforms); "cifar10-avalanche" keeps the std of Avalanche's
# CIFAR transforms and of its published baselines (0.2023, 0.1994, 0.2010: a smaller, often copied value).
PIXEL_STATISTICS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "centered": ((0.5,), (0.5,)),  # [0, 1] to [-1, 1]
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2615)),
    "cifar10-avalanche": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "none": ((0.0,), (1.0,)),  # the [0, 1] pixels as they are (Avalanche's SCR reference script)
}

# The file suffixes of each export format (``cvm export --out``, ``cvm predict --model``).
MODEL_SUFFIXES: dict[str, tuple[str, ...]] = {"torchscript": (".pt", ".ts", ".torchscript", ".jit"), "onnx": (".onnx",)}
PREDICTION_SUFFIXES: tuple[str, ...] = (".csv", ".json")
# Where an exported file keeps its class names and preprocessing (a TorchScript extra file, an ONNX metadata key).
META_FILE = "cvm_meta.json"



@dataclass(frozen=True)
class Range:
    """A number setting: its type, lower bound, and whether ``None`` means "unset"."""

    kind: type
    low: float
    strict: bool = False  # low itself is not allowed
    optional: bool = False
    example: str = ""
    below: float = math.inf  # an upper bound the value must stay under

    def describe(self) -> str:
        word = "an integer" if self.kind is int else "a number"
        upper = f" and < {self.below:g}" if math.isfinite(self.below) else ""
        return f"{word} {'>' if self.strict else '>='} {self.low:g}{upper}"

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind is int and not float(value).is_integer():
            return False
        if not math.isfinite(value):
            return False
        return (value > self.low if self.strict else value >= self.low) and value < self.below


RANGES: dict[str, Range] = {
    "epochs": Range(int, 1),
    "epochs_per_experience": Range(int, 1),
    "eval_batch_size": Range(int, 1),
    "eval_every": Range(int, 1),
    "mini_experience_size": Range(int, 1, optional=True, example="for example 10"),
    "anytime_every": Range(int, 1, optional=True, example="for example 1000"),
    "num_workers": Range(int, 0),
    "batch_size": Range(int, 1),
    "buffer_size": Range(int, 0),
    "replay_batch_size": Range(int, 1, optional=True),
    "lr": Range(float, 0, strict=True, example="for example 1e-3"),
    "learn_lr": Range(float, 0, strict=True, optional=True, example="for example 3e-4"),
    "weight_decay": Range(float, 0),
    "momentum": Range(float, 0, below=1, example="for example 0.9"),
    "temperature": Range(float, 0, strict=True, example="for example 0.05"),
    "margin": Range(float, 0),
    "distill": Range(float, 0),
    "lwf": Range(float, 0),
    "average_previous": Range(float, 0, below=1, example="for example 0.5"),
    "ema": Range(float, 0, below=1, example="for example 0.99"),
    "semantic": Range(float, 0),
    "seed": Range(int, 0),
    "input_size": Range(int, 1, optional=True, example="for example 32"),
    "image_size": Range(int, 1, optional=True, example="for example 32"),
    "head_hidden_dim": Range(int, 1),
    "in_chans": Range(int, 1),
    "n_experiences": Range(int, 1, optional=True),
    "train_per_class": Range(int, 1, optional=True),
    "test_per_class": Range(int, 1, optional=True),
    "devices": Range(int, 1),
    "threads": Range(int, 1, optional=True),
    "shots": Range(int, 1, optional=True),
    "z_threshold": Range(float, 0, strict=True, example="for example 3"),
    # cvm serve (LitServe takes ports from 1024 on)
    "port": Range(int, 1024, below=65536, example="for example 8000"),
    "workers": Range(int, 1),
    "max_batch_size": Range(int, 1),
    "batch_timeout": Range(float, 0, example="seconds, for example 0.005"),
    "top_k": Range(int, 1),
    "max_request_bytes": Range(int, 1),
    "max_image_pixels": Range(int, 1),
    "drift_window": Range(int, 2),
    "watch_interval": Range(float, 0, strict=True, example="seconds, for example 1"),
}

# The strategies that learn a task-free stream: nothing of theirs waits for an experience to end.
TASK_FREE_STRATEGIES: frozenset[str] = frozenset({"cvm", "naive", "replay", "der", "er_ace", "er_aml", "scr"})

# The strategies that keep a replay memory, so need ``buffer_size`` >= 1 (CVM's memory is optional: 0 turns it off).
MEMORY_STRATEGIES: frozenset[str] = frozenset({"replay", "der", "gdumb", "er_ace", "er_aml", "icarl", "scr"})

# Where a Python argument and its command-line flag are named differently.
FLAGS = {"buffer_size": "--buffer", "epochs_per_experience": "--epochs", "learn_method": "--method",
         "learn_lr": "--lr"}


def flag(name: str) -> str:
    """The command-line spelling of setting ``name``."""
    return FLAGS.get(name, "--" + name.replace("_", "-"))


def check_choice(name: str, value: Any, choices: Iterable[str]) -> None:
    """``value`` must be one of ``choices`` (suggests the close ones)."""
    choices = list(choices)
    if value not in choices:
        hint = did_you_mean(value, choices) if isinstance(value, str) else ""
        raise ConfigError(f"Unknown {flag(name)} {value!r}.{hint} Choose one of: {', '.join(choices)}.")


def check_memory(strategies: Iterable[str], buffer_size: int) -> None:
    """Every strategy in ``strategies`` that keeps a memory (:data:`MEMORY_STRATEGIES`) needs ``buffer_size >= 1``."""
    needy = [name for name in strategies if name in MEMORY_STRATEGIES]
    if needy and buffer_size < 1:
        raise ConfigError(f"Strategies {', '.join(needy)} need a memory: pass {flag('buffer_size')} N with N >= 1, "
                          "or leave them out.")


# Settings that only make sense together: (setting, its value that needs..., other setting, the values it needs, fix).
COMBINATIONS: tuple[tuple[str, Callable[[Any], bool], str, Callable[[Any], bool], str], ...] = (
    ("pretrained_file", lambda v: v is not None, "pretrained", bool,
     "--pretrained-file is loaded by --pretrained: pass both."),
    ("freeze_backbone", bool, "augment", lambda v: v in (None, "none"),
     "A frozen backbone computes each image's features once, so augmentation would be ignored: "
     "use --augment none with --freeze-backbone."),
    ("quantize", lambda v: v not in (None, "none"), "format", lambda v: v == "onnx",
     "--quantize int8 writes an ONNX Runtime model: pass --format onnx with it."),
    ("anytime_every", lambda v: v is not None, "mini_experience_size", lambda v: v is not None,
     "--anytime-every scores task-free streams: pass --mini-experience-size N too."),
    ("mini_experience_size", lambda v: v is not None, "epochs_per_experience", lambda v: v == 1,
     "A task-free stream is a single pass: use --epochs 1 with --mini-experience-size."),
    ("mini_experience_size", lambda v: v is not None, "recalibrate_bn", lambda v: not v,
     "A task-free stream has no experience end to re-estimate BatchNorm statistics at: pass --no-recalibrate-bn "
     "with --mini-experience-size."),
    ("mini_experience_size", lambda v: v is not None, "growing_head", lambda v: not v,
     "A growing head adds a class's unit when told its experience has begun, which a task-free stream never tells: "
     "drop --growing-head with --mini-experience-size."),
)


def check_settings(values: Mapping[str, Any]) -> None:
    """Check every setting in ``values`` that has a rule; unknown names are left to their owner."""
    for name, value in values.items():
        if name in RANGES and not RANGES[name].accepts(value):
            rule = RANGES[name]
            example = f" ({rule.example})" if rule.example else ""
            raise ConfigError(f"{flag(name)} must be {rule.describe()}{example}, got {value!r}.")
        if name in CHOICES and value is not None:  # None: the default of whoever reads it
            check_choice(name, value, CHOICES[name])
    for name, when, other, needs, fix in COMBINATIONS:
        if name in values and other in values and when(values[name]) and not needs(values[other]):
            raise ConfigError(fix)
    size, batch = values.get("mini_experience_size"), values.get("batch_size")
    if size is not None and batch is not None and batch > size:
        raise ConfigError(f"--batch-size {batch} is more than a mini-experience of {size} samples: lower --batch-size "
                          "or raise --mini-experience-size.")


def check_task_free(strategies: Iterable[str], mini_experience_size: int | None) -> None:
    """On a task-free stream, every strategy must be one that learns without experience boundaries."""
    bound = [name for name in strategies if name not in TASK_FREE_STRATEGIES]
    if mini_experience_size is not None and bound:
        raise ConfigError(f"Strategies {', '.join(bound)} need experience boundaries, which --mini-experience-size "
                          f"hides; task-free streams take {', '.join(sorted(TASK_FREE_STRATEGIES))}.")


def check_class_names(names: Any, *, known: Sequence[str] = (), what: str = "class names") -> list[str]:
    """A list of usable concept names: non-empty strings, no stray spaces, no duplicates.

    ``known`` are names a model has already; a new name may not repeat one.
    Returns the names as a list.
    """
    if isinstance(names, (str, bytes)) or not isinstance(names, Iterable):
        raise ConceptError(f"Pass the {what} as a list of strings, e.g. ['cat', 'dog'], got {names!r}.")
    names = list(names)
    if not names:
        raise ConceptError(f"No {what} given: pass at least one name.")
    for name in names:
        if not isinstance(name, str):
            raise ConceptError(f"The {what} must be strings, got {name!r} ({type(name).__name__}).")
        if not name.strip():
            raise ConceptError(f"The {what} include an empty name: every class needs concept text.")
        if name != name.strip() or "\n" in name or "\t" in name:
            raise ConceptError(f"Class name {name!r} has leading/trailing spaces or a tab/newline; write it as "
                               f"{name.strip()!r}.")
    seen: set[str] = set()
    duplicates = sorted({name for name in names if name in seen or seen.add(name)})
    if duplicates:
        raise ConceptError(
            f"Duplicate class names {duplicates}: each class needs its own concept text. "
            "Rename them (for example add the super-class) or give them descriptions."
        )
    again = [name for name in names if name in set(known)]
    if again:
        raise ConceptError(f"{again} are already classes of this model; pass only new names.")
    return names
