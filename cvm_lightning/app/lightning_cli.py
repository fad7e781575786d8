"""``cvm fit``, ``cvm validate`` and ``cvm test``: Lightning's own CLI over CVMModule and a stream.

The flags and YAML keys are generated from the signatures of
:class:`~cvm_lightning.model.CVMModule`, :class:`~cvm_lightning.data.ClassIncrementalDataModule`
and ``pl.Trainer`` (``cvm fit --help``, ``cvm fit --print_config``). The
data module's class names, channels and prompt templates are linked into
the model, so a config names the benchmark once.
"""

from __future__ import annotations

from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from cvm_lightning.app.interrupts import Interrupted
from cvm_lightning.data import ClassIncrementalDataModule
from cvm_lightning.errors import ConfigError
from cvm_lightning.metrics import ContinualMetricsCallback
from cvm_lightning.metrics.task_free import TaskFreeEvaluation
from cvm_lightning.model import CVMModule
from cvm_lightning.training import ExperienceSchedule

COMMANDS = ("fit", "validate", "test")


class CVMLightningCLI(LightningCLI):
    """``LightningCLI`` with the stream's settings linked into the model and the continual callbacks on.

    The callbacks serve both kinds of stream: a boundary-aware one is scheduled by ``ExperienceSchedule`` and
    scored by ``ContinualMetricsCallback``; a task-free one is a single pass scored by ``TaskFreeEvaluation``.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Always on, whatever trainer.callbacks a config lists: without the schedule a stream never ends.
        parser.add_lightning_class_args(ExperienceSchedule, "schedule")
        parser.add_lightning_class_args(ContinualMetricsCallback, "metrics")
        parser.add_lightning_class_args(TaskFreeEvaluation, "task_free")  # idle unless data.mini_experience_size
        for source, target in (("class_names", "class_names"), ("in_chans", "in_chans"), ("templates", "templates")):
            parser.link_arguments(f"data.{source}", f"model.{target}", apply_on="instantiate")

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except Interrupted as stop:  # name the checkpoint Lightning wrote last, if any, to go on from
            saved = getattr(self.trainer.checkpoint_callback, "best_model_path", "")
            if subcommand == "fit" and saved:
                stop.next_step = f"continue with the same `cvm fit` command and --ckpt_path {saved}"
            raise


def run_lightning_cli(args: list[str], from_sys_argv: bool = False) -> None:
    """Run ``cvm fit|validate|test ARGS``.

    ``args`` starts with the sub-command; with ``from_sys_argv`` they are ``sys.argv[1:]``.

    A bad key or value is a :class:`~cvm_lightning.errors.ConfigError` that names where to look.
    """
    from jsonargparse import ArgumentError

    try:
        CVMLightningCLI(
            CVMModule,
            ClassIncrementalDataModule,
            # max_epochs comes from the data module (ExperienceSchedule sets it).
            trainer_defaults={"max_epochs": -1},
            args=None if from_sys_argv else args,
            parser_kwargs={"prog": "cvm", "exit_on_error": False},
        )
    except ArgumentError as err:
        raise ConfigError(f"{' '.join(str(err).split())[:400]}. `cvm {args[0]} --help` lists the keys, "
                          f"`cvm {args[0]} --print_config` prints a complete config to start from.") from None
