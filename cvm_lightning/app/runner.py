"""Runs CVM and Avalanche baselines on the same stream and collects their metrics."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from cvm_lightning.app.reporting import divergence_note
from cvm_lightning.app.resources import ExperienceCost, ExperienceCostCallback, PeakRSS
from cvm_lightning.app.run_config import RunConfig
from cvm_lightning.app.strategies import STRATEGIES
from cvm_lightning.atomic import atomic_write_text
from cvm_lightning.concepts import ConceptBank, TextModelSpec
from cvm_lightning.data import ClassIncrementalDataModule
from cvm_lightning.errors import ConfigError, did_you_mean
from cvm_lightning.hardware import TORCH_DEVICES, check_precision, check_threads
from cvm_lightning.metrics import ContinualMetricsCallback
from cvm_lightning.metrics.avalanche_plugin import AccuracyMatrixPlugin
from cvm_lightning.metrics.functional import summarize
from cvm_lightning.metrics.task_free import TaskFreeEvaluation, TaskFreeEvaluationPlugin, TaskFreeEvaluator
from cvm_lightning.metrics.zero_shot import ZeroShotCallback, ZeroShotPlugin, ZeroShotRecorder
from cvm_lightning.model import CVMModule
from cvm_lightning.model.backbones import check_backbone, create_backbone
from cvm_lightning.model.cpu import set_threads
from cvm_lightning.model.feature_cache import save_shared_caches
from cvm_lightning.model.gpu import check_accelerator
from cvm_lightning.model.optimizers import create_optimizer
from cvm_lightning.streams import Benchmark
from cvm_lightning.training import (
    AtomicCheckpointIO,
    BaselineSettings,
    ClassifierNet,
    ExperienceSchedule,
    NonFiniteLossPlugin,
    RunState,
    build_baseline,
    experience_checkpoints,
    fit_resumable,
    random_state_kept,
)


@dataclass
class StrategyResult:
    """One strategy's numbers on a stream (accuracies in [0, 1]; NaN where not measured)."""

    final_avg_accuracy: float
    forgetting: float
    bwt: float
    accuracy_matrix: list[list[float]]
    train_seconds: float
    params: int
    peak_rss_mb: float
    zero_shot_accuracy: float
    zero_shot_chance: float
    fwt: float
    zero_shot: dict = field(default_factory=dict)
    anytime_accuracy: float = math.nan
    anytime: list = field(default_factory=list)
    nonfinite_loss_step: int | None = None  # a baseline's first training step with a NaN or inf loss: it diverged
    experience_seconds: list = field(default_factory=list)  # each experience's training seconds
    experience_peak_rss_mb: list = field(default_factory=list)  # the process's peak resident memory during each


def _result(R: torch.Tensor, train_seconds: float, model: torch.nn.Module, peak_mb: float,
            zero_shot: ZeroShotRecorder | None = None, anytime: TaskFreeEvaluator | None = None,
            nonfinite_loss_step: int | None = None, cost: ExperienceCost | None = None) -> StrategyResult:
    """The numbers of a finished strategy; a task-free run has no zero-shot rows, a boundary-aware one no anytime."""
    summary = summarize(R)
    transfer = zero_shot.summary() if zero_shot is not None else {}
    points = anytime.summary() if anytime is not None else {}
    return StrategyResult(
        final_avg_accuracy=summary["avg_acc"],
        forgetting=summary["forgetting"],
        bwt=summary["bwt"],
        accuracy_matrix=[
            [None if v != v else round(float(v), 6) for v in row] for row in R.tolist()
        ],  # NaN: not evaluated
        train_seconds=round(train_seconds, 2),
        params=sum(p.numel() for p in model.parameters()),
        peak_rss_mb=round(peak_mb, 1),
        zero_shot_accuracy=round(transfer.get("zero_shot_accuracy", math.nan), 6),
        zero_shot_chance=round(transfer.get("zero_shot_chance", math.nan), 6),
        fwt=round(transfer.get("fwt", math.nan), 6),
        zero_shot={k: [round(v, 6) for v in row] for k, row in transfer.get("zero_shot", {}).items()},
        anytime_accuracy=points.get("anytime_accuracy", math.nan),
        anytime=points.get("anytime", []),
        nonfinite_loss_step=nonfinite_loss_step,
        experience_seconds=cost.seconds if cost is not None else [],
        experience_peak_rss_mb=cost.peak_mb if cost is not None else [],
    )


