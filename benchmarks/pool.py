"""``codl bench pool`` (:mod:`codl.bench.pool`): codl's thread pool on LeNet-5-size
ternary layers, at 1 and 2 threads, quiet and contended.

    python benchmarks/pool.py [options]    # --help lists them

Writes into benchmarks/results/ unless ``--out`` says otherwise.
"""

import sys
from pathlib import Path

from codl.bench import run_program

if __name__ == "__main__":
    results = Path(__file__).resolve().parent / "results"
    sys.exit(run_program("pool", sys.argv[1:], results_dir=results))
