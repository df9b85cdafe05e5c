"""Frozen ternary weights and the ``codl::ternary_linear`` operator against independent torch
computations, on every dispatch level this CPU runs."""

from __future__ import annotations

import pytest
import torch

import codl
from codl import _ops
from codl.ternary.packed import PackedTernaryWeight, pack_weight, ternary_conv2d, ternary_linear
from int8_reference import quantize_rows_int8

LEVELS = list(_ops.native_info()["isas_runnable"])  # type: ignore[call-overload]


def random_weight(
    out_features: int, in_features: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(-1, 2, (out_features, in_features), dtype=torch.int8, generator=generator)
    alpha = torch.rand(out_features, generator=generator) + 0.25
    return codes, alpha


def quantized_reference(
    x: torch.Tensor, codes: torch.Tensor, alpha: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """Per-row absmax int8 quantization (round half to even), exact integer products, float64."""
    q, scale = quantize_rows_int8(x.reshape(-1, x.shape[-1]))
    scale = scale.to(torch.float64)
    dots = (q @ codes.to(torch.int64).T).to(torch.float64)
    y = scale * alpha.to(torch.float64) * dots
    if bias is not None:
        y = y + bias.to(torch.float64)
    return y.reshape(*x.shape[:-1], codes.shape[0])


@pytest.mark.parametrize(("out_features", "in_features"), [(1, 1), (5, 127), (37, 300), (64, 1024)])
def test_pack_weight_round_trips_codes_and_scales(out_features: int, in_features: int) -> None:
    codes, alpha = random_weight(out_features, in_features)
    weight = pack_weight(codes, alpha)
    assert weight.out_features == out_features and weight.in_features == in_features
    assert torch.equal(weight.unpack(), codes)
    assert torch.equal(weight.dequantize(), alpha[:, None] * codes.to(torch.float32))
    assert weight.packed.shape == (out_features, -(-in_features // 128) * 32)


def test_weight_memory_is_at_least_15_9_times_smaller_than_float32() -> None:
    codes, alpha = random_weight(4096, 4096)
    assert 4 * codes.numel() / pack_weight(codes, alpha).nbytes() >= 15.9


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    ("batch", "in_features", "out_features"), [(1, 300, 37), (8, 128, 9), (70, 257, 20)]
)
def test_ternary_linear_matches_the_quantized_reference(
    level: str, threads: int, batch: int, in_features: int, out_features: int
) -> None:
    codl.set_num_threads(threads)
    try:
        codes, alpha = random_weight(out_features, in_features, seed=batch)
        bias = torch.linspace(-1, 1, out_features)
        x = torch.randn(batch, in_features, generator=torch.Generator().manual_seed(1)) * 3
        x[0, :] = 0.0  # an all-zero row takes the scale-1 path
        y = ternary_linear(x, pack_weight(codes, alpha), bias)
        expected = quantized_reference(x, codes, alpha, bias)
        torch.testing.assert_close(y.to(torch.float64), expected, rtol=1e-5, atol=1e-5)
        dense = x @ (alpha[:, None] * codes.to(torch.float32)).T + bias
        assert (y - dense).norm() <= 0.02 * dense.norm()
    finally:
        codl.set_num_threads(None)


def test_every_level_gives_the_same_floats() -> None:
    codes, alpha = random_weight(33, 500)
    weight = pack_weight(codes, alpha)
    x = torch.randn(13, 500)
    before = codl.get_dispatch_level()
    try:
        outputs = []
        for name in LEVELS:
            codl.set_dispatch_level(name)
            outputs.append(ternary_linear(x, weight))
    finally:
        codl.set_dispatch_level(before)
    for other in outputs[1:]:
        assert torch.equal(other, outputs[0])


def test_leading_dimensions_are_kept() -> None:
    codes, alpha = random_weight(6, 40)
    weight = pack_weight(codes, alpha)
    x = torch.randn(2, 3, 40)
    y = ternary_linear(x, weight)
    assert y.shape == (2, 3, 6)
    assert torch.equal(y.reshape(6, 6), ternary_linear(x.reshape(6, 40), weight))


def test_scalar_alpha_applies_to_every_row() -> None:
    codes, _ = random_weight(4, 16)
    weight = pack_weight(codes, 0.5)
    assert torch.equal(weight.alpha, torch.full((4,), 0.5))


def test_runs_under_torch_compile_and_appears_in_export() -> None:
    codes, alpha = random_weight(16, 64)
    weight = pack_weight(codes, alpha)
    bias = torch.randn(16)

    class Frozen(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(ternary_linear(x, weight, bias))

    module = Frozen()
    x = torch.randn(4, 64)
    compiled = torch.compile(module, fullgraph=True, backend="eager")
    assert torch.equal(compiled(x), module(x))
    exported = torch.export.export(module, (x,))
    targets = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    assert any("codl.ternary_linear" in t for t in targets), targets


def test_non_finite_activations_are_reported() -> None:
    codes, alpha = random_weight(4, 16)
    weight = pack_weight(codes, alpha)
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = torch.randn(3, 16)
        x[2, 5] = bad
        with pytest.raises(ValueError, match="x: expected finite values, received NaN or Inf"):
            ternary_linear(x, weight)


def test_bad_inputs_raise_clear_errors() -> None:
    codes, alpha = random_weight(4, 16)
    weight = pack_weight(codes, alpha)
    with pytest.raises(ValueError, match=r"x: expected shape \(\.\.\., 16\), received \(3, 15\)"):
        ternary_linear(torch.randn(3, 15), weight)
    with pytest.raises(TypeError, match=r"x: expected a float32 tensor, received torch\.float64"):
        ternary_linear(torch.randn(3, 16, dtype=torch.float64), weight)
    with pytest.raises(ValueError, match=r"bias: expected float32 of shape \(4,\)"):
        ternary_linear(torch.randn(3, 16), weight, torch.zeros(5))
    with pytest.raises(
        TypeError, match=r"codes: expected a 2-D torch\.int8 tensor, received torch\.int32"
    ):
        pack_weight(codes.to(torch.int32), alpha)
    with pytest.raises(ValueError, match=r"codes: expected values in \{-1, 0, 1\}, received 2"):
        pack_weight(torch.full((2, 3), 2, dtype=torch.int8), 1.0)
    with pytest.raises(ValueError, match="alpha: expected a scalar or 4 values, received 3"):
        pack_weight(codes, torch.ones(3))
    with pytest.raises(ValueError, match="alpha: expected finite scales"):
        pack_weight(codes, torch.tensor([1.0, float("nan"), 1.0, 1.0]))
    with pytest.raises(
        ValueError, match=r"codes: expected a non-empty weight, received shape \(0, 16\)"
    ):
        pack_weight(torch.zeros(0, 16, dtype=torch.int8), 1.0)
    with pytest.raises(ValueError, match="packed: expected 32 bytes per row for in_features=16"):
        PackedTernaryWeight(torch.zeros(4, 16, dtype=torch.uint8), torch.ones(4), 16)


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation"),
    [
        ((3, 3), (1, 1), (1, 1), (1, 1)),
        ((5, 5), (1, 1), (2, 2), (1, 1)),
        ((3, 2), (2, 1), (0, 1), (2, 1)),
    ],
)
def test_ternary_conv2d_matches_conv2d_with_the_quantized_reference(
    level: str,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> None:
    generator = torch.Generator().manual_seed(3)
    codes = torch.randint(-1, 2, (8, 3, *kernel), dtype=torch.int8, generator=generator)
    alpha = torch.rand(8, generator=generator) + 0.5
    bias = torch.randn(8, generator=generator)
    x = torch.randn(2, 3, 12, 11, generator=generator)
    weight = pack_weight(codes.reshape(8, -1), alpha)
    y = ternary_conv2d(x, weight, bias, kernel, stride, padding, dilation)
    dense = torch.nn.functional.conv2d(
        x, alpha[:, None, None, None] * codes.to(torch.float32), bias, stride, padding, dilation
    )
    assert y.shape == dense.shape
    patches = torch.nn.functional.unfold(x, kernel, dilation, padding, stride).transpose(1, 2)
    expected = quantized_reference(patches, codes.reshape(8, -1), alpha, bias)
    expected = expected.permute(0, 2, 1).reshape(dense.shape)
    torch.testing.assert_close(y.to(torch.float64), expected, rtol=1e-5, atol=1e-5)
    assert (y - dense).norm() <= 0.02 * dense.norm()


def test_ternary_conv2d_rejects_mismatched_channels() -> None:
    codes = torch.ones(4, 3 * 9, dtype=torch.int8)
    weight = pack_weight(codes, 1.0)
    with pytest.raises(ValueError, match="expected 3 input channels for this weight, received 2"):
        ternary_conv2d(torch.randn(1, 2, 8, 8), weight, None, (3, 3))
    with pytest.raises(ValueError, match=r"expected a 4-D \(N, C, H, W\) tensor"):
        ternary_conv2d(torch.randn(2, 8, 8), weight, None, (3, 3))


def test_a_0b11_field_is_rejected_by_the_linear_operators_with_its_row(level: str) -> None:
    # 0b11 maps to no code; the kernels used to compute with it as a code of +2 (int8 path)
    # or garbage (float path). Rows 2 (inside in_features) and 4 (in the row padding past
    # in_features = 100): the first is named on every thread count.
    codes, alpha = random_weight(6, 100)
    x = torch.randn(5, 100)
    for activations in ("int8", "float"):
        weight = pack_weight(codes, alpha, activations=activations)  # type: ignore[arg-type]
        packed = weight.packed.clone()
        packed[4, 3] |= 0x0C
        packed[2, 31] |= 0xC0  # byte 31 of a 32-byte row: values 31 + 96 = 127 (padding)
        for threads in (1, 2):
            previous = codl.get_num_threads()
            codl.set_num_threads(threads)
            try:
                with pytest.raises(ValueError, match="received 0b11 in weight row 2 "):
                    ternary_linear(
                        x,
                        PackedTernaryWeight(packed, alpha, 100, activations=activations),  # type: ignore[arg-type]
                    )
            finally:
                codl.set_num_threads(previous)
        op = (
            torch.ops.codl.ternary_linear
            if activations == "int8"
            else torch.ops.codl.ternary_linear_f32act
        )
        with pytest.raises(ValueError, match="0b11 in weight row 2 "):
            op(x, packed, alpha, 100, None)
        # The untouched weight still matches the reference: the check rejects nothing valid.
        if activations == "int8":
            torch.testing.assert_close(
                ternary_linear(x, weight).double(),
                quantized_reference(x, codes, alpha, None),
                rtol=1e-5,
                atol=1e-5,
            )


def test_a_weight_written_in_place_after_a_valid_call_is_checked_again() -> None:
    # The code check runs once per weight tensor and version: an in-place write after a call
    # that passed must not slip through the cache.
    codes, alpha = random_weight(3, 128)
    weight = pack_weight(codes, alpha)
    x = torch.randn(2, 128)
    first = ternary_linear(x, weight)
    assert torch.equal(ternary_linear(x, weight), first)  # cached: same bits
    weight.packed[1, 0] |= 0x03
    with pytest.raises(ValueError, match="0b11 in weight row 1 "):
        ternary_linear(x, weight)
    weight.packed[1, 0] &= 0xFE  # 0b11 -> 0b10: valid again
    ternary_linear(x, weight)


def test_unpack_rejects_0b11_in_the_tail_padding() -> None:
    codes = torch.ones(6, dtype=torch.int8)  # 6 values: the second byte has 2 padding fields
    packed = codl.kernels.pack_ternary(codes, format="2bit")
    assert packed.tolist() == [0xAA, 0x5A]  # +1 is 0b10; padding is code 0, 0b01
    assert torch.equal(codl.kernels.unpack_ternary(packed, (6,)), codes)
    for padding in (0x30, 0xC0, 0xF0):
        bad = packed.clone()
        bad[1] = (bad[1] & 0x0F) | padding
        with pytest.raises(ValueError, match="0b11"):
            codl.kernels.unpack_ternary(bad, (6,))


@pytest.mark.parametrize(
    ("stride", "padding", "dilation", "name"),
    [
        ((0, 1), (0, 0), (1, 1), "stride"),
        ((1, 0), (0, 0), (1, 1), "stride"),
        ((1, 1), (-1, 0), (1, 1), "padding"),
        ((1, 1), (0, 0), (0, 1), "dilation"),
    ],
)
def test_ternary_conv2d_rejects_bad_geometry_with_value_error(
    stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int], name: str
) -> None:
    weight = pack_weight(torch.ones(4, 3 * 9, dtype=torch.int8), 1.0)
    with pytest.raises(ValueError, match=f"{name}: expected a pair of integers"):
        ternary_conv2d(torch.randn(1, 3, 8, 8), weight, None, (3, 3), stride, padding, dilation)
    with pytest.raises(ValueError, match=f"{name}: expected a pair of integers"):
        codl.nn.FrozenTernaryConv2d(weight, None, 3, stride, padding, dilation)
    with pytest.raises(ValueError, match="at least the dilated kernel's size"):
        ternary_conv2d(torch.randn(1, 3, 2, 2), weight, None, (3, 3))
