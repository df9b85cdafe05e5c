"""``codl bench large_batch`` (:mod:`codl.bench.large_batch`): large mini-batches on Fashion-MNIST:
where K-FAC keeps its accuracy.

    python benchmarks/large_batch.py [options]    # --help lists them

Writes into benchmarks/results/ unless ``--out`` says otherwise.
"""

import sys
from pathlib import Path

from codl.bench import run_program

if __name__ == "__main__":
    results = Path(__file__).resolve().parent / "results"
    sys.exit(run_program("large_batch", sys.argv[1:], results_dir=results))
