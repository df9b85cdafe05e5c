"""Packing kernels vs plain torch at 16M values; writes benchmarks/results/pack.json.

Same as `codl bench pack --json benchmarks/results/pack.json`; the cases live in codl.bench.pack
so that an installed codl can run them too.
"""

import sys
from pathlib import Path

from codl.cli import main

if __name__ == "__main__":
    out = Path(__file__).resolve().parent / "results" / "pack.json"
    sys.exit(main(["bench", "pack", "--json", str(out), *sys.argv[1:]]))
