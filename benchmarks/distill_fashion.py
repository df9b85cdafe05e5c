"""``codl bench distill_fashion`` (:mod:`codl.bench.distill_fashion`): knowledge distillation of a
tiny CNN on Fashion-MNIST.

    python benchmarks/distill_fashion.py [options]    # --help lists them

Writes into benchmarks/results/ unless ``--out`` says otherwise.
"""

import sys
from pathlib import Path

from codl.bench import run_program

if __name__ == "__main__":
    results = Path(__file__).resolve().parent / "results"
    sys.exit(run_program("distill_fashion", sys.argv[1:], results_dir=results))
