"""The registry of the strategies ``cvm run`` compares: CVM beside Avalanche's, one entry each.

An entry says how the strategy runs (``"lightning"``: CVM through Lightning,
reading every ``CVMModule`` setting;
``"avalanche"``: an Avalanche strategy in Avalanche's loop), whether it needs
a memory (the settings layer's :data:`~cvm_lightning.settings.MEMORY_STRATEGIES`),
which ``RunConfig`` settings decide its results beyond the ones
every strategy shares, and its fixed hyperparameters. The command line,
``RunConfig``'s checks and the sweep's cache keys all read it. It imports
nothing heavy, so flags are checked before torch loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from cvm_lightning.settings import MEMORY_STRATEGIES


@dataclass(frozen=True)
class StrategyEntry:
    """One strategy of ``cvm run``."""

    name: str
    help: str
    runs_on: str = "avalanche"
    whole_stream: bool = False  # trained once on every experience at once (i.i.d.), then evaluated once
    reads: tuple[str, ...] = ()
    hyperparameters: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hyperparameters", MappingProxyType(dict(self.hyperparameters)))

    @property
    def needs_memory(self) -> bool:
        """Whether it keeps a replay memory, so needs ``--buffer`` >= 1 (the settings layer's rule)."""
        return self.name in MEMORY_STRATEGIES


STRATEGIES: dict[str, StrategyEntry] = {}


def register_strategy(entry: StrategyEntry) -> StrategyEntry:
    """Make ``entry`` available to ``cvm run --strategies``."""
    STRATEGIES[entry.name] = entry
    return entry


# Settings every strategy reads: the stream, the backbone and the training budget.
SHARED_SETTINGS: tuple[str, ...] = (
    "benchmark", "backbone", "epochs_per_experience", "batch_size", "drop_last", "eval_batch_size", "buffer_size",
    "optimizer", "lr", "momentum", "weight_decay", "seed", "shuffle_classes", "input_size", "normalize", "augment",
    "recalibrate_bn", "pretrained", "pretrained_file", "freeze_backbone", "data_root", "train_per_class",
    "test_per_class", "n_experiences", "download", "precision", "accelerator", "channels_last",
    "eval_every", "mini_experience_size", "anytime_every",
)
# What the baselines that train one model with SGD, step by step, read beyond the shared settings: an average of
# the weights over steps, CVM's --ema (GDumb retrains afresh each experience; iCaRL, SCR and NCM predict from
# class means).
AVERAGED = ("ema",)
# What the baselines with a learned linear head read beyond the shared settings.
LINEAR_HEAD = ("growing_head", *AVERAGED)

for _entry in (
    StrategyEntry(
        "cvm",
        "Continual Visual Mapping: images mapped onto fixed language concepts, with replay",
        runs_on="lightning",
        # and every CVMModule setting (RunConfig.settings_of)
        reads=("num_workers", "devices", "strategy"),
    ),
    StrategyEntry("naive", "fine-tuning with nothing against forgetting, the lower bound", reads=LINEAR_HEAD),
    StrategyEntry("replay", "experience replay from a class-balanced memory", reads=LINEAR_HEAD),
    StrategyEntry(
        "lwf", "Learning without Forgetting, logit distillation", reads=LINEAR_HEAD,
        hyperparameters={"alpha": 1.0, "temperature": 2.0},
    ),
    StrategyEntry("ewc", "Elastic Weight Consolidation", reads=LINEAR_HEAD, hyperparameters={"ewc_lambda": 100.0}),
    # DER keeps one unit per class from the start: the logits it stores at an experience's end would hold the
    # masked score (-1000) of every class a growing head has not added yet, and its MSE on them swamps training.
    StrategyEntry("der", "DER++: replay of labels and logits", reads=AVERAGED,
                  hyperparameters={"alpha": 0.1, "beta": 0.5}),
    StrategyEntry("gdumb", "GDumb: retrain from a greedy class-balanced memory", reads=("growing_head",)),
    StrategyEntry("er_ace", "ER-ACE: replay with the asymmetric cross-entropy, CVM's loss on a learned linear head",
                  reads=(*LINEAR_HEAD, "replay_batch_size")),
    StrategyEntry(
        "er_aml",
        "ER-AML: replay with a contrastive (metric) loss on new samples against memory positives and "
        "negatives, cross-entropy on replayed ones",
        reads=(*LINEAR_HEAD, "replay_batch_size"),
        hyperparameters={"temp": 0.1, "base_temp": 0.07},
    ),
    StrategyEntry(
        "icarl", "iCaRL: herding exemplars, sigmoid loss with distillation, nearest-exemplar-mean prediction"
    ),
    StrategyEntry(
        "scr",
        "SCR: supervised contrastive replay (two views a sample), nearest-class-mean prediction",
        reads=("replay_batch_size", "scr_views"),
        hyperparameters={"temperature": 0.1},
    ),
    StrategyEntry(
        "cumulative", "retrain on every experience so far, all its data kept: an upper bound, no memory limit",
        reads=LINEAR_HEAD,
    ),
    StrategyEntry(
        "joint",
        "joint training: the whole stream at once, shuffled (i.i.d.), for the same epochs: the offline "
        "upper bound, one row in the accuracy matrix",
        whole_stream=True,
        reads=LINEAR_HEAD,
    ),
    StrategyEntry(
        "ncm",
        "nearest class mean of the backbone's features, nothing trained: the reference for a frozen "
        "pretrained backbone (--pretrained --freeze-backbone)",
    ),
):
    register_strategy(_entry)


def strategies_markdown() -> str:
    """The docs' table of the registry: name, what it is, how it runs, memory, fixed hyperparameters."""
    lines = ["| name | what | runs on | needs `--buffer` | fixed hyperparameters |", "|---|---|---|---|---|"]
    for e in STRATEGIES.values():
        fixed = ", ".join(f"`{k}` {v:g}" for k, v in e.hyperparameters.items())
        lines.append(f"| `{e.name}` | {e.help} | {e.runs_on} | {'yes' if e.needs_memory else ''} | {fixed} |")
    return "\n".join(lines)
