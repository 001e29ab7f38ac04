"""Draw the PNG plots of benchmark result files (one per op × mode):

    python benchmarks/plot.py benchmarks/results/<stamp>_<device>.json [more files] [--out DIR]

Plots go next to each result file unless ``--out`` is given.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout runs without installing

from dlkern.bench.report import plot  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="result files (.json or .csv) written by dlkern bench")
    parser.add_argument("--out", help="folder for the PNGs (default: next to each result file)")
    args = parser.parse_args(argv)
    for path in args.results:
        for png in plot(path, args.out):
            print(png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
