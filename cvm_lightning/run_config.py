"""``RunConfig``: every setting of ``cvm run``, validated when it is made.

It imports nothing heavy, so the command line rejects a bad value before
torch is loaded and before anything is written.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from cvm_lightning.concepts.defaults import DEFAULT_TEXT_MODEL
from cvm_lightning.errors import ConfigError, did_you_mean
from cvm_lightning.settings import check_settings
from cvm_lightning.strategies import SHARED_SETTINGS, STRATEGIES
from cvm_lightning.streams.registry import DEFAULT_AUGMENT

DEFAULT_STRATEGIES = ("cvm", "replay", "naive", "lwf", "ewc", "der")

@dataclass
class RunConfig:
    """Everything ``cvm run`` takes; the same settings apply to every strategy."""

    benchmark: str = "split-digits"
    strategies: tuple[str, ...] = DEFAULT_STRATEGIES
    backbone: str = "reduced_resnet18"
    text_model: str = DEFAULT_TEXT_MODEL
    epochs: int = 5
    batch_size: int = 64
    buffer: int = 100
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    input_size: int = 32
    augment: str | None = None  # None: the benchmark's default (DEFAULT_AUGMENT)
    temperature: float = 0.05
    loss: str = "ce"
    negatives: str = "asymmetric"
    head: str = "linear"
    recalibrate_bn: bool = True
    distill: float = 1.0
    semantic: float = 0.0
    center_concepts: bool = True
    data_root: Path | None = None
    train_per_class: int | None = None
    test_per_class: int | None = None
    n_experiences: int | None = None
    download: bool = False
    devices: int = 1
    strategy: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.strategies, str):
            self.strategies = tuple(s.strip() for s in self.strategies.split(",") if s.strip())
        self.strategies = tuple(self.strategies)
        if not self.strategies:
            raise ConfigError(f"--strategies is empty; choose from {', '.join(STRATEGIES)}.")
        for name in self.strategies:
            if name not in STRATEGIES:
                raise ConfigError(f"Unknown strategies [{name!r}].{did_you_mean(name, STRATEGIES)} Choose from {', '.join(STRATEGIES)}.")
        repeated = sorted({s for s in self.strategies if self.strategies.count(s) > 1})
        if repeated:
            raise ConfigError(f"--strategies names {', '.join(repeated)} more than once; list each strategy once.")
        if self.benchmark not in DEFAULT_AUGMENT:
            raise ConfigError(
                f"Unknown benchmark {self.benchmark!r}.{did_you_mean(self.benchmark, DEFAULT_AUGMENT)} "
                f"Available: {', '.join(sorted(DEFAULT_AUGMENT))} (see `cvm benchmarks`)."
            )
        if self.augment is None:
            self.augment = DEFAULT_AUGMENT[self.benchmark]
        check_settings(asdict(self))
        needy = [s for s in self.strategies if STRATEGIES[s].needs_memory]
        if needy and self.buffer < 1:
            raise ConfigError(f"Strategies {', '.join(needy)} need a memory: pass --buffer N with N >= 1, or leave them out.")
        if not self.backbone.strip() or not self.text_model.strip():
            raise ConfigError("--backbone and --text-model need a name.")

    def to_json(self) -> dict:
        """The settings as JSON values (paths as strings, tuples as lists)."""
        return json.loads(json.dumps(asdict(self), default=str))

    @classmethod
    def from_json(cls, values: dict) -> "RunConfig":
        """The inverse of :meth:`to_json`."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in values.items() if k in known}
        values["strategies"] = tuple(values.get("strategies", DEFAULT_STRATEGIES))
        values.setdefault("augment", "none")  # saved before --augment existed: trained without
        if values.get("data_root") is not None:
            values["data_root"] = Path(values["data_root"])
        return cls(**values)

    @classmethod
    def load(cls, path: Path) -> "RunConfig":
        """The configuration saved by a run in ``path`` (its ``run_config.json``)."""
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except (ValueError, TypeError, OSError) as err:
            raise ConfigError(f"{path} cannot be read ({err}); start a new run with another --out.") from err

    def settings_of(self, strategy: str) -> dict:
        """What decides ``strategy``'s results (a cache key): the settings it reads and its fixed hyperparameters."""
        entry = STRATEGIES[strategy]
        values = self.to_json()
        key = {name: values[name] for name in (*SHARED_SETTINGS, *entry.reads)}
        return {"name": strategy, **key, "hyperparameters": dict(entry.hyperparameters)}

    def same_run(self, other: "RunConfig") -> bool:
        """Whether two configurations give the same results (progress display aside)."""
        a, b = self.to_json(), other.to_json()
        a.pop("progress"), b.pop("progress")
        return a == b
