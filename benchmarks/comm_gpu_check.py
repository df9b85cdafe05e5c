"""``codl bench comm_gpu_check`` (:mod:`codl.bench.comm_gpu_check`): codl.comm on CUDA tensors
against the same calls on CPU tensors.

    python benchmarks/comm_gpu_check.py [options]    # --help lists them

Writes ``--out`` (default ./comm_gpu_check.json); exits 1 if a check failed.
"""

import sys

from codl.bench import run_program

if __name__ == "__main__":
    sys.exit(run_program("comm_gpu_check", sys.argv[1:]))
