"""K-FAC blocks against dense float64 references built independently of codl.optim.

References: factors from explicit per-row sums (``F.unfold`` for convolutions, per-example
autograd for norm layers), the Kronecker product formed with ``torch.kron`` and applied to the
column-major ``vec(∇W)``, and ``torch.linalg`` inverses / solves.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from codl.optim import KFACPreconditioner
from codl.optim.layers import LinearBlock

DAMPING = 1e-2
RTOL = 1e-5


def _vec(m: torch.Tensor) -> torch.Tensor:
    return m.mT.reshape(-1)  # column-major


def _unvec(v: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    return v.reshape(cols, rows).mT


def _pi_split(a: torch.Tensor, g: torch.Tensor, damping: float) -> tuple[float, float]:
    a_mean = float(a.diagonal().mean()) if a.dim() == 2 else float(a.mean())
    pi = math.sqrt(a_mean / float(g.diagonal().mean()))
    return pi * math.sqrt(damping), math.sqrt(damping) / pi


def _kron_inverse_apply(a: torch.Tensor, g: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """vec⁻¹((A⁻¹ ⊗ G⁻¹) vec(M)) with damped A, G already added: explicit Kronecker."""
    big = torch.kron(torch.linalg.inv(a).mT.contiguous(), torch.linalg.inv(g).contiguous())
    return _unvec(big @ _vec(m), m.shape[0], m.shape[1])


def _eigen_reference(a: torch.Tensor, g: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """The eigen method equals (A ⊗ G + λI)⁻¹ vec(M) exactly."""
    big = torch.kron(a, g) + DAMPING * torch.eye(a.shape[0] * g.shape[0], dtype=a.dtype)
    return _unvec(torch.linalg.solve(big, _vec(m)), m.shape[0], m.shape[1])


def _grad_matrix(module: nn.Module, weight_grad: torch.Tensor) -> torch.Tensor:
    w = weight_grad.reshape(weight_grad.shape[0], -1)
    bias = getattr(module, "bias", None)
    if bias is None:
        return w
    assert bias.grad is not None
    return torch.cat([w, bias.grad.reshape(-1, 1)], dim=1)


def _preconditioner(
    model: nn.Module, method: str = "inverse", **options: object
) -> KFACPreconditioner:
    return KFACPreconditioner(
        model,
        method=method,
        damping=DAMPING,
        factor_update_steps=1,
        inv_update_steps=1,
        kl_clip=None,
        **options,  # type: ignore[arg-type]
    )


def _assert_close(ours: torch.Tensor, reference: torch.Tensor) -> None:
    scale = float(reference.abs().max())
    assert float((ours - reference).abs().max()) <= RTOL * scale, (
        f"max error {float((ours - reference).abs().max()):.3e} against scale {scale:.3e}"
    )


# --------------------------------------------------------------------------------------------
# Linear
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch", [3, 20])  # 3 < out: factored gᵀ(ā A⁻¹); 20: dense product
@pytest.mark.parametrize("method", ["inverse", "eigen"])
def test_linear_preconditioned_gradient(bias: bool, batch: int, method: str) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(5, 7, bias=bias).double()
    precond = _preconditioner(layer, method)
    x = torch.randn(batch, 5, dtype=torch.float64)
    target = torch.randn(batch, 7, dtype=torch.float64)
    out = layer(x)
    out.retain_grad()
    F.mse_loss(out, target).backward()
    assert out.grad is not None
    m = _grad_matrix(layer, layer.weight.grad)  # type: ignore[arg-type]

    a_rows = torch.cat([x, torch.ones(batch, 1, dtype=x.dtype)], 1) if bias else x
    a = a_rows.mT @ a_rows / batch
    ds = out.grad * batch
    g = ds.mT @ ds / batch
    if method == "inverse":
        damping_a, damping_g = _pi_split(a, g, DAMPING)
        reference = _kron_inverse_apply(
            a + damping_a * torch.eye(a.shape[0], dtype=a.dtype),
            g + damping_g * torch.eye(7, dtype=a.dtype),
            m,
        )
    else:
        reference = _eigen_reference(a, g, m)

    block = precond.blocks[""]
    assert isinstance(block, LinearBlock)
    assert (block.factored_rows(1e-10) is not None) == (batch == 3)
    precond.step()
    _assert_close(block.factors["A"], a)
    _assert_close(block.factors["G"], g)
    _assert_close(_grad_matrix(layer, layer.weight.grad), reference)  # type: ignore[arg-type]


def test_linear_extra_gradient_term_falls_back_to_dense() -> None:
    """An L2 term in the loss makes .grad ≠ gᵀā: the Freivalds check must route to the dense
    product, which preconditions the whole gradient."""
    torch.manual_seed(1)
    layer = nn.Linear(6, 9).double()
    precond = _preconditioner(layer)
    x = torch.randn(2, 6, dtype=torch.float64)
    out = layer(x)
    out.retain_grad()
    (out.pow(2).mean() + 0.3 * layer.weight.pow(2).sum()).backward()
    assert out.grad is not None
    m = _grad_matrix(layer, layer.weight.grad)  # type: ignore[arg-type]
    a_rows = torch.cat([x, torch.ones(2, 1, dtype=x.dtype)], 1)
    a = a_rows.mT @ a_rows / 2
    ds = out.grad * 2
    g = ds.mT @ ds / 2
    damping_a, damping_g = _pi_split(a, g, DAMPING)
    reference = _kron_inverse_apply(
        a + damping_a * torch.eye(7, dtype=a.dtype), g + damping_g * torch.eye(9, dtype=a.dtype), m
    )
    block = precond.blocks[""]
    assert isinstance(block, LinearBlock)
    assert block.factored_rows(1e-10) is None  # without the L2 term it would be used
    precond.step()
    _assert_close(_grad_matrix(layer, layer.weight.grad), reference)  # type: ignore[arg-type]


def test_linear_on_sequences_counts_positions_as_rows() -> None:
    torch.manual_seed(2)
    layer = nn.Linear(4, 3).double()
    precond = _preconditioner(layer)
    x = torch.randn(5, 6, 4, dtype=torch.float64)  # 5 examples x 6 positions
    out = layer(x)
    out.retain_grad()
    out.pow(2).sum(dim=(1, 2)).mean().backward()
    assert out.grad is not None
    rows = torch.cat([x.reshape(-1, 4), torch.ones(30, 1, dtype=x.dtype)], 1)
    a = rows.mT @ rows / 30
    ds = out.grad.reshape(-1, 3) * 5
    g = ds.mT @ ds / 5
    precond.step()
    _assert_close(precond.blocks[""].factors["A"], a)
    _assert_close(precond.blocks[""].factors["G"], g)


# --------------------------------------------------------------------------------------------
# Conv2d
# --------------------------------------------------------------------------------------------

CONV_CASES = [
    {"stride": 1, "padding": 0, "dilation": 1},
    {"stride": 2, "padding": 1, "dilation": 1},
    {"stride": 1, "padding": 2, "dilation": 2},
    {"stride": (2, 1), "padding": (1, 0), "dilation": (1, 2)},
]


def _conv_reference_factors(
    conv: nn.Conv2d, x: torch.Tensor, out_grad: torch.Tensor, bias: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    batch = x.shape[0]
    patches = F.unfold(
        x,
        conv.kernel_size,
        dilation=conv.dilation,
        padding=conv.padding,
        stride=conv.stride,  # type: ignore[arg-type]
    )
    rows = patches.transpose(1, 2).reshape(-1, patches.shape[1])
    if bias:
        rows = torch.cat([rows, torch.ones(rows.shape[0], 1, dtype=rows.dtype)], 1)
    a = rows.mT @ rows / rows.shape[0]
    ds = out_grad.permute(0, 2, 3, 1).reshape(-1, out_grad.shape[1]) * batch
    g = ds.mT @ ds / batch
    return a, g


@pytest.mark.parametrize("geometry", CONV_CASES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("method", ["inverse", "eigen"])
def test_conv2d_factors_and_preconditioned_gradient(
    geometry: dict[str, object], bias: bool, method: str
) -> None:
    torch.manual_seed(3)
    conv = nn.Conv2d(2, 3, 3, bias=bias, **geometry).double()  # type: ignore[arg-type]
    precond = _preconditioner(conv, method)
    x = torch.randn(4, 2, 7, 6, dtype=torch.float64)
    out = conv(x)
    out.retain_grad()
    out.pow(2).sum(dim=(1, 2, 3)).mean().backward()
    assert out.grad is not None
    a, g = _conv_reference_factors(conv, x, out.grad, bias)
    m = _grad_matrix(conv, conv.weight.grad)  # type: ignore[arg-type]
    if method == "inverse":
        damping_a, damping_g = _pi_split(a, g, DAMPING)
        reference = _kron_inverse_apply(
            a + damping_a * torch.eye(a.shape[0], dtype=a.dtype),
            g + damping_g * torch.eye(3, dtype=a.dtype),
            m,
        )
    else:
        reference = _eigen_reference(a, g, m)
    precond.step()
    _assert_close(precond.blocks[""].factors["A"], a)
    _assert_close(precond.blocks[""].factors["G"], g)
    _assert_close(_grad_matrix(conv, conv.weight.grad), reference)  # type: ignore[arg-type]


@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_conv2d_same_padding() -> None:
    torch.manual_seed(4)
    conv = nn.Conv2d(1, 2, (3, 4), padding="same").double()
    precond = _preconditioner(conv)
    x = torch.randn(2, 1, 5, 5, dtype=torch.float64)
    out = conv(x)
    out.retain_grad()
    out.sum().backward()
    assert out.grad is not None
    # "same" with an even kernel pads (1, 2) on the width: pad explicitly for the reference.
    padded = F.pad(x, conv._reversed_padding_repeated_twice)
    patches = F.unfold(padded, (3, 4))
    rows = patches.transpose(1, 2).reshape(-1, 12)
    rows = torch.cat([rows, torch.ones(rows.shape[0], 1, dtype=rows.dtype)], 1)
    precond.step()
    _assert_close(precond.blocks[""].factors["A"], rows.mT @ rows / rows.shape[0])


def test_max_factor_rows_uses_evenly_spaced_examples() -> None:
    torch.manual_seed(5)
    conv = nn.Conv2d(1, 2, 3, padding=1).double()
    precond = _preconditioner(conv, max_factor_rows=2 * 16)  # 16 positions: 2 of 8 examples
    x = torch.randn(8, 1, 4, 4, dtype=torch.float64)
    out = conv(x)
    out.retain_grad()
    out.pow(2).sum(dim=(1, 2, 3)).mean().backward()
    assert out.grad is not None
    # stride ceil(8 / 2) = 4: examples 0 and 4; G keeps the full batch's gradient scale (8).
    subset = x[::4]
    patches = F.unfold(subset, 3, padding=1).transpose(1, 2).reshape(-1, 9)
    rows = torch.cat([patches, torch.ones(patches.shape[0], 1, dtype=x.dtype)], 1)
    ds = out.grad[::4].permute(0, 2, 3, 1).reshape(-1, 2) * 8
    precond.step()
    _assert_close(precond.blocks[""].factors["A"], rows.mT @ rows / rows.shape[0])
    _assert_close(precond.blocks[""].factors["G"], ds.mT @ ds / 2)


# --------------------------------------------------------------------------------------------
# BatchNorm / LayerNorm: unit-wise blocks
# --------------------------------------------------------------------------------------------


def _per_example_norm_grads(
    module: nn.Module, x: torch.Tensor, out_grad: torch.Tensor, precond: KFACPreconditioner
) -> torch.Tensor:
    """u_n = [d/dgamma, d/dbeta] of ⟨g_n, out_n⟩ per example n, by autograd: (b, units, k)."""
    rows = []
    params = [p for p in (module.weight, module.bias) if p is not None]  # type: ignore[union-attr]
    with precond.hooks_disabled():
        out = module(x)
    for n in range(x.shape[0]):
        grads = torch.autograd.grad((out[n] * out_grad[n]).sum(), params, retain_graph=True)
        rows.append(torch.stack([g.reshape(-1) for g in grads], dim=-1))
    return torch.stack(rows)


@pytest.mark.parametrize(
    ("module", "shape"),
    [
        (nn.BatchNorm2d(3), (5, 3, 4, 4)),
        (nn.BatchNorm1d(4), (6, 4)),
        (nn.BatchNorm1d(2), (6, 2, 5)),
        (nn.LayerNorm(4), (5, 3, 4)),
        (nn.LayerNorm((2, 3)), (4, 2, 3)),
        (nn.LayerNorm(4, bias=False), (5, 4)),
    ],
)
def test_norm_unitwise_blocks(module: nn.Module, shape: tuple[int, ...]) -> None:
    torch.manual_seed(6)
    module = module.double()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))
    precond = _preconditioner(module)
    x = torch.randn(*shape, dtype=torch.float64)
    out = module(x)
    out.retain_grad()
    (out.pow(3).sum() / shape[0]).backward()
    assert out.grad is not None
    batch = shape[0]
    params = [p for p in (module.weight, module.bias) if p is not None]  # type: ignore[union-attr]
    grads = torch.stack([p.grad.reshape(-1) for p in params], dim=-1)  # type: ignore[union-attr]
    if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
        module.reset_running_stats()  # the reference forward must not see different stats
    u = _per_example_norm_grads(module, x, out.grad, precond) * batch
    fisher = torch.einsum("nui,nuj->uij", u, u) / batch
    eye = torch.eye(len(params), dtype=torch.float64)
    reference = torch.linalg.solve(fisher + DAMPING * eye, grads.unsqueeze(-1)).squeeze(-1)
    precond.step()
    _assert_close(precond.blocks[""].factors["F"], fisher)
    ours = torch.stack([p.grad.reshape(-1) for p in params], dim=-1)  # type: ignore[union-attr]
    _assert_close(ours, reference)


# --------------------------------------------------------------------------------------------
# Embedding
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["inverse", "eigen"])
def test_embedding_diagonal_a_dense_g(method: str) -> None:
    torch.manual_seed(7)
    vocab, dim = 6, 4
    embedding = nn.Embedding(vocab, dim).double()
    precond = _preconditioner(embedding, method)
    tokens = torch.tensor([[0, 1, 1, 3], [3, 3, 5, 0], [1, 2, 2, 2]])
    out = embedding(tokens)
    out.retain_grad()
    out.pow(2).sum(dim=(1, 2)).mean().backward()
    assert out.grad is not None and embedding.weight.grad is not None
    counts = torch.bincount(tokens.reshape(-1), minlength=vocab).double()
    a = torch.diag(counts / tokens.numel())
    ds = out.grad.reshape(-1, dim) * 3
    g = ds.mT @ ds / 3
    m = embedding.weight.grad.clone()  # (vocab, dim): rows on the A side
    if method == "inverse":
        damping_a, damping_g = _pi_split(a, g, DAMPING)
        big = torch.kron(
            torch.linalg.inv(g + damping_g * torch.eye(dim, dtype=g.dtype)).mT.contiguous(),
            torch.linalg.inv(a + damping_a * torch.eye(vocab, dtype=a.dtype)).contiguous(),
        )
    else:
        big = torch.linalg.inv(torch.kron(g, a) + DAMPING * torch.eye(vocab * dim, dtype=a.dtype))
    reference = _unvec(big @ _vec(m), vocab, dim)
    precond.step()
    _assert_close(precond.blocks[""].factors["A"], counts / tokens.numel())
    _assert_close(precond.blocks[""].factors["G"], g)
    _assert_close(embedding.weight.grad, reference)


# --------------------------------------------------------------------------------------------
# EMA, whole model, true Fisher
# --------------------------------------------------------------------------------------------


def test_factor_ema_over_steps() -> None:
    torch.manual_seed(8)
    layer = nn.Linear(3, 2, bias=False).double()
    precond = KFACPreconditioner(
        layer, factor_decay=0.75, factor_update_steps=2, inv_update_steps=2, kl_clip=None
    )
    expected = None
    for step in range(5):
        x = torch.randn(4, 3, dtype=torch.float64)
        layer.zero_grad()
        layer(x).sum().backward()
        stat = x.mT @ x / 4
        if step % 2 == 0:
            expected = stat if expected is None else 0.75 * expected + 0.25 * stat
        precond.step()
        assert expected is not None
        _assert_close(precond.blocks[""].factors["A"], expected)


def test_unsupported_and_skipped_modules_keep_plain_gradients() -> None:
    torch.manual_seed(9)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, groups=2), nn.Flatten(), nn.Linear(64, 3), nn.PReLU(), nn.Linear(3, 2)
    ).double()
    precond = KFACPreconditioner(
        model, skip_modules=["4"], factor_update_steps=1, inv_update_steps=1
    )
    assert list(precond.blocks) == ["2"]  # grouped conv, PReLU and the skipped layer: none
    by_type = KFACPreconditioner(model, skip_modules=[nn.Linear])
    assert list(by_type.blocks) == []
    by_type.remove()
    out = model(torch.randn(3, 2, 6, 6, dtype=torch.float64))
    out.sum().backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}  # type: ignore[union-attr]
    precond.step()
    for name, p in model.named_parameters():
        if name.startswith("2."):
            assert not torch.equal(p.grad, plain[name])  # type: ignore[arg-type]
        else:
            assert torch.equal(p.grad, plain[name])  # type: ignore[arg-type]


def test_true_fisher_uses_sampled_labels() -> None:
    torch.manual_seed(10)
    layer = nn.Linear(4, 3).double()
    precond = KFACPreconditioner(
        layer, fisher="true", factor_update_steps=1, inv_update_steps=1, kl_clip=None, seed=5
    )
    x = torch.randn(8, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (8,))
    out = layer(x)
    precond.sample_fisher(out)
    F.cross_entropy(out, y).backward()
    # Reference: the same draw (the preconditioner's generator seeded with 5).
    probs = torch.softmax(out.detach(), dim=-1)
    labels = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(5)).reshape(-1)
    ds = probs - F.one_hot(labels, 3).double()  # per-example gradient of the sampled NLL
    g = ds.mT @ ds / 8
    precond.step()
    _assert_close(precond.blocks[""].factors["G"], g)


def test_true_fisher_requires_sampling() -> None:
    layer = nn.Linear(2, 2)
    precond = KFACPreconditioner(layer, fisher="true", factor_update_steps=1)
    layer(torch.randn(3, 2)).sum().backward()
    with pytest.raises(RuntimeError, match="sample_fisher"):
        precond.step()
