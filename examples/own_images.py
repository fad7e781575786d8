"""Your own photos: DIR/train/<class>/*, DIR/test/<class>/* (class names from folders or classes.txt).

    python examples/own_images.py --data-root DIR [any `cvm run` flag, e.g. --epochs 3 --strategies cvm,replay]

Prints the results table and writes results.json, results.md and plots to --out.
"""

from _common import run_benchmark

if __name__ == "__main__":
    run_benchmark('imagefolder', ['--n-experiences', '2'])
