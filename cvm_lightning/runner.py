"""Runs CVM and Avalanche baselines on the same stream and collects their metrics."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from cvm_lightning.atomic import atomic_write_text

from cvm_lightning.concepts import DEFAULT_TEXT_MODEL, ConceptBank, TextModelSpec
from cvm_lightning.errors import ConfigError
from cvm_lightning.metrics import ContinualMetricsCallback
from cvm_lightning.metrics.avalanche_plugin import AccuracyMatrixPlugin
from cvm_lightning.metrics.functional import summarize
from cvm_lightning.model import CVMModule
from cvm_lightning.model.augment import AUGMENTATIONS
from cvm_lightning.resources import PeakRSS
from cvm_lightning.streams import Benchmark, StreamConfig, build_benchmark
from cvm_lightning.streams.registry import DEFAULT_AUGMENT
from cvm_lightning.training import (
    BASELINES,
    BaselineSettings,
    ClassifierNet,
    LightningStreamAdapter,
    build_baseline,
)

DEFAULT_STRATEGIES = ("cvm", "replay", "naive", "lwf", "ewc", "der")


# Settings that only CVM reads: the Avalanche baselines' results do not depend on them.
CVM_ONLY_SETTINGS = (
    "text_model", "temperature", "loss", "negatives", "head", "distill", "semantic", "center_concepts", "devices", "strategy",
)


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
        unknown = [s for s in self.strategies if s != "cvm" and s not in BASELINES]
        if unknown or not self.strategies:
            raise ConfigError(
                f"Unknown strategies {unknown or '(none given)'}; choose from cvm, {', '.join(BASELINES)}."
            )
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}.")
        if self.buffer < 0:
            raise ConfigError(f"--buffer must be >= 0, got {self.buffer}.")
        if self.augment is None:
            self.augment = DEFAULT_AUGMENT.get(self.benchmark, "none")
        if self.augment not in AUGMENTATIONS:
            raise ConfigError(f"Unknown --augment {self.augment!r}; choose one of {', '.join(AUGMENTATIONS)}.")
        if self.devices < 1:
            raise ConfigError(f"--devices must be >= 1, got {self.devices}.")

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
        except (ValueError, TypeError) as err:
            raise ConfigError(f"{path} cannot be read ({err}); start a new run with another --out.") from err

    def settings_of(self, strategy: str) -> dict:
        """The settings that decide ``strategy``'s results (a cache key: display options left out)."""
        values = replace(self, strategies=(strategy,)).to_json()
        del values["progress"]
        if strategy != "cvm":
            for name in CVM_ONLY_SETTINGS:
                del values[name]
        return values

    def same_run(self, other: "RunConfig") -> bool:
        """Whether two configurations give the same results (progress display aside)."""
        a, b = self.to_json(), other.to_json()
        a.pop("progress"), b.pop("progress")
        return a == b


@dataclass
class StrategyResult:
    """One strategy's numbers on a stream (accuracies in [0, 1])."""

    final_avg_accuracy: float
    forgetting: float
    bwt: float
    accuracy_matrix: list[list[float]]
    train_seconds: float
    params: int
    peak_rss_mb: float
    extra: dict = field(default_factory=dict)


def _result(R: torch.Tensor, train_seconds: float, model: torch.nn.Module, peak_mb: float) -> StrategyResult:
    summary = summarize(R)
    return StrategyResult(
        final_avg_accuracy=summary["avg_acc"],
        forgetting=summary["forgetting"],
        bwt=summary["bwt"],
        accuracy_matrix=[[round(float(v), 6) for v in row] for row in R.tolist()],
        train_seconds=round(train_seconds, 2),
        params=sum(p.numel() for p in model.parameters()),
        peak_rss_mb=round(peak_mb, 1),
    )


def build_cvm_module(config: RunConfig, benchmark: Benchmark) -> CVMModule:
    """The CVM model for ``benchmark``: its concept bank plus the configured backbone."""
    bank = ConceptBank.from_names(
        benchmark.class_names,
        text_model=TextModelSpec(name=config.text_model, allow_download=config.download),
        templates=benchmark.templates,
        descriptions=benchmark.descriptions,
    )
    return CVMModule(
        bank,
        backbone=config.backbone,
        in_chans=benchmark.in_chans,
        input_size=config.input_size,
        augment=config.augment,
        lr=config.lr,
        weight_decay=config.weight_decay,
        buffer_size=config.buffer,
        seed=config.seed,
        temperature=config.temperature,
        loss=config.loss,
        negatives=config.negatives,
        head=config.head,
        recalibrate_bn=config.recalibrate_bn,
        distill=config.distill,
        semantic=config.semantic,
        center_concepts=config.center_concepts,
    )


