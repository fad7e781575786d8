"""``RunConfig``: every setting of ``cvm run``, derived from the signatures of what it builds.

The stream's settings are ``ClassIncrementalDataModule``'s keyword
parameters and CVM's are ``CVMModule``'s, with their defaults and docstring
help (read by :mod:`cvm_lightning.app.signatures`); only the settings of the
comparison itself (:data:`RUN_SETTINGS`) are declared here. ``cvm run``'s
flags, ``run_config.json``, the sweep's cache keys and the docs' option
table all come from :data:`SETTINGS`. The module imports nothing heavy, so
the command line rejects a bad value before torch is loaded and before
anything is written.
"""

from __future__ import annotations

import json
from dataclasses import asdict, field, make_dataclass, replace
from pathlib import Path
from typing import Any

from cvm_lightning.app.protocols import get_protocol, overrides, strategy_values
from cvm_lightning.app.signatures import Setting, read_settings
from cvm_lightning.app.strategies import SHARED_SETTINGS, STRATEGIES
from cvm_lightning.errors import ConfigError, did_you_mean
from cvm_lightning.settings import check_memory, check_settings, check_task_free
from cvm_lightning.streams.registry import BENCHMARKS

DEFAULT_STRATEGIES = ("cvm", "replay", "naive", "lwf", "ewc", "der")

# CVMModule parameters that come from the benchmark or the training data, not from the user.
FROM_THE_DATA = ("concept_bank", "class_names", "concept_dim", "concept_source", "templates", "in_chans", "image_size")

DATA_SETTINGS: dict[str, Setting] = read_settings("data/datamodule.py", "ClassIncrementalDataModule")
MODEL_SETTINGS: dict[str, Setting] = read_settings("model/module.py", "CVMModule", exclude=FROM_THE_DATA)

RUN_SETTINGS: dict[str, Setting] = {s.name: s for s in (
    Setting("protocol", "str | None", None,
            "a named preset of every setting a published table depends on (`cvm protocols` lists them); flags given "
            "beside it override its values, and the run is then reported as a modified protocol"),
    Setting("strategies", "tuple[str, ...]", DEFAULT_STRATEGIES,
            "comma-separated strategies. " + "; ".join(f"{e.name}: {e.help}" for e in STRATEGIES.values())),
    # Overrides CVMModule's "none": each benchmark names the augmentation that suits its images.
    Setting("augment", "str | None", None,
            "training augmentation of every strategy, replayed samples included (crop: pad-and-crop shifts); "
            "default: the benchmark's own, listed by `cvm benchmarks`"),
    Setting("growing_head", "bool", False,
            "baselines with a linear head start with one unit and gain one per class as it arrives, the classes not "
            "trained yet masked (Avalanche's IncrementalClassifier); default: one unit per class from the start. "
            "CVM, iCaRL, SCR and NCM have no linear head to grow, and DER keeps one unit per class (the logits it "
            "stores need every class's output)"),
    Setting("scr_views", "str", "crop-flip",
            "SCR's second view of each sample, each sample drawn on its own: crop-flip (random resized crop at "
            "scale 0.2-1 and a flip) or crop-flip-colour (also colour jitter 0.4/0.4/0.4/0.1 at p 0.8 and greyscale "
            "at p 0.2, the SCR paper's views)"),
    Setting("seeds", "tuple[int, ...] | None", None,
            "run every strategy on each of these seeds instead of --seed, and report mean ± std over them; "
            "each seed's numbers are kept in results.json"),
    Setting("precision", "str", "32-true",
            "arithmetic of every strategy's training and evaluation: 32-true, or bf16-mixed (bfloat16 autocast: "
            "1.8x faster reduced_resnet18 training steps on a CPU with AVX512-BF16, slower on depthwise backbones "
            "such as MobileNet; refused where the CPU has no bfloat16 units)"),
    Setting("accelerator", "str", "cpu",
            "where every strategy trains and evaluates: cpu, or gpu (a CUDA GPU: Lightning's accelerator for CVM, "
            "Avalanche's device for the baselines). A GPU rounds differently, so the same seed moves slightly, as "
            "on another CPU; a protocol run there is not modified"),
    Setting("threads", "int | None", None,
            "intra-op CPU threads (default: torch's, one per physical core); give each of several runs sharing "
            "the cores its own share"),
    Setting("devices", "int", 1,
            "CPU processes, or GPUs with --accelerator gpu, for CVM's training (Lightning devices)"),
    Setting("strategy", "str", "auto", "Lightning strategy for CVM, e.g. ddp (gloo on CPU)"),
    Setting("progress", "bool", True, "show progress bars"),
)}

