"""``codl bench time_to_accuracy`` (:mod:`codl.bench.time_to_accuracy`): time to accuracy on
Fashion-MNIST: SGD, Adam (torch) and K-FAC (codl).

    python benchmarks/time_to_accuracy.py [options]    # --help lists them

Writes into benchmarks/results/ unless ``--out`` says otherwise.
"""

import sys
from pathlib import Path

from codl.bench import run_program

if __name__ == "__main__":
    results = Path(__file__).resolve().parent / "results"
    sys.exit(run_program("time_to_accuracy", sys.argv[1:], results_dir=results))
