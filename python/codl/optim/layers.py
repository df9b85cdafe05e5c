"""Per-layer Fisher blocks of K-FAC: the factor statistics and the preconditioning algebra.

Every registered module gets one block. A block only holds references between the forward and
the optimizer step (the layer's inputs and the gradients w.r.t. its output, captured by the
preconditioner's hooks); all statistics are computed at step time, from those references, and
only at factor-update steps.

Conventions (one for every Kronecker layer, so the factors of different layers are comparable):
a layer sees ``R = b·T`` rows (``b`` examples, ``T`` rows per example: 1 for a plain Linear,
the output positions of a Conv2d, the sequence positions of a Linear or Embedding applied to
sequences). With ``ā`` a row of the input (with a homogeneous 1 appended when the layer has a
bias) and ``Ds = s·g`` the per-example gradient w.r.t. the output row (``s`` is the batch size
for a mean-reduced loss, 1 for a sum),

    A = (1/R) Σ_rows ā āᵀ,          G = (1/b) Σ_rows Ds Dsᵀ,

so that ``A ⊗ G`` equals the KFC approximation ``Ω ⊗ Γ`` of Grosse & Martens 2016 (eq. 21-22:
``Ω = E[Σ_t ā_t ā_tᵀ]``, ``Γ = (1/|T|) E[Σ_t Ds_t Ds_tᵀ]``), and for ``T = 1`` the K-FAC
factors of Martens & Grosse 2015 (eq. 1-3). The gradient matrix of a layer is
``∇W`` with the bias gradient appended as a last column (shape ``out x (in + 1)``), and the
preconditioned gradient is ``(G + gamma_G I)⁻¹ ∇W (A + gamma_A I)⁻¹`` (inverse method, with the
π-split damping of Martens & Grosse 2015 §6.3) or
``V_G [(V_Gᵀ ∇W V_A) / (λ_G λ_Aᵀ + λ)] V_Aᵀ`` (eigen method, George et al. 2018 EKFAC-style
basis without the re-scaling of the eigenvalues). The blocks below only build the factors and
lay out the gradient, one class per layer type; both methods are strategies of
:mod:`codl.optim.methods`, and no block depends on which one is in use.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from codl.optim.methods import (
    FactoredGrad,
    KroneckerGrad,
    KroneckerJob,
    KroneckerState,
    SecondOrderMethod,
    UnitwiseState,
)

__all__ = [
    "BatchNormBlock",
    "Conv2dBlock",
    "EmbeddingBlock",
    "KroneckerBlock",
    "LayerBlock",
    "LayerNormBlock",
    "LinearBlock",
    "NormBlock",
    "make_block",
]


class LayerBlock:
    """The Fisher block of one module: references from the hooks, factors, and the state the
    K-FAC method derives from the factors (:mod:`codl.optim.methods`)."""

    kind = "block"

    def __init__(self, name: str, module: nn.Module, seed: int) -> None:
        self.name = name
        self.module = module
        self.seed = seed
        self.inputs: list[torch.Tensor] = []
        self.grads: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []
        self.fisher_grads: list[torch.Tensor] = []
        self.factors: dict[str, torch.Tensor] = {}

    # ---- parameters -------------------------------------------------------------------------
    def params(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def param_grads(self) -> list[torch.Tensor] | None:
        """The gradients of the block's parameters, or None if any of them has none."""
        grads = [p.grad for p in self.params()]
        if any(g is None for g in grads):
            return None
        return [g for g in grads if g is not None]

    def drop_grads(self) -> None:
        for p in self.params():
            p.grad = None

    # ---- hooks' references ------------------------------------------------------------------
    def wants_inputs_every_step(self) -> bool:
        """True if the block uses the step's inputs even when no factor update is due."""
        return False

    def clear_records(self) -> None:
        self.inputs.clear()
        self.grads.clear()
        self.outputs.clear()
        self.fisher_grads.clear()

    def has_records(self, true_fisher: bool) -> bool:
        return bool(self.inputs) and bool(self.fisher_grads if true_fisher else self.grads)

    # ---- factors ----------------------------------------------------------------------------
    def statistics(
        self, true_fisher: bool, loss_reduction: str, max_factor_rows: int | None
    ) -> dict[str, torch.Tensor]:
        """This step's factor statistics."""
        raise NotImplementedError

    def update_factors(
        self,
        decay: float,
        true_fisher: bool,
        loss_reduction: str,
        max_factor_rows: int | None,
    ) -> bool:
        """EMA of the factors with this step's statistics; False (factors untouched) if any
        statistic holds NaN/Inf. Checked before the EMA, so a bad batch never pollutes them."""
        stats = self.statistics(true_fisher, loss_reduction, max_factor_rows)
        for stat in stats.values():
            # Cauchy-Schwarz: |S_ij| <= sqrt(S_ii S_jj) for a Gram matrix, so a finite diagonal
            # means finite entries (NaN/Inf in the data always reach the diagonal).
            probe = stat.diagonal() if stat.dim() == 2 else stat
            if not bool(torch.isfinite(probe).all()):
                return False
        for key, stat in stats.items():
            factor = self.factors.get(key)
            if factor is None:
                self.factors[key] = stat.clone()
            else:
                factor.lerp_(stat, 1.0 - decay)
        return True

    # ---- the method's state -------------------------------------------------------------------
    def ready(self) -> bool:
        """True once the block has a state to precondition with."""
        raise NotImplementedError

    @property
    def inverses(self) -> dict[str, torch.Tensor]:
        """The state's tensors under their state_dict keys (empty before the first update)."""
        raise NotImplementedError

    def load_inverses(self, method: SecondOrderMethod, tensors: Mapping[str, torch.Tensor]) -> None:
        """Restore :attr:`inverses` as saved."""
        raise NotImplementedError

    # ---- preconditioning --------------------------------------------------------------------
    def precondition(self, damping: float, check_rtol: float) -> list[torch.Tensor]:
        """The preconditioned gradient of each parameter (same order as :meth:`params`)."""
        raise NotImplementedError

    def curvature(self, deltas: Sequence[torch.Tensor]) -> float:
        """``δᵀ F̂ δ`` with the block's (undamped) factors, for adaptive damping's model."""
        raise NotImplementedError