# Every setting, once: the comparison's, then the stream's, then CVM's (a name in two places is declared by the first).
SETTINGS: dict[str, Setting] = {**MODEL_SETTINGS, **DATA_SETTINGS, **RUN_SETTINGS}
SETTINGS = {name: SETTINGS[name] for name in (*RUN_SETTINGS, *DATA_SETTINGS, *MODEL_SETTINGS) if name in SETTINGS}

# Settings that change how a run looks or shares the machine, never its numbers (a protocol's name is a label:
# the values it sets are settings of their own).
NOT_IN_RESULTS = ("progress", "threads", "protocol")

# run_config.json files written before the settings took their signature names.
_RENAMED = {"buffer": "buffer_size", "epochs": "epochs_per_experience"}


class _RunConfigMethods:
    """The behaviour of :class:`RunConfig`; its fields are :data:`SETTINGS`."""

    def __post_init__(self) -> None:
        if isinstance(self.strategies, str):
            self.strategies = tuple(s.strip() for s in self.strategies.split(",") if s.strip())
        self.strategies = tuple(self.strategies)
        if not self.strategies:
            raise ConfigError(f"--strategies is empty; choose from {', '.join(STRATEGIES)}.")
        for name in self.strategies:
            if name not in STRATEGIES:
                raise ConfigError(f"Unknown strategies [{name!r}].{did_you_mean(name, STRATEGIES)} Choose from "
                                  f"{', '.join(STRATEGIES)}.")
        repeated = sorted({s for s in self.strategies if self.strategies.count(s) > 1})
        if repeated:
            raise ConfigError(f"--strategies names {', '.join(repeated)} more than once; list each strategy once.")
        if self.benchmark not in BENCHMARKS:
            raise ConfigError(
                f"Unknown benchmark {self.benchmark!r}.{did_you_mean(self.benchmark, BENCHMARKS)} "
                f"Available: {', '.join(sorted(BENCHMARKS))} (see `cvm benchmarks`)."
            )
        if self.seeds is not None:
            self.seeds = tuple(self.seeds)
            for seed in self.seeds:
                check_settings({"seed": seed})
            if len(set(self.seeds)) != len(self.seeds):
                raise ConfigError(f"--seeds {' '.join(map(str, self.seeds))} repeats a seed; list each seed once.")
        if self.protocol is not None:
            get_protocol(self.protocol)
        if self.augment is None:  # a frozen backbone sees each image once: no augmentation
            self.augment = "none" if self.freeze_backbone else BENCHMARKS[self.benchmark].augment
        check_settings(asdict(self))
        check_memory(self.strategies, self.buffer_size)
        check_task_free(self.strategies, self.mini_experience_size)
        if not self.backbone.strip() or not self.text_model.strip():
            raise ConfigError("--backbone and --text-model need a name.")

    def model_settings(self) -> dict[str, Any]:
        """The keyword arguments of ``CVMModule`` (its concepts and channels come from the benchmark)."""
        return {name: getattr(self, name) for name in MODEL_SETTINGS}

    def data_settings(self) -> dict[str, Any]:
        """The keyword arguments of ``ClassIncrementalDataModule``."""
        return {name: getattr(self, name) for name in DATA_SETTINGS}

    def to_json(self) -> dict:
        """The settings as JSON values (paths as strings, tuples as lists)."""
        return json.loads(json.dumps(asdict(self), default=str))

    @classmethod
    def from_json(cls, values: dict) -> "RunConfig":
        """The inverse of :meth:`to_json`."""
        values = {_RENAMED.get(k, k): v for k, v in values.items()}
        values = {k: v for k, v in values.items() if k in SETTINGS}
        values["strategies"] = tuple(values.get("strategies", DEFAULT_STRATEGIES))
        values.setdefault("augment", "none")  # saved before --augment existed: trained without
        return cls(**values)

    @classmethod
    def load(cls, path: Path) -> "RunConfig":
        """The configuration saved by a run in ``path`` (its ``run_config.json``)."""
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except (ValueError, TypeError, OSError) as err:
            raise ConfigError(f"{path} cannot be read ({err}); start a new run with another --out.") from err

    @classmethod
    def from_protocol(cls, name: str, **values: Any) -> "RunConfig":
        """The configuration of preset ``name`` (``cvm protocols``), with ``values`` overriding its settings.

        The preset's strategies run unless ``values`` names others.
        """
        protocol = get_protocol(name)
        return cls(**{"strategies": protocol.strategies, **protocol.settings, **values, "protocol": name})

    def protocol_report(self) -> dict | None:
        """The run's protocol: name, version, source, references, and the settings that modify it (none: as published).

        ``None`` when the run names no protocol.
        """
        if self.protocol is None:
            return None
        protocol = get_protocol(self.protocol)
        changed = overrides(self.to_json(), DEFAULT_VALUES, self.protocol)
        return {"name": protocol.name, "version": protocol.version, "modified": bool(changed), "overrides": changed,
                "source": protocol.source, "references": dict(protocol.references), "tolerance": protocol.tolerance}

    def for_strategy(self, strategy: str) -> "RunConfig":
        """The settings ``strategy`` runs with: the protocol's values for it alone applied (see :class:`Protocol`)."""
        if self.protocol is None:
            return self
        own = strategy_values(self.to_json(), self.protocol, strategy)
        return replace(self, **own) if own else self

    def settings_of(self, strategy: str) -> dict:
        """What decides ``strategy``'s results (a cache key): the settings it reads and its fixed hyperparameters.

        A strategy that runs on Lightning is CVM, which reads every ``CVMModule`` setting.
        """
        entry = STRATEGIES[strategy]
        values = self.for_strategy(strategy).to_json()
        names = [*SHARED_SETTINGS, *entry.reads, *(MODEL_SETTINGS if entry.runs_on == "lightning" else ())]
        key = {name: values[name] for name in dict.fromkeys(names)}
        return {"name": strategy, **key, "hyperparameters": self.hyperparameters_of(strategy)}

    def hyperparameters_of(self, strategy: str) -> dict[str, float]:
        """``strategy``'s fixed hyperparameters: its registry entry's, with the protocol's for it on top."""
        own = get_protocol(self.protocol).hyperparameters.get(strategy, {}) if self.protocol else {}
        return {**STRATEGIES[strategy].hyperparameters, **own}

    def same_run(self, other: "RunConfig") -> bool:
        """Whether two configurations give the same results (progress display aside)."""
        a, b = self.to_json(), other.to_json()
        for name in NOT_IN_RESULTS:
            a.pop(name), b.pop(name)
        return a == b


