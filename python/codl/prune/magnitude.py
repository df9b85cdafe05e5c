"""Magnitude pruning: zero the weights of smallest absolute value, and keep them zero.

Unlike ``torch.nn.utils.prune``, which reparametrises a weight as ``weight_orig * weight_mask``
(two dense tensors: the file grows), codl writes the zeros into the weight itself, so a sparse
encoder (the ``.codl`` format) stores only the kept entries. A :class:`Pruner` remembers the
masks and re-applies them after each optimizer step during fine-tuning, the "prune, then
retrain with the connections removed" loop of S. Han, J. Pool, J. Tran and W. Dally,
"Learning both weights and connections for efficient neural networks", NeurIPS 2015 (§3.2), and
of Deep Compression (S. Han, H. Mao and W. Dally, arXiv:1510.00149, ICLR 2016, §2). A gradual
:class:`~codl.prune.AGPSchedule` (Zhu & Gupta 2017) raises the sparsity during training.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from torch import nn

from codl.prune.schedule import AGPSchedule, check_sparsity
from codl.training import checked_state_tensors, prunable_weights

__all__ = [
    "Pruner",
    "Scope",
    "magnitude_",
    "magnitude_mask",
]

Scope = Literal["global", "layer"]


def _check_weight(weight: object, name: str = "weight") -> torch.Tensor:
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, received {type(weight).__name__}")
    if not weight.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, received {weight.dtype}")
    if weight.numel() == 0:
        raise ValueError(
            f"{name}: expected a non-empty tensor, received shape {tuple(weight.shape)}"
        )
    if not bool(torch.isfinite(weight).all()):
        raise ValueError(f"{name}: expected finite values, received NaN or Inf")
    return weight.detach()


def _pruned_count(numel: int, sparsity: float) -> int:
    # Rounded like torch.nn.utils.prune, so sparsity * numel entries (to the nearest one) go.
    return min(numel, round(sparsity * numel))


def _mask_of_flat(magnitudes: torch.Tensor, pruned: int) -> torch.Tensor:
    """Keep all but the ``pruned`` smallest entries; ties go by position (a stable sort), so
    exactly ``pruned`` entries are dropped even when many magnitudes are equal (zeros)."""
    mask = torch.ones(magnitudes.numel(), dtype=torch.bool, device=magnitudes.device)
    if pruned > 0:
        order = torch.argsort(magnitudes.reshape(-1), stable=True)
        mask[order[:pruned]] = False
    return mask


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean mask of ``weight``'s shape, ``True`` where an entry is kept.

    Exactly ``round(sparsity * weight.numel())`` entries, those of smallest ``|w|``, are
    ``False`` (ties broken by position). ``sparsity`` must lie in [0, 1).
    """
    tensor = _check_weight(weight)
    fraction = check_sparsity(sparsity)
    flat = _mask_of_flat(tensor.abs(), _pruned_count(tensor.numel(), fraction))
    return flat.reshape(tensor.shape)


