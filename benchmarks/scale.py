"""``codl bench scale`` (:mod:`codl.bench.scale`): projected step time and scaling efficiency of
SGD and distributed K-FAC from 2 to 100,000 nodes, K-FAC's bytes against KAISA's, and with
``--validate`` the projection against 2 and 4 rate-limited processes.

    python benchmarks/scale.py [options]    # --help lists them

Writes into benchmarks/results/ unless ``--out`` says otherwise.
"""

import sys
from pathlib import Path

from codl.bench import run_program

if __name__ == "__main__":
    results = Path(__file__).resolve().parent / "results"
    sys.exit(run_program("scale", sys.argv[1:], results_dir=results))