def run_cvm(config: RunConfig, benchmark: Benchmark, out_dir: Path) -> StrategyResult:
    """CVM through the Lightning stream adapter, checkpointed in ``out_dir/checkpoints/cvm``.

    If that folder holds checkpoints of an interrupted run, training resumes
    after the newest readable one.
    """
    pl.seed_everything(config.seed, verbose=False)
    with PeakRSS() as peak:
        module = build_cvm_module(config, benchmark)
        metrics = ContinualMetricsCallback(benchmark.n_experiences)
        adapter = LightningStreamAdapter(
            module,
            epochs=config.epochs,
            batch_size=config.batch_size,
            checkpoint_dir=out_dir / "checkpoints" / "cvm",
            callbacks=[metrics],
            logger=CSVLogger(out_dir / "logs", name="cvm"),
            enable_checkpointing=False,
            enable_progress_bar=config.progress,
            accelerator="cpu",
            devices=config.devices,
            strategy=config.strategy,
        )
        adapter.fit_stream(benchmark.train_stream, benchmark.test_stream)
    return _result(metrics.matrix.compute(), adapter.train_seconds, module, peak.peak_mb)


def run_baseline(name: str, config: RunConfig, benchmark: Benchmark, report: Callable[[str], None]) -> StrategyResult:
    """An Avalanche strategy in Avalanche's own loop, on the same backbone and budget."""
    pl.seed_everything(config.seed, verbose=False)
    with PeakRSS() as peak:
        model = ClassifierNet(
            config.backbone,
            len(benchmark.class_names),
            in_chans=benchmark.in_chans,
            input_size=config.input_size,
            augment=config.augment,
        )
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        recorder = AccuracyMatrixPlugin(benchmark.n_experiences)
        settings = BaselineSettings(
            buffer=config.buffer, batch_size=config.batch_size, epochs=config.epochs, recalibrate_bn=config.recalibrate_bn
        )
        strategy = build_baseline(name, model, optimizer, settings, [recorder])
        train_seconds = 0.0
        for index, experience in enumerate(benchmark.train_stream):
            start = time.perf_counter()
            strategy.train(experience, num_workers=0)
            train_seconds += time.perf_counter() - start
            strategy.eval(benchmark.test_stream, num_workers=0)
            report(f"[{name}] experience {index + 1}/{benchmark.n_experiences} done")
    return _result(recorder.matrix.compute(), train_seconds, model, peak.peak_mb)


def _check_out_dir(config: RunConfig, out_dir: Path) -> None:
    saved = out_dir / "run_config.json"
    if saved.exists():
        if not RunConfig.load(saved).same_run(config):
            raise ConfigError(
                f"{out_dir} holds a run with another configuration. Continue it with `cvm run --resume {out_dir}` "
                "or pass another --out; nothing there was changed."
            )
    elif rank_zero_only.rank == 0:
        atomic_write_text(saved, json.dumps(config.to_json(), indent=2))


def run(config: RunConfig, out_dir: Path, report: Callable[[str], None] = print) -> dict:
    """Run every strategy of ``config`` on its benchmark; returns the results dictionary.

    ``out_dir`` keeps the configuration, each finished strategy's numbers
    (``state/NAME.json``) and CVM's experience checkpoints, so calling this
    again on the same folder after a crash skips what was finished and
    resumes CVM from its newest checkpoint. Under DDP, processes other than
    rank 0 only join CVM's training and write nothing.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    benchmark = build_benchmark(
        config.benchmark,
        StreamConfig(
            seed=config.seed,
            data_root=config.data_root,
            train_per_class=config.train_per_class,
            test_per_class=config.test_per_class,
            n_experiences=config.n_experiences,
            download=config.download,
        ),
    )
    # After the build: a rejected benchmark or data flag must not leave a configuration that blocks the fix.
    _check_out_dir(config, out_dir)
    results = {
        "benchmark": benchmark.name,
        "seed": config.seed,
        "n_experiences": benchmark.n_experiences,
        "classes_per_experience": benchmark.classes_per_experience,
        "config": config.to_json(),
        "strategies": {},
    }
    for name in config.strategies:
        finished = out_dir / "state" / f"{name}.json"
        if finished.exists():
            results["strategies"][name] = json.loads(finished.read_text())
            report(f"== {name}: finished earlier, kept from {finished}")
            continue
        if name != "cvm" and rank_zero_only.rank != 0:
            continue
        report(f"== {name} on {benchmark.name} ({benchmark.n_experiences} experiences)")
        if name == "cvm":
            result = run_cvm(config, benchmark, out_dir)
        else:
            result = run_baseline(name, config, benchmark, report)
        results["strategies"][name] = asdict(result)
        if rank_zero_only.rank == 0:
            atomic_write_text(finished, json.dumps(results["strategies"][name], indent=2))
        report(f"   final average accuracy {result.final_avg_accuracy:.3f}, forgetting {result.forgetting:.3f}")
    return results
