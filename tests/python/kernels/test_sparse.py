"""codl.kernels.sparse and codl.prune.to_sparse against a dense torch computation on the
dequantized weight and int8-quantized activations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from codl import _ops
from codl.kernels.sparse import (
    PANEL_MAX_SPARSITY,
    PanelSparseWeight,
    SparseWeight,
    dequantize_sparse,
    pack_sparse,
    sparse_linear,
    worth_sparse,
)
from codl.prune import SparseLinear, to_sparse
from int8_reference import quantize_rows_int8


def pruned(out_features: int, in_features: int, sparsity: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_features, in_features, generator=g)
    w[torch.rand(out_features, in_features, generator=g) < sparsity] = 0
    return w


def reference(
    x: torch.Tensor, packed: SparseWeight | PanelSparseWeight, bias: torch.Tensor | None
) -> torch.Tensor:
    """Per-row absmax int8 quantization of x (round half to even), exact int64 products with the
    int8 values, scaled as the kernel does (float32 product of the two scales, then bias)."""
    q, x_scale = quantize_rows_int8(x.reshape(-1, packed.in_features))
    codes = torch.round(dequantize_sparse(packed) / packed.scale[:, None]).to(torch.int64)
    dots = (q @ codes.T).float()
    y = dots * (x_scale * packed.scale[None, :])
    return y if bias is None else y + bias


@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (100, 300), (256, 3136 // 7), (10, 1025)])
@pytest.mark.parametrize("batch", [1, 3, 4, 65])
@pytest.mark.parametrize("layout", ["blocks", "panels"])
def test_sparse_linear_matches_dense_on_dequantized_weight(
    shape: tuple[int, int], batch: int, layout: str
) -> None:
    n, k = shape
    w = pruned(n, k, 0.9)
    packed = pack_sparse(w, layout=layout)
    bias = torch.randn(n)
    x = torch.randn(batch, k)
    y = sparse_linear(x, packed, bias)
    torch.testing.assert_close(y, reference(x, packed, bias), rtol=1e-6, atol=1e-5)
    # and close to the float layer: int8 weights and activations, each within half a step
    dense = x @ w.T + bias
    assert (y - dense).abs().max() <= 0.05 * dense.abs().max() + 1e-3


def test_threads_dispatch_levels_and_layouts_agree_bit_for_bit() -> None:
    w = pruned(70, 200, 0.95, seed=3)
    packed = pack_sparse(w, layout="blocks")
    panels = pack_sparse(w, layout="panels")
    x = torch.randn(70, 200)
    level = _ops.get_dispatch_level()
    want = sparse_linear(x, packed)
    try:
        for isa in ("scalar", "avx2", "avx512", "sve"):
            try:
                _ops.set_dispatch_level(isa)
            except ValueError:
                continue
            for threads in (1, 2):
                with _ops.using_threads(threads):
                    assert torch.equal(sparse_linear(x, packed), want)
                    assert torch.equal(sparse_linear(x[:1], packed), want[:1])
                    assert torch.equal(sparse_linear(x, panels), want)
                    assert torch.equal(sparse_linear(x[:3], panels), want[:3])
    finally:
        _ops.set_dispatch_level(level)


def test_pack_layout_and_ternary_codes() -> None:
    codes = torch.tensor(
        [[0, 0, 0, 0, 1, 0, 0, -1, 0], [0, 0, 0, 0, 0, 0, 0, 0, 1]], dtype=torch.int8
    )
    alpha = torch.tensor([0.5, 2.0])
    packed = pack_sparse(codes, alpha, layout="blocks")
    # row 0 keeps block 1 (features 4..7), row 1 block 2 (feature 8, padded with zeros)
    assert packed.row_ptr.tolist() == [0, 1, 2]
    assert packed.cols.to(torch.int32).tolist() == [1, 2]
    assert packed.values.tolist() == [1, 0, 0, -1, 1, 0, 0, 0]
    assert torch.equal(dequantize_sparse(packed), codes.float() * alpha[:, None])
    x = torch.tensor([[1.0, 2, 3, 4, 5, 6, 7, 8, 127]])
    assert sparse_linear(x, packed).tolist() == [[0.5 * (5 - 8), 2.0 * 127]]


def test_panel_layout_by_hand_and_auto_choice() -> None:
    # 18 rows: panels of rows 0..3, 4..7, .., 16..17; 6 features: 2 block columns, one step
    codes = torch.zeros(18, 6, dtype=torch.int8)
    codes[1, 0], codes[3, 2], codes[3, 5] = 1, -1, 1
    codes[17, 4] = -1
    scale = torch.linspace(0.5, 2.0, 18)
    panels = pack_sparse(codes, scale, layout="panels")
    assert isinstance(panels, PanelSparseWeight)
    # lane 4 * r + t: panel 0 keeps (row 1, column 0), (row 3, column 0), (row 3, column 1);
    # panel 4 keeps (row 17 = 4 * 4 + 1, column 1)
    assert panels.masks.to(torch.int32).tolist() == [1 << 4 | 1 << 12 | 1 << 13, 0, 0, 0, 1 << 5]
    assert panels.starts.tolist() == [0, 3, 3, 3, 3]
    assert panels.values.tolist() == [1, 0, 0, 0, 0, 0, -1, 0, 0, 1, 0, 0, -1, 0, 0, 0]
    assert torch.equal(dequantize_sparse(panels), codes.float() * scale[:, None])
    x = torch.tensor([[1.0, 2, 3, 4, 5, 127]])
    want = (x @ codes.float().T) * scale
    torch.testing.assert_close(sparse_linear(x, panels), want)
    # auto: panels up to PANEL_MAX_SPARSITY zeros, blocks above
    assert isinstance(pack_sparse(pruned(32, 64, 0.85)), PanelSparseWeight)
    assert isinstance(pack_sparse(pruned(32, 64, (1 + PANEL_MAX_SPARSITY) / 2)), SparseWeight)
    with pytest.raises(ValueError, match=r"layout: expected 'auto', 'blocks' or 'panels'"):
        pack_sparse(codes, scale, layout="csr")


def test_panel_layout_bad_input() -> None:
    packed = pack_sparse(pruned(18, 24, 0.5), layout="panels")  # 5 panels x 2 steps
    assert isinstance(packed, PanelSparseWeight)
    x = torch.randn(2, 24)

    def with_(**tensors: torch.Tensor) -> PanelSparseWeight:
        fields = {"masks": packed.masks, "starts": packed.starts, "values": packed.values}
        fields.update(tensors)
        return PanelSparseWeight(
            fields["masks"], fields["starts"], fields["values"], packed.scale, 24, 18
        )

    with pytest.raises(ValueError, match=r"packed.masks: expected 10 elements"):
        sparse_linear(x, with_(masks=packed.masks[:-1]))
    with pytest.raises(TypeError, match=r"packed.starts: expected dtype torch.int32"):
        sparse_linear(x, with_(starts=packed.starts.long()))
    with pytest.raises(ValueError, match=r"packed.values: expected a multiple of 4"):
        sparse_linear(x, with_(values=packed.values[:-1]))
    starts = packed.starts.clone()
    starts[2] += 1  # panel 1, step 0
    with pytest.raises(ValueError, match=r"received panel 1 \(rows 4..7\)"):
        sparse_linear(x, with_(starts=starts))
    masks = packed.masks.to(torch.int32)
    masks[9] |= 1 << 8  # panel 4, lane 8: row 18 of a weight with 18
    with pytest.raises(ValueError, match=r"masks naming rows below 18 .* received panel 4"):
        sparse_linear(x, with_(masks=masks.to(torch.uint16)))
    masks = packed.masks.to(torch.int32)
    masks[3] |= 1 << 2  # panel 1, step 1, lane 2: block column 6 of 6
    with pytest.raises(ValueError, match=r"block columns below 6.* received panel 1"):
        sparse_linear(x, with_(masks=masks.to(torch.uint16)))
    with pytest.raises(ValueError, match=r"received panel 4"):  # one block short in all
        sparse_linear(x, with_(values=packed.values[:-4]))
    # a fixed tensor passes again; written in place, it is checked again
    starts = packed.starts.clone()
    ok = with_(starts=starts)
    torch.testing.assert_close(sparse_linear(x, ok), sparse_linear(x, packed))
    starts[0] = -3
    with pytest.raises(ValueError, match=r"received panel 0"):
        sparse_linear(x, ok)


def test_to_sparse_layer_and_refusal_below_the_crossover() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(300, 100)
    layer.weight.data[layer.weight.abs() < layer.weight.abs().quantile(0.92)] = 0
    assert worth_sparse(layer.weight)
    sparse = to_sparse(layer)
    assert isinstance(sparse, SparseLinear) and sparse.sparsity >= 0.89
    x = torch.randn(8, 300)
    torch.testing.assert_close(
        sparse(x), x @ sparse.dense_weight().T + layer.bias, rtol=0.02, atol=0.02
    )
    with pytest.raises(ValueError, match=r"expected at least 90% zero weights"):
        to_sparse(nn.Linear(10, 10))
    assert to_sparse(nn.Linear(10, 10), force=True).sparsity < 0.1
    # both layouts as modules: the same outputs, and state_dict round trips
    blocks, panels = to_sparse(layer, layout="blocks"), to_sparse(layer, layout="panels")
    assert (blocks.layout, panels.layout) == ("blocks", "panels")
    assert torch.equal(blocks(x), panels(x))
    again = SparseLinear(pack_sparse(torch.zeros(100, 300), layout="panels"), torch.zeros(100))
    missing = r"Missing key\(s\) in state_dict: \"masks\", \"starts\""
    with pytest.raises(RuntimeError, match=missing):
        again.load_state_dict(blocks.state_dict())
    again = SparseLinear(pack_sparse(layer.weight.detach(), layout="panels"), layer.bias)
    again.values.zero_()
    again.load_state_dict(panels.state_dict())
    assert torch.equal(again(x), panels(x)) and "layout=panels" in repr(again)


def test_bad_input_raises_expected_vs_received() -> None:
    packed = pack_sparse(pruned(8, 20, 0.5), layout="blocks")
    assert isinstance(packed, SparseWeight)
    x = torch.randn(2, 20)

    def with_(**tensors: torch.Tensor) -> SparseWeight:
        fields = {"row_ptr": packed.row_ptr, "cols": packed.cols, "values": packed.values}
        fields.update(tensors)
        return SparseWeight(
            fields["row_ptr"], fields["cols"], fields["values"], packed.scale, 20, 8
        )

    with pytest.raises(TypeError, match=r"x: expected dtype torch.float32, received torch.float64"):
        sparse_linear(x.double(), packed)
    with pytest.raises(ValueError, match=r"x: expected shape \(..., 20\), received \(2, 21\)"):
        sparse_linear(torch.randn(2, 21), packed)
    with pytest.raises(ValueError, match=r"bias: expected a tensor of shape"):
        sparse_linear(x, packed, torch.zeros(7))
    with pytest.raises(ValueError, match=r"expected finite values"):
        sparse_linear(torch.full((1, 20), float("nan")), packed)
    with pytest.raises(TypeError, match=r"packed: expected a SparseWeight or PanelSparseWeight"):
        sparse_linear(x, "weights")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"cols: expected dtype torch.uint16, received torch.int32"):
        sparse_linear(x, with_(cols=packed.cols.int()))
    with pytest.raises(ValueError, match=r"packed.values: expected"):
        sparse_linear(x, with_(values=packed.values[:-4]))
    with pytest.raises(ValueError, match=r"packed.row_ptr: expected 9 elements"):
        sparse_linear(x, with_(row_ptr=packed.row_ptr[:-1]))
    bad_col = packed.cols.clone()
    bad_col[0] = 5  # 20 features are 5 blocks: columns 0..4
    with pytest.raises(ValueError, match=r"block columns below 5, received row 0"):
        sparse_linear(x, with_(cols=bad_col))
    bad_ptr = packed.row_ptr.clone()
    start, stop = int(bad_ptr[3]), int(bad_ptr[4])
    bad_ptr[3], bad_ptr[4] = stop + 1, start  # row 3 ends before it starts
    with pytest.raises(
        ValueError,
        match=r"row pointers rising .* received row 3 with row_ptr",
    ):
        sparse_linear(x, with_(row_ptr=bad_ptr))
    # a tensor fixed in place after a failed check is checked again
    cols = packed.cols.clone()
    ok = with_(cols=cols)
    sparse_linear(x, ok)
    cols[0] = 60000
    with pytest.raises(ValueError, match=r"block columns below 5"):
        sparse_linear(x, ok)
    with pytest.raises(ValueError, match=r"weight: expected a non-empty 2-D"):
        pack_sparse(torch.zeros(3))
    with pytest.raises(ValueError, match=r"scale: expected the per-row float32 scale"):
        pack_sparse(torch.zeros(3, 4, dtype=torch.int8))
    with pytest.raises(TypeError, match=r"expected a float or int8 tensor, received torch.int32"):
        pack_sparse(torch.zeros(3, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"weight: expected finite values"):
        pack_sparse(torch.full((3, 4), float("inf")))
