"""``codl bench distill_patient`` (:mod:`codl.bench.distill_patient`): patient and consistent
distillation on Fashion-MNIST.

    python benchmarks/distill_patient.py [options]    # --help lists them

Writes into benchmarks/results/ unless ``--out`` says otherwise.
"""

import sys
from pathlib import Path

from codl.bench import run_program

if __name__ == "__main__":
    results = Path(__file__).resolve().parent / "results"
    sys.exit(run_program("distill_patient", sys.argv[1:], results_dir=results))
