"""Run one benchmark and record it: `python benchmarks/run.py NAME [--dispatch LEVEL] [...]`.

Writes benchmarks/results/NAME-LEVEL.json (LEVEL: the dispatch level used), or
NAME-MODEL-DTYPE-LEVEL.json where formats' `--model` or `--dtype` is given (MODEL: minilm,
synthetic or the .safetensors file's stem; DTYPE: float32 unless given), so a real-model run
does not overwrite the synthetic one. The same as `codl bench NAME --json ...`; the cases live
in codl.bench so an installed codl runs them too.
"""

import sys
from pathlib import Path

import codl
from codl.cli import main


def option(options: list[str], name: str) -> str | None:
    """The value of `--name VALUE` or `--name=VALUE` in options (the last one), or None."""
    value = None
    for i, item in enumerate(options):
        if item == name and i + 1 < len(options):
            value = options[i + 1]
        elif item.startswith(name + "="):
            value = item.split("=", 1)[1]
    return value


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        sys.exit(
            f"usage: {sys.argv[0]} NAME [codl bench options] (see `codl bench --help`); "
            f"NAME, what it times and what --size means:\n{codl.bench.listing()}"
        )
    name, options = sys.argv[1], sys.argv[2:]
    level = option(options, "--dispatch") or codl.get_dispatch_level()
    model, dtype = option(options, "--model"), option(options, "--dtype")
    if model is not None or dtype is not None:
        model_name = Path(model).stem if model and model.endswith(".safetensors") else model
        name_parts = [name, model_name or "synthetic", dtype or "float32"]
    else:
        name_parts = [name]
    out = Path(__file__).resolve().parent / "results" / f"{'-'.join(name_parts)}-{level}.json"
    sys.exit(main(["bench", name, "--json", str(out), *options]))
