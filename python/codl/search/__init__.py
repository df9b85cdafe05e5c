"""Per-layer compression-plan search: which sparsity and bit width each layer can take.

``codl.search.compression_plan(model, val_data, max_accuracy_drop=0.5)`` measures each layer's
sensitivity to pruning and to k-means bit widths / ternary codes (:func:`measure_sensitivity`),
chooses per-layer settings minimising the packed ``.codl`` size within the accuracy budget (a
multiple-choice knapsack, :func:`choose_settings`), checks the joint plan and backs off if
needed. The plan is the plain dict :func:`codl.save` and ``codl compress --plan`` take;
:func:`compression_search` returns it with the sensitivity table (:class:`SearchResult`).
"""

from __future__ import annotations

from codl.search.plan import (
    SearchResult,
    back_off,
    choose_settings,
    compression_plan,
    compression_search,
    plan_to_json,
    read_plan,
    spend_slack,
)
from codl.search.sensitivity import (
    DEFAULT_BITS,
    DEFAULT_SPARSITIES,
    SensitivityRow,
    Setting,
    candidate_settings,
    measure_sensitivity,
    packed_bytes,
    searchable_weights,
)

__all__ = [
    "DEFAULT_BITS",
    "DEFAULT_SPARSITIES",
    "SearchResult",
    "SensitivityRow",
    "Setting",
    "back_off",
    "candidate_settings",
    "choose_settings",
    "compression_plan",
    "compression_search",
    "measure_sensitivity",
    "packed_bytes",
    "plan_to_json",
    "read_plan",
    "searchable_weights",
    "spend_slack",
]
