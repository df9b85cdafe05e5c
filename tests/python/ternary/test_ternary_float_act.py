"""Float activations with packed ternary weights (``activations="float"``): the
``codl::ternary_linear_f32act`` operator against a float64 product of the unpacked weight, on
every dispatch level this CPU runs, and its plumbing through ``freeze`` and ``TernaryConfig``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import codl
from codl import _ops
from codl.nn import FrozenTernaryLinear, TernaryLinear, freeze
from codl.ternary.packed import PackedTernaryWeight, pack_weight, ternary_conv2d, ternary_linear

LEVELS = list(_ops.native_info()["isas_runnable"])  # type: ignore[call-overload]

# Float32 sums of K exact products x_k * c_k are within K * 2^-24 * sum_k |x_k| of the exact
# sum in any order (Higham, "Accuracy and Stability of Numerical Algorithms", 2002, eq. 4.4);
# relative to the result the error is unbounded (cancellation), so the bound is relative to
# |alpha| * sum_k |x_k|. The worst case at K = 1000 is 6e-5; 1e-5 is what is asserted.
TOLERANCE = 1e-5


def random_weight(
    out_features: int, in_features: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(-1, 2, (out_features, in_features), dtype=torch.int8, generator=generator)
    alpha = torch.rand(out_features, generator=generator) + 0.25
    return codes, alpha


def assert_within_float_tolerance(
    y: torch.Tensor,
    x: torch.Tensor,
    codes: torch.Tensor,
    alpha: torch.Tensor,
    bias: torch.Tensor | None,
) -> None:
    rows = x.reshape(-1, x.shape[-1]).double()
    exact = rows @ (alpha.double()[:, None] * codes.double()).T
    if bias is not None:
        exact = exact + bias.double()
    bound = TOLERANCE * rows.abs().sum(1, keepdim=True) * alpha.double() + 1e-7 * exact.abs()
    error = (y.reshape(exact.shape).double() - exact).abs()
    assert bool((error <= bound).all()), float((error / bound).max())


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(
    ("batch", "in_features", "out_features"),
    [(1, 1, 3), (1, 300, 37), (8, 128, 9), (64, 257, 20), (70, 1000, 17)],
)
def test_float_activations_match_a_float64_product(
    level: str, threads: int, batch: int, in_features: int, out_features: int
) -> None:
    codl.set_num_threads(threads)
    try:
        codes, alpha = random_weight(out_features, in_features, seed=batch)
        bias = torch.linspace(-1, 1, out_features)
        x = torch.randn(batch, in_features, generator=torch.Generator().manual_seed(1)) * 3
        x[0, :1] = 0.0
        weight = pack_weight(codes, alpha, activations="float")
        y = ternary_linear(x, weight, bias)
        assert_within_float_tolerance(y, x, codes, alpha, bias)
    finally:
        codl.set_num_threads(None)


def test_float_activations_are_far_closer_than_int8() -> None:
    codes, alpha = random_weight(64, 1024)
    x = torch.randn(16, 1024, generator=torch.Generator().manual_seed(4))
    exact = x.double() @ (alpha.double()[:, None] * codes.double()).T
    float_error = (ternary_linear(x, pack_weight(codes, alpha, activations="float")) - exact).norm()
    int8_error = (ternary_linear(x, pack_weight(codes, alpha)) - exact).norm()
    # int8 rounding of x costs about 1e-2 relative; float32 sums about 1e-7.
    assert float(float_error) < 1e-5 * float(exact.norm())
    assert float(float_error) * 100 < float(int8_error)


def test_thread_counts_give_identical_floats_on_each_level(level: str) -> None:
    codes, alpha = random_weight(45, 700)
    weight = pack_weight(codes, alpha, activations="float")
    x = torch.randn(70, 700, generator=torch.Generator().manual_seed(2))
    outputs = []
    try:
        for threads in (1, 2, 3):
            codl.set_num_threads(threads)
            outputs.append(ternary_linear(x, weight))
    finally:
        codl.set_num_threads(None)
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(outputs[0], outputs[2])


def test_conv2d_with_float_activations_matches_conv2d(level: str) -> None:
    generator = torch.Generator().manual_seed(3)
    codes = torch.randint(-1, 2, (8, 3, 3, 3), dtype=torch.int8, generator=generator)
    alpha = torch.rand(8, generator=generator) + 0.5
    bias = torch.randn(8, generator=generator)
    x = torch.randn(2, 3, 12, 11, generator=generator)
    weight = pack_weight(codes.reshape(8, -1), alpha, activations="float")
    y = ternary_conv2d(x, weight, bias, (3, 3), (1, 1), (1, 1))
    dense = torch.nn.functional.conv2d(
        x.double(), alpha.double()[:, None, None, None] * codes.double(), bias.double(), 1, 1
    )
    torch.testing.assert_close(y.double(), dense, rtol=1e-5, atol=1e-5)


def test_runs_under_torch_compile_and_appears_in_export() -> None:
    codes, alpha = random_weight(16, 64)
    weight = pack_weight(codes, alpha, activations="float")
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
    assert any("codl.ternary_linear_f32act" in t for t in targets), targets
    assert torch.equal(exported.module()(x), module(x))


def test_freeze_and_config_choose_the_activations() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 10))
    codl.quantize_(
        model, codl.TernaryConfig(activations="float", overrides={"2": codl.TernaryConfig()})
    )
    first, last = model[0], model[2]
    assert isinstance(first, TernaryLinear) and first.activations == "float"
    assert isinstance(last, TernaryLinear) and last.activations == "int8"
    frozen = freeze(model)
    assert frozen[0].weight.activations == "float" and frozen[2].weight.activations == "int8"
    everything_int8 = freeze(model, activations="int8")
    assert everything_int8[0].weight.activations == "int8"
    layer = first.freeze(activations="int8")
    assert isinstance(layer, FrozenTernaryLinear) and layer.weight.activations == "int8"
    # Both layers float: the frozen model computes what the training model computes.
    everything_float = freeze(model, activations="float")
    x = torch.randn(5, 40)
    with torch.no_grad():
        expected = model.eval()(x)
        assert (everything_float(x) - expected).norm() <= 1e-5 * expected.norm()
        assert (frozen(x) - expected).norm() > 1e-4 * expected.norm()  # int8 in layer 2


def test_float_frozen_layer_equals_the_training_layer_forward() -> None:
    torch.manual_seed(1)
    layer = TernaryLinear(300, 20, activations="float")
    x = torch.randn(7, 300)
    frozen = layer.freeze()
    assert frozen.weight.activations == "float"
    with torch.no_grad():
        result = layer.ternary_weight()
        codes = result.codes.to(torch.int8)
        alpha = result.scale.to(torch.float32).expand(20)
        assert layer.bias is not None
        assert_within_float_tolerance(frozen(x), x, codes, alpha, layer.bias.detach())


def test_bad_inputs_raise_clear_errors() -> None:
    codes, alpha = random_weight(4, 16)
    weight = pack_weight(codes, alpha, activations="float")
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = torch.randn(3, 16)
        x[1, 7] = bad
        with pytest.raises(ValueError, match="x: expected finite values, received NaN or Inf"):
            ternary_linear(x, weight)
    with pytest.raises(ValueError, match=r"x: expected shape \(\.\.\., 16\), received \(3, 17\)"):
        ternary_linear(torch.randn(3, 17), weight)
    with pytest.raises(TypeError, match=r"x: expected a float32 tensor, received torch\.float16"):
        ternary_linear(torch.randn(3, 16).half(), weight)
    with pytest.raises(ValueError, match=r"activations: expected one of \('int8', 'float'\)"):
        pack_weight(codes, alpha, activations="fp16")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"activations: expected 'int8' with packing='base3'"):
        pack_weight(codes, alpha, packing="base3", activations="float")
    with pytest.raises(ValueError, match=r"activations: expected 'int8' or 'float', received 'x'"):
        codl.TernaryConfig(activations="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"activations: expected 'int8' or 'float', received 'x'"):
        TernaryLinear(4, 4, activations="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"activations: expected one of"):
        freeze(TernaryLinear(4, 4), activations="bf16")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="packed: expected 32 bytes per row"):
        PackedTernaryWeight(
            torch.zeros(4, 20, dtype=torch.uint8), torch.ones(4), 16, "2bit", "float"
        )


def test_binding_checks_buffers() -> None:
    codes, alpha = random_weight(4, 16)
    weight = pack_weight(codes, alpha, activations="float")
    out = torch.empty(3, 4)
    with pytest.raises(ValueError, match=r"out: expected 12 elements \(rows \* out_features\)"):
        _ops.ternary_linear_f32act(torch.randn(3, 16), weight.packed, weight.alpha, None, out[:2])
    with pytest.raises(ValueError, match=r"packed: expected 128 elements"):
        _ops.ternary_linear_f32act(torch.randn(3, 16), weight.packed[:3], weight.alpha, None, out)
    with pytest.raises(ValueError, match=r"bias: expected 4 elements \(out_features\)"):
        _ops.ternary_linear_f32act(
            torch.randn(3, 16), weight.packed, weight.alpha, torch.zeros(5), out
        )
