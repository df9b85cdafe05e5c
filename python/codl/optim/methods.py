"""K-FAC's second-order methods: how the factors of a Kronecker block become the state that
preconditions its gradient.

The method is a strategy chosen once per preconditioner (:class:`ComputeMethod`), apart from
the layer blocks of :mod:`codl.optim.layers`, which only say how a layer type gets its factors
and arranges its gradient (kfac-pytorch's split between ``layers/modules.py`` and
``layers/inverse.py`` / ``layers/eigen.py``):

- :class:`InverseMethod`: the damped inverses ``(A + gamma_A I)⁻¹``, ``(G + gamma_G I)⁻¹`` with the
  π-split damping of Martens & Grosse 2015 §6.3 (:class:`InverseState`);
- :class:`EigenMethod`: the eigenbases of the undamped factors, with λ added to the products
  of their eigenvalues, George et al. 2018's EKFAC basis without the re-scaling of the
  eigenvalues (:class:`EigenState`).

Each method turns the dense factors of every stale block into its state with one batched
:mod:`codl.linalg` call per dtype; a diagonal factor (a 1-D tensor: an embedding's token
frequencies) is handled elementwise outside that call. The states keep the keys they always
had in :meth:`~codl.optim.KFACPreconditioner.state_dict` (``A_inv``/``G_inv``;
``eA``/``VA``/``eG``/``VG``; ``F_inv``), so older checkpoints load unchanged.

The small unit-wise blocks of the normalisation layers (:class:`UnitwiseState`) are inverted
exactly by both methods: an eigendecomposition of a 2 x 2 block saves nothing.
"""

from __future__ import annotations

import enum
import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Generic, NamedTuple, TypeVar, cast

import torch

import codl.linalg

__all__ = [
    "ComputeMethod",
    "EigenMethod",
    "EigenState",
    "FactoredGrad",
    "InverseMethod",
    "InverseState",
    "KFACWarning",
    "KroneckerJob",
    "KroneckerState",
    "SecondOrderMethod",
    "UnitwiseState",
    "method_for",
]


class KFACWarning(RuntimeWarning):
    """A layer's update was skipped or a factor needed extra damping."""


class ComputeMethod(enum.Enum):
    """How the factors are turned into a preconditioner (``method=`` of K-FAC)."""

    INVERSE = "inverse"
    EIGEN = "eigen"

    @classmethod
    def parse(cls, value: ComputeMethod | str) -> ComputeMethod:
        """The member for a member or its string value; ValueError naming the allowed ones."""
        if isinstance(value, cls):
            return value
        for member in cls:
            if value == member.value:
                return member
        allowed = ", ".join(member.value for member in cls)
        raise ValueError(f"method: expected one of {allowed}, received {value!r}")


# --------------------------------------------------------------------------------------------
# gradients and states
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FactoredGrad:
    """A Kronecker layer's gradient matrix given as ``∇W = gᵀ ā`` by this step's rows.

    ``x`` is (R, in) and ``g`` (R, out); ``ā`` is ``x`` with a homogeneous 1 appended when the
    layer has a bias. Products with ∇W then cost ``R·in²`` instead of ``out·in²`` flops.
    """

    x: torch.Tensor
    g: torch.Tensor
    bias: bool

    def rows_times(self, right: torch.Tensor) -> torch.Tensor:
        """``ā · right`` for a (in [+1], k) matrix, without forming ``ā``."""
        n = self.x.shape[1]
        if not self.bias:
            return self.x @ right[:n]
        return torch.addmm(right[n], self.x, right[:n])


#: A Kronecker layer's gradient matrix, (G side, A side): dense, or by its rows.
KroneckerGrad = torch.Tensor | FactoredGrad


def _sandwich(left: torch.Tensor, grad: KroneckerGrad, right: torch.Tensor) -> torch.Tensor:
    """``left · ∇W · right``, left product first; from the rows when ∇W comes factored."""
    if isinstance(grad, FactoredGrad):
        return (left @ grad.g.mT) @ grad.rows_times(right)
    return (left @ grad) @ right


