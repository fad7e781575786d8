"""The ``cvm`` command line: run, benchmarks, export, predict, learn, and Lightning's fit, validate and test.

Parsing and validation import nothing heavy, so ``--help`` and bad input
answer at once. Every command's values go through one validation layer
(:func:`cvm_lightning.settings.check_settings`, then the path checks of
:mod:`cvm_lightning.paths`) before any model is loaded or any file written;
each command imports torch and the rest only after that.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import NoReturn

from cvm_lightning.app.interrupts import Interrupted, interrupted_line, interruptible
from cvm_lightning.errors import CVMError
from cvm_lightning.paths import (
    check_input_file,
    check_input_folder,
    check_output_file,
    check_output_folder,
    folder_lock,
    space_error,
)
from cvm_lightning.settings import (
    CHOICES,
    DEFAULT_BATCH_SIZE,
    DEFAULT_LEARN_EPOCHS,
    DEFAULT_LEARN_SEED,
    DEFAULT_Z_THRESHOLD,
    MODEL_SUFFIXES,
    PREDICTION_SUFFIXES,
    check_class_names,
    check_settings,
    flag,
)

CHECKPOINT_HELP = "pass the .ckpt file a training run wrote (`cvm run` writes OUT/final.ckpt)."


def _strategies(value: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in value.split(",") if s.strip())


def _names(value: str) -> list[str]:
    """Comma-separated class names, spaces around each trimmed (empty names are kept, to be reported)."""
    return [name.strip() for name in value.split(",")]


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of one stream run, one per :data:`~cvm_lightning.app.run_config.SETTINGS` entry.

    Shared by ``cvm run`` and ``benchmarks/quality.py``. Each flag is the
    setting's name (``--batch-size``), or its short spelling where one exists
    (``--buffer`` for ``buffer_size``, also accepted in full). A flag not
    given leaves no value behind, so :func:`config_from_args` knows which
    settings the user chose over the defaults or a ``--protocol``'s values.
    """
    from cvm_lightning.app.run_config import SETTINGS, applies_to

    for setting in SETTINGS.values():
        names = [flag(setting.name)]
        if names[0] != "--" + setting.name.replace("_", "-"):
            names.append("--" + setting.name.replace("_", "-"))
        default = ",".join(setting.default) if isinstance(setting.default, tuple) else setting.default
        shown = f" (default: {default})" if default is not None else ""  # None: off, or as the help says
        options: dict = {"dest": setting.name, "default": argparse.SUPPRESS,
                         "help": f"[{applies_to(setting.name)}] {setting.help}{shown}"}
        if setting.kind == "bool":
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = _PARSERS[setting.kind]
            if len(names) > 1:
                options["metavar"] = "N"
        if setting.name in CHOICES:
            options["choices"] = CHOICES[setting.name]
        if setting.name == "strategies":
            options.update(type=_strategies, metavar="A,B,...")
        elif setting.annotation.startswith("tuple[int"):
            options.update(nargs="+", metavar="N")
        parser.add_argument(*names, **options)


_PARSERS = {"int": int, "float": float, "path": Path, "str": str}


def signal_name(signum: int) -> str:
    import signal

    return signal.Signals(signum).name


def config_from_args(args: argparse.Namespace):
    """The :class:`RunConfig` of parsed :func:`add_run_arguments` flags: a protocol's values, then the flags given."""
    from cvm_lightning.app.run_config import SETTINGS, RunConfig

    given = {name: getattr(args, name) for name in SETTINGS if hasattr(args, name)}
    if given.get("protocol") is not None:
        return RunConfig.from_protocol(given.pop("protocol"), **given)
    return RunConfig(**given)


