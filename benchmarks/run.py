"""Run one benchmark and record it: `python benchmarks/run.py NAME [--dispatch LEVEL] [...]`.

Writes benchmarks/results/NAME-LEVEL.json (LEVEL: the dispatch level used). The same as
`codl bench NAME --json ...`; the cases live in codl.bench so an installed codl runs them too.
"""

import sys
from pathlib import Path

import codl
from codl.cli import main

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        sys.exit(
            f"usage: {sys.argv[0]} NAME [codl bench options] (see `codl bench --help`); "
            f"NAME, what it times and what --size means:\n{codl.bench.listing()}"
        )
    name, options = sys.argv[1], sys.argv[2:]
    level = (
        options[options.index("--dispatch") + 1]
        if "--dispatch" in options
        else codl.get_dispatch_level()
    )
    out = Path(__file__).resolve().parent / "results" / f"{name}-{level}.json"
    sys.exit(main(["bench", name, "--json", str(out), *options]))