class KroneckerState(ABC):
    """What a method keeps from the factors ``A`` and ``G`` of one Kronecker block.

    Each factor's part is replaced only when its decomposition succeeds, so a state may lack
    one part (its first decomposition failed); it preconditions once it has both.
    """

    @property
    @abstractmethod
    def complete(self) -> bool:
        """True if the state has the parts of both factors."""

    @abstractmethod
    def precondition(self, grad: KroneckerGrad, damping: float) -> torch.Tensor:
        """``(A ⊗ G + damping)⁻¹`` applied to a gradient matrix laid out (G side, A side)."""

    @abstractmethod
    def precondition_diagonal(self, grad: torch.Tensor, damping: float) -> torch.Tensor:
        """The same for a gradient laid out (A side, G side) with a diagonal ``A``: an
        embedding's table, whose rows are the tokens."""

    @abstractmethod
    def tensors(self) -> dict[str, torch.Tensor]:
        """The state under its state_dict keys (only the parts it has)."""


_Part = TypeVar("_Part")


def _part(value: _Part | None, what: str) -> _Part:
    if value is None:
        raise RuntimeError(f"K-FAC: {what} is missing (the state is incomplete)")
    return value


@dataclass(frozen=True)
class InverseState(KroneckerState):
    """The damped inverses of the factors; ``a_inv`` is a vector when ``A`` is diagonal."""

    a_inv: torch.Tensor | None = None
    g_inv: torch.Tensor | None = None

    @property
    def complete(self) -> bool:
        return self.a_inv is not None and self.g_inv is not None

    def precondition(self, grad: KroneckerGrad, damping: float) -> torch.Tensor:
        return _sandwich(_part(self.g_inv, "G's inverse"), grad, _part(self.a_inv, "A's inverse"))

    def precondition_diagonal(self, grad: torch.Tensor, damping: float) -> torch.Tensor:
        g_inv, a_inv = _part(self.g_inv, "G's inverse"), _part(self.a_inv, "A's inverse")
        return (grad @ g_inv).mul_(a_inv[:, None])

    def tensors(self) -> dict[str, torch.Tensor]:
        named = {"A_inv": self.a_inv, "G_inv": self.g_inv}
        return {key: value for key, value in named.items() if value is not None}


class Eigenpairs(NamedTuple):
    """A factor's eigenvalues (ascending, clamped at zero) and eigenvectors (columns).

    A diagonal factor has no vectors: its basis is the identity and its values are itself.
    """

    values: torch.Tensor
    vectors: torch.Tensor | None


@dataclass(frozen=True)
class EigenState(KroneckerState):
    """The eigenpairs of the undamped factors."""

    a: Eigenpairs | None = None
    g: Eigenpairs | None = None

    @property
    def complete(self) -> bool:
        return self.a is not None and self.g is not None

    def precondition(self, grad: KroneckerGrad, damping: float) -> torch.Tensor:
        da, qa = _part(self.a, "A's eigenbasis")
        dg, qg = _part(self.g, "G's eigenbasis")
        qa, qg = _part(qa, "A's eigenvectors"), _part(qg, "G's eigenvectors")
        middle = _sandwich(qg.mT, grad, qa)
        scale = torch.outer(dg, da).add_(damping)
        return qg @ middle.div_(scale) @ qa.mT

    def precondition_diagonal(self, grad: torch.Tensor, damping: float) -> torch.Tensor:
        da = _part(self.a, "A's diagonal").values
        dg, qg = _part(self.g, "G's eigenbasis")
        qg = _part(qg, "G's eigenvectors")
        scale = torch.outer(da, dg).add_(damping)
        return ((grad @ qg).div_(scale)) @ qg.mT

    def tensors(self) -> dict[str, torch.Tensor]:
        named = {}
        for factor, pairs in (("A", self.a), ("G", self.g)):
            if pairs is not None:
                named[f"e{factor}"] = pairs.values
                if pairs.vectors is not None:
                    named[f"V{factor}"] = pairs.vectors
        return named