def build_concept_bank(config: RunConfig, benchmark: Benchmark) -> ConceptBank:
    """The concepts of ``benchmark``'s classes with the configured text model (cached on disk)."""
    return ConceptBank.from_names(
        benchmark.class_names,
        text_model=TextModelSpec(name=config.text_model, allow_download=config.download),
        templates=benchmark.templates,
        descriptions=benchmark.descriptions,
    )


def build_cvm_module(config: RunConfig, benchmark: Benchmark, bank: ConceptBank | None = None) -> CVMModule:
    """The CVM model for ``benchmark``: its concept bank plus every ``CVMModule`` setting of ``config``."""
    bank = bank if bank is not None else build_concept_bank(config, benchmark)
    return CVMModule(bank, in_chans=benchmark.in_chans, **config.model_settings())


def run_cvm(
    config: RunConfig, data: ClassIncrementalDataModule, out_dir: Path, bank: ConceptBank | None = None
) -> StrategyResult:
    """CVM in one ``trainer.fit`` over the stream's data module, checkpointed in ``out_dir/checkpoints/cvm``.

    It uses the same data module and callbacks as a Lightning user's code.
    If that folder holds checkpoints of an interrupted run, training resumes
    from the newest readable one. The trained model is ``out_dir/final.ckpt``.
    A task-free stream is one pass without ``ExperienceSchedule``: the model
    is told of no experience, and :class:`TaskFreeEvaluation` scores it at
    the boundaries it does not see (a killed task-free run starts again).
    """
    pl.seed_everything(config.seed, verbose=False)
    with PeakRSS() as peak:
        module = build_cvm_module(config, data.benchmark, bank)
        state = RunState()
        checkpoints = out_dir / "checkpoints" / "cvm"
        if data.task_free:
            task_free = TaskFreeEvaluation()
            callbacks = [task_free, state]
        else:
            metrics, zero_shot = ContinualMetricsCallback(), ZeroShotCallback()
            cost = ExperienceCostCallback(data.epochs_per_experience)
            callbacks = [ExperienceSchedule(), metrics, zero_shot, state, cost,
                         experience_checkpoints(checkpoints, data.epochs_per_experience)]
        trainer = pl.Trainer(
            callbacks=callbacks,
            plugins=[AtomicCheckpointIO()],
            logger=CSVLogger(out_dir / "logs", name="cvm"),
            max_epochs=data.max_epochs,
            log_every_n_steps=1,  # experiences of a few batches still log their losses
            num_sanity_val_steps=0,
            enable_model_summary=False,
            enable_progress_bar=config.progress,
            accelerator=config.accelerator,
            precision=config.precision,
            devices=config.devices,
            strategy=config.strategy,
        )
        fit_resumable(trainer, module, data, checkpoints)
        trainer.save_checkpoint(out_dir / FINAL_CHECKPOINT, weights_only=False)
    if data.task_free:  # the training epoch's time included the evaluations
        evaluator = task_free.evaluator
        return _result(evaluator.matrix.compute(), state.train_seconds - evaluator.seconds, module, peak.peak_mb,
                       anytime=evaluator)
    return _result(metrics.matrix.compute(), state.train_seconds, module, peak.peak_mb, zero_shot=zero_shot.recorder,
                   cost=cost.cost)


