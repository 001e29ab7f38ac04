"""``python benchmarks/run.py [ops...] [options]`` is ``dlkern bench [ops...] [options]``.

The harness itself lives in ``dlkern/bench/``; see ``dlkern bench --help``.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout runs without installing

from dlkern.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