@dataclass(frozen=True)
class UnitwiseState:
    """``(F_u + λI)⁻¹`` of every unit's small (k x k, k <= 2) Fisher block, as (units, k, k)."""

    f_inv: torch.Tensor

    @classmethod
    def from_factor(cls, f: torch.Tensor, damping: float) -> UnitwiseState:
        """Closed-form inverses of the damped blocks of ``f`` (units, k, k)."""
        if f.shape[-1] == 1:
            return cls(f.add(damping).reciprocal_())
        a, b, c, d = f[:, 0, 0] + damping, f[:, 0, 1], f[:, 1, 0], f[:, 1, 1] + damping
        det = a * d - b * c
        return cls(
            torch.stack([torch.stack([d, -b], dim=-1), torch.stack([-c, a], dim=-1)], dim=-2)
            / det[:, None, None]
        )

    @classmethod
    def load(cls, tensors: Mapping[str, torch.Tensor]) -> UnitwiseState | None:
        f_inv = tensors.get("F_inv")
        return None if f_inv is None else cls(f_inv)

    def precondition(self, grads: torch.Tensor) -> torch.Tensor:
        """The blocks applied to the parameters' gradients stacked as (units, k)."""
        return torch.einsum("uij,uj->ui", self.f_inv, grads)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"F_inv": self.f_inv}


# --------------------------------------------------------------------------------------------
# methods
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KroneckerJob:
    """One Kronecker block to refresh: its factors and the state it has now (kept for any
    factor whose decomposition fails)."""

    layer: str
    a: torch.Tensor
    g: torch.Tensor
    previous: KroneckerState | None


class _Request(NamedTuple):
    """One factor to decompose: a dense matrix, or a diagonal one as a vector."""

    layer: str
    factor: str
    matrix: torch.Tensor
    damping: float


class SecondOrderMethod(ABC):
    """A K-FAC method: from the factors of many Kronecker blocks to their states."""

    compute: ClassVar[ComputeMethod]

    @abstractmethod
    def refresh(
        self,
        jobs: Sequence[KroneckerJob],
        damping: float,
        pi: bool,
        max_retries: int,
        wanted: Collection[tuple[str, str]] | None = None,
    ) -> list[KroneckerState]:
        """The new state of every job's block, in order. A factor whose decomposition fails
        keeps its part of the previous state (or has none yet). ``wanted`` (layer, factor)
        pairs limit the work to those factors (a rank's share in distributed K-FAC); the
        others keep their previous part too."""

    @abstractmethod
    def load(self, tensors: Mapping[str, torch.Tensor], *, diagonal_a: bool) -> KroneckerState:
        """The state saved as :meth:`KroneckerState.tensors` (the parts it holds)."""


Result = TypeVar("Result")


