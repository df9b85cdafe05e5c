"""KFAC: a ``torch.optim.Optimizer`` that preconditions with K-FAC, then takes a momentum step.

    optimizer = codl.optim.KFAC(model, lr=0.05, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 30)   # lr read every step
    for x, y in loader:
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

Each step: (1) ``.grad`` ← K-FAC preconditioned gradient ``v``
(:class:`~codl.optim.KFACPreconditioner`); (2) ``.grad`` ← ``min(1, max_grad_norm / ‖v‖)·v``
with ``‖v‖`` the L2 norm over every parameter of the param groups (the clipping ASDL's recipe
applies after preconditioning); (3) ``d = .grad + weight_decay·θ`` (weight decay is not
preconditioned, as in kfac-pytorch's examples with SGD); (4) heavy-ball momentum
``b ← μ b + d`` (or Nesterov); (5) ``θ ← θ - lr·b``.

Step size. The learning rate sets it: the update before momentum is
``lr · min(1, max_grad_norm / ‖v‖) · v``, so doubling lr doubles it, clipped or not, and a
schedule acts on it. The optional KL clip of Ba et al. 2017 / kfac-pytorch (``kl_clip=κ``, off
by default) rescales ``v`` by ``nu = min(1, sqrt(κ / Σ lr²⟨v, ∇⟩))`` in step (1); when it binds
the update is ``sqrt(κ / Σ⟨v, ∇⟩) · v`` whatever the learning rate, so κ, not lr, sets the step
size (and a schedule on lr does nothing until nu reaches 1). Before issue 14 it was on by
default (κ = 1e-3), which made lr 0.05 and 0.1 give bit-identical weights.

Adaptive damping (``adaptive_damping=True``, needs ``optimizer.step(closure)`` with a closure
that zeroes the gradients, computes the loss, calls ``backward()`` and returns the loss, as for
LBFGS). Every ``damping_adaptation_interval`` = T steps the closure is evaluated again after the
update (with the K-FAC hooks off) and the Levenberg-Marquardt rule of Martens & Grosse 2015
§6.5 is applied: ``rho = (h(θ+δ) - h(θ)) / M(δ)``, ``λ ← ω λ`` if rho > 3/4, ``λ ← λ / ω`` if
rho < 1/4, ``ω = (19/20)^T``. ``h`` is the closure's loss plus ``(weight_decay/2)‖θ‖²``; the
quadratic model is ``M(δ) = ∇hᵀδ + ½ δᵀ(F̂ + η I)δ`` with ``δ`` the update actually applied
(momentum included) and ``F̂`` the block-diagonal K-FAC Fisher from the current *undamped*
factors (``A ⊗ G`` per layer, the exact unit-wise blocks of norm layers; no curvature for
parameters without a block). This is cheaper than the exact Fisher-vector product of the paper
and uses the very curvature the step was computed from.

Non-finite values. Every parameter of the param groups is guarded, not only those of layers
with a Fisher block: before preconditioning, a parameter whose ``.grad`` holds NaN or Inf (all
of them when ``step(closure)``'s loss is not finite) is flagged, with the other parameters of
its Fisher block, and a :class:`~codl.optim.KFACWarning` names them. ``on_nonfinite="skip"``
(default) leaves them untouched this step (gradient set to None: no update, momentum buffer
and factors unchanged); ``"zero"`` gives them a zero gradient (their factors stay unchanged,
but weight decay and momentum still move them). Damping is not adapted at such a step.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from codl._finite import all_finite
from codl.optim.hyperparams import FloatHyper, IntHyper, check_float, check_int
from codl.optim.methods import KFACWarning
from codl.optim.preconditioner import KFACPreconditioner

__all__ = ["KFAC"]

_ON_NONFINITE = ("skip", "zero")


def _as_float(loss: Any) -> float:
    return float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)


class KFAC(torch.optim.Optimizer):
    """K-FAC natural-gradient descent with momentum (Martens & Grosse 2015, Grosse & Martens
    2016; the KL-clipped momentum-SGD form of Ba et al. 2017 and kfac-pytorch).

    Args:
        model: the model; its supported layers get Fisher blocks.
        lr, momentum, weight_decay, nesterov: as ``torch.optim.SGD`` (per param group).
        damping: λ (number or callable of the step; a number when ``adaptive_damping``).
            The default 1e-3 goes with the norm clip (ASDL's recipe); with the KL clip alone,
            1e-3 under-damped the Fashion-MNIST CNN and 3e-2 was the default.
        factor_decay, factor_update_steps, inv_update_steps: see
            :class:`~codl.optim.KFACPreconditioner` (numbers or callables of the step).
        kl_clip: κ of the KL clip (off by default; when it binds, κ sets the step size and lr
            does not: see the module's docstring).
        max_grad_norm: the preconditioned gradient's L2 norm over all parameters is clipped to
            this (None: no clipping); the update is ``lr · min(1, max_grad_norm / ‖v‖) · v``.
        params: parameters or param groups (default: the model's trainable parameters).
        adaptive_damping: Levenberg-Marquardt adaptation of λ (needs ``step(closure)``).
        damping_adaptation_interval: T of the rule (Martens & Grosse use 5).
        damping_bounds: λ stays within these (min, max).
        on_nonfinite: ``"skip"`` or ``"zero"``: what a parameter whose gradient holds NaN/Inf
            gets this step (see the module's docstring); both warn.
        **preconditioner_options: forwarded to :class:`~codl.optim.KFACPreconditioner`
            (``method``, ``fisher``, ``pi_damping``, ``max_factor_rows``, ``skip_modules``...).
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        damping: FloatHyper = 1e-3,
        factor_decay: FloatHyper = 0.95,
        factor_update_steps: IntHyper = 10,
        inv_update_steps: IntHyper = 100,
        kl_clip: FloatHyper | None = None,
        *,
        params: Iterable[Any] | None = None,
        nesterov: bool = False,
        adaptive_damping: bool = False,
        damping_adaptation_interval: int = 5,
        damping_bounds: tuple[float, float] = (1e-8, 1e2),
        on_nonfinite: str = "skip",
        max_grad_norm: float | None = 1.0,
        **preconditioner_options: Any,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, received {type(model).__name__}")
        check_float(lr, "lr")
        if callable(lr):
            raise TypeError("lr: expected a number (use a torch LR scheduler to vary it)")
        check_float(momentum, "momentum", high=1.0 - 1e-12)
        check_float(weight_decay, "weight_decay")
        if callable(momentum) or callable(weight_decay):
            raise TypeError(
                "momentum, weight_decay: expected numbers (they are param-group values)"
            )
        if not isinstance(nesterov, bool):
            raise TypeError(f"nesterov: expected a bool, received {nesterov!r}")
        if nesterov and momentum == 0:
            raise ValueError("nesterov: needs momentum > 0")
        if not isinstance(adaptive_damping, bool):
            raise TypeError(f"adaptive_damping: expected a bool, received {adaptive_damping!r}")
        check_int(damping_adaptation_interval, "damping_adaptation_interval")
        if (
            not isinstance(damping_bounds, tuple)
            or len(damping_bounds) != 2
            or not all(
                isinstance(b, (int, float)) and not isinstance(b, bool) for b in damping_bounds
            )
            or not 0 < damping_bounds[0] <= damping_bounds[1] < math.inf
        ):
            raise ValueError(
                f"damping_bounds: expected (min, max) with 0 < min <= max < inf, "
                f"received {damping_bounds!r}"
            )
        if on_nonfinite not in _ON_NONFINITE:
            raise ValueError(
                f"on_nonfinite: expected one of {', '.join(_ON_NONFINITE)}, "
                f"received {on_nonfinite!r}"
            )
        if max_grad_norm is not None:
            check_float(max_grad_norm, "max_grad_norm", open_low=True)
            if callable(max_grad_norm):
                raise TypeError("max_grad_norm: expected a number or None")
        if adaptive_damping and callable(damping):
            raise TypeError("damping: expected a number (the initial λ) with adaptive_damping")
        if params is None:
            params = [p for p in model.parameters() if p.requires_grad]
        defaults = {
            "lr": float(lr),
            "momentum": float(momentum),
            "weight_decay": float(weight_decay),
            "nesterov": nesterov,
        }
        super().__init__(params, defaults)
        self.preconditioner = KFACPreconditioner(
            model,
            damping=damping,
            factor_decay=factor_decay,
            factor_update_steps=factor_update_steps,
            inv_update_steps=inv_update_steps,
            kl_clip=kl_clip,
            lr=float(lr),
            **preconditioner_options,
        )
        if adaptive_damping and self.preconditioner.distributed is not None:
            raise ValueError(
                "adaptive_damping: not supported with a process group yet (each rank's "
                "closure sees its own batch, so the ranks would adapt damping apart)"
            )
        self.adaptive_damping = adaptive_damping
        self.on_nonfinite = on_nonfinite
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        #: L2 norm of the preconditioned gradient at the last step (before its clipping).
        self.last_grad_norm: float | None = None
        self._names = {id(p): name for name, p in model.named_parameters()}
        #: steps at which some parameter's update was skipped or zeroed for NaN/Inf.
        self.nonfinite_steps = 0
        self.damping_adaptation_interval = damping_adaptation_interval
        self.damping_bounds = (float(damping_bounds[0]), float(damping_bounds[1]))
        if adaptive_damping:
            self.preconditioner.damping_value = float(damping)  # type: ignore[arg-type]
        #: rho of the last damping adaptation (None before the first).
        self.last_rho: float | None = None

    @property
    def damping(self) -> float:
        """The damping λ of the next step."""
        return self.preconditioner.damping

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One K-FAC step; ``closure`` (optional) recomputes the loss and its gradients."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        precond = self.preconditioner
        adapt = (
            self.adaptive_damping
            and closure is not None
            and precond.steps % self.damping_adaptation_interval == 0
        )
        flagged = self._guard_nonfinite(loss, adapt)
        adapt = adapt and not flagged
        snapshot: dict[torch.Tensor, tuple[torch.Tensor, torch.Tensor]] = {}
        if adapt:
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        snapshot[p] = (p.grad.clone(), p.detach().clone())

        lr_of_param = {p: group["lr"] for group in self.param_groups for p in group["params"]}
        precond.precondition_grads(lambda p: float(lr_of_param.get(p, self.defaults["lr"])))
        if self.on_nonfinite == "zero":
            for p in flagged:
                p.grad = torch.zeros_like(p)
        if self.max_grad_norm is not None:
            self._clip_grad_norm(self.max_grad_norm)

        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            weight_decay, nesterov = group["weight_decay"], group["nesterov"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if weight_decay != 0:
                    d = d.add(p, alpha=weight_decay)
                if momentum != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = d.detach().clone()
                    else:
                        buf.mul_(momentum).add_(d)
                    d = d.add(buf, alpha=momentum) if nesterov else buf
                p.add_(d, alpha=-lr)

        if adapt and loss is not None:
            self._adapt_damping(_as_float(loss), closure, snapshot)  # type: ignore[arg-type]
        return loss

    def _clip_grad_norm(self, max_norm: float) -> None:
        """Scale every group's preconditioned ``.grad`` by ``min(1, max_norm / ‖v‖)``, ‖v‖
        the L2 norm over all of them (as ``torch.nn.utils.clip_grad_norm_`` after ASDL's
        preconditioning): the update is then ``lr · min(1, max_norm / ‖v‖) · v``."""
        grads = [p.grad for group in self.param_groups for p in group["params"]]
        present = [g for g in grads if g is not None]
        if not present:
            return
        norm = math.sqrt(sum(float(g.pow(2).sum(dtype=torch.float64)) for g in present))
        self.last_grad_norm = norm
        if norm > max_norm and math.isfinite(norm):
            scale = max_norm / norm
            for g in present:
                g.mul_(scale)

    def _guard_nonfinite(self, loss: Any, adapt: bool) -> list[torch.Tensor]:
        """Flag the parameters whose gradient holds NaN/Inf (all of them if ``loss`` is not
        finite) and their Fisher blocks' other parameters; set their ``.grad`` to None."""
        loss_finite = loss is None or math.isfinite(_as_float(loss))
        engine = self.preconditioner.distributed
        if engine is not None and loss is not None:
            # Each rank's loss is its own batch's: agree, so every rank skips alike.
            loss_finite = not engine.any_across(not loss_finite)
        bad: dict[int, torch.Tensor] = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and (not loss_finite or not all_finite(p.grad)):
                    bad[id(p)] = p
        if not bad:
            return []
        for block in self.preconditioner.blocks.values():
            params = block.params()
            if any(id(p) in bad for p in params):
                bad.update((id(p), p) for p in params if p.grad is not None)
        flagged = list(bad.values())
        names = ", ".join(self._names.get(id(p), f"<unnamed {tuple(p.shape)}>") for p in flagged)
        if loss_finite:
            why = f"NaN or Inf in the gradient of {names}"
        else:
            why = f"the loss is {_as_float(loss)} (parameters {names})"
        what = "skipped" if self.on_nonfinite == "skip" else "made with a zero gradient"
        tail = ", damping not adapted" if adapt else ""
        warnings.warn(
            f"K-FAC: {why}; their update is {what} this step (factors unchanged{tail})",
            KFACWarning,
            stacklevel=3,
        )
        for p in flagged:
            p.grad = None
        self.nonfinite_steps += 1
        return flagged

    def _adapt_damping(
        self,
        old_loss: float,
        closure: Callable[[], Any],
        snapshot: dict[torch.Tensor, tuple[torch.Tensor, torch.Tensor]],
    ) -> None:
        precond = self.preconditioner
        with precond.hooks_disabled(), torch.enable_grad():
            new_loss = _as_float(closure())
        deltas = {p: p.detach() - before for p, (_, before) in snapshot.items()}
        actual = new_loss - old_loss
        model = 0.5 * precond.curvature(deltas)  # type: ignore[arg-type]
        weight_decay_of = {
            p: group["weight_decay"] for group in self.param_groups for p in group["params"]
        }
        for p, (grad, before) in snapshot.items():
            delta = deltas[p]
            model += float(torch.vdot(grad.reshape(-1), delta.reshape(-1)))
            eta = weight_decay_of.get(p, 0.0)
            if eta:
                after = p.detach()
                actual += 0.5 * eta * float(after.pow(2).sum() - before.pow(2).sum())
                model += eta * float(torch.vdot(before.reshape(-1), delta.reshape(-1)))
                model += 0.5 * eta * float(delta.pow(2).sum())
        rho = actual / model if model < 0 and math.isfinite(actual) else -math.inf
        self.last_rho = rho
        omega = (19.0 / 20.0) ** self.damping_adaptation_interval
        damping = precond.damping
        if rho > 0.75:
            damping *= omega
        elif rho < 0.25:
            damping /= omega
        low, high = self.damping_bounds
        precond.damping_value = min(high, max(low, damping))

    def state_dict(self) -> dict[str, Any]:
        """torch's optimizer state (momentum buffers, param groups) plus the K-FAC state."""
        state = super().state_dict()
        state["kfac"] = self.preconditioner.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not isinstance(state_dict, dict) or "kfac" not in state_dict:
            raise ValueError("state_dict: expected a KFAC state dict (with a 'kfac' entry)")
        rest = {k: v for k, v in state_dict.items() if k != "kfac"}
        super().load_state_dict(rest)
        self.preconditioner.load_state_dict(state_dict["kfac"])
