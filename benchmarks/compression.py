"""``codl bench compression`` (:mod:`codl.bench.compression`): prune + k-means share + .codl files:
LeNet-5 and LeNet-300-100.

    python benchmarks/compression.py [options]    # --help lists them

Writes into benchmarks/results/ unless ``--out`` says otherwise.
"""

import sys
from pathlib import Path

from codl.bench import run_program

if __name__ == "__main__":
    results = Path(__file__).resolve().parent / "results"
    sys.exit(run_program("compression", sys.argv[1:], results_dir=results))