class _BatchedMethod(SecondOrderMethod, Generic[Result]):
    """:meth:`refresh` with the dense factors of all jobs in one codl.linalg call per dtype
    (the kernels take mixed sizes but one dtype) and the diagonal ones elementwise.

    ``Result`` is what the method keeps of one factor between that call and the assembly of
    the block's state.
    """

    def refresh(
        self,
        jobs: Sequence[KroneckerJob],
        damping: float,
        pi: bool,
        max_retries: int,
        wanted: Collection[tuple[str, str]] | None = None,
    ) -> list[KroneckerState]:
        requests: list[_Request] = []
        spans: list[range] = []
        for job in jobs:
            own = self._requests(job, damping, pi)
            if wanted is not None:
                own = [r for r in own if (r.layer, r.factor) in wanted]
            spans.append(range(len(requests), len(requests) + len(own)))
            requests += own
        results: dict[int, Result] = {}
        dense_by_dtype: dict[torch.dtype, list[int]] = {}
        for index, request in enumerate(requests):
            if request.matrix.dim() == 1:
                results[index] = self._diagonal(request)
            else:
                dense_by_dtype.setdefault(request.matrix.dtype, []).append(index)
        for indices in dense_by_dtype.values():
            done = self._batched([requests[i] for i in indices], max_retries)
            results.update((indices[slot], value) for slot, value in done.items())
        return [
            self._assemble(
                job.previous, {requests[i].factor: results[i] for i in span if i in results}
            )
            for job, span in zip(jobs, spans)
        ]

    @abstractmethod
    def _requests(self, job: KroneckerJob, damping: float, pi: bool) -> list[_Request]:
        """The factors of one block to decompose, with their damping."""

    @abstractmethod
    def _diagonal(self, request: _Request) -> Result:
        """The result for a diagonal factor, computed elementwise."""

    @abstractmethod
    def _batched(self, requests: Sequence[_Request], max_retries: int) -> dict[int, Result]:
        """The results of dense factors of one dtype by their slot; failed slots are absent."""

    @abstractmethod
    def _assemble(
        self, previous: KroneckerState | None, results: Mapping[str, Result]
    ) -> KroneckerState:
        """The block's state from its factors' results (keys ``A``/``G``), filling a missing
        one from ``previous``."""


# Warnings name the frame that called the preconditioner's step: _batched <- refresh <-
# _update_curvature <- precondition_grads <- step.
_CALLER_STACKLEVEL = 5


class InverseMethod(_BatchedMethod[torch.Tensor]):
    """``(G + gamma_G I)⁻¹ ∇W (A + gamma_A I)⁻¹``: the π-split damped inverses of the factors
    (Martens & Grosse 2015 §6.3), or ``gamma_A = gamma_G = √λ`` without the π rule."""

    compute = ComputeMethod.INVERSE

    def _requests(self, job: KroneckerJob, damping: float, pi: bool) -> list[_Request]:
        if pi:
            damping_a, damping_g = codl.linalg.pi_damping(job.a, job.g, damping)
        else:
            damping_a = damping_g = math.sqrt(damping)
        return [
            _Request(job.layer, "A", job.a, damping_a),
            _Request(job.layer, "G", job.g, damping_g),
        ]

    def _diagonal(self, request: _Request) -> torch.Tensor:
        return request.matrix.add(request.damping).reciprocal_()

    def _batched(self, requests: Sequence[_Request], max_retries: int) -> dict[int, torch.Tensor]:
        """Damped inverses; a factor that is not positive definite is retried with 10x its
        damping up to ``max_retries`` times (with a :class:`KFACWarning` each time)."""
        dampings = [request.damping for request in requests]
        pending = list(range(len(requests)))
        done: dict[int, torch.Tensor] = {}
        for attempt in range(max_retries + 1):
            mats = [requests[i].matrix for i in pending]
            try:
                outs: list[torch.Tensor | None] = list(
                    codl.linalg.damped_inverse(mats, [dampings[i] for i in pending])
                )
                failures: dict[int, str] = {}
            except codl.linalg.LinAlgError as error:
                outs = cast(list[torch.Tensor | None], error.results)
                failures = error.failures
            for slot, i in enumerate(pending):
                out = outs[slot]
                if slot not in failures and out is not None:
                    done[i] = out
            pending = [pending[slot] for slot in sorted(failures)]
            if not pending:
                break
            for slot, i in zip(sorted(failures), pending):
                request = requests[i]
                if attempt == max_retries:
                    warnings.warn(
                        f"K-FAC: layer '{request.layer}': factor {request.factor} "
                        f"{failures[slot]}; gave up after {attempt} retries (the previous "
                        "inverse, if any, is kept)",
                        KFACWarning,
                        stacklevel=_CALLER_STACKLEVEL,
                    )
                    continue
                new_damping = max(10.0 * dampings[i], 1e-8)
                warnings.warn(
                    f"K-FAC: layer '{request.layer}': factor {request.factor} "
                    f"{failures[slot]}; retrying with damping {new_damping:g} "
                    f"(was {dampings[i]:g})",
                    KFACWarning,
                    stacklevel=_CALLER_STACKLEVEL,
                )
                dampings[i] = new_damping
        return done

    def _assemble(
        self, previous: KroneckerState | None, results: Mapping[str, torch.Tensor]
    ) -> InverseState:
        old = previous if isinstance(previous, InverseState) else InverseState()
        return InverseState(results.get("A", old.a_inv), results.get("G", old.g_inv))

    def load(self, tensors: Mapping[str, torch.Tensor], *, diagonal_a: bool) -> InverseState:
        return InverseState(tensors.get("A_inv"), tensors.get("G_inv"))


