"""``codl bench spectral_vs_l1`` (:mod:`codl.bench.spectral_vs_l1`): spectral pruning against L1
channel pruning at the same kept widths.

    python benchmarks/spectral_vs_l1.py [options]    # --help lists them

Writes into benchmarks/results/ unless ``--out`` says otherwise.
"""

import sys
from pathlib import Path

from codl.bench import run_program

if __name__ == "__main__":
    results = Path(__file__).resolve().parent / "results"
    sys.exit(run_program("spectral_vs_l1", sys.argv[1:], results_dir=results))