def run_baseline(name: str, config: RunConfig, data: ClassIncrementalDataModule,
                 report: Callable[[str], None]) -> StrategyResult:
    """An Avalanche strategy in Avalanche's own loop, on the same stream, backbone, budget and evaluations."""
    benchmark = data.benchmark
    growing = config.growing_head and "growing_head" in STRATEGIES[name].reads
    pl.seed_everything(config.seed, verbose=False)
    with PeakRSS() as peak:
        model = ClassifierNet(
            config.backbone,
            len(benchmark.class_names),
            in_chans=benchmark.in_chans,
            input_size=config.input_size,
            normalize=config.normalize,
            augment=config.augment,
            pretrained=config.pretrained,
            pretrained_file=config.pretrained_file,
            freeze_backbone=config.freeze_backbone,
            channels_last=config.channels_last,
            precision=config.precision,
            growing_head=growing,
        )
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = create_optimizer(config.optimizer, trainable, lr=config.lr, weight_decay=config.weight_decay,
                                     momentum=config.momentum)
        settings = BaselineSettings(
            buffer_size=config.buffer_size, batch_size=config.batch_size, epochs=config.epochs_per_experience,
            eval_batch_size=config.eval_batch_size, replay_batch_size=config.replay_batch_size,
            drop_last=config.drop_last, task_free=data.task_free, recalibrate_bn=config.recalibrate_bn,
            scr_views=config.scr_views, hyperparameters=config.hyperparameters_of(name),
            ema=config.ema if "ema" in STRATEGIES[name].reads else 0.0,
            device=TORCH_DEVICES[config.accelerator],
        )
        nonfinite = NonFiniteLossPlugin()
        if data.task_free:
            evaluator = TaskFreeEvaluator.for_stream(data, device=settings.device)
            sizes = [len(experience.dataset) for experience in benchmark.train_stream]
            strategy = build_baseline(name, model, optimizer, settings,
                                      [TaskFreeEvaluationPlugin(evaluator, sizes), nonfinite])
            start = time.perf_counter()
            for mini_experience in data.online_train_stream():
                strategy.train(mini_experience, num_workers=0, drop_last=settings.drop_last)
            train_seconds = time.perf_counter() - start - evaluator.seconds
            report(f"[{name}] one pass over {evaluator.samples} samples done")
        else:
            recorder = AccuracyMatrixPlugin(benchmark.n_experiences)
            zero_shot = ZeroShotPlugin(benchmark.test_stream)
            # A growing head has no output for a class before its experience: nothing to score zero-shot (n/a).
            plugins = [recorder, nonfinite] if growing else [recorder, zero_shot, nonfinite]
            strategy = build_baseline(name, model, optimizer, settings, plugins)
            cost = ExperienceCost()
            train_seconds = _train_experiences(name, strategy, data, settings, report, cost)
    if data.task_free:
        return _result(evaluator.matrix.compute(), train_seconds, model, peak.peak_mb, anytime=evaluator,
                       nonfinite_loss_step=nonfinite.first)
    return _result(recorder.matrix.compute(), train_seconds, model, peak.peak_mb,
                   zero_shot=None if growing else zero_shot.recorder, nonfinite_loss_step=nonfinite.first, cost=cost)


def _train_experiences(name: str, strategy, data: ClassIncrementalDataModule, settings: BaselineSettings,
                       report: Callable[[str], None], cost: ExperienceCost) -> float:
    """Train ``strategy`` on each experience in Avalanche's loop, evaluating where the stream says; training seconds
    (in all, and each experience's in ``cost``)."""
    benchmark = data.benchmark
    train_seconds = 0.0
    steps = list(enumerate(benchmark.train_stream))
    if STRATEGIES[name].whole_stream:  # one training on every experience at once, evaluated as the last
        steps = [(benchmark.n_experiences - 1, [experience for _, experience in steps])]
    for index, experience in steps:
        start = time.perf_counter()
        cost.start(index)
        strategy.train(experience, num_workers=0, drop_last=settings.drop_last)
        cost.stop()
        train_seconds += time.perf_counter() - start
        if data.evaluates_after(index):
            # Avalanche's evaluation loaders draw their seeds from the global generator: kept apart, the
            # training that follows shuffles the same however often the run evaluates (as CVM's does).
            with random_state_kept():
                strategy.eval(benchmark.test_stream, num_workers=0)
        report(f"[{name}] experience {index + 1}/{benchmark.n_experiences} done")
    return train_seconds


def check_lightning_strategy(name: str) -> None:
    """``name`` must be one of Lightning's registered strategies (or ``auto``)."""
    from pytorch_lightning.strategies import StrategyRegistry

    known = ["auto", *StrategyRegistry.available_strategies()]
    if name not in known:
        raise ConfigError(
            f"Unknown --strategy {name!r}.{did_you_mean(name, known)} It is Lightning's strategy for CVM's "
            "training: auto, ddp (several --devices), or another of Lightning's."
        )