class EigenMethod(_BatchedMethod[Eigenpairs]):
    """``Q_G [(Q_Gᵀ ∇W Q_A) / (d_G d_Aᵀ + λ)] Q_Aᵀ`` with the eigenpairs of the undamped
    factors (George et al. 2018's basis, without their re-scaled eigenvalues)."""

    compute = ComputeMethod.EIGEN

    def _requests(self, job: KroneckerJob, damping: float, pi: bool) -> list[_Request]:
        # λ enters at preconditioning time, so the decomposition is of the factors as they are.
        return [_Request(job.layer, "A", job.a, 0.0), _Request(job.layer, "G", job.g, 0.0)]

    def _diagonal(self, request: _Request) -> Eigenpairs:
        return Eigenpairs(request.matrix.clone(), None)

    def _batched(self, requests: Sequence[_Request], max_retries: int) -> dict[int, Eigenpairs]:
        """Eigenpairs; a failed factor warns and keeps its previous basis (no retry: damping
        does not enter the decomposition)."""
        mats = [request.matrix for request in requests]
        try:
            values, vectors = codl.linalg.sym_eig(mats)
            pairs: list[tuple[torch.Tensor, torch.Tensor] | None] = list(zip(values, vectors))
            failures: dict[int, str] = {}
        except codl.linalg.LinAlgError as error:
            pairs = cast(list[tuple[torch.Tensor, torch.Tensor] | None], error.results)
            failures = error.failures
        done: dict[int, Eigenpairs] = {}
        for slot, pair in enumerate(pairs):
            if slot in failures or pair is None:
                request = requests[slot]
                warnings.warn(
                    f"K-FAC: layer '{request.layer}': eigendecomposition of factor "
                    f"{request.factor} failed ({failures.get(slot)}); the previous basis, if "
                    "any, is kept",
                    KFACWarning,
                    stacklevel=_CALLER_STACKLEVEL,
                )
                continue
            # A PSD factor's tiny negative eigenvalues are rounding: clamp them to zero.
            done[slot] = Eigenpairs(pair[0].clamp_min(0.0), pair[1])
        return done

    def _assemble(
        self, previous: KroneckerState | None, results: Mapping[str, Eigenpairs]
    ) -> EigenState:
        old = previous if isinstance(previous, EigenState) else EigenState()
        return EigenState(results.get("A", old.a), results.get("G", old.g))

    def load(self, tensors: Mapping[str, torch.Tensor], *, diagonal_a: bool) -> EigenState:
        return EigenState(_load_pairs(tensors, "A", diagonal_a), _load_pairs(tensors, "G", False))


def _load_pairs(
    tensors: Mapping[str, torch.Tensor], factor: str, diagonal: bool
) -> Eigenpairs | None:
    values, vectors = tensors.get(f"e{factor}"), tensors.get(f"V{factor}")
    if values is None or (vectors is None and not diagonal):
        return None
    return Eigenpairs(values, None if diagonal else vectors)


_METHODS: dict[ComputeMethod, SecondOrderMethod] = {
    ComputeMethod.INVERSE: InverseMethod(),
    ComputeMethod.EIGEN: EigenMethod(),
}


def method_for(method: ComputeMethod) -> SecondOrderMethod:
    """The strategy object of a method (they hold no state: one of each serves every block)."""
    return _METHODS[method]
