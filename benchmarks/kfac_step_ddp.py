"""``codl bench kfac_step_ddp`` (:mod:`codl.bench.kfac_step_ddp`): distributed K-FAC's step
against distributed SGD's, amortized over its update periods.

    python benchmarks/kfac_step_ddp.py [options]    # --help lists them

Writes into benchmarks/results/ unless ``--out`` says otherwise.
"""

import sys
from pathlib import Path

from codl.bench import run_program

if __name__ == "__main__":
    results = Path(__file__).resolve().parent / "results"
    sys.exit(run_program("kfac_step_ddp", sys.argv[1:], results_dir=results))
