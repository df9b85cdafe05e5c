"""``codl bench comm_vs_torch_hooks`` (:mod:`codl.bench.comm_vs_torch_hooks`): codl's DDP hook
against torch's hooks on an emulated slow link.

    python benchmarks/comm_vs_torch_hooks.py [options]    # --help lists them

Writes into benchmarks/results/ unless ``--out`` says otherwise.
"""

import sys
from pathlib import Path

from codl.bench import run_program

if __name__ == "__main__":
    results = Path(__file__).resolve().parent / "results"
    sys.exit(run_program("comm_vs_torch_hooks", sys.argv[1:], results_dir=results))
