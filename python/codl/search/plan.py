"""Choosing per-layer sparsity and bit width: the smallest ``.codl`` file within an accuracy
budget.

1. :func:`codl.search.measure_sensitivity` fills a table: for every layer ``i`` and candidate
   setting ``j``, the packed bytes ``b_ij`` and the accuracy drop ``d_ij`` on validation data
   with only that layer compressed.
2. Assuming the drops add up (each layer's error perturbs the output a little and the
   perturbations are independent to first order, the assumption behind the additive per-layer
   sensitivities of HAWQ-V2/V3, Dong et al. NeurIPS 2020 and Yao et al. ICML 2021), the plan is
   the multiple-choice knapsack ``min Σ_i b_i,j(i)`` subject to ``Σ_i d_i,j(i) <= budget``, one
   setting per layer. :func:`choose_settings` solves it exactly by dynamic programming over the
   drop, discretised upwards into ``resolution`` steps (so a plan the DP accepts satisfies the
   budget under the additive model; negative drops, noise that happened to help, count as 0).
3. The assumption is then checked: the joint plan is applied (:func:`codl.formats.
   encode_state_dict`, exactly what :func:`codl.save` writes and :func:`codl.load` returns) and
   the accuracy measured. If the joint drop exceeds the budget, layers are backed off greedily,
   the most sensitive first (the chosen setting with the largest single-layer drop moves to the
   cheapest setting of that layer with a smaller drop), re-measuring after each move, like the
   fallback loop of accuracy-driven tuning (Intel Neural Compressor). If instead the joint
   drop leaves slack (drops are often sub-additive: the layers' errors partly cancel), the
   knapsack is re-solved with a larger additive budget, kept while the measured drop stays
   within the real budget.

The plan is a plain dict, the format of :mod:`codl.formats.spec` that ``codl.save(...,
plan=plan)`` and ``codl compress --plan plan.json`` read: exact tensor names mapped to
``{"prune": s, "bits": b, "method": "kmeans" | "ternary" | None}`` or ``None`` (lossless).
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from codl.formats import encode_state_dict
from codl.formats.codec import DEFAULT_LEVEL
from codl.formats.spec import CompressionSpec, plan_to_json
from codl.search.sensitivity import (
    DEFAULT_BITS,
    DEFAULT_SPARSITIES,
    Bits,
    SensitivityRow,
    _check_split,
    _evaluate,
    measure_sensitivity,
)

__all__ = [
    "SearchResult",
    "back_off",
    "choose_settings",
    "compression_plan",
    "compression_search",
    "plan_to_json",
    "read_plan",
    "spend_slack",
]

Split = tuple[torch.Tensor, torch.Tensor]
Option = tuple[int, float]  # (packed bytes, accuracy drop in points)


def choose_settings(
    options: Sequence[Sequence[Option]], budget: float, resolution: float | None = None
) -> list[int]:
    """Multiple-choice knapsack by dynamic programming: one option per group, the smallest
    total bytes with the summed drop within ``budget``.

    ``options[i][j] = (bytes, drop)``. Drops are rounded up to multiples of ``resolution``
    (default ``budget / 200``) and negative drops count as 0, so the chosen options' drops sum
    to at most ``budget``. Cost: O(groups x options x budget/resolution). Returns the index of
    the chosen option of each group; ties in bytes go to the smaller summed drop. Raises
    ValueError if no combination fits (give every group a zero-drop option: lossless).
    """
    if not math.isfinite(budget) or budget < 0:
        raise ValueError(f"budget: expected a finite number >= 0, received {budget!r}")
    if resolution is None:
        resolution = budget / 200 if budget > 0 else 1.0
    if not math.isfinite(resolution) or resolution <= 0:
        raise ValueError(f"resolution: expected a number > 0, received {resolution!r}")
    capacity = math.floor(budget / resolution + 1e-9)
    infinity = math.inf
    best = [0.0] + [infinity] * capacity  # best[k]: fewest bytes at discretised drop k
    choices: list[list[tuple[int, int]]] = []  # per group, per k: (option, previous k)
    for group, group_options in enumerate(options):
        if not group_options:
            raise ValueError(f"options[{group}]: expected at least one option, received none")
        costs = [max(0, math.ceil(drop / resolution - 1e-9)) for _, drop in group_options]
        updated = [infinity] * (capacity + 1)
        back = [(-1, -1)] * (capacity + 1)
        for k, total in enumerate(best):
            if total == infinity:
                continue
            for j, ((size, _), cost) in enumerate(zip(group_options, costs)):
                reached = k + cost
                if reached <= capacity and total + size < updated[reached]:
                    updated[reached] = total + size
                    back[reached] = (j, k)
        best = updated
        choices.append(back)
    finite = [k for k, total in enumerate(best) if total < infinity]
    if not finite:
        raise ValueError(f"budget: no combination of options has a summed drop <= {budget}")
    k = min(finite, key=lambda index: (best[index], index))
    chosen = [0] * len(options)
    for group in reversed(range(len(options))):
        j, k = choices[group][k]
        chosen[group] = j
    return chosen


def back_off(
    chosen: dict[str, int],
    options: Mapping[str, Sequence[SensitivityRow]],
    measure: Callable[[dict[str, int]], float],
    budget: float,
) -> tuple[dict[str, int], float, list[str]]:
    """Greedy back-off until the measured joint drop is within ``budget``: move the layer whose
    chosen row has the largest single-layer drop to the cheapest row of that layer with a
    smaller drop; ``measure(choice) -> drop`` re-measures after each move. Returns the choice,
    its measured drop and the moves made (``"layer: from -> to"``)."""
    current = dict(chosen)
    drop = measure(current)
    moves: list[str] = []
    while drop > budget:
        movable = [
            name
            for name, index in current.items()
            if any(row.drop < options[name][index].drop for row in options[name])
        ]
        if not movable:
            break  # every layer at its least-drop setting: nothing left to give back
        name = max(movable, key=lambda n: (options[n][current[n]].drop, n))
        rows = options[name]
        now = rows[current[name]]
        index = min(
            (i for i, row in enumerate(rows) if row.drop < now.drop),
            key=lambda i: (rows[i].packed_bytes, rows[i].drop),
        )
        moves.append(f"{name}: {now.setting.label()} -> {rows[index].setting.label()}")
        current[name] = index
        drop = measure(current)
    return current, drop, moves


def spend_slack(
    chosen: dict[str, int],
    drop: float,
    costs: Mapping[str, Sequence[Option]],
    measure: Callable[[dict[str, int]], tuple[float, int]],
    budget: float,
    rounds: int,
    resolution: float | None = None,
) -> tuple[dict[str, int], float, list[str]]:
    """Spend the slack of a joint drop below ``budget`` (drops are often sub-additive: the
    layers' errors partly cancel, and negative drops counted as 0): up to ``rounds`` times,
    re-solve the knapsack over ``costs`` with the additive budget grown 1.5x, keeping the new
    choice while ``measure(choice) -> (drop, file bytes)`` stays within ``budget`` and the file
    shrinks; stop at the first that does not. Returns the choice, its drop and what was kept."""
    names = list(costs)
    current, current_drop = dict(chosen), drop
    _, current_bytes = measure(current)
    additive, kept = budget, []
    for _ in range(rounds):
        additive *= 1.5
        candidate = dict(
            zip(names, choose_settings([costs[n] for n in names], additive, resolution))
        )
        if candidate == current:
            continue
        candidate_drop, candidate_bytes = measure(candidate)
        if candidate_drop > budget or candidate_bytes >= current_bytes:
            break
        current, current_drop, current_bytes = candidate, candidate_drop, candidate_bytes
        kept.append(
            f"additive budget {additive:g}: measured drop {candidate_drop:.3f}, "
            f"{candidate_bytes} bytes"
        )
    return current, current_drop, kept


@dataclass
class SearchResult:
    """What :func:`compression_search` found.

    Attributes:
        plan: the plan (a plain dict; ``json.dump`` it, or pass it to :func:`codl.save`).
        table: every measured (layer, setting): bytes, accuracy and drop.
        baseline_accuracy: the model's accuracy on the validation data, percent.
        budget: the accuracy drop allowed, in points.
        predicted_bytes: the summed packed bytes of the searched layers' chosen settings.
        predicted_drop: the summed single-layer drops of the chosen settings (the knapsack's
            additive estimate, before any back-off).
        knapsack_plan: the knapsack's plan before back-off (equal to ``plan`` without one).
        measured_accuracy: accuracy with the whole plan applied (what :func:`codl.load` gives).
        measured_drop: ``baseline_accuracy - measured_accuracy``.
        file_bytes: the exact size of the ``.codl`` file :func:`codl.save` writes with ``plan``
            (default DEFLATE level, no metadata).
        lossless_bytes: the size of the file without a plan.
        backoffs: the back-off moves, in order.
        refinements: the re-solves with a larger additive budget that were kept (when the
            joint drop left slack), in order.
    """

    plan: dict[str, dict[str, Any] | None]
    table: list[SensitivityRow]
    baseline_accuracy: float
    budget: float
    predicted_bytes: int
    predicted_drop: float
    knapsack_plan: dict[str, dict[str, Any] | None]
    measured_accuracy: float
    measured_drop: float
    file_bytes: int
    lossless_bytes: int
    backoffs: list[str] = field(default_factory=list)
    refinements: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the plan, the table as a list of rows, and the figures."""
        return {
            "plan": self.plan,
            "table": [row.to_dict() for row in self.table],
            "baseline_accuracy": self.baseline_accuracy,
            "budget": self.budget,
            "predicted_bytes": self.predicted_bytes,
            "predicted_drop": self.predicted_drop,
            "knapsack_plan": self.knapsack_plan,
            "measured_accuracy": self.measured_accuracy,
            "measured_drop": self.measured_drop,
            "file_bytes": self.file_bytes,
            "lossless_bytes": self.lossless_bytes,
            "backoffs": self.backoffs,
            "refinements": self.refinements,
        }

    def save_plan(self, path: str | os.PathLike[str]) -> None:
        """Write the plan as JSON (what ``codl compress --plan`` reads)."""
        Path(path).write_text(json.dumps(self.plan, indent=2) + "\n")


def read_plan(path: str | os.PathLike[str]) -> dict[str, dict[str, Any] | None]:
    """A plan from a JSON file, every entry checked (:class:`codl.formats.CompressionSpec`);
    ValueError naming the file and the entry for anything else. A file written by
    :meth:`SearchResult.to_dict` (an object with a ``"plan"`` key and a ``"table"``) is read
    for its plan."""
    try:
        loaded = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"plan {path}: not valid JSON ({error})") from None
    except UnicodeDecodeError:
        raise ValueError(f"plan {path}: not a text (JSON) file") from None
    if isinstance(loaded, dict) and "plan" in loaded and "table" in loaded:
        loaded = loaded["plan"]
    if not isinstance(loaded, dict):
        raise ValueError(
            f"plan {path}: expected a JSON object of name or glob -> spec, received "
            f"{type(loaded).__name__}"
        )
    plan: dict[str, dict[str, Any] | None] = {}
    for key, value in loaded.items():
        if value is None:
            plan[key] = None
            continue
        try:
            plan[key] = CompressionSpec.of(value, f"plan[{key!r}]").to_dict()
        except (TypeError, ValueError) as error:
            raise ValueError(f"plan {path}: {error}") from None
    return plan