def _add_overwrite(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file (never an input)")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's formatter that appends ``(default: X)``, except where the help names its default already or X is
    ``None`` (an option that is simply off)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or action.default is None:
            return text
        return super()._get_help_string(action)


class CVMArgumentParser(argparse.ArgumentParser):
    """argparse with the command line's error format: one ``cvm: error:`` line and exit code 2, no usage dump.

    Sub-command parsers are made of the same class, so every flag error reads alike.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"cvm: error: {message} (see `{self.prog} --help`).\n")


def build_parser() -> argparse.ArgumentParser:
    parser = CVMArgumentParser(
        prog="cvm",
        description="Continual Visual Mapping: learn a stream of experiences by mapping images to "
        "language concepts, side by side with Avalanche's baselines.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="train CVM and baselines on a stream, print and save the results",
        description="Train every strategy on the same stream (same backbone, epochs, batch size, "
        "optimiser and memory budget); print a table and write results.json, results.md, plots and "
        "CVM's final.ckpt to --out.",
        formatter_class=DefaultsHelpFormatter,
    )
    add_run_arguments(run)
    run.add_argument("--out", type=Path, default=None, help="output folder (default: runs/<timestamp>)")
    run.add_argument(
        "--resume", type=Path, default=None, metavar="DIR",
        help="continue the interrupted run in DIR with its saved configuration (other run flags are ignored)",
    )

    sub.add_parser("benchmarks", help="list the available benchmarks")
    protocols = sub.add_parser(
        "protocols", help="list the protocol presets of `cvm run --protocol`, with their settings and references"
    )
    protocols.add_argument("name", nargs="?", default=None, help="show this preset only")
    protocols.add_argument(
        "--yaml", action="store_true",
        help="print the preset's CVM settings as a `cvm fit --config` file (needs NAME; set data.data_root in it)",
    )
    sub.add_parser("info", help="versions, this CPU's vector features and the flags that pay off on it")
    for command, what in LIGHTNING_COMMANDS.items():
        # Parsed by Lightning's own CLI (see main): listed here for `cvm --help`.
        sub.add_parser(command, add_help=False, help=f"{what} with Lightning's CLI and YAML configs (`cvm {command} "
                                                     "--help`)")

    export = sub.add_parser(
        "export",
        help="write a trained model as one self-contained TorchScript or ONNX file",
        description="The file holds the visual model, the alignment head and the learned concepts, with the class "
        "names in its metadata; running it needs torch (TorchScript) or onnxruntime (ONNX) only. It takes "
        "images in [0, 1] and normalises them itself.",
        formatter_class=DefaultsHelpFormatter,
    )
    export.add_argument("--checkpoint", type=Path, required=True, help="a CVMModule checkpoint (.ckpt)")
    export.add_argument("--format", choices=CHOICES["format"], default="torchscript")
    export.add_argument(
        "--out", type=Path, required=True,
        help="output file: " + "; ".join(f"{fmt} {', '.join(s)}" for fmt, s in MODEL_SUFFIXES.items()),
    )
    export.add_argument(
        "--image-size", type=int, default=None,
        help="image side the runtime resizes to (default: the size the model was trained on)",
    )
    export.add_argument(
        "--quantize", choices=CHOICES["quantize"], default="none",
        help="int8: an int8 ONNX model (with --format onnx), calibrated on the checkpoint's replay memory",
    )
    _add_overwrite(export)

    learn = sub.add_parser(
        "learn",
        help="update a trained model on a folder of images: new classes, or fresh images of known ones",
        description="Continue a checkpoint on one more experience: DATA/train/<class>/* with an optional "
        "DATA/test/<class>/* to score it, or DATA/<class>/* (training images only), where each class is new or one "
        "the model knows (new images of it, under new conditions, say). "
        "Only the new concepts are computed; the checkpoint's replay memory keeps every class in play and takes the "
        "new images in. --eval-data (old conditions) and --eval-new (new conditions) are scored before and after. With "
        "--names instead of --data, the classes are added by name alone: their concepts come from the text model "
        "and they are predicted at once, with no image and no training. The new checkpoint is written beside the "
        "old one (NAME-learnedN.ckpt, or --out); the old one is never overwritten.",
        formatter_class=DefaultsHelpFormatter,
    )
    learn.add_argument("--checkpoint", type=Path, required=True)
    learn.add_argument("--data", type=Path, default=None, help="folder of the update's images: train/<class>/<image> "
                       "with an optional test/<class>/<image>, or <class>/<image> (all for training)")
    learn.add_argument(
        "--names", type=_names, default=None, metavar="A,B,...",
        help="classes known by name only, without images: added at once from the text model (instead of --data)",
    )
    learn.add_argument("--names-file", type=Path, default=None, help="folder<TAB>name[<TAB>description] lines naming "
                                                                     "--data's folders (default: folder names)")
    learn.add_argument(
        "--eval-new", type=Path, default=None,
        help="held-out images under the new conditions, <class name>/<image>, scored before and after",
    )
    learn.add_argument(
        "--without-memory", action="store_true",
        help="update a checkpoint that keeps no replay memory anyway (it forgets what it learned before)",
    )
    learn.add_argument("--eval-data", type=Path, default=None, help="test images of the old classes, <class "
                                                                    "name>/<image>, to report their accuracy")
    learn.add_argument(
        "--method", choices=CHOICES["learn_method"], default="finetune",
        help="finetune: train on the new images with the memory replayed; prototypes: train nothing, score each "
        "class by its concept plus the mean features of its images (the memory's for old classes); best with few "
        "images on a pretrained backbone",
    )
    learn.add_argument("--epochs", type=int, default=DEFAULT_LEARN_EPOCHS, help="epochs of --method finetune")
    learn.add_argument(
        "--lr", dest="learn_lr", type=float, default=None,
        help="learning rate of --method finetune (default: the checkpoint's); a lower one, such as 3e-4, keeps "
        "more of the old conditions in an update of known classes",
    )
    learn.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="batch size of --method finetune")
    learn.add_argument("--seed", type=int, default=DEFAULT_LEARN_SEED,
                       help="seeds the update's shuffling, as a `cvm run` of this seed shuffles its next "
                            "experience: the same update gives the same model")
    learn.add_argument("--shots", type=int, default=None, metavar="K",
                       help="learn each new class from its first K training images only (few-shot)")
    learn.add_argument("--out", type=Path, default=None, help="the new checkpoint (default: NAME-learnedN.ckpt beside "
                                                              "--checkpoint)")
    _add_overwrite(learn)

    predict = sub.add_parser(
        "predict",
        help="name the class of image files with an exported model or a checkpoint",
        formatter_class=DefaultsHelpFormatter,
    )
    predict.add_argument("--model", type=Path, required=True, help=".ckpt, TorchScript .pt or .onnx file")
    predict.add_argument("paths", type=Path, nargs="+", help="image files or folders (searched recursively)")
    predict.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="images per batch (also the drift "
                                                                                    "monitor's unit)")
    predict.add_argument("--classes", type=_names, default=None, metavar="A,B,...", help="only these learned classes "
                                                                                         "compete")
    predict.add_argument("--output", type=Path, default=None, help="write the predictions to a .csv or .json file")
    predict.add_argument("--monitor", action="store_true", help="report concept drift against --reference images")
    predict.add_argument("--reference", type=Path, default=None, help="held-out images of the learned classes (turns "
                                                                      "on --monitor)")
    predict.add_argument("--z-threshold", type=float, default=DEFAULT_Z_THRESHOLD, help="drift when a batch's mean is "
                                                                                        "this many standard errors "
                                                                                        "away from the reference")
    _add_overwrite(predict)

    serve = sub.add_parser(
        "serve",
        help="serve a model over HTTP (LitServe): batched predictions, live drift, metrics, model swaps",
        description="POST /predict takes one image (raw body or multipart) and answers its class, score, top k and "
        "the model's version; GET /drift reports each class's drift against --reference; GET /metrics is "
        "Prometheus'; GET / is a status page; --watch or POST /model swaps in an updated model without stopping. "
        "Ctrl-C or SIGTERM answer the requests in flight, then stop. Needs the serve extra.",
        formatter_class=DefaultsHelpFormatter,
    )
    add_serve_arguments(serve)
    return parser


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`~cvm_lightning.deploy.serving.config.ServeConfig` field, with its default and help."""
    from dataclasses import MISSING, fields

    from cvm_lightning.deploy.serving.config import ServeConfig

    for setting in fields(ServeConfig):
        options: dict = {"dest": setting.name, "help": setting.metadata["help"]}
        if setting.metadata.get("metavar"):
            options["metavar"] = setting.metadata["metavar"]
        if setting.default is MISSING:
            options["required"] = True
        else:
            options["default"] = setting.default
        if setting.type == "bool":
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = _PARSERS[setting.type.split(" |")[0].lower()]
        parser.add_argument(flag(setting.name), **options)


LIGHTNING_COMMANDS = {
    "fit": "train CVMModule on a stream in one trainer.fit",
    "validate": "score a model on every test experience",
    "test": "test a model on every test experience",
}
DDP_OUT_VARIABLE = "_CVM_RUN_OUT"


def _default_out() -> Path:
    import os

    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    # DDP's extra processes rerun this command: they take the folder rank 0 chose.
    if rank_zero_only.rank > 0 and DDP_OUT_VARIABLE in os.environ:
        return Path(os.environ[DDP_OUT_VARIABLE])
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def _run(args: argparse.Namespace) -> int:
    import os
    from dataclasses import replace

    from cvm_lightning.app.run_config import RunConfig

    if args.resume is not None:
        out = args.resume
        if not (out / "run_config.json").is_file():
            raise CVMError(f"{out} holds no run to resume (no run_config.json); start one with `cvm run --out {out}`.")
        saved = RunConfig.load(out / "run_config.json")
        config = replace(saved, progress=getattr(args, "progress", saved.progress))
    else:
        config = config_from_args(args)
        out = args.out or _default_out()
    check_output_folder(out, flag="--out")
    if (out / "results.json").exists():
        raise CVMError(f"{out} already holds results.json; pass another --out so earlier results are kept.")
    if config.devices > 1:
        os.environ[DDP_OUT_VARIABLE] = str(out)

    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank > 0:  # DDP's extra processes join the run that rank 0 holds the folder for
        return _run_in(config, out)
    try:
        with folder_lock(out, flag="--resume" if args.resume is not None else "--out"):
            return _run_in(config, out)
    except Interrupted as stop:
        if (out / "run_config.json").is_file():  # the run has claimed the folder: it goes on from there
            stop.next_step = f"continue with cvm run --resume {out}"
        raise


def _run_in(config, out: Path) -> int:
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    if config.seeds is not None:
        from cvm_lightning.app.reporting import protocol_line, seed_table, stream_sections, write_seed_results
        from cvm_lightning.app.sweep import run_seeds

        results = run_seeds(config, out)
        paths = write_seed_results(results, out)
        print(f"\n{protocol_line(results)}\nMean ± std over seeds {', '.join(map(str, config.seeds))}:\n"
              f"{seed_table(results)}{stream_sections(results)}")
        print(f"\nWrote {', '.join(str(p) for p in paths)}; each seed's run is in {out / 'runs'}")
        return 0

    from cvm_lightning.app.reporting import (
        divergence_section,
        protocol_line,
        stream_sections,
        text_table,
        write_results,
    )
    from cvm_lightning.app.runner import run

    results = run(config, out)
    if rank_zero_only.rank != 0:
        return 0
    paths = write_results(results, out)
    print()
    print(protocol_line(results))
    print(text_table(results) + divergence_section(results) + stream_sections(results))
    print(f"\nWrote {', '.join(str(p) for p in paths)}")
    if "cvm" in results["strategies"]:
        final = out / "final.ckpt"
        print(f"CVM's trained model: {final} (use it with `cvm export --checkpoint {final}` or `cvm predict --model "
              f"{final}`)")
    return 0


def _export(args: argparse.Namespace) -> int:
    check_input_file(args.checkpoint, "checkpoint", {".ckpt"}, fix=CHECKPOINT_HELP)
    check_output_file(
        args.out, inputs=[args.checkpoint], overwrite=args.overwrite, suffixes=MODEL_SUFFIXES[args.format],
        what=f"{args.format} file",
    )
    from cvm_lightning.deploy import export_model
    from cvm_lightning.deploy.predict import load_checkpoint

    module = load_checkpoint(args.checkpoint)
    out = export_model(module, args.out, args.format, image_size=args.image_size, quantize=args.quantize,
                       overwrite=args.overwrite)
    learned = [module.class_names[i] for i in module.seen.nonzero().flatten().tolist()]
    kind = args.format if args.quantize == "none" else f"{args.format}, {args.quantize}"
    print(f"Wrote {out} ({kind}, {len(learned)} classes: {', '.join(learned[:10])})")
    return 0


def _learn(args: argparse.Namespace) -> int:
    check_input_file(args.checkpoint, "checkpoint", {".ckpt"}, fix=CHECKPOINT_HELP)
    if (args.data is None) == (args.names is None):
        raise CVMError("Pass --data DIR (classes with images) or --names A,B (new classes by name only), not both.")
    if args.names is not None:
        if args.names_file is not None or args.eval_data is not None or args.eval_new is not None:
            raise CVMError("--names adds classes without images: --names-file, --eval-data and --eval-new go with "
                           "--data.")
        check_class_names(args.names, what="--names")
        from cvm_lightning.deploy.learn import learn_names

        out = learn_names(args.checkpoint, args.names, out=args.out, overwrite=args.overwrite)
        print(f"Added {', '.join(args.names)} by name; wrote {out} ({args.checkpoint} is unchanged). "
              "They are predicted from now on; teach them with images later through --data.")
        return 0
    check_input_folder(args.data, "folder of images to learn", fix="It holds train/<class>/<image> (and optionally "
                                                               "test/<class>/<image>), or <class>/<image>.")
    if args.names_file is not None:
        check_input_file(args.names_file, "class-names file", fix="It holds folder<TAB>name[<TAB>description] lines.")
    if args.eval_data is not None:
        check_input_folder(
            args.eval_data, "--eval-data folder", fix="It holds <class name>/<image> of the old classes."
        )
    if args.eval_new is not None:
        check_input_folder(args.eval_new, "--eval-new folder", fix="It holds <class name>/<image> under the new "
                                                                  "conditions.")
    from cvm_lightning.deploy.learn import learn_images

    report = learn_images(
        args.checkpoint, args.data, names_file=args.names_file, eval_data=args.eval_data, eval_new=args.eval_new,
        epochs=args.epochs, batch_size=args.batch_size, shots=args.shots, method=args.method, lr=args.learn_lr,
        without_memory=args.without_memory, out=args.out, seed=args.seed,
    )
    learned = [f"{', '.join(report.new_classes)} (new)"] if report.new_classes else []
    learned += [f"{', '.join(report.known_classes)} (new images of known classes)"] if report.known_classes else []
    print(f"Learned {' and '.join(learned)}; wrote {report.checkpoint} ({args.checkpoint} is unchanged)")
    if not report.scores:
        print("(nothing scored: add DATA/test/<class>/, --eval-data or --eval-new to see accuracy before and after)")
        return 0
    width = max(map(len, report.scores))
    print(f"{'accuracy'.ljust(width)}  before   after")
    for label, (before, after) in report.scores.items():
        print(f"{label.ljust(width)}  {before:6.3f}  {after:6.3f}")
    if report.new_classes:
        print("(before the update the model had no output for the classes it adds: their images counted as wrong)")
    return 0


def _predict(args: argparse.Namespace) -> int:
    monitor = args.monitor or args.reference is not None
    if monitor and args.reference is None:
        raise CVMError("--monitor needs --reference DIR: held-out images of the learned classes to compare with.")
    check_input_file(
        args.model, "model file", {".ckpt", ".onnx", *MODEL_SUFFIXES["torchscript"]},
        fix="Pass a .ckpt checkpoint, a TorchScript (.pt) or an .onnx file from `cvm export`.",
    )
    if args.reference is not None:
        check_input_folder(args.reference, "--reference folder")
    if args.output is not None:
        check_output_file(
            args.output, inputs=[args.model, *args.paths], overwrite=args.overwrite, suffixes=PREDICTION_SUFFIXES,
            what="predictions file", flag="--output",
        )
    from cvm_lightning.deploy.predict import image_files, predict_files

    files = image_files(args.paths)
    report = predict_files(
        args.model, files, batch_size=args.batch_size, reference=args.reference if monitor else None,
        z_threshold=args.z_threshold, classes=args.classes,
    )
    if args.output is None:
        for row in report.rows:
            print(f"{row['path']}\t{row['class_name']}\t{row['similarity']:.4f}")
    else:
        report.write(args.output)
        print(f"Wrote {len(report.rows)} predictions to {args.output}")
    for line in report.drift_lines():
        print(line)
    for bad in report.unreadable:  # on the line one bad frame must not stop the others: named and skipped
        print(f"cvm: skipped an unreadable image: {bad}", file=sys.stderr)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from cvm_lightning.deploy.serving.config import ServeConfig
    from cvm_lightning.deploy.serving.server import serve

    config = ServeConfig(**{setting.name: getattr(args, setting.name) for setting in fields(ServeConfig)})

    def ready(url: str, model) -> None:
        names = model.predictor.class_names
        print(f"cvm serve: {model.name} (version {model.version[:12]}, {len(names)} classes: "
              f"{', '.join(names[:8])}{' ...' if len(names) > 8 else ''}) on {url} with {config.workers} "
              f"worker(s); status page {url}/, Ctrl-C stops", flush=True)

    try:
        serve(config, on_ready=ready)
    except Interrupted as stop:  # the normal way to stop a server: requests in flight were answered
        print(f"cvm serve: stopped ({signal_name(stop.signum)}) after answering the requests in flight", flush=True)
    return 0


def _benchmarks(args: argparse.Namespace) -> int:
    from cvm_lightning.streams.registry import BENCHMARKS

    width = max(map(len, BENCHMARKS))
    kind_width = max(len(entry.kind) for entry in BENCHMARKS.values())
    for name, entry in sorted(BENCHMARKS.items()):
        print(f"{name.ljust(width)}  {entry.kind.ljust(kind_width)}  {entry.description}; --augment {entry.augment}")
    return 0


def _protocols(args: argparse.Namespace) -> int:
    from cvm_lightning.app.protocols import get_protocol, protocols_text

    if args.name is not None:
        get_protocol(args.name)
    if args.yaml:
        if args.name is None:
            raise CVMError("--yaml prints one preset: name it, as in `cvm protocols clb-split-cifar10 --yaml`.")
        from cvm_lightning.app.run_config import fit_config_yaml

        print(fit_config_yaml(args.name), end="")
        return 0
    print(protocols_text(args.name))
    return 0


def _info(args: argparse.Namespace) -> int:
    from cvm_lightning.app.info import report

    print(report())
    return 0


COMMANDS = {
    "info": _info,
    "run": _run,
    "export": _export,
    "predict": _predict,
    "learn": _learn,
    "serve": _serve,
    "benchmarks": _benchmarks,
    "protocols": _protocols,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cvm`` console script."""
    from_sys_argv = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    lightning = bool(argv) and argv[0] in LIGHTNING_COMMANDS
    args = None if lightning else build_parser().parse_args(argv)
    # Lightning's own pytree helper calls a torch API that newer torch deprecates; nothing a user can change.
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated", module="pytorch_lightning")
    # Lightning's start-up notes (accelerators found, tips for its cloud products, "fit stopped")
    # say nothing about a CPU run of this tool; its warnings still show.
    logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)
    try:
        with interruptible():
            if lightning:
                from cvm_lightning.app.lightning_cli import run_lightning_cli

                try:
                    run_lightning_cli(argv, from_sys_argv)
                except SystemExit as done:  # --help and --print_config end here
                    return int(done.code or 0)
                return 0
            check_settings(vars(args))
            return COMMANDS[args.command](args)
    except (Interrupted, KeyboardInterrupt) as stop:  # KeyboardInterrupt: a Ctrl-C before the handler was set
        line, code = interrupted_line(stop)
        print(line, file=sys.stderr)
        return code
    except CVMError as err:
        print(f"cvm: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader of the output (`| head`) stopped reading: nothing is left to say
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python flushes stdout again at exit
        return 0
    except OSError as err:  # the file system refused a write: full, read-only or not allowed
        output = next((getattr(args, name) for name in ("out", "output", "resume") if getattr(args, name, None)), None)
        message = space_error(err, output)
        if message is None:
            raise
        print(f"cvm: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