RunConfig = make_dataclass(
    "RunConfig",
    [(s.name, s.annotation, field(default=s.default)) for s in SETTINGS.values()],
    bases=(_RunConfigMethods,),
    namespace={"__doc__": "Everything ``cvm run`` takes (:data:`SETTINGS`); the same settings apply to every strategy.",
               "__module__": __name__},
)


# Every setting's default, as JSON values (what a protocol leaves unlisted stays at these).
DEFAULT_VALUES: dict[str, Any] = {name: list(s.default) if isinstance(s.default, tuple) else s.default
                                  for name, s in SETTINGS.items()}


def applies_to(name: str) -> str:
    """Which strategies setting ``name`` applies to, from the strategy registry."""
    if name in SHARED_SETTINGS:
        return "every strategy"
    readers = [entry.name for entry in STRATEGIES.values()
               if name in entry.reads or (entry.runs_on == "lightning" and name in MODEL_SETTINGS)]
    return ", ".join(readers) if readers else "the comparison"


def options_markdown() -> str:
    """The docs' table of ``cvm run``'s settings: flag, who reads it, default, and meaning."""
    from cvm_lightning.settings import flag

    lines = ["| flag | applies to | default | meaning |", "|---|---|---|---|"]
    for setting in SETTINGS.values():
        default = ",".join(setting.default) if isinstance(setting.default, tuple) else setting.default
        meaning = setting.help.split(". cvm:")[0].replace("|", "/")
        lines.append(f"| `{flag(setting.name)}` | {applies_to(setting.name)} | `{default}` | {meaning} |")
    return "\n".join(lines)


def fit_config_yaml(name: str) -> str:
    """Preset ``name``'s CVM settings as a LightningCLI config for ``cvm fit --config`` (``data_root`` left to fill)."""
    import yaml

    config = RunConfig.from_protocol(name, strategies=("cvm",)).for_strategy("cvm")
    protocol = get_protocol(name)
    document = {
        "model": config.model_settings(),
        "data": {key: (str(value) if isinstance(value, Path) else value)
                 for key, value in config.data_settings().items()},
        "trainer": {"precision": config.precision, "devices": config.devices,
                    "accelerator": config.accelerator},
    }
    head = (f"# {protocol.title}: {protocol.summary}.\n# Source: {protocol.source}.\n"
            "# Set data.data_root to the folder that holds the benchmark's data.\n")
    return head + yaml.safe_dump(document, sort_keys=False)
