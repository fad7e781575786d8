"""Learning quality: strategies x seeds, and CVM ablations, as mean ± std tables.

    python benchmarks/quality.py --benchmark split-digits --seeds 0 1 2 --out runs/quality-digits
    python benchmarks/quality.py --benchmark split-cifar10 --data-root DIR --train-per-class 1000 \
        --buffer 500 --seeds 0 1 2 --ablations --out runs/quality-cifar10
    python benchmarks/quality.py --protocol clb-split-cifar10 --data-root DIR --seeds 0 1 2 --out runs/clb

Takes every flag of ``cvm run`` (backbone, buffer, epochs, ...), applied to
every strategy. ``--ablations`` adds CVM runs with each option off or swapped,
one at a time (see ``cvm_lightning.app.sweep.ABLATIONS``), including the control
with random concept vectors instead of language-model concepts. Writes
``quality.json`` and ``quality.md`` into ``--out``; finished cells are kept in
``--out/cells``, so running the same command again after a crash continues,
and changing a CVM-only option reruns CVM alone. ``accuracy_forgetting.png``
plots each strategy's final accuracy against its forgetting (with the
random-concepts control when it ran).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from cvm_lightning.app.cli import add_run_arguments, config_from_args
from cvm_lightning.app.reporting import plot_accuracy_forgetting, protocol_line
from cvm_lightning.app.sweep import ABLATIONS, markdown, run_cells, summary_rows
from cvm_lightning.atomic import atomic_write_text
from cvm_lightning.streams.registry import BENCHMARKS, LIFETIME


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    parser.add_argument("--ablations", action="store_true", help="also run CVM with each option off, one at a time")
    parser.add_argument("--only-ablations", nargs="+", default=None, help="run only the ablations whose name contains "
                                                                          "one of these words")
    parser.add_argument("--out", type=Path, default=Path("runs") / f"quality-{time.strftime('%Y%m%d-%H%M%S')}")
    args = parser.parse_args(argv)

    base = config_from_args(args)
    seeds = list(base.seeds or (0, 1, 2))  # cvm run's --seeds, three by default here
    base = replace(base, seeds=None)
    strategies = run_cells(base, seeds, {"default": {}}, args.out)["default"]
    rows = summary_rows({"default": strategies})
    ablation_rows = []
    if args.ablations or args.only_ablations:
        chosen = {
            name: changes
            for name, changes in ABLATIONS.items()
            if not args.only_ablations or any(word in name for word in args.only_ablations)
        }
        # Same cells folder: the defaults' CVM cells from the strategy table are reused, not rerun.
        cvm_only = replace(base, strategies=("cvm",))
        ablation_rows = summary_rows(run_cells(cvm_only, seeds, {"CVM defaults": {}, **chosen}, args.out))

    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(base).items() if k != "seed"}
    lifetime = BENCHMARKS[base.benchmark].kind == LIFETIME  # its first classes get a column of their own
    report = (f"# Quality: {base.benchmark}, seeds {seeds}\n\n{protocol_line({'protocol': base.protocol_report()})}\n\n"
              + markdown(rows, "strategy", lifetime) + "\n")
    if ablation_rows:
        ablation_table = markdown(ablation_rows, "variant", lifetime)
        report += f"\n## CVM ablations (one option changed at a time)\n\n{ablation_table}\n"
    report += f"\nCommand: `python benchmarks/quality.py {shlex.join(sys.argv[1:] if argv is None else argv)}`\n"
    atomic_write_text(args.out / "quality.md", report)
    control = [{**row, "strategy": "cvm, random concepts", "label": "cvm, random concepts"}
               for row in ablation_rows if row["variant"].startswith("random concepts")]
    frozen = " (frozen)" if base.freeze_backbone else ""
    plot_accuracy_forgetting(rows + control, args.out / "accuracy_forgetting.png",
                             f"{base.protocol or base.benchmark}, {base.backbone}{frozen}: "
                             f"mean ± std over seeds {', '.join(map(str, seeds))}")
    atomic_write_text(
        args.out / "quality.json",
        json.dumps({"config": config, "seeds": seeds, "strategies": rows, "ablations": ablation_rows}, indent=2),
    )
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
