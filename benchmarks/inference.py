"""``codl bench inference`` (:mod:`codl.bench.inference`): whole-model CPU inference of codl's
frozen ternary models against torch, torch.compile, torch int8, ONNX Runtime and OpenVINO.

    python benchmarks/inference.py [options]    # --help lists them

Writes into benchmarks/results/ unless ``--out`` says otherwise.
"""

import sys
from pathlib import Path

from codl.bench import run_program

if __name__ == "__main__":
    results = Path(__file__).resolve().parent / "results"
    sys.exit(run_program("inference", sys.argv[1:], results_dir=results))