def _apply(
    model: nn.Module, plan: Mapping[str, dict[str, Any] | None] | None, data: Split, level: int
) -> tuple[float, int]:
    """Accuracy of ``model`` as :func:`codl.load` would give it back under ``plan``, and the
    file's size."""
    encoded, previews = encode_state_dict(model, plan, level=level)
    loaded = copy.deepcopy(model)
    loaded.load_state_dict(previews)
    return _evaluate(loaded, data), len(encoded)


def compression_search(
    model: nn.Module,
    val_data: Split,
    max_accuracy_drop: float = 0.5,
    *,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    bits: Sequence[Bits] = DEFAULT_BITS,
    layers: Sequence[str] | None = None,
    resolution: float | None = None,
    refine_rounds: int = 4,
    level: int = DEFAULT_LEVEL,
    progress: bool = True,
    reuse_activations: bool = True,
) -> SearchResult:
    """Per-layer sparsity and bit width minimising the packed size of ``model`` with its
    accuracy on ``val_data`` at most ``max_accuracy_drop`` points below its own (see the module
    docstring for the method).

    Cost: one evaluation on ``val_data`` per layer and setting (6 sparsities x 8 widths with
    the defaults), plus the joint checks: minutes (:class:`codl.models.FashionCNN` on 1,000
    images took 110 s of CPU time; the evaluations grow with the images), with a tqdm bar
    showing the progress; seconds with 500 images and ``sparsities=(0.0, 0.9), bits=(4,)`` for
    a first try.

    Args:
        model: any classifier (left unchanged); its Linear/Conv weights are searched, or the
            state_dict tensors named in ``layers``.
        val_data: ``(images, labels)`` for the accuracies (hold it out of training).
        max_accuracy_drop: the budget, in percentage points of top-1 accuracy.
        sparsities: pruning fractions tried per layer (0 included for "no pruning").
        bits: k-means codebook widths (1..8) and ``"ternary"`` tried per layer; the kept values
            stored exactly (no quantization) are always a candidate, so is the lossless weight.
        resolution: the knapsack's drop step in points (default budget / 200).
        refine_rounds: when the joint plan's measured drop is within the budget without
            back-off, up to this many re-solves with the additive budget grown 1.5x each time,
            kept while the measured drop stays within the budget and the file shrinks (0: off).
        level: DEFLATE level of the sizes (that of :func:`codl.save` by default).
        progress: tqdm bars.
        reuse_activations: in the sensitivity pass, re-run only the part of the network
            downstream of each layer on cached activations (the same table, faster; see
            :func:`codl.search.measure_sensitivity`).
    """
    if isinstance(max_accuracy_drop, bool) or not isinstance(max_accuracy_drop, (int, float)):
        raise TypeError(
            "max_accuracy_drop: expected a number of points >= 0, received "
            f"{type(max_accuracy_drop).__name__}"
        )
    if not math.isfinite(max_accuracy_drop) or max_accuracy_drop < 0:
        raise ValueError(
            f"max_accuracy_drop: expected a number of points >= 0, received {max_accuracy_drop}"
        )
    if isinstance(refine_rounds, bool) or not isinstance(refine_rounds, int) or refine_rounds < 0:
        raise ValueError(f"refine_rounds: expected an int >= 0, received {refine_rounds!r}")
    data = _check_split(val_data, model)
    baseline, table = measure_sensitivity(
        model,
        data,
        sparsities=sparsities,
        bits=bits,
        layers=layers,
        level=level,
        progress=progress,
        reuse_activations=reuse_activations,
    )
    options: dict[str, list[SensitivityRow]] = {}
    for row in table:
        options.setdefault(row.layer, []).append(row)
    names = list(options)
    costs = [[(row.packed_bytes, row.drop) for row in options[name]] for name in names]
    picked = choose_settings(costs, float(max_accuracy_drop), resolution)
    chosen = dict(zip(names, picked))

    def plan_of(choice: Mapping[str, int]) -> dict[str, dict[str, Any] | None]:
        return {name: options[name][index].setting.plan_entry() for name, index in choice.items()}

    measured: dict[str, tuple[float, int]] = {}

    def measure(choice: dict[str, int]) -> float:
        key = json.dumps(choice, sort_keys=True)
        if key not in measured:
            measured[key] = _apply(model, plan_of(choice), data, level)
        return baseline - measured[key][0]

    budget = float(max_accuracy_drop)
    final, drop, moves = back_off(chosen, options, measure, budget)
    final, drop, refinements = spend_slack(
        final,
        drop,
        dict(zip(names, costs)),
        lambda choice: (measure(choice), measured[json.dumps(choice, sort_keys=True)][1]),
        budget,
        refine_rounds if not moves else 0,
        resolution,
    )
    accuracy, file_bytes = measured[json.dumps(final, sort_keys=True)]
    _, lossless_bytes = _apply(model, None, data, level)
    return SearchResult(
        plan=plan_of(final),
        table=table,
        baseline_accuracy=baseline,
        budget=float(max_accuracy_drop),
        predicted_bytes=sum(options[n][i].packed_bytes for n, i in final.items()),
        predicted_drop=sum(max(0.0, options[n][i].drop) for n, i in chosen.items()),
        knapsack_plan=plan_of(chosen),
        measured_accuracy=accuracy,
        measured_drop=drop,
        file_bytes=file_bytes,
        lossless_bytes=lossless_bytes,
        backoffs=moves,
        refinements=refinements,
    )


def compression_plan(
    model: nn.Module,
    val_data: Split,
    max_accuracy_drop: float = 0.5,
    **options: Any,
) -> dict[str, dict[str, Any] | None]:
    """The plan of :func:`compression_search` (same arguments and cost: minutes with the
    defaults, with a progress bar), for ``codl.save(model, path, plan=plan)``.

    ``val_data`` is ``(images, labels)`` as the model reads them (floating point, e.g.
    ``codl.data.fashion_mnist("test", normalize=True)``); anything else raises a TypeError or
    ValueError naming what was expected and what came."""
    return compression_search(model, val_data, max_accuracy_drop, **options).plan