def claim_out_dir(config: RunConfig, out_dir: Path) -> None:
    """Write ``config`` into ``out_dir``, or check that the run already there has the same one."""
    out_dir.mkdir(parents=True, exist_ok=True)
    saved = out_dir / "run_config.json"
    if saved.exists():
        if not RunConfig.load(saved).same_run(config):
            raise ConfigError(
                f"{out_dir} holds a run with another configuration. Continue it with `cvm run --resume {out_dir}` "
                "or pass another --out; nothing there was changed."
            )
    elif rank_zero_only.rank == 0:
        atomic_write_text(saved, json.dumps(config.to_json(), indent=2))


FINAL_CHECKPOINT = "final.ckpt"


def prepare(config: RunConfig) -> tuple[ClassIncrementalDataModule, ConceptBank | None]:
    """Check everything a run needs (backbone, weights, data, text model) and build its stream and concepts.

    Nothing is written: a run calls this before its first file.
    """
    check_backbone(config.backbone)
    check_lightning_strategy(config.strategy)
    check_accelerator(config.accelerator, config.precision)
    check_precision(config.precision, config.accelerator)
    check_threads(config.threads)
    data = ClassIncrementalDataModule(**config.data_settings())
    if config.pretrained:  # weights that cannot be found or loaded (file, package, hub cache) are said now
        create_backbone(config.backbone, pretrained=True, pretrained_file=config.pretrained_file,
                        in_chans=data.in_chans, img_size=config.input_size)
    needs_concepts = any(STRATEGIES[name].runs_on == "lightning" for name in config.strategies)
    return data, build_concept_bank(config, data.benchmark) if needs_concepts else None


def run(config: RunConfig, out_dir: Path, report: Callable[[str], None] = print) -> dict:
    """Run every strategy of ``config`` on its benchmark; returns the results dictionary.

    ``out_dir`` keeps the configuration, each finished strategy's numbers
    (``state/NAME.json``) and CVM's experience checkpoints, so calling this
    again on the same folder after a crash skips what was finished and
    resumes CVM from its newest checkpoint. Under DDP, processes other than
    rank 0 only join CVM's training and write nothing.
    """
    data, bank = prepare(config)
    benchmark = data.benchmark
    claim_out_dir(config, out_dir)
    set_threads(config.threads)
    results = {
        "benchmark": benchmark.name,
        "seed": config.seed,
        "n_experiences": benchmark.n_experiences,
        "kind": benchmark.kind,
        "classes_per_experience": benchmark.classes_per_experience,
        "conditions": list(benchmark.conditions),
        "lifetime": [asdict(step) for step in benchmark.lifetime],
        "protocol": config.protocol_report(),
        "config": config.to_json(),
        "strategies": {},
    }
    for name in config.strategies:
        finished = out_dir / "state" / f"{name}.json"
        if finished.exists():
            results["strategies"][name] = json.loads(finished.read_text())
            report(f"== {name}: finished earlier, kept from {finished}")
            continue
        lightning = STRATEGIES[name].runs_on == "lightning"
        if not lightning and rank_zero_only.rank != 0:  # only Lightning's strategies train in several processes
            continue
        report(f"== {name} on {benchmark.name} ({benchmark.n_experiences} experiences)")
        if lightning:
            result = run_cvm(config.for_strategy(name), data, out_dir, bank)
        else:
            result = run_baseline(name, config.for_strategy(name), data, report)
        save_shared_caches()  # a frozen backbone's features serve the next strategies and runs
        results["strategies"][name] = asdict(result)
        if rank_zero_only.rank == 0:
            atomic_write_text(finished, json.dumps(results["strategies"][name], indent=2))
        report(f"   final average accuracy {result.final_avg_accuracy:.3f}, forgetting {result.forgetting:.3f}")
        if result.nonfinite_loss_step is not None:
            report(f"   {divergence_note(name, result.nonfinite_loss_step)}")
    return results
