"""KFACPreconditioner: turns a model's ``.grad`` into the K-FAC natural gradient, in place.

Usage with any torch optimizer::

    precond = codl.optim.KFACPreconditioner(model)
    for x, y in loader:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        precond.step()      # .grad <- (A⊗G + damping)⁻¹ .grad for every registered layer
        optimizer.step()

Design. Forward hooks keep references to the inputs of registered modules and a tensor hook on
each output keeps the gradient w.r.t. it; nothing is computed in the hooks, and at steps where
no factor update is due only the layers that need them (Linear's factored product) keep any
references at all. :meth:`step` then (1) checks each layer's gradient and new statistics for
NaN/Inf before touching its factors, (2) updates the factors (EMA, in reused buffers) every
``factor_update_steps``, (3) every ``inv_update_steps`` inverts or eigendecomposes *all* dense
factors of the model in one batched :mod:`codl.linalg` call, retrying the ones that fail with
larger damping, (4) preconditions every layer's gradient and (5) rescales them all by the KL
clip nu of Ba et al. 2017 (eq. 12 of the distributed K-FAC paper). How each layer type gets its
factors and arranges its gradient lives in :mod:`codl.optim.layers`; what the method (inverse or
eigen) makes of the factors and how it preconditions lives in :mod:`codl.optim.methods`.

Fisher. ``fisher="empirical"`` (default) takes G from the loss's own backward. ``"true"``
samples labels from the model's predictive distribution (Martens & Grosse 2015 §5): call
:meth:`sample_fisher` with the model's output after the forward and before
``loss.backward()``; it backpropagates the sampled-label loss to the registered layers' outputs
only (no parameter gradients are touched) and G is taken from that pass, A from the forward.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from codl._finite import all_finite
from codl.optim.distributed import DistributedKFAC, FactorCodec
from codl.optim.hyperparams import (
    FloatHyper,
    IntHyper,
    check_float,
    check_int,
    resolve_float,
    resolve_int,
)
from codl.optim.layers import KroneckerBlock, LayerBlock, LinearBlock, NormBlock, make_block
from codl.optim.methods import ComputeMethod, KFACWarning, method_for

__all__ = ["KFACPreconditioner"]

STATE_VERSION = 1


_FISHERS = ("empirical", "true")
_REDUCTIONS = ("mean", "sum")
_LIKELIHOODS = ("categorical", "gaussian")


def _check_choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(choices)}, received {value!r}")
    return value


class KFACPreconditioner:
    """K-FAC preconditioning of a model's gradients (Martens & Grosse 2015; Grosse & Martens
    2016 for convolutions).

    Args:
        model: the module whose Linear, Conv2d, Embedding, BatchNorm1d/2d and LayerNorm
            submodules get Fisher blocks; every other parameter keeps its plain gradient.
        method: ``"inverse"`` (damped inverses of the factors, π-split damping) or
            ``"eigen"`` (eigenbases of the factors, damping added to the eigenvalue products),
            or the :class:`~codl.optim.ComputeMethod` member; kept as the member.
        damping: Tikhonov damping λ (number or callable of the step).
        factor_decay: EMA decay of the factors (number in [0, 1) or callable).
        factor_update_steps: recompute factor statistics every this many steps (int/callable).
        inv_update_steps: recompute inverses/eigenbases every this many steps (int/callable).
        kl_clip: KL clipping constant κ (Ba et al. 2017, kfac-pytorch), or None to disable:
            the gradients are scaled by ``nu = min(1, sqrt(κ / Σ lr²⟨v, ∇⟩))``. When it binds,
            an optimizer step ``lr · nu · v`` does not depend on ``lr``: κ sets the step size.
        lr: the learning rate the KL clip assumes when :meth:`step` is called without one.
        pi_damping: split λ between A and G by the π rule (inverse method only).
        fisher: ``"empirical"`` or ``"true"`` (see :meth:`sample_fisher`).
        loss_reduction: ``"mean"`` (loss averaged over the first dimension: the output
            gradients are scaled by the batch size to per-example ones) or ``"sum"``.
        max_factor_rows: at most this many rows (examples x positions) per layer feed the
            factor statistics (default 4096); whole examples are taken, evenly spaced in the
            batch (no RNG, so a step stays a pure function of its batch), before unfolding.
            ``None`` uses every row. It is what keeps conv factors cheap: conv2 of FashionCNN
            has 128 x 196 = 25088 rows of 801 columns per batch (32 GFLOP for A), 4096 rows
            cost a sixth of that, and the EMA over factor updates averages many batches anyway.
            Layers with fewer rows (a Linear at batch <= 4096) are exact.
        factored_linear: for Linear layers, use ``∇W A⁻¹ = gᵀ(ā A⁻¹)`` when the step's rows
            are fewer than the output features, after checking (Freivalds) that ``.grad`` is
            exactly this step's ``gᵀā``; otherwise the dense product.
        skip_modules: module names (``fnmatch`` patterns on the qualified name) or module types
            that get no Fisher block.
        max_inverse_retries: a factor that is not positive definite after damping is retried
            with 10x the damping this many times (with a :class:`KFACWarning`).
        seed: seeds the true-Fisher label sampling and the Freivalds probes.
        process_group: distributed K-FAC over this group (:mod:`codl.optim.distributed`);
            default: the group of a ``DistributedDataParallel`` model, else none. With more
            than one rank, every rank must hold the same averaged ``.grad`` at :meth:`step`
            (DDP's), build the preconditioner in the same order, and call :meth:`step`,
            :meth:`state_dict` and :meth:`load_state_dict` together (they communicate).
        grad_worker_fraction: KAISA's fraction of ranks that hold each layer's inverses and
            precondition its gradient, in [1/P, 1]: 1 shares inverses (memory-heavy,
            communication-light), 1/P shares preconditioned gradients from one rank per layer.
        factor_dtype: ``torch.float16`` or ``torch.bfloat16`` to average the factors in
            16 bits (sums in float32); None: in their own dtype.
        factor_codec: a dense codec (e.g. ``codl.comm.Int8()``, no error feedback) for the
            factor average instead of ``factor_dtype``.
        colocate_factors: a layer's A and G are decomposed on the same rank (default: each
            factor goes to the least loaded rank of the layer's gradient workers).
        failure_probe_s: after a failed collective, how long a rank waits for the others to
            answer before naming the ones that did not (:class:`KFACDistributedError`).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        method: ComputeMethod | str = "inverse",
        damping: FloatHyper = 3e-2,
        factor_decay: FloatHyper = 0.95,
        factor_update_steps: IntHyper = 10,
        inv_update_steps: IntHyper = 100,
        kl_clip: FloatHyper | None = 1e-3,
        lr: FloatHyper = 0.1,
        pi_damping: bool = True,
        fisher: str = "empirical",
        loss_reduction: str = "mean",
        max_factor_rows: int | None = 4096,
        factored_linear: bool = True,
        skip_modules: Iterable[str | type[nn.Module]] = (),
        max_inverse_retries: int = 3,
        seed: int = 0,
        process_group: dist.ProcessGroup | None = None,
        grad_worker_fraction: float = 1.0,
        factor_dtype: torch.dtype | None = None,
        factor_codec: FactorCodec | None = None,
        colocate_factors: bool = False,
        failure_probe_s: float = 2.0,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, received {type(model).__name__}")
        distributed = process_group is not None
        if isinstance(model, DistributedDataParallel):
            # Blocks are named after the wrapped module, so a checkpoint loads with or
            # without DDP, at any world size.
            if process_group is None:
                process_group = model.process_group
            distributed = True
            model = model.module
        self.model = model
        self.method = ComputeMethod.parse(method)
        self._strategy = method_for(self.method)
        self.fisher = _check_choice(fisher, "fisher", _FISHERS)
        self.loss_reduction = _check_choice(loss_reduction, "loss_reduction", _REDUCTIONS)
        self.damping_hyper = check_float(damping, "damping", open_low=True)
        self.factor_decay = check_float(factor_decay, "factor_decay", high=1.0 - 1e-12)
        self.factor_update_steps = check_int(factor_update_steps, "factor_update_steps")
        self.inv_update_steps = check_int(inv_update_steps, "inv_update_steps")
        self.kl_clip = None if kl_clip is None else check_float(kl_clip, "kl_clip", open_low=True)
        self.lr = check_float(lr, "lr")
        if not isinstance(pi_damping, bool):
            raise TypeError(f"pi_damping: expected a bool, received {pi_damping!r}")
        self.pi_damping = pi_damping
        if max_factor_rows is not None:
            check_int(max_factor_rows, "max_factor_rows")
        self.max_factor_rows = max_factor_rows
        if not isinstance(factored_linear, bool):
            raise TypeError(f"factored_linear: expected a bool, received {factored_linear!r}")
        check_int(max_inverse_retries, "max_inverse_retries", low=0)
        self.max_inverse_retries = max_inverse_retries
        check_int(seed, "seed", low=0)
        skips = list(skip_modules) if not isinstance(skip_modules, str) else [skip_modules]
        for index, skip in enumerate(skips):
            if not isinstance(skip, str) and not (
                isinstance(skip, type) and issubclass(skip, nn.Module)
            ):
                raise TypeError(
                    f"skip_modules[{index}]: expected a name pattern or an nn.Module type, "
                    f"received {skip!r}"
                )

        # The adaptive-damping value (set by KFAC); None means "read damping_hyper".
        self.damping_value: float | None = None
        self.steps = 0
        self.generator = torch.Generator().manual_seed(seed)
        self._enabled = True
        self._sampling = False
        self._factor_step_cache: tuple[int, bool] = (-1, False)

        self.blocks: dict[str, LayerBlock] = {}
        self._handles: list[Any] = []
        claimed: set[int] = set()
        for index, (name, module) in enumerate(model.named_modules()):
            if any(
                (isinstance(s, str) and fnmatch.fnmatchcase(name, s))
                or (isinstance(s, type) and isinstance(module, s))
                for s in skips
            ):
                continue
            block = make_block(
                name, module, seed * 1_000_003 + index, factored_linear=factored_linear
            )
            if block is None or any(id(p) in claimed for p in block.params()):
                continue  # a parameter shared with an earlier block keeps that one
            claimed.update(id(p) for p in block.params())
            self.blocks[name] = block
            self._handles.append(module.register_forward_hook(self._make_forward_hook(block)))

        #: The distributed engine (None on one process).
        self.distributed: DistributedKFAC | None = None
        if distributed and dist.is_initialized() and dist.get_world_size(process_group) > 1:
            for block in self.blocks.values():
                if isinstance(block, LinearBlock):
                    # .grad is the ranks' mean, never this rank's own gᵀā: the factored
                    # product does not apply (and its probe must not decide differently on
                    # different ranks).
                    block.factored = False
            self.distributed = DistributedKFAC(
                self.blocks,
                self.method,
                process_group,
                grad_worker_fraction=grad_worker_fraction,
                factor_dtype=factor_dtype,
                factor_codec=factor_codec,
                colocate_factors=colocate_factors,
                failure_probe_s=failure_probe_s,
            )

    # ------------------------------------------------------------------------------------
    # hooks
    # ------------------------------------------------------------------------------------
    def _factor_update_due(self, step: int) -> bool:
        cached_step, due = self._factor_step_cache
        if cached_step != step:
            every = resolve_int(self.factor_update_steps, "factor_update_steps", step)
            due = step % every == 0
            self._factor_step_cache = (step, due)
        return due

    def _make_forward_hook(self, block: LayerBlock) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if not self._enabled or not torch.is_grad_enabled() or not args:
                return
            factor_due = self._factor_update_due(self.steps)
            if not factor_due and not block.wants_inputs_every_step():
                return
            if not isinstance(output, torch.Tensor) or not output.requires_grad:
                return
            inp = args[0]
            if not isinstance(inp, torch.Tensor):
                return
            block.inputs.append(inp.detach())
            output.register_hook(lambda grad: self._grad_hook(block, grad))  # type: ignore[no-untyped-call]
            if factor_due and self.fisher == "true":
                block.outputs.append(output)

        return hook

    def _grad_hook(self, block: LayerBlock, grad: torch.Tensor) -> None:
        if self._enabled and not self._sampling:
            block.grads.append(grad.detach())

    @contextlib.contextmanager
    def hooks_disabled(self) -> Iterator[None]:
        """Forward/backward passes inside this block leave no statistics (e.g. evaluation
        passes with gradients on, or the re-evaluation of adaptive damping)."""
        previous = self._enabled
        self._enabled = False
        try:
            yield
        finally:
            self._enabled = previous

    def remove(self) -> None:
        """Remove the hooks from the model."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    # ------------------------------------------------------------------------------------
    # true Fisher
    # ------------------------------------------------------------------------------------
    def sample_fisher(self, output: torch.Tensor, likelihood: str = "categorical") -> None:
        """Backpropagate a loss with labels sampled from the model to collect the true Fisher.

        Call after the forward and before ``loss.backward()`` (it keeps the graph). Labels are
        drawn from ``softmax(output)`` over the last dimension (``"categorical"``) or from
        ``N(output, 1)`` (``"gaussian"``, the Fisher of a squared-error loss); the summed
        negative log-likelihood is backpropagated to the registered layers' outputs only.
        A no-op at steps without a factor update, so it can be called every step.
        """
        if self.fisher != "true":
            raise RuntimeError(
                "sample_fisher: the preconditioner was built with fisher='empirical'"
            )
        _check_choice(likelihood, "likelihood", _LIKELIHOODS)
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"output: expected a torch.Tensor, received {type(output).__name__}")
        if not output.requires_grad:
            raise ValueError("output: expected a tensor that requires grad (the model's output)")
        pending = [(b, o) for b in self.blocks.values() for o in b.outputs]
        if not pending:
            return
        with torch.no_grad():
            if likelihood == "categorical":
                logits = output.detach().reshape(-1, output.shape[-1])
                probs = torch.softmax(logits.double(), dim=-1)
                labels = torch.multinomial(probs, 1, generator=self.generator).reshape(-1)
            else:
                noise = torch.randn(output.shape, generator=self.generator, dtype=output.dtype)
                target = output.detach() + noise
        if likelihood == "categorical":
            sampled_loss = F.cross_entropy(
                output.reshape(-1, output.shape[-1]), labels, reduction="sum"
            )
        else:
            sampled_loss = 0.5 * (output - target).pow(2).sum()
        self._sampling = True
        try:
            grads = torch.autograd.grad(
                sampled_loss, [o for _, o in pending], retain_graph=True, allow_unused=True
            )
        finally:
            self._sampling = False
        for (block, o), grad in zip(pending, grads):
            block.fisher_grads.append(torch.zeros_like(o) if grad is None else grad)
        for block in self.blocks.values():
            block.outputs.clear()

    # ------------------------------------------------------------------------------------
    # the step
    # ------------------------------------------------------------------------------------
    @property
    def damping(self) -> float:
        """The damping of the current step (the adaptive value when KFAC adapts it)."""
        if self.damping_value is not None:
            return self.damping_value
        return resolve_float(self.damping_hyper, "damping", self.steps, open_low=True)

    @torch.no_grad()
    def step(self, lr: float | None = None) -> None:
        """Precondition every registered layer's ``.grad`` in place and advance one step.

        ``lr`` is the learning rate the KL clip assumes (default: the ``lr`` hyperparameter).
        """
        if lr is None:
            lr = resolve_float(self.lr, "lr", self.steps)
        self.precondition_grads(lambda _p: lr)

    def precondition_grads(self, lr_of: Callable[[nn.Parameter], float]) -> None:
        """:meth:`step` with a learning rate per parameter (KFAC passes its param groups')."""
        if self.distributed is not None:
            self._precondition_distributed(self.distributed, lr_of)
            return
        step = self.steps
        factor_due = self._factor_update_due(step)
        inverse_every = resolve_int(self.inv_update_steps, "inv_update_steps", step)
        inverse_due = step % inverse_every == 0
        decay = resolve_float(self.factor_decay, "factor_decay", step, high=1.0 - 1e-12)
        damping = self.damping
        true_fisher = self.fisher == "true"

        ready: list[LayerBlock] = []
        try:
            for block in self.blocks.values():
                grads = block.param_grads()
                if grads is None:
                    continue
                if not all(all_finite(g) for g in grads):
                    self._skip(block, "its gradient holds NaN or Inf")
                    continue
                if factor_due and block.inputs:
                    if true_fisher and not block.fisher_grads:
                        raise RuntimeError(
                            f"layer '{block.name}': fisher='true' needs "
                            "sample_fisher(output) after the forward and before backward at "
                            "factor-update steps"
                        )
                    if block.has_records(true_fisher) and not block.update_factors(
                        decay, true_fisher, self.loss_reduction, self.max_factor_rows
                    ):
                        self._skip(block, "its new factor statistics hold NaN or Inf")
                        continue
                if block.factors:
                    ready.append(block)

            stale = [b for b in ready if inverse_due or not b.ready()]
            if stale:
                self._update_curvature(stale, damping)

            kl_clip = (
                None
                if self.kl_clip is None
                else resolve_float(self.kl_clip, "kl_clip", step, open_low=True)
            )
            updates: list[tuple[LayerBlock, list[torch.Tensor]]] = []
            vg_sum = 0.0
            for block in ready:
                if not block.ready():
                    continue
                preconditioned = block.precondition(damping, self._check_rtol(block))
                updates.append((block, preconditioned))
                if kl_clip is not None:
                    for p, v in zip(block.params(), preconditioned):
                        assert p.grad is not None
                        vg_sum += float(torch.vdot(v.reshape(-1), p.grad.reshape(-1))) * (
                            lr_of(p) ** 2
                        )
            nu = 1.0
            if kl_clip is not None and vg_sum != 0.0 and math.isfinite(vg_sum):
                nu = min(1.0, math.sqrt(kl_clip / abs(vg_sum)))
            for block, preconditioned in updates:
                for p, v in zip(block.params(), preconditioned):
                    assert p.grad is not None
                    p.grad.copy_(v)
                    if nu != 1.0:
                        p.grad.mul_(nu)
        finally:
            for block in self.blocks.values():
                block.clear_records()
        self.steps += 1

    def _precondition_distributed(
        self, engine: DistributedKFAC, lr_of: Callable[[nn.Parameter], float]
    ) -> None:
        """:meth:`precondition_grads` across ranks (:mod:`codl.optim.distributed`).

        Decisions that skip a layer depend only on what every rank holds alike (the averaged
        ``.grad``, the averaged factors, the shared states), so the ranks never part ways: a
        rank whose own new statistics are not finite keeps its factors as they were and adds
        them to the average instead (with a warning), rather than dropping the layer.
        """
        step = self.steps
        factor_due = self._factor_update_due(step)
        inverse_every = resolve_int(self.inv_update_steps, "inv_update_steps", step)
        inverse_due = step % inverse_every == 0
        decay = resolve_float(self.factor_decay, "factor_decay", step, high=1.0 - 1e-12)
        damping = self.damping
        true_fisher = self.fisher == "true"
        try:
            ready: list[LayerBlock] = []
            for block in self.blocks.values():
                grads = block.param_grads()
                if grads is None:
                    continue
                if not all(all_finite(g) for g in grads):
                    self._skip(block, "its gradient holds NaN or Inf")
                    continue
                if factor_due and block.inputs:
                    if true_fisher and not block.fisher_grads:
                        raise RuntimeError(
                            f"layer '{block.name}': fisher='true' needs "
                            "sample_fisher(output) after the forward and before backward at "
                            "factor-update steps"
                        )
                    if block.has_records(true_fisher) and not block.update_factors(
                        decay, true_fisher, self.loss_reduction, self.max_factor_rows
                    ):
                        warnings.warn(
                            f"K-FAC: layer '{block.name}': this rank's new factor statistics "
                            "hold NaN or Inf; its factors enter the average unchanged",
                            KFACWarning,
                            stacklevel=3,
                        )
                if block.factors:
                    ready.append(block)
            if factor_due:
                engine.reduce_factors(ready, step)
            else:
                engine.last_bytes = dict.fromkeys(("factors", "states", "gradients"), 0)

            stale = [b for b in ready if inverse_due or b.name not in engine.refreshed]
            kronecker = [b for b in stale if isinstance(b, KroneckerBlock)]
            engine.refresh(
                kronecker, self._strategy, damping, self.pi_damping, self.max_inverse_retries
            )
            for norm in stale:
                if isinstance(norm, NormBlock):
                    norm.refresh(damping)  # identical factors, closed form: the same everywhere
                    engine.refreshed.add(norm.name)

            results: dict[str, tuple[list[torch.Tensor], bool]] = {}
            for block in ready:
                local = not isinstance(block, KroneckerBlock) or (
                    engine.assignment.is_grad_worker(block.name, engine.rank)
                )
                if not local:
                    continue
                if block.ready():
                    results[block.name] = (
                        block.precondition(damping, self._check_rtol(block)),
                        True,
                    )
                else:
                    results[block.name] = ([g.clone() for g in block.param_grads() or []], False)
            engine.share_gradients(results, [b.name for b in ready])

            kl_clip = (
                None
                if self.kl_clip is None
                else resolve_float(self.kl_clip, "kl_clip", step, open_low=True)
            )
            vg_sum = 0.0
            if kl_clip is not None:
                for block in ready:  # the same values in the same order on every rank
                    preconditioned, done = results[block.name]
                    if not done:
                        continue
                    for p, v in zip(block.params(), preconditioned):
                        assert p.grad is not None
                        vg_sum += float(torch.vdot(v.reshape(-1), p.grad.reshape(-1))) * (
                            lr_of(p) ** 2
                        )
            nu = 1.0
            if kl_clip is not None and vg_sum != 0.0 and math.isfinite(vg_sum):
                nu = min(1.0, math.sqrt(kl_clip / abs(vg_sum)))
            for block in ready:
                preconditioned, done = results[block.name]
                if not done:
                    continue
                for p, v in zip(block.params(), preconditioned):
                    assert p.grad is not None
                    p.grad.copy_(v)
                    if nu != 1.0:
                        p.grad.mul_(nu)
        finally:
            for block in self.blocks.values():
                block.clear_records()
        self.steps += 1

    @staticmethod
    def _check_rtol(block: LayerBlock) -> float:
        params = block.params()
        return 1e3 * torch.finfo(params[0].dtype).eps if params else 0.0

    def _skip(self, block: LayerBlock, why: str) -> None:
        warnings.warn(
            f"K-FAC: layer '{block.name}': {why}; its update is skipped this step "
            "(gradient set to None, factors unchanged)",
            KFACWarning,
            stacklevel=3,
        )
        block.drop_grads()
        block.clear_records()

    def _update_curvature(self, blocks: list[LayerBlock], damping: float) -> None:
        """The method's state of ``blocks`` from their factors: every dense factor in one
        batched codl.linalg call per dtype, the unit-wise blocks in closed form."""
        kronecker = [block for block in blocks if isinstance(block, KroneckerBlock)]
        states = self._strategy.refresh(
            [block.job() for block in kronecker],
            damping,
            self.pi_damping,
            self.max_inverse_retries,
        )
        for block, state in zip(kronecker, states):
            block.state = state
        for norm in blocks:
            if isinstance(norm, NormBlock):
                norm.refresh(damping)

    # ------------------------------------------------------------------------------------
    # curvature for adaptive damping
    # ------------------------------------------------------------------------------------
    def curvature(self, deltas: Mapping[nn.Parameter, torch.Tensor]) -> float:
        """``δᵀ F̂ δ`` summed over the blocks with factors (block-diagonal K-FAC Fisher,
        undamped); parameters without a block contribute nothing."""
        total = 0.0
        for block in self.blocks.values():
            params = block.params()
            if not block.factors or not all(p in deltas for p in params):
                continue
            total += block.curvature([deltas[p] for p in params])
        return total

    # ------------------------------------------------------------------------------------
    # state
    # ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Factors, inverses, step counter, adaptive damping and the sampling RNG.

        The inverses are saved too: they come from the factors of the last inverse update,
        which later factor updates overwrite, so recomputing them on load would change the
        steps until the next inverse update. With them, a resumed run is bit-identical.

        Distributed, it is the same on every rank and does not depend on the world size: the
        states held by some ranks only (``grad_worker_fraction < 1``) are gathered first, so
        every rank must call it.
        """
        engine = self.distributed
        if engine is not None:
            engine.gather_states(self._strategy)
        try:
            return self._state_dict()
        finally:
            if engine is not None:
                engine.drop_foreign_states()

    def _state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "method": self.method.value,
            "steps": self.steps,
            "damping_value": self.damping_value,
            "generator": self.generator.get_state(),
            "layers": {
                name: {
                    "factors": {k: v.clone() for k, v in block.factors.items()},
                    "inverses": {k: v.clone() for k, v in block.inverses.items()},
                }
                for name, block in self.blocks.items()
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (layer names and factor shapes must match)."""
        if not isinstance(state, Mapping):
            raise TypeError(f"state: expected a mapping, received {type(state).__name__}")
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                f"state: expected version {STATE_VERSION}, received {state.get('version')!r}"
            )
        if state.get("method") != self.method.value:
            raise ValueError(
                f"state: saved with method={state.get('method')!r}, this preconditioner uses "
                f"method={self.method.value!r}"
            )
        layers = state["layers"]
        if set(layers) != set(self.blocks):
            raise ValueError(
                f"state: expected layers {sorted(self.blocks)}, received {sorted(layers)}"
            )
        for name, block in self.blocks.items():
            saved = layers[name]
            for part in ("factors", "inverses"):
                for key, value in saved[part].items():
                    if not isinstance(value, torch.Tensor):
                        raise TypeError(f"state: layers[{name!r}][{part}][{key!r}] not a tensor")
            fresh_factors = {k: v.clone() for k, v in saved["factors"].items()}
            for key, value in fresh_factors.items():
                current = block.factors.get(key)
                if current is not None and current.shape != value.shape:
                    raise ValueError(
                        f"state: layer '{name}' factor {key}: expected shape "
                        f"{tuple(current.shape)}, received {tuple(value.shape)}"
                    )
            block.factors = fresh_factors
            block.load_inverses(
                self._strategy, {k: v.clone() for k, v in saved["inverses"].items()}
            )
            block.clear_records()
        self.steps = int(state["steps"])
        value = state.get("damping_value")
        self.damping_value = None if value is None else float(value)
        self.generator.set_state(state["generator"])
        self._factor_step_cache = (-1, False)
        engine = self.distributed
        if engine is not None:
            engine.refreshed = {name for name, block in self.blocks.items() if block.inverses}
            engine.drop_foreign_states()
