"""``codl bench sequence_kd`` (:mod:`codl.bench.sequence_kd`): sequence-level knowledge distillation
(Kim and Rush 2016) on a toy task.

    python benchmarks/sequence_kd.py [options]    # --help lists them

Writes into benchmarks/results/ unless ``--out`` says otherwise.
"""

import sys
from pathlib import Path

from codl.bench import run_program

if __name__ == "__main__":
    results = Path(__file__).resolve().parent / "results"
    sys.exit(run_program("sequence_kd", sys.argv[1:], results_dir=results))
