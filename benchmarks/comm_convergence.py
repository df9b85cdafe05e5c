"""``codl bench comm_convergence`` (:mod:`codl.bench.comm_convergence`): compressed DDP training on
Fashion-MNIST: accuracy against bytes sent.

    python benchmarks/comm_convergence.py [options]    # --help lists them

Writes into benchmarks/results/ unless ``--out`` says otherwise.
"""

import sys
from pathlib import Path

from codl.bench import run_program

if __name__ == "__main__":
    results = Path(__file__).resolve().parent / "results"
    sys.exit(run_program("comm_convergence", sys.argv[1:], results_dir=results))
