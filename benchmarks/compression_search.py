"""``codl bench compression_search`` (:mod:`codl.bench.compression_search`): per-layer compression-
plan search against the best uniform plan.

    python benchmarks/compression_search.py [options]    # --help lists them

Writes into benchmarks/results/ unless ``--out`` says otherwise.
"""

import sys
from pathlib import Path

from codl.bench import run_program

if __name__ == "__main__":
    results = Path(__file__).resolve().parent / "results"
    sys.exit(run_program("compression_search", sys.argv[1:], results_dir=results))
