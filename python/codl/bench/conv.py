"""Direct int8/ternary convolution (:mod:`codl.kernels.conv`) against codl's frozen
:class:`~codl.nn.ternary.FrozenTernaryConv2d` (im2col + per-row activation quantization + the
ternary GEMM) and torch's float32 ``conv2d``, at LeNet-5 and FashionCNN layer shapes.

Each row times one layer, float32 NCHW in and out (the direct path quantizes the activations
once per call and applies scale and bias in its epilogue), after checking that the direct and
frozen paths agree with torch to within int8 quantization error. Run it as
``python -m codl.bench.conv [--threads 1 2] [--repeat N]``; it prints medians with their
interquartile ranges and the 1-minute load average of each row.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from codl import _ops
from codl.bench.timing import Timing, load_average, measure
from codl.kernels import conv as cv
from codl.nn.ternary import TernaryConv2d


@dataclass(frozen=True)
class Layer:
    name: str
    in_channels: int
    size: int
    out_channels: int
    kernel: int
    padding: int


LAYERS = [
    Layer("lenet conv1", 1, 28, 6, 5, 2),
    Layer("lenet conv2", 6, 14, 16, 5, 0),
    Layer("fashion conv1", 1, 28, 32, 3, 1),
    Layer("fashion conv2", 32, 14, 64, 3, 1),
]


def _candidates(layer: Layer, batch: int) -> dict[str, Callable[[], torch.Tensor]]:
    torch.manual_seed(0)
    float_layer = TernaryConv2d(
        layer.in_channels, layer.out_channels, layer.kernel, padding=layer.padding
    )
    frozen = float_layer.freeze()
    ternary = float_layer.ternary_weight()
    codes = ternary.codes.to(torch.int8)
    scale = ternary.scale.to(torch.float32).expand(layer.out_channels).contiguous()
    assert float_layer.bias is not None  # nn.Conv2d has a bias by default
    bias = float_layer.bias.detach().to(torch.float32).contiguous()
    weight = cv.pack_conv_weight(codes, "ternary2")
    dense = (codes.float() * scale[:, None, None, None]).contiguous()
    x = torch.randn(batch, layer.in_channels, layer.size, layer.size)
    padding = layer.padding
    with torch.no_grad():
        reference = F.conv2d(x, dense, bias, padding=padding)
        for name, out in (
            ("direct", cv.conv2d_int8(x, weight, scale, bias, padding=padding)),
            ("frozen", frozen(x)),
        ):
            error = float((out - reference).abs().max() / reference.abs().max())
            if error > 0.05:
                raise RuntimeError(f"{layer.name}: {name} differs from torch by {error:.3f}")
    return {
        "direct": lambda: cv.conv2d_int8(x, weight, scale, bias, padding=padding),
        "frozen": lambda: frozen(x),
        "torch": lambda: F.conv2d(x, dense, bias, padding=padding),
    }


def run(
    threads: Sequence[int] = (1, 2), batches: Sequence[int] = (1, 64), repeat: int = 15
) -> None:
    print(
        f"{'layer':<14} {'batch':>5} {'thr':>3}  {'direct ms':>16} {'frozen ms':>16} "
        f"{'torch fp32 ms':>16}  {'vs frozen':>9} {'vs torch':>8}  load"
    )
    for layer in LAYERS:
        for batch in batches:
            fns = _candidates(layer, batch)
            for count in threads:
                with _ops.using_threads(count), torch.no_grad():
                    timings: dict[str, Timing] = {
                        name: measure(fn, repeat) for name, fn in fns.items()
                    }
                direct = timings["direct"].median_ms
                cells = "".join(f" {t.median_ms:9.4f} ±{t.iqr_ms:6.4f}" for t in timings.values())
                print(
                    f"{layer.name:<14} {batch:>5} {count:>3} {cells}  "
                    f"{timings['frozen'].median_ms / direct:8.2f}x "
                    f"{timings['torch'].median_ms / direct:7.2f}x  {load_average():.2f}",
                    flush=True,
                )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args(argv)
    run(args.threads, args.batch, args.repeat)


if __name__ == "__main__":
    main()
