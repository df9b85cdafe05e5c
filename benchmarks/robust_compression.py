"""``codl bench robust_compression`` (:mod:`codl.bench.robust_compression`): clean and PGD accuracy
of compressed and adversarially tuned models.

    python benchmarks/robust_compression.py [options]    # --help lists them

Writes into benchmarks/results/ unless ``--out`` says otherwise.
"""

import sys
from pathlib import Path

from codl.bench import run_program

if __name__ == "__main__":
    results = Path(__file__).resolve().parent / "results"
    sys.exit(run_program("robust_compression", sys.argv[1:], results_dir=results))
