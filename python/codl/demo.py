"""``codl demo``: the main job. Shows what codl knows of this machine, then runs each capability
on real data (Fashion-MNIST) against its plain-torch equivalent. Each capability adds a section
to ``SECTIONS``; each stays well under a minute on the shipped data.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from codl.bench import median_ms

Section = Callable[["DemoContext"], None]


class DemoContext:
    """What sections share: the data location and one cached load of the test split."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self._test: tuple[torch.Tensor, torch.Tensor] | None = None

    def test_split(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._test is None:
            from codl.data import load_fashion_mnist

            loaded = load_fashion_mnist("test", root=self.root)
            print(f"data: Fashion-MNIST test split, {loaded.source.num_examples} images "
                  f"from {loaded.source.kind} ({loaded.source.path})")
            self._test = (loaded.images, loaded.labels)
        return self._test


def _heading(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 70 - len(title)))


def section_info(_: DemoContext) -> None:
    import codl

    _heading("codl info")
    for key, value in codl.info().items():
        shown = ", ".join(map(str, value)) if isinstance(value, list) else value
        print(f"  {key:<16} {shown}")


def section_packing(context: DemoContext) -> None:
    from codl import _ops, kernels
    from codl.kernels import reference

    _heading("bit packing kernels on real data")
    images, _ = context.test_split()
    pixels = images.to(torch.float32) / 255.0
    # Deviation from the mean image: its signs are the 1-bit view a sign compressor sends, and
    # thresholding it as TWN does (delta = 0.7 mean |x|) gives ternary codes.
    deviation = (pixels - pixels.mean(0)).reshape(-1).contiguous()
    delta = 0.7 * deviation.abs().mean()
    codes = (torch.sign(deviation) * (deviation.abs() > delta)).to(torch.int8)
    n = deviation.numel()
    print(f"  {n:,} values ({images.shape[0]} images of 28x28); ternary sparsity "
          f"{(codes == 0).float().mean().item():.1%}; threads {_ops.get_num_threads()}, "
          f"dispatch {_ops.get_dispatch_level()}")

    signs = kernels.pack_signs(deviation)
    packed2 = kernels.pack_ternary(codes, format="2bit")
    packed3 = kernels.pack_ternary(codes, format="base3")
    rows = [
        ("pack_signs", lambda: kernels.pack_signs(deviation), lambda: reference.pack_signs(deviation),
         4 * n, signs.numel()),
        ("unpack_signs", lambda: kernels.unpack_signs(signs, n), lambda: reference.unpack_signs(signs, n),
         signs.numel(), 4 * n),
        ("pack_ternary 2bit", lambda: kernels.pack_ternary(codes),
         lambda: reference.pack_ternary2(codes), n, packed2.numel()),
        ("unpack_ternary 2bit", lambda: kernels.unpack_ternary(packed2, n),
         lambda: reference.unpack_ternary2(packed2, n), packed2.numel(), n),
        ("pack_ternary base3", lambda: kernels.pack_ternary(codes, format="base3"),
         lambda: reference.pack_ternary3(codes), n, packed3.numel()),
        ("unpack_ternary base3", lambda: kernels.unpack_ternary(packed3, n, format="base3"),
         lambda: reference.unpack_ternary3(packed3, n), packed3.numel(), n),
    ]
    print(f"  {'kernel':<22} {'bytes in':>11} {'bytes out':>11} {'codl ms':>8} {'torch ms':>9} "
          f"{'speed-up':>8}  same result")
    for name, ours, theirs, bytes_in, bytes_out in rows:
        same = torch.equal(ours(), theirs())
        codl_ms, torch_ms = median_ms(ours, 5), median_ms(theirs, 5)
        print(f"  {name:<22} {bytes_in:>11,} {bytes_out:>11,} {codl_ms:>8.2f} {torch_ms:>9.2f} "
              f"{torch_ms / codl_ms:>7.1f}x  {'yes' if same else 'NO'}")
        if not same:
            raise RuntimeError(f"{name}: codl and torch disagree on real data")
    restored = kernels.unpack_signs(signs, n)
    assert torch.equal(restored, torch.where(torch.signbit(deviation), -1.0, 1.0))
    for fmt, packed in (("2bit", packed2), ("base3", packed3)):
        assert torch.equal(kernels.unpack_ternary(packed, n, format=fmt), codes)
        print(f"  ternary {fmt:<5}: {8 * packed.numel() / n:.2f} bits per weight, "
              f"{4 * n / packed.numel():.1f}x smaller than float32, round trip exact")


SECTIONS: list[Section] = [section_info, section_packing]


def main(root: Path | None = None) -> None:
    start = time.perf_counter()
    context = DemoContext(root)
    for section in SECTIONS:
        section(context)
    print(f"\ndemo finished in {time.perf_counter() - start:.1f} s")