def _example_stride(examples: int, rows_per_example: int, max_rows: int | None) -> int:
    """Stride over examples so at most ``max_rows`` rows feed the statistics (at least one
    example). Evenly spaced examples, no RNG: the statistics stay a pure function of the batch."""
    if max_rows is None or examples * rows_per_example <= max_rows:
        return 1
    wanted = max(1, max_rows // max(1, rows_per_example))
    return math.ceil(examples / wanted)


def _grad_scale(record_examples: int, loss_reduction: str, true_fisher: bool) -> float:
    # The sampled loss of the true Fisher is summed, so its gradients are per-example already.
    if true_fisher or loss_reduction == "sum":
        return 1.0
    return float(record_examples)


class KroneckerBlock(LayerBlock):
    """``F ≈ A ⊗ G`` for a layer whose gradient is ``Σ_rows g āᵀ`` (Linear, Conv2d)."""

    kind = "kronecker"
    #: ``A`` is kept as its diagonal (a vector) and the gradient laid out (A side, G side).
    diagonal_a: ClassVar[bool] = False

    def __init__(self, name: str, module: nn.Module, seed: int) -> None:
        super().__init__(name, module, seed)
        self.state: KroneckerState | None = None
        weight = module.weight
        assert isinstance(weight, nn.Parameter)
        self.weight = weight
        bias = getattr(module, "bias", None)
        self.bias: nn.Parameter | None = bias if isinstance(bias, nn.Parameter) else None
        self.out_features = weight.shape[0]
        self.in_features = weight[0].numel()
        self.a_size = self.in_features + (1 if self.bias is not None else 0)

    def params(self) -> list[nn.Parameter]:
        return [self.weight] if self.bias is None else [self.weight, self.bias]

    # -- the rows of a record (subclasses) --
    def activation_rows_t(
        self, inp: torch.Tensor, max_rows: int | None
    ) -> tuple[torch.Tensor, int]:
        """Input rows of one record as a (in_features, R) matrix, and the examples used."""
        raise NotImplementedError

    def grad_rows_t(self, grad: torch.Tensor, max_rows: int | None) -> tuple[torch.Tensor, int]:
        """Output-gradient rows of one record as a (out_features, R) matrix, examples used."""
        raise NotImplementedError

    def a_terms(self, max_factor_rows: int | None) -> list[tuple[torch.Tensor, float]]:
        """A's row blocks (k, R) of this step and the weight of each block's Gram product."""
        rows_t = [self.activation_rows_t(x, max_factor_rows)[0] for x in self.inputs]
        total = sum(r.shape[1] for r in rows_t)
        return [(r, 1.0 / total) for r in rows_t]

    def g_terms(
        self, true_fisher: bool, loss_reduction: str, max_factor_rows: int | None
    ) -> list[tuple[torch.Tensor, float]]:
        records = self.fisher_grads if true_fisher else self.grads
        parts = []
        examples = 0
        for g in records:
            rows_t, used = self.grad_rows_t(g, max_factor_rows)
            scale = _grad_scale(g.shape[0] if g.dim() > 1 else 1, loss_reduction, true_fisher)
            parts.append((rows_t, scale * scale))
            examples += used
        return [(r, weight / examples) for r, weight in parts]

    @staticmethod
    def _bounded(terms: list[tuple[torch.Tensor, float]]) -> bool:
        """True if the rows are finite and small enough that no Gram entry can overflow:
        ``|Σ_rows x_i x_j| <= R·max|x|²``. One pass over the rows instead of a checked copy of
        the k x k statistic, so the EMA can then run in place."""
        for rows, weight in terms:
            if rows.numel() == 0:
                continue
            limit = torch.finfo(rows.dtype).max / 4
            peak = float(rows.abs().max())
            if not peak * peak * rows.shape[1] * max(1.0, weight) < limit:
                return False
        return True

    def update_factors(
        self,
        decay: float,
        true_fisher: bool,
        loss_reduction: str,
        max_factor_rows: int | None,
    ) -> bool:
        a_terms = self.a_terms(max_factor_rows)
        g_terms = self.g_terms(true_fisher, loss_reduction, max_factor_rows)
        if not (self._bounded(a_terms) and self._bounded(g_terms)):
            return False
        self._ema_gram("A", self.a_size, a_terms, decay, bias_row=self.bias is not None)
        self._ema_gram("G", self.out_features, g_terms, decay, bias_row=False)
        return True

    def _ema_gram(
        self,
        key: str,
        size: int,
        terms: list[tuple[torch.Tensor, float]],
        decay: float,
        *,
        bias_row: bool,
    ) -> None:
        """``F ← decay·F + (1 - decay)·Σ w·R Rᵀ`` in place (addmm's beta/alpha): no k x k
        temporary, one pass over the factor. The first update takes the statistic as is."""
        factor = self.factors.get(key)
        keep, new = decay, 1.0 - decay
        if factor is None:
            factor = torch.zeros(size, size, dtype=terms[0][0].dtype)
            self.factors[key] = factor
            keep, new = 0.0, 1.0
        k = terms[0][0].shape[0]
        gram = factor[:k, :k]
        for index, (rows, weight) in enumerate(terms):
            gram.addmm_(rows, rows.mT, beta=keep if index == 0 else 1.0, alpha=new * weight)
        if bias_row:
            # The homogeneous coordinate: E[x] in the last row/column, E[1·1] = 1 in the corner.
            column = torch.stack([rows.sum(dim=1).mul_(weight) for rows, weight in terms])
            edge = factor[:k, k]
            edge.mul_(keep).add_(column.sum(dim=0), alpha=new)
            factor[k, :k] = edge
            factor[k, k] = keep * float(factor[k, k]) + new

    # -- gradient matrix --
    def grad_matrix(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        weight_grad = grads[0].reshape(self.out_features, self.in_features)
        if self.bias is None:
            return weight_grad
        return torch.cat([weight_grad, grads[1].reshape(-1, 1)], dim=1)

    def split(self, matrix: torch.Tensor) -> list[torch.Tensor]:
        weight_part = matrix[:, : self.in_features].reshape(self.weight.shape)
        if self.bias is None:
            return [weight_part]
        return [weight_part, matrix[:, self.in_features]]

    # -- the method's state --
    def job(self) -> KroneckerJob:
        """The factors for the method's batched update, with the state they replace."""
        return KroneckerJob(self.name, self.factors["A"], self.factors["G"], self.state)

    def ready(self) -> bool:
        return self.state is not None and self.state.complete

    @property
    def inverses(self) -> dict[str, torch.Tensor]:
        return {} if self.state is None else self.state.tensors()

    def load_inverses(self, method: SecondOrderMethod, tensors: Mapping[str, torch.Tensor]) -> None:
        self.state = method.load(tensors, diagonal_a=self.diagonal_a)

    # -- preconditioning --
    def factored_rows(self, check_rtol: float) -> FactoredGrad | None:
        """The gradient by its rows if ``.grad`` is exactly ``gᵀ ā`` of this step."""
        return None

    def precondition(self, damping: float, check_rtol: float) -> list[torch.Tensor]:
        grads = self.param_grads()
        assert grads is not None and self.state is not None
        rows = self.factored_rows(check_rtol)
        grad: KroneckerGrad = self.grad_matrix(grads) if rows is None else rows
        return self.split(self.state.precondition(grad, damping))

    def curvature(self, deltas: Sequence[torch.Tensor]) -> float:
        m = self.grad_matrix(deltas)
        return float((m * (self.factors["G"] @ m @ self.factors["A"])).sum())


class LinearBlock(KroneckerBlock):
    """``nn.Linear`` on inputs of shape (..., in_features)."""

    def __init__(self, name: str, module: nn.Module, seed: int, factored: bool = True) -> None:
        super().__init__(name, module, seed)
        self.factored = factored
        self._probe: torch.Tensor | None = None

    def wants_inputs_every_step(self) -> bool:
        return self.factored

    @staticmethod
    def _examples(t: torch.Tensor) -> int:
        return t.shape[0] if t.dim() > 1 else 1

    def activation_rows_t(
        self, inp: torch.Tensor, max_rows: int | None
    ) -> tuple[torch.Tensor, int]:
        examples = self._examples(inp)
        per_example = inp.numel() // max(1, examples * self.in_features)
        stride = _example_stride(examples, per_example, max_rows)
        if stride > 1:
            inp = inp[::stride]
        x = inp.reshape(-1, self.in_features)
        return x.mT, self._examples(inp)

    def grad_rows_t(self, grad: torch.Tensor, max_rows: int | None) -> tuple[torch.Tensor, int]:
        examples = self._examples(grad)
        per_example = grad.numel() // max(1, examples * self.out_features)
        stride = _example_stride(examples, per_example, max_rows)
        if stride > 1:
            grad = grad[::stride]
        return grad.reshape(-1, self.out_features).mT, self._examples(grad)

    def factored_rows(self, check_rtol: float) -> FactoredGrad | None:
        if not self.factored or len(self.inputs) != 1 or len(self.grads) != 1:
            return None
        x = self.inputs[0].reshape(-1, self.in_features)
        g = self.grads[0].reshape(-1, self.out_features)
        rows, n, out = x.shape[0], self.a_size, self.out_features
        # Flops of G⁻¹ gᵀ (ā A⁻¹) against (G⁻¹ ∇W) A⁻¹; take the cheaper one.
        if rows * (n * n + out * out + out * n) >= out * (n * n + out * n):
            return None
        weight_grad = self.weight.grad
        assert weight_grad is not None
        if self._probe is None or self._probe.dtype != x.dtype:
            generator = torch.Generator().manual_seed(self.seed)
            self._probe = torch.randn(n, generator=generator, dtype=x.dtype)
        v = self._probe
        # Freivalds: ∇W v must equal gᵀ(ā v) to rounding, else .grad holds more than this
        # step's gᵀā (gradient accumulation, extra loss terms) and the dense product is used.
        xv = x @ v[: self.in_features]
        direct = weight_grad @ v[: self.in_features]
        if self.bias is not None:
            assert self.bias.grad is not None
            xv = xv + v[self.in_features]
            direct = direct + self.bias.grad * v[self.in_features]
        error = float(torch.linalg.vector_norm(direct - g.mT @ xv))
        bound = float(torch.linalg.vector_norm(g)) * float(torch.linalg.vector_norm(xv))
        if not error <= check_rtol * bound:
            return None
        return FactoredGrad(x, g, bias=self.bias is not None)


class Conv2dBlock(KroneckerBlock):
    """``nn.Conv2d`` (groups=1, zero padding): rows are the unfolded input patches (KFC)."""

    def __init__(self, name: str, module: nn.Module, seed: int) -> None:
        super().__init__(name, module, seed)
        assert isinstance(module, nn.Conv2d)
        self.conv = module
        padding = getattr(module, "_reversed_padding_repeated_twice", None)
        if padding is None:  # pragma: no cover - every torch we support sets it
            ph, pw = (int(p) for p in module.padding)
            padding = [pw, pw, ph, ph]
        self.pad = [int(p) for p in padding]

    def activation_rows_t(
        self, inp: torch.Tensor, max_rows: int | None
    ) -> tuple[torch.Tensor, int]:
        batched = inp if inp.dim() == 4 else inp.unsqueeze(0)
        out_positions = self._output_positions(batched)
        stride = _example_stride(batched.shape[0], out_positions, max_rows)
        if stride > 1:
            batched = batched[::stride]
        if any(self.pad):
            batched = F.pad(batched, self.pad)
        patches = F.unfold(
            batched,
            self.conv.kernel_size,
            dilation=self.conv.dilation,
            padding=0,
            stride=self.conv.stride,
        )  # (b, C·kh·kw, L), channel-major like weight.view(out, -1)
        return patches.transpose(0, 1).reshape(self.in_features, -1), batched.shape[0]

    def _output_positions(self, batched: torch.Tensor) -> int:
        size = 1
        for dim in range(2):
            extent = batched.shape[2 + dim] + self.pad[2 - 2 * dim] + self.pad[3 - 2 * dim]
            span = self.conv.dilation[dim] * (self.conv.kernel_size[dim] - 1) + 1
            size *= max(0, (extent - span) // self.conv.stride[dim] + 1)
        return size

    def grad_rows_t(self, grad: torch.Tensor, max_rows: int | None) -> tuple[torch.Tensor, int]:
        batched = grad if grad.dim() == 4 else grad.unsqueeze(0)
        positions = batched.shape[2] * batched.shape[3]
        stride = _example_stride(batched.shape[0], positions, max_rows)
        if stride > 1:
            batched = batched[::stride]
        return batched.transpose(0, 1).reshape(self.out_features, -1), batched.shape[0]


class EmbeddingBlock(KroneckerBlock):
    """``nn.Embedding``: ``A`` is diagonal (token frequencies, one-hot inputs), ``G`` dense.

    The weight is (num_embeddings, dim), so its gradient is ``Σ onehot(token) gᵀ`` and the
    preconditioned gradient is ``A⁻¹ ∇W G⁻¹``, with ``A⁻¹`` a row scaling.
    """

    kind = "embedding"
    diagonal_a = True

    def __init__(self, name: str, module: nn.Module, seed: int) -> None:
        LayerBlock.__init__(self, name, module, seed)
        self.state = None
        assert isinstance(module, nn.Embedding) and isinstance(module.weight, nn.Parameter)
        self.weight = module.weight
        self.bias = None
        self.out_features = module.embedding_dim
        self.in_features = module.num_embeddings
        self.a_size = self.in_features

    def update_factors(
        self,
        decay: float,
        true_fisher: bool,
        loss_reduction: str,
        max_factor_rows: int | None,
    ) -> bool:
        return LayerBlock.update_factors(self, decay, true_fisher, loss_reduction, max_factor_rows)

    def statistics(
        self, true_fisher: bool, loss_reduction: str, max_factor_rows: int | None
    ) -> dict[str, torch.Tensor]:
        terms = self.g_terms(true_fisher, loss_reduction, max_factor_rows)
        g = torch.zeros(self.out_features, self.out_features, dtype=self.weight.dtype)
        for rows, weight in terms:
            g.addmm_(rows, rows.mT, alpha=weight)
        return {"A": self.a_statistic(), "G": g}

    def a_statistic(self) -> torch.Tensor:
        counts = torch.zeros(self.in_features, dtype=torch.int64)
        total = 0
        for idx in self.inputs:
            flat = idx.reshape(-1)
            counts += torch.bincount(flat, minlength=self.in_features)
            total += flat.numel()
        return counts.to(self.weight.dtype).div_(max(1, total))

    def grad_rows_t(self, grad: torch.Tensor, max_rows: int | None) -> tuple[torch.Tensor, int]:
        examples = grad.shape[0] if grad.dim() > 1 else 1
        return grad.reshape(-1, self.out_features).mT, examples

    def grad_matrix(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        return grads[0]

    def split(self, matrix: torch.Tensor) -> list[torch.Tensor]:
        return [matrix]

    def precondition(self, damping: float, check_rtol: float) -> list[torch.Tensor]:
        grads = self.param_grads()
        assert grads is not None and self.state is not None
        return [self.state.precondition_diagonal(grads[0], damping)]

    def curvature(self, deltas: Sequence[torch.Tensor]) -> float:
        m = deltas[0]
        return float((m * (self.factors["A"][:, None] * (m @ self.factors["G"]))).sum())


class NormBlock(LayerBlock):
    """A normalisation layer: one exact ``kxk`` Fisher block per unit (channel or normalized
    element) over its ``(gamma, β)`` (k = 2) or its only affine parameter (k = 1).

    Per example ``n`` the gradient of unit ``c`` is ``u = s·[Σ g x̂, Σ g]`` (sums over the
    positions sharing the unit), and ``F_c = (1/b) Σ_n u uᵀ`` is the exact empirical Fisher
    block of those parameters (Martens & Grosse 2015 treat such small layers exactly; the
    per-example factorisation ignores BatchNorm's coupling through the batch statistics).
    """

    kind = "unitwise"

    def __init__(self, name: str, module: nn.Module, seed: int) -> None:
        super().__init__(name, module, seed)
        weight = getattr(module, "weight", None)
        bias = getattr(module, "bias", None)
        self._params = [p for p in (weight, bias) if isinstance(p, nn.Parameter)]
        self.has_weight = isinstance(weight, nn.Parameter)
        self.has_bias = isinstance(bias, nn.Parameter)
        self.k = len(self._params)
        self.units = self._params[0].numel()
        self.state: UnitwiseState | None = None

    def params(self) -> list[nn.Parameter]:
        return list(self._params)

    def _normalized(self, x: torch.Tensor) -> torch.Tensor:
        """x̂ as the module computes it, shaped (examples, positions, units)."""
        raise NotImplementedError

    def _arrange(self, g: torch.Tensor) -> torch.Tensor:
        """The output gradient shaped (examples, positions, units)."""
        raise NotImplementedError

    def statistics(
        self, true_fisher: bool, loss_reduction: str, max_factor_rows: int | None
    ) -> dict[str, torch.Tensor]:
        records = self.fisher_grads if true_fisher else self.grads
        per_example = []
        for x, g in zip(self.inputs, records):
            if x.dim() < 2:
                x, g = x.unsqueeze(0), g.unsqueeze(0)
            x_hat = self._normalized(x.to(self._params[0].dtype))
            g_rows = self._arrange(g)
            parts = []
            if self.has_weight:
                parts.append((g_rows * x_hat).sum(dim=1))
            if self.has_bias:
                parts.append(g_rows.sum(dim=1))
            scale = _grad_scale(x.shape[0], loss_reduction, true_fisher)
            per_example.append(torch.stack(parts, dim=-1).mul_(scale))  # (b, units, k)
        u = torch.cat(per_example) if len(per_example) > 1 else per_example[0]
        return {"F": torch.einsum("nui,nuj->uij", u, u).div_(u.shape[0])}

    def update_factors(
        self,
        decay: float,
        true_fisher: bool,
        loss_reduction: str,
        max_factor_rows: int | None,
    ) -> bool:
        stats = self.statistics(true_fisher, loss_reduction, max_factor_rows)
        if not bool(torch.isfinite(stats["F"]).all()):
            return False
        factor = self.factors.get("F")
        if factor is None:
            self.factors["F"] = stats["F"]
        else:
            factor.lerp_(stats["F"], 1.0 - decay)
        return True

    def refresh(self, damping: float) -> None:
        """Invert the damped unit blocks (both K-FAC methods: they are at most 2 x 2)."""
        self.state = UnitwiseState.from_factor(self.factors["F"], damping)

    def ready(self) -> bool:
        return self.state is not None

    @property
    def inverses(self) -> dict[str, torch.Tensor]:
        return {} if self.state is None else self.state.tensors()

    def load_inverses(self, method: SecondOrderMethod, tensors: Mapping[str, torch.Tensor]) -> None:
        self.state = UnitwiseState.load(tensors)

    def precondition(self, damping: float, check_rtol: float) -> list[torch.Tensor]:
        grads = self.param_grads()
        assert grads is not None and self.state is not None
        stacked = torch.stack([g.reshape(-1) for g in grads], dim=-1)  # (units, k)
        out = self.state.precondition(stacked)
        return [out[:, i].reshape(p.shape) for i, p in enumerate(self._params)]

    def curvature(self, deltas: Sequence[torch.Tensor]) -> float:
        stacked = torch.stack([d.reshape(-1) for d in deltas], dim=-1)
        return float(torch.einsum("ui,uij,uj->", stacked, self.factors["F"], stacked))


class BatchNormBlock(NormBlock):
    """``nn.BatchNorm1d``/``nn.BatchNorm2d``: the units are the channels (dimension 1), x̂
    uses the batch statistics in training and the running ones in evaluation."""

    def _normalized(self, x: torch.Tensor) -> torch.Tensor:
        module = self.module
        eps = float(getattr(module, "eps", 1e-5))
        running_mean = getattr(module, "running_mean", None)
        running_var = getattr(module, "running_var", None)
        channels_first = x.reshape(x.shape[0], x.shape[1], -1)
        if module.training or running_mean is None or running_var is None:
            mean = channels_first.mean(dim=(0, 2), keepdim=True)
            var = channels_first.var(dim=(0, 2), unbiased=False, keepdim=True)
        else:
            mean = running_mean.reshape(1, -1, 1)
            var = running_var.reshape(1, -1, 1)
        return ((channels_first - mean) / torch.sqrt(var + eps)).transpose(1, 2)

    def _arrange(self, g: torch.Tensor) -> torch.Tensor:
        return g.reshape(g.shape[0], g.shape[1], -1).transpose(1, 2)


class LayerNormBlock(NormBlock):
    """``nn.LayerNorm``: the units are the normalized elements (the trailing dimensions), x̂
    uses each position's own statistics."""

    def _normalized(self, x: torch.Tensor) -> torch.Tensor:
        module = self.module
        eps = float(getattr(module, "eps", 1e-5))
        dims = len(getattr(module, "normalized_shape", ()))
        reduce = tuple(range(x.dim() - dims, x.dim()))
        mean = x.mean(dim=reduce, keepdim=True)
        var = x.var(dim=reduce, unbiased=False, keepdim=True)
        x_hat = (x - mean) / torch.sqrt(var + eps)
        return x_hat.reshape(x.shape[0], -1, self.units)

    def _arrange(self, g: torch.Tensor) -> torch.Tensor:
        return g.reshape(g.shape[0], -1, self.units)


def make_block(
    name: str, module: nn.Module, seed: int, *, factored_linear: bool = True
) -> LayerBlock | None:
    """The block for a supported module, or None (its parameters keep the plain gradient)."""
    if isinstance(module, nn.Linear):
        if not isinstance(module.weight, nn.Parameter) or not module.weight.requires_grad:
            return None
        return LinearBlock(name, module, seed, factored=factored_linear)
    if isinstance(module, nn.Conv2d):
        if module.groups != 1 or module.padding_mode != "zeros":
            return None
        if not module.weight.requires_grad:
            return None
        return Conv2dBlock(name, module, seed)
    if isinstance(module, nn.Embedding):
        if module.sparse or not module.weight.requires_grad:
            return None
        return EmbeddingBlock(name, module, seed)
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)):
        weight = getattr(module, "weight", None)
        bias = getattr(module, "bias", None)
        params = [p for p in (weight, bias) if isinstance(p, nn.Parameter)]
        if not params or not all(p.requires_grad for p in params):
            return None
        if isinstance(module, nn.LayerNorm):
            return LayerNormBlock(name, module, seed)
        return BatchNormBlock(name, module, seed)
    return None
