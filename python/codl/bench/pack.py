"""Packing kernels against the same formats written with torch ops (codl.kernels.reference)."""

from __future__ import annotations

import torch

from codl import kernels
from codl.bench import Case, Result, run_cases
from codl.kernels import reference

DEFAULT_NUMEL = 16 * 1024 * 1024


def cases(numel: int) -> list[Case]:
    """Cases on ``numel`` random values and random codes."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(numel, generator=generator)
    codes = torch.randint(-1, 2, (numel,), dtype=torch.int8, generator=generator)
    return cases_for(x, codes)


def cases_for(x: torch.Tensor, codes: torch.Tensor) -> list[Case]:
    """Cases packing the signs of float32 ``x`` and the ternary ``codes`` (same numel)."""
    numel = x.numel()
    signs = kernels.pack_signs(x)
    packed2 = kernels.pack_ternary(codes, format="2bit")
    packed3 = kernels.pack_ternary(codes, format="base3")
    # Outputs are preallocated on the codl side, as a training loop would hold them.
    signs_out = torch.empty_like(signs)
    unsigned_out = torch.empty(numel)
    packed2_out, packed3_out = torch.empty_like(packed2), torch.empty_like(packed3)
    codes_out = torch.empty_like(codes)
    return [
        Case(
            "pack_signs",
            numel,
            lambda: kernels.pack_signs(x, out=signs_out),
            lambda: reference.pack_signs(x),
            torch.equal,
        ),
        Case(
            "unpack_signs",
            numel,
            lambda: kernels.unpack_signs(signs, numel, out=unsigned_out),
            lambda: reference.unpack_signs(signs, numel),
            torch.equal,
        ),
        Case(
            "pack_ternary 2bit",
            numel,
            lambda: kernels.pack_ternary(codes, format="2bit", out=packed2_out),
            lambda: reference.pack_ternary2(codes),
            torch.equal,
        ),
        Case(
            "unpack_ternary 2bit",
            numel,
            lambda: kernels.unpack_ternary(packed2, numel, format="2bit", out=codes_out),
            lambda: reference.unpack_ternary2(packed2, numel),
            torch.equal,
        ),
        Case(
            "pack_ternary base3",
            numel,
            lambda: kernels.pack_ternary(codes, format="base3", out=packed3_out),
            lambda: reference.pack_ternary3(codes),
            torch.equal,
        ),
        Case(
            "unpack_ternary base3",
            numel,
            lambda: kernels.unpack_ternary(packed3, numel, format="base3", out=codes_out),
            lambda: reference.unpack_ternary3(packed3, numel),
            torch.equal,
        ),
    ]


def run(*, size: int | None, repeat: int, threads: int, progress: bool) -> list[Result]:
    """``size``: values per case (default 16M)."""
    return run_cases("pack", cases(size or DEFAULT_NUMEL), repeat, threads, progress)
