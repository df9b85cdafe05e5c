"""Deep-Compression-style pipeline on LeNet-5 and LeNet-300-100, packed as ``.codl`` files.

    python benchmarks/compression.py [--models lenet5 lenet300100] [--data full|subset]
        [--epochs 8] [--prune-epochs 6] [--quant-epochs 2] [--threads 2] [--keep-files DIR]

For each model: train the float baseline on Fashion-MNIST, prune each layer to its sparsity
with an AGP ramp while fine-tuning, share the kept weights through per-layer k-means codebooks
with codebook fine-tuning, save with ``codl.save``; check that ``codl.load`` returns the model
bit for bit and measure the accuracy of a fresh model loaded from the file. Reports the sizes of
the float32 ``torch.save`` file, its ``gzip -9`` and the ``.codl`` file, the ratio (goal >= 40x,
stretch >= 90x) and the accuracy drop (goal <= 0.5 points). The recipes (per-layer sparsity and
bits) and the pipeline are in :mod:`codl.bench.compression`.

Prints a Markdown table and writes benchmarks/results/compression.json (quick runs:
compression-quick.json). Smoke run of every phase on the shipped subset (< 1 minute):
``--data subset --quick``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from codl.bench.compression import main

RESULTS = Path(__file__).resolve().parent / "results"

if __name__ == "__main__":
    quick = "--quick" in sys.argv[1:]
    main(default_out=RESULTS / ("compression-quick.json" if quick else "compression.json"))
