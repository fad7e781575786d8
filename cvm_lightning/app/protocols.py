"""Named protocol presets: every setting a published results table depends on, declared once, with its references.

``cvm run --protocol NAME`` starts from a preset; any flag given beside it
overrides the preset's value, and the run is then reported as a *modified*
protocol with its overrides named. A preset fixes the settings it lists;
every other setting stays at its default. The module imports nothing
heavy, so presets are expanded and checked before torch loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cvm_lightning.app.strategies import STRATEGIES
from cvm_lightning.errors import ConfigError, did_you_mean


@dataclass(frozen=True)
class Protocol:
    """One preset: its settings, the strategies it compares, and the published accuracies it reproduces.

    ``settings`` are :class:`~cvm_lightning.app.run_config.RunConfig` values
    for every strategy; ``per_strategy`` adds values for one strategy alone
    (the network of one published script, say), applied where the run
    keeps the preset's value, and ``hyperparameters`` replace a strategy's
    fixed ones (DER's ``alpha``, say). ``references`` are final average
    accuracies from ``source``; a reproduction passes within ``tolerance``
    below them. ``full_scale_run`` says whether this package has run the
    preset at full scale yet (an accelerator's work, for some).
    """

    name: str
    version: int
    summary: str
    source: str
    settings: Mapping[str, Any]
    strategies: tuple[str, ...]
    references: Mapping[str, float] = field(default_factory=dict)
    tolerance: float = 0.03
    per_strategy: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    hyperparameters: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    full_scale_run: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "settings", MappingProxyType(dict(self.settings)))
        object.__setattr__(self, "references", MappingProxyType(dict(self.references)))
        for name in ("per_strategy", "hyperparameters"):
            nested = {k: MappingProxyType(dict(v)) for k, v in getattr(self, name).items()}
            object.__setattr__(self, name, MappingProxyType(nested))

    @property
    def title(self) -> str:
        return f"{self.name} v{self.version}"


PROTOCOLS: dict[str, Protocol] = {}


def register_protocol(protocol: Protocol) -> Protocol:
    """Make ``protocol`` available to ``cvm run --protocol``."""
    unknown = [name for name in (*protocol.strategies, *protocol.references, *protocol.per_strategy,
                                 *protocol.hyperparameters) if name not in STRATEGIES]
    if unknown:
        raise ValueError(f"Protocol {protocol.name} names unknown strategies {unknown}.")
    if "augment" not in protocol.settings:  # unlisted, it would follow the benchmark's default, not stay fixed
        raise ValueError(f"Protocol {protocol.name} must list its augmentation (settings['augment']).")
    PROTOCOLS[protocol.name] = protocol
    return protocol


def get_protocol(name: str) -> Protocol:
    """The preset ``name`` (see ``cvm protocols``)."""
    if name not in PROTOCOLS:
        raise ConfigError(f"Unknown --protocol {name!r}.{did_you_mean(name, PROTOCOLS)} Choose one of: "
                          f"{', '.join(PROTOCOLS)} (`cvm protocols` lists their settings).")
    return PROTOCOLS[name]


# Where a run's data lives, how it shares the machine and which strategies and seeds it runs: none of
# them changes what a strategy under the protocol computes, so none of them modifies it (another seed is
# another run of the same protocol, as the published tables average several). A memory layout
# (channels_last) is the same arithmetic in another order, as a thread count is; a GPU is other hardware, as
# another CPU is (the published runs trained on GPUs).
NOT_PROTOCOL_SETTINGS = ("protocol", "strategies", "seed", "seeds", "data_root", "download", "progress", "threads",
                         "channels_last", "accelerator",
                         "anytime_every")  # scored in eval mode, apart from training's random numbers


# What Avalanche's reference scripts for split-CIFAR-10 share: SlimResNet18 on the 10 classes in label order,
# 5 experiences of 2, batches of 10 new and 10 replayed samples from a memory of 1,000, plain SGD at 0.1,
# the CIFAR normalisation of Avalanche's transforms, and no BatchNorm recalibration.
_CLB_SPLIT_CIFAR10 = {
    "benchmark": "split-cifar10",
    "n_experiences": 5,
    "shuffle_classes": False,
    "test_per_class": None,
    "backbone": "reduced_resnet18",
    "input_size": 32,
    "normalize": "cifar10-avalanche",
    "epochs_per_experience": 1,
    "batch_size": 10,
    "drop_last": True,
    "eval_batch_size": 64,
    "optimizer": "sgd",
    "lr": 0.1,
    "momentum": 0.0,
    "weight_decay": 0.0,
    "buffer_size": 1000,
    "replay_batch_size": 10,
    "recalibrate_bn": False,
    "precision": "32-true",
}
# What the task-free scripts add: one pass in mini-experiences of 10 with the boundaries hidden, a fixed head.
_CLB_ONLINE = {**_CLB_SPLIT_CIFAR10, "mini_experience_size": 10, "growing_head": False, "anytime_every": 2000}
_JPEG_NOTE = ("The published scripts load CIFAR-10's PNG release; a JPEG re-encoding (as many ImageFolder copies "
              "are) can move accuracies slightly.")

register_protocol(Protocol(
    name="clb-split-cifar10",
    version=1,
    summary="Avalanche's reference split-CIFAR-10: class-incremental, 5 experiences of 2 classes in label order, "
            "the full data, one epoch at batch 10, plain SGD at 0.1, a growing head, no augmentation",
    source="Avalanche continual-learning-baselines: experiments/split_cifar10/er_ace.py and er_aml.py, "
           "reference accuracies in tests/target_results.csv (a run passes at reference - 0.03)",
    settings={**_CLB_SPLIT_CIFAR10, "train_per_class": None, "augment": "none", "growing_head": True},
    strategies=("er_ace", "er_aml", "cvm"),
    references={"er_ace": 0.45, "er_aml": 0.47},
    # The ER-AML script trains a fixed 10-unit head (SingleHeadReducedResNet18); ER-ACE grows one.
    per_strategy={"er_aml": {"growing_head": False}},
    notes=(
        _JPEG_NOTE,
        "The ER-AML script's network has biases in its convolutions; reduced_resnet18, like Avalanche's "
        "SlimResNet18 that ER-ACE uses, has none.",
    ),
))


register_protocol(Protocol(
    name="clb-online-split-cifar10",
    version=1,
    summary="Avalanche's reference online split-CIFAR-10: task-free, one pass in mini-experiences of 10 with the "
            "experience boundaries hidden, plain SGD at 0.1, a class-balanced memory of 1,000, random crops and "
            "flips, a fixed head",
    source="Avalanche continual-learning-baselines: experiments/split_cifar10/online_replay.py, reference accuracy "
           "in tests/target_results.csv (a run passes at reference - 0.03)",
    settings={**_CLB_ONLINE, "train_per_class": 4750, "augment": "crop-flip"},
    strategies=("replay", "cvm"),
    references={"replay": 0.50},
    notes=(
        _JPEG_NOTE,
        "The script holds 5% of each class's training images out as a validation stream; the preset keeps a "
        "seeded 95% (4,750 a class).",
        "Avalanche's SCR reference runs on other settings: preset clb-scr-split-cifar10.",
    ),
))


register_protocol(Protocol(
    name="clb-scr-split-cifar10",
    version=1,
    summary="Avalanche's reference SCR on online split-CIFAR-10: task-free, one pass in mini-experiences of 10 with "
            "the experience boundaries hidden, classes in a seeded random order, plain SGD at 0.1, a memory of 200 "
            "replayed 100 a batch, no normalisation, SCR's crop, flip, colour-jitter and greyscale views",
    source="Avalanche continual-learning-baselines: experiments/split_cifar10/supervised_contrastive_replay.py "
           "(no review trick), reference accuracy in tests/target_results.csv (a run passes at reference - 0.03)",
    settings={**_CLB_ONLINE, "shuffle_classes": True, "train_per_class": None, "normalize": "none",
              "augment": "none", "buffer_size": 200, "replay_batch_size": 100, "scr_views": "crop-flip-colour"},
    strategies=("scr", "cvm"),
    references={"scr": 0.36},
    notes=(
        _JPEG_NOTE,
        "The script draws its class order from the global seed through Avalanche's SplitCIFAR10; the preset's "
        "seeded order is another random order.",
        "Each step trains on 10 new and 100 replayed samples, two views each: about eleven times a "
        "clb-split-cifar10 step.",
    ),
))


register_protocol(Protocol(
    name="der-seq-cifar10",
    version=1,
    summary="The DER paper's seq-CIFAR-10 on Mammoth's settings: class-incremental, 5 experiences of 2 classes "
            "in label order, a full-width CIFAR ResNet-18, 50 epochs at batch 32, plain SGD, memory 500, "
            "random crops and flips",
    source="Buzzega et al., Dark Experience for General Continual Learning (NeurIPS 2020), Table 2, class-IL, "
           "buffer 500; hyperparameters from Mammoth's best_args for seq-cifar10",
    settings={
        "benchmark": "split-cifar10",
        "n_experiences": 5,
        "shuffle_classes": False,
        "train_per_class": None,
        "test_per_class": None,
        "backbone": "cifar_resnet18",
        "input_size": 32,
        "normalize": "cifar10",
        "augment": "crop-flip",
        "epochs_per_experience": 50,
        "batch_size": 32,
        "replay_batch_size": 32,
        "optimizer": "sgd",
        "lr": 0.03,
        "momentum": 0.0,
        "weight_decay": 0.0,
        "buffer_size": 500,
        "growing_head": False,
        "recalibrate_bn": False,
        "precision": "32-true",
    },
    strategies=("der", "replay", "cvm"),
    references={"der": 0.7270, "replay": 0.5774},
    per_strategy={"replay": {"lr": 0.1}},  # Mammoth's ER at buffer 500
    hyperparameters={"der": {"alpha": 0.2, "beta": 0.5}},
    notes=(
        "Mammoth's ER and DER++ keep a reservoir memory; replay and der here keep Avalanche's (replay's "
        "class-balanced).",
        "About 78,000 steps at batch 32 (5 experiences x 50 epochs x 313 batches) of an 11.2M-parameter network for "
        "each strategy, with a replayed batch beside each: an accelerator's work (--accelerator gpu).",
    ),
    full_scale_run=False,
))


def overrides(config_values: Mapping[str, Any], defaults: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The settings of a run (``config_values``, JSON values) that differ from preset ``name``'s expansion.

    The expansion is the preset's listed values with every other setting at
    ``defaults``. An empty result means the run is the published protocol.
    """
    expected = {**defaults, **get_protocol(name).settings}
    return {key: value for key, value in config_values.items()
            if key not in NOT_PROTOCOL_SETTINGS and key in expected and _json(expected[key]) != value}


def strategy_values(config_values: Mapping[str, Any], name: str, strategy: str) -> dict[str, Any]:
    """Preset ``name``'s values for ``strategy`` alone, where the run kept the preset's value of that setting."""
    protocol = get_protocol(name)
    own = protocol.per_strategy.get(strategy, {})
    return {key: value for key, value in own.items()
            if key not in protocol.settings or config_values.get(key) == _json(protocol.settings[key])}


def _json(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def protocols_text(name: str | None = None) -> str:
    """``cvm protocols``: each preset (or ``name`` alone), what it reproduces, and every setting it fixes as a flag."""
    blocks = []
    for p in [get_protocol(name)] if name else PROTOCOLS.values():
        lines = [f"{p.title}: {p.summary}.", f"  source: {p.source}"]
        refs = ", ".join(f"{s} {v:g}" for s, v in p.references.items())
        lines.append(f"  strategies: {', '.join(p.strategies)}" + (f"; references: {refs}" if refs else ""))
        lines.append("  settings: " + _as_flags(p.settings))
        for strategy, values in p.per_strategy.items():
            lines.append(f"  {strategy} alone: " + _as_flags(values))
        for strategy, values in p.hyperparameters.items():
            lines.append(f"  {strategy}'s hyperparameters: " + ", ".join(f"{k} {v:g}" for k, v in values.items()))
        if not p.full_scale_run:
            lines.append("  not yet run at full scale by this package")
        lines += [f"  note: {note}" for note in p.notes]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _as_flags(values: Mapping[str, Any]) -> str:
    """Settings as ``cvm run`` flags, then the ones the preset leaves unset (all the images, say)."""
    from cvm_lightning.settings import flag

    def one(name: str, value: Any) -> str:
        if isinstance(value, bool):
            return flag(name) if value else flag(name).replace("--", "--no-", 1)
        return f"{flag(name)} {value}"

    unset = [flag(name) for name, value in values.items() if value is None]
    text = " ".join(one(name, value) for name, value in values.items() if value is not None)
    return text + (f" (unset: {', '.join(unset)})" if unset else "")


def protocols_markdown() -> str:
    """The docs' table of the presets: name and version, what it is, strategies and references, and its settings."""
    lines = ["| preset | what | strategies (references) | settings | run at full scale here |", "|---|---|---|---|---|"]
    for p in PROTOCOLS.values():
        strategies = ", ".join(f"`{s}`" + (f" ({p.references[s]:g})" if s in p.references else "")
                               for s in p.strategies)
        settings = f"`{_as_flags(p.settings)}`"
        settings += "".join(f"; {s} alone: `{_as_flags(v)}`" for s, v in p.per_strategy.items())
        settings += "".join(f"; {s}: " + ", ".join(f"{k} {v:g}" for k, v in h.items())
                            for s, h in p.hyperparameters.items())
        lines.append(f"| `{p.name}` v{p.version} | {p.summary}. Source: {p.source}. | {strategies} | {settings} | "
                     f"{'yes' if p.full_scale_run else 'not yet'} |")
    return "\n".join(lines)