def _global_masks(weights: Mapping[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """One threshold over all tensors: the same count as per-layer pruning, spent where the
    magnitudes are smallest (Han et al. 2015 prune per layer; a global rank is what later
    work found better for unequal layers, e.g. Blalock et al., MLSys 2020)."""
    magnitudes = torch.cat([w.detach().abs().reshape(-1).float() for w in weights.values()])
    flat = _mask_of_flat(magnitudes, _pruned_count(magnitudes.numel(), sparsity))
    masks = {}
    offset = 0
    for name, weight in weights.items():
        masks[name] = flat[offset : offset + weight.numel()].reshape(weight.shape)
        offset += weight.numel()
    return masks


class Pruner:
    """Masks over some weights of a model, kept applied while the model trains.

    Call :meth:`step` after every ``optimizer.step()`` (or :meth:`attach` the pruner to the
    optimizer once): it advances the schedule, re-ranks the weights when the target sparsity
    rises, and writes zeros into the pruned entries. A gradient hook also zeroes the gradient of
    pruned entries, so plain SGD never moves them; optimizers with momentum or weight decay
    would (their state still holds old updates), which is why :meth:`step` re-zeroes too.
    """

    def __init__(
        self,
        weights: Mapping[str, nn.Parameter],
        sparsity: float,
        scope: Scope = "global",
        schedule: AGPSchedule | None = None,
    ) -> None:
        self.final_sparsity = check_sparsity(sparsity)
        if scope not in ("global", "layer"):
            raise ValueError(f"scope: expected 'global' or 'layer', received {scope!r}")
        if schedule is not None and not isinstance(schedule, AGPSchedule):
            raise TypeError(
                f"schedule: expected an AGPSchedule or None, received {type(schedule).__name__}"
            )
        if not weights:
            raise ValueError("weights: expected at least one weight to prune, received none")
        self.scope: Scope = scope
        self.schedule = schedule
        self.weights = dict(weights)
        self.step_count = 0
        self.target_sparsity = -1.0
        self.masks: dict[str, torch.Tensor] = {}
        self._hooks = [
            weight.register_hook(self._gradient_hook(name))  # type: ignore[no-untyped-call]
            for name, weight in self.weights.items()
        ]
        self._update(force=True)

    def _gradient_hook(self, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
        def hook(grad: torch.Tensor) -> torch.Tensor:
            mask = self.masks.get(name)
            return grad if mask is None else grad * mask

        return hook

    def sparsity_at(self, step: int) -> float:
        """The target sparsity at ``step``: the final one without a schedule."""
        if self.schedule is None:
            return self.final_sparsity
        return self.schedule(step, self.final_sparsity)

    def _update(self, force: bool = False) -> None:
        target = self.sparsity_at(self.step_count)
        if force or target != self.target_sparsity:
            self.target_sparsity = target
            # Ranking |w| of the already masked weights keeps old zeros pruned: they are the
            # smallest magnitudes, so the pruned set only grows while the sparsity rises.
            if self.scope == "global":
                self.masks = _global_masks(self.weights, target)
            else:
                self.masks = {
                    name: _mask_of_flat(w.detach().abs(), _pruned_count(w.numel(), target)).reshape(
                        w.shape
                    )
                    for name, w in self.weights.items()
                }
        self.apply_masks()

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Write zeros into every pruned entry (the tensors really hold zeros)."""
        for name, weight in self.weights.items():
            weight.mul_(self.masks[name].to(weight.dtype))

    def step(self) -> None:
        """Advance one optimizer step: raise the sparsity if the schedule says so, re-zero."""
        self.step_count += 1
        self._update()

    def attach(self, optimizer: torch.optim.Optimizer) -> Any:
        """Run :meth:`step` after every ``optimizer.step()``; returns the hook's handle."""

        def after_step(*_: object) -> None:
            self.step()

        return optimizer.register_step_post_hook(after_step)

    def sparsity(self) -> float:
        """The fraction of zeros over all masked weights now."""
        zeros = sum(int((w == 0).sum()) for w in self.weights.values())
        total = sum(w.numel() for w in self.weights.values())
        return zeros / total

    def layer_sparsity(self) -> dict[str, float]:
        """The fraction of pruned entries of each weight."""
        return {name: 1.0 - float(mask.float().mean()) for name, mask in self.masks.items()}

    def state_dict(self) -> dict[str, Any]:
        """What resuming a (gradual) pruning run needs, as ``torch.optim.Optimizer.state_dict``
        gives it for the optimizer: the step count, the current target, the masks (cloned),
        and the settings they were made with (checked by :meth:`load_state_dict`). Plain
        Python values and tensors only, so ``torch.load(..., weights_only=True)`` reads it."""
        schedule = None
        if self.schedule is not None:
            schedule = {
                "end_step": self.schedule.end_step,
                "begin_step": self.schedule.begin_step,
                "frequency": self.schedule.frequency,
                "initial_sparsity": self.schedule.initial_sparsity,
            }
        return {
            "step_count": self.step_count,
            "target_sparsity": self.target_sparsity,
            "final_sparsity": self.final_sparsity,
            "scope": self.scope,
            "schedule": schedule,
            "masks": {name: mask.clone() for name, mask in self.masks.items()},
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict`: a pruner made for the same weights with the same
        sparsity, scope and schedule continues exactly where the saved one stopped (load the
        model's and the optimizer's state too). Writes the loaded masks' zeros into the
        weights. ``ValueError`` names what does not match."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(
                f"state_dict: expected a mapping from Pruner.state_dict(), received "
                f"{type(state_dict).__name__}"
            )
        expected_keys = set(self.state_dict())
        if set(state_dict) != expected_keys:
            raise ValueError(
                f"state_dict: expected the keys {sorted(expected_keys)}, received "
                f"{sorted(state_dict)}"
            )
        mine = self.state_dict()
        for key in ("final_sparsity", "scope", "schedule"):
            if state_dict[key] != mine[key]:
                raise ValueError(
                    f"state_dict[{key!r}]: expected {mine[key]!r} (this pruner's), received "
                    f"{state_dict[key]!r}"
                )
        step_count = state_dict["step_count"]
        if isinstance(step_count, bool) or not isinstance(step_count, int) or step_count < 0:
            raise ValueError(
                f"state_dict['step_count']: expected an int >= 0, received {step_count!r}"
            )
        target = state_dict["target_sparsity"]
        if isinstance(target, bool) or not isinstance(target, (int, float)):
            raise ValueError(
                f"state_dict['target_sparsity']: expected a float, received {target!r}"
            )
        masks = checked_state_tensors(
            state_dict["masks"], self.weights, "masks", lambda w: (w.shape, torch.bool)
        )
        self.step_count = step_count
        self.target_sparsity = float(target)
        self.masks = masks
        self.apply_masks()

    def remove(self) -> None:
        """Drop the gradient hooks; the zeros stay in the weights."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []


def magnitude_(
    model: nn.Module,
    sparsity: float,
    scope: Scope = "global",
    schedule: AGPSchedule | None = None,
    *,
    include: Callable[[str, nn.Module], bool] | None = None,
) -> Pruner:
    """Prune ``model``'s weights by magnitude, in place; returns the :class:`Pruner`.

    Args:
        model: pruned in place: the weights of every ``Linear`` and ``Conv1d/2d/3d`` (or of
            the modules ``include(name, module)`` accepts) hold zeros where pruned.
        sparsity: the final fraction of zeros, in [0, 1).
        scope: ``"global"``: one magnitude threshold across all chosen weights (the same total
            count, spent on the smallest weights of the whole model); ``"layer"``: each weight
            pruned to ``sparsity`` on its own.
        schedule: ``None`` prunes to ``sparsity`` now (one shot); an :class:`AGPSchedule`
            starts at its initial sparsity and rises as :meth:`Pruner.step` is called.
    """
    weights = prunable_weights(model, include)
    return Pruner(weights, sparsity, scope, schedule)
