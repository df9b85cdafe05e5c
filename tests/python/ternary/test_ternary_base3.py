"""Base-3 (1.6-bit) packed ternary weights in the inference path (``packing="base3"``): the
``codl::ternary_linear_base3`` operator decodes the trits in registers and must give the 2-bit
path's floats bit for bit, and an int64 torch reference's integer dots, on every dispatch level
this CPU runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import codl
from codl import _ops, kernels
from codl.nn import freeze
from codl.ternary.packed import (
    PackedTernaryWeight,
    pack_weight,
    padded_in_features,
    ternary_conv2d,
    ternary_linear,
)
from int8_reference import quantize_rows_int8

LEVELS = list(_ops.native_info()["isas_runnable"])  # type: ignore[call-overload]


def random_weight(
    out_features: int, in_features: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(-1, 2, (out_features, in_features), dtype=torch.int8, generator=generator)
    alpha = torch.rand(out_features, generator=generator) + 0.25
    return codes, alpha


def int64_reference(
    x: torch.Tensor, codes: torch.Tensor, alpha: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """Per-row absmax int8 quantization (round half to even), int64 dots, float64 scaling."""
    q, scale = quantize_rows_int8(x)
    y = scale.double() * alpha.double() * (q @ codes.to(torch.int64).T).double()
    return y if bias is None else y + bias.double()


@pytest.mark.parametrize(("out_features", "in_features"), [(1, 1), (5, 159), (37, 161), (3, 4096)])
def test_base3_weight_round_trips_and_is_smaller(out_features: int, in_features: int) -> None:
    codes, alpha = random_weight(out_features, in_features)
    weight = pack_weight(codes, alpha, packing="base3")
    assert weight.packing == "base3"
    assert weight.packed.shape == (out_features, -(-in_features // 160) * 32)
    assert padded_in_features(in_features, "base3") == -(-in_features // 160) * 160
    assert torch.equal(weight.unpack(), codes)
    # The packed rows are the codl.kernels base-3 layout of the zero-padded rows.
    padded = torch.zeros(out_features, padded_in_features(in_features, "base3"), dtype=torch.int8)
    padded[:, :in_features] = codes
    flat = kernels.pack_ternary(padded, format="base3")
    assert torch.equal(weight.packed.reshape(-1), flat)


def test_base3_weight_memory_is_about_20_times_smaller_than_float32() -> None:
    codes, alpha = random_weight(4096, 4096)
    base3 = pack_weight(codes, alpha, packing="base3").nbytes()
    two_bit = pack_weight(codes, alpha).nbytes()
    assert 4 * codes.numel() / base3 >= 19.5
    assert 4 * codes.numel() / two_bit < 16


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(
    ("batch", "in_features", "out_features"),
    [(1, 1, 3), (1, 300, 37), (8, 160, 9), (64, 161, 20), (70, 1000, 17)],
)
def test_base3_equals_the_2bit_path_and_the_int64_reference(
    level: str, threads: int, batch: int, in_features: int, out_features: int
) -> None:
    codl.set_num_threads(threads)
    try:
        codes, alpha = random_weight(out_features, in_features, seed=batch)
        bias = torch.linspace(-1, 1, out_features)
        x = torch.randn(batch, in_features, generator=torch.Generator().manual_seed(1)) * 3
        x[0, :] = 0.0  # an all-zero row takes the scale-1 path
        y = ternary_linear(x, pack_weight(codes, alpha, packing="base3"), bias)
        assert torch.equal(y, ternary_linear(x, pack_weight(codes, alpha), bias))
        expected = int64_reference(x, codes, alpha, bias)
        torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)
    finally:
        codl.set_num_threads(None)


def test_every_byte_value_decodes_as_the_unpacker_says(level: str) -> None:
    # 8 rows of one 160-value block (32 bytes each): the 256 byte values, every trit of each.
    packed = torch.arange(256, dtype=torch.int32).to(torch.uint8).reshape(8, 32)
    codes = kernels.unpack_ternary(packed.reshape(-1), (8, 160), format="base3")
    weight = PackedTernaryWeight(packed, torch.ones(8), 160, "base3")
    # Activation rows e_i, scaled by 127 so that int8 quantization keeps them exact.
    y = ternary_linear(torch.eye(160) * 127.0, weight)
    assert torch.equal(y, codes.T.to(torch.float32) * 127.0)


def test_conv2d_with_base3_equals_2bit(level: str) -> None:
    generator = torch.Generator().manual_seed(3)
    codes = torch.randint(-1, 2, (8, 3, 5, 5), dtype=torch.int8, generator=generator)
    alpha = torch.rand(8, generator=generator) + 0.5
    bias = torch.randn(8, generator=generator)
    x = torch.randn(2, 3, 12, 11, generator=generator)
    rows = codes.reshape(8, -1)
    base3 = ternary_conv2d(
        x, pack_weight(rows, alpha, packing="base3"), bias, (5, 5), (1, 1), (2, 2)
    )
    two_bit = ternary_conv2d(x, pack_weight(rows, alpha), bias, (5, 5), (1, 1), (2, 2))
    assert torch.equal(base3, two_bit)


def test_runs_under_torch_compile_and_appears_in_export() -> None:
    codes, alpha = random_weight(16, 64)
    weight = pack_weight(codes, alpha, packing="base3")
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
    assert any("codl.ternary_linear_base3" in t for t in targets), targets
    assert torch.equal(exported.module()(x), module(x))


def test_freeze_with_base3_gives_the_2bit_outputs() -> None:
    from codl.models import LeNet5

    torch.manual_seed(0)
    model = codl.quantize_(LeNet5(), codl.TernaryConfig()).eval()
    base3 = freeze(model, packing="base3")
    two_bit = freeze(model)
    weights = [
        m.weight
        for m in base3.modules()
        if isinstance(getattr(m, "weight", None), PackedTernaryWeight)
    ]
    assert weights and all(w.packing == "base3" for w in weights)
    images = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(base3(images), two_bit(images))
    layer = codl.nn.TernaryLinear(200, 7)
    frozen = layer.freeze(packing="base3")
    assert frozen.weight.packing == "base3" and frozen.weight.packed.shape == (7, 64)


def test_export_c_accepts_base3_and_rejects_float_activations(tmp_path: Path) -> None:
    model = nn.Sequential(codl.nn.TernaryLinear(20, 6))
    codl.ternary.export_c(freeze(model, packing="base3"), torch.randn(1, 20), tmp_path, "base3_net")
    header = (tmp_path / "base3_net_weights.h").read_text()
    assert "uint8_t" in header
    with pytest.raises(ValueError, match="keeps float activations"):
        codl.ternary.export_c(freeze(model, activations="float"), torch.randn(1, 20), tmp_path, "f")


def test_bad_inputs_raise_clear_errors() -> None:
    codes, alpha = random_weight(4, 16)
    weight = pack_weight(codes, alpha, packing="base3")
    with pytest.raises(ValueError, match="x: expected finite values, received NaN or Inf"):
        ternary_linear(torch.tensor([[float("nan")] * 16]), weight)
    with pytest.raises(ValueError, match=r"x: expected shape \(\.\.\., 16\), received \(3, 15\)"):
        ternary_linear(torch.randn(3, 15), weight)
    with pytest.raises(ValueError, match=r"packing: expected one of \('2bit', 'base3'\)"):
        pack_weight(codes, alpha, packing="1bit")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"packing: expected one of"):
        freeze(codl.nn.TernaryLinear(4, 4), packing="3bit")  # type: ignore[arg-type]
    with pytest.raises(
        ValueError,
        match=r"packed: expected 32 bytes per row for in_features=16 and packing='base3'",
    ):
        PackedTernaryWeight(torch.zeros(4, 4, dtype=torch.uint8), torch.ones(4), 16, "base3")
    out = torch.empty(3, 4)
    with pytest.raises(ValueError, match=r"packed: expected 128 elements \(out_features rows of"):
        _ops.ternary3_linear_f32(torch.randn(3, 16), weight.packed[:2], weight.alpha, None, out)
