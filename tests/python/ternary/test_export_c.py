"""The C export compiled with gcc and run: its outputs against PyTorch's."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from codl.ternary.export_c import export_c
from codl.ternary.packed import pack_weight, ternary_conv2d, ternary_linear

MAIN_C = r"""
#include <stdio.h>
#include "model.h"
int main(void) {
    float input[MODEL_INPUT_SIZE], output[MODEL_OUTPUT_SIZE];
    if (fread(input, sizeof(float), MODEL_INPUT_SIZE, stdin) != MODEL_INPUT_SIZE) return 1;
    model_forward(input, output);
    fwrite(output, sizeof(float), MODEL_OUTPUT_SIZE, stdout);
    return 0;
}
"""


class FrozenLinear(torch.nn.Module):
    """Minimal frozen ternary layers, as the exporter sees them (weight is packed)."""

    def __init__(self, out_features: int, in_features: int, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        codes = torch.randint(
            -1, 2, (out_features, in_features), dtype=torch.int8, generator=generator
        )
        self.weight = pack_weight(codes, torch.rand(out_features, generator=generator) + 0.5)
        self.bias = torch.randn(out_features, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ternary_linear(x, self.weight, self.bias)


class FrozenConv(torch.nn.Module):
    def __init__(
        self, out_channels: int, in_channels: int, kernel: int, padding: int, seed: int
    ) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        codes = torch.randint(
            -1,
            2,
            (out_channels, in_channels * kernel * kernel),
            dtype=torch.int8,
            generator=generator,
        )
        self.weight = pack_weight(codes, torch.rand(out_channels, generator=generator) + 0.5)
        self.bias = torch.randn(out_channels, generator=generator)
        self.kernel_size, self.stride, self.padding, self.dilation = (
            (kernel, kernel),
            (1, 1),
            (padding, padding),
            (1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ternary_conv2d(
            x, self.weight, self.bias, self.kernel_size, self.stride, self.padding
        )


def compile_and_run(model: torch.nn.Module, example: torch.Tensor, directory: Path) -> torch.Tensor:
    gcc = shutil.which("gcc")
    assert gcc is not None, "the C export test needs gcc"
    export_c(model, example, directory, name="model")
    (directory / "main.c").write_text(MAIN_C)
    program = directory / "model"
    subprocess.run(
        [
            gcc,
            "-std=c11",
            "-O2",
            "-Wall",
            "-Werror",
            "-o",
            str(program),
            "main.c",
            "model.c",
            "-lm",
        ],
        cwd=directory,
        check=True,
        capture_output=True,
        timeout=120,
    )
    result = subprocess.run(
        [str(program)], input=example.numpy().tobytes(), capture_output=True, check=True, timeout=60
    )
    return torch.frombuffer(bytearray(result.stdout), dtype=torch.float32)


def test_ternary_only_model_matches_pytorch_bit_for_bit(tmp_path: Path) -> None:
    model = torch.nn.Sequential(
        FrozenConv(6, 2, 3, 1, seed=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        FrozenConv(5, 6, 3, 0, seed=2),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        FrozenLinear(7, 5 * 3 * 3, seed=3),
    )
    example = torch.randn(1, 2, 10, 10, generator=torch.Generator().manual_seed(0))
    expected = model(example).reshape(-1)
    assert torch.equal(compile_and_run(model, example, tmp_path), expected)


def test_mixed_float_and_ternary_model_matches_pytorch(tmp_path: Path) -> None:
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.ReLU(),
        FrozenConv(6, 4, 3, 1, seed=4),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2, 2),
        torch.nn.Flatten(),
        FrozenLinear(12, 6 * 4 * 4, seed=5),
        torch.nn.ReLU(),
        torch.nn.Linear(12, 3),
    )
    example = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(example).reshape(-1)
    # Float layers sum in a different order than torch's GEMM; int8 rounding can then flip by
    # one step where a value sits on a rounding boundary, so compare to int8 precision.
    torch.testing.assert_close(
        compile_and_run(model, example, tmp_path), expected, rtol=2e-2, atol=2e-2
    )


def test_unsupported_layers_are_named(tmp_path: Path) -> None:
    model = torch.nn.Sequential(FrozenLinear(4, 8, seed=0), torch.nn.Sigmoid())
    with pytest.raises(ValueError, match=r"node _1 \(call_module Sigmoid\) is not supported"):
        export_c(model, torch.randn(1, 8), tmp_path)


def test_bad_arguments(tmp_path: Path) -> None:
    model = torch.nn.Sequential(FrozenLinear(4, 8, seed=0))
    with pytest.raises(ValueError, match="name: expected a C identifier"):
        export_c(model, torch.randn(1, 8), tmp_path, name="not valid")
    with pytest.raises(ValueError, match="example: expected a float32 tensor with batch size 1"):
        export_c(model, torch.randn(2, 8), tmp_path)
