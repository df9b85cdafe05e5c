"""``codl bench comm_validation`` (:mod:`codl.bench.comm_validation`): the link model's projected
step times against measured DDP steps.

    python benchmarks/comm_validation.py [options]    # --help lists them

Writes into benchmarks/results/ unless ``--out`` says otherwise.
"""

import sys
from pathlib import Path

from codl.bench import run_program

if __name__ == "__main__":
    results = Path(__file__).resolve().parent / "results"
    sys.exit(run_program("comm_validation", sys.argv[1:], results_dir=results))
