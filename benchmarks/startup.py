"""How long the ``cvm`` command takes to answer before any work: help, bad flags, bad values, listing.

    python benchmarks/startup.py [--repeats 5] [--json out.json]

Each command runs in a fresh Python process (as a user types it), and the
table gives the median wall time over ``--repeats`` runs, side by side in
one run, next to ``python -c pass`` (the interpreter alone) and
``import torch`` (what the command line avoids).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile

from _report import median_seconds, table, write_json

COMMANDS = {
    "python -c pass (interpreter alone)": ["-c", "pass"],
    "python -c 'import torch' (for scale)": ["-c", "import torch"],
    "cvm --help": ["-m", "cvm_lightning", "--help"],
    "cvm run --help": ["-m", "cvm_lightning", "run", "--help"],
    "cvm benchmarks": ["-m", "cvm_lightning", "benchmarks"],
    "cvm run --bogus (unknown flag)": ["-m", "cvm_lightning", "run", "--bogus"],
    "cvm run --lr -0.1 (bad value)": ["-m", "cvm_lightning", "run", "--lr", "-0.1"],
    "cvm predict --batch-size 0 (bad value)": [
        "-m",
        "cvm_lightning",
        "predict",
        "--model",
        "m.pt",
        "x",
        "--batch-size",
        "0",
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as cwd:
        for label, argv in COMMANDS.items():
            def once(argv=argv):
                subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, check=False)

            once()  # warm the file cache
            rows.append({"command": label, "median s": f"{median_seconds(once, args.repeats):.3f}"})
    print(table(rows, ["command", "median s"]))
    write_json(args.json, {"rows": rows})


if __name__ == "__main__":
    main()
