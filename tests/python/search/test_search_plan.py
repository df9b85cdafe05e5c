"""codl.search: the knapsack against brute force, the back-off, and a search on a model whose
sensitive layer is known, round-tripped through JSON, codl.save and codl.load."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
import torch
from torch import nn

import codl
from codl.formats import inspect
from codl.search import (
    SensitivityRow,
    Setting,
    back_off,
    candidate_settings,
    choose_settings,
    compression_plan,
    compression_search,
    packed_bytes,
    read_plan,
    spend_slack,
)
from codl.training import evaluate


def _brute_force(options: list[list[tuple[int, float]]], budget: float) -> float:
    best = float("inf")
    for combination in itertools.product(*options):
        if sum(max(0.0, d) for _, d in combination) <= budget + 1e-9:
            best = min(best, sum(b for b, _ in combination))
    return best


@pytest.mark.parametrize("seed", range(20))
def test_knapsack_is_optimal_on_small_tables(seed: int) -> None:
    rng = random.Random(seed)
    # Drops on a 0.05 grid (the DP's resolution), so discretisation loses nothing.
    options = [
        [(rng.randint(100, 5000), rng.randint(-2, 12) * 0.05) for _ in range(rng.randint(1, 5))]
        + [(8000, 0.0)]  # the lossless option
        for _ in range(rng.randint(1, 4))
    ]
    budget = rng.randint(0, 20) * 0.05
    chosen = choose_settings(options, budget, resolution=0.05)
    total = sum(options[i][j][0] for i, j in enumerate(chosen))
    drop = sum(max(0.0, options[i][j][1]) for i, j in enumerate(chosen))
    assert drop <= budget + 1e-9
    assert total == _brute_force(options, budget)


def test_knapsack_hand_example_and_errors() -> None:
    # Two layers: the cheap settings of both do not fit together; the best mix is a (300, 0.3)
    # + b (500, 0.2) = 800 bytes, drop 0.5.
    options = [[(1000, 0.0), (300, 0.3), (100, 0.6)], [(1000, 0.0), (500, 0.2), (200, 0.4)]]
    assert choose_settings(options, 0.5) == [1, 1]
    assert choose_settings(options, 0.0) == [0, 0]
    assert choose_settings(options, 1.0) == [2, 2]
    with pytest.raises(ValueError, match="budget"):
        choose_settings(options, -0.1)
    with pytest.raises(ValueError, match="no combination"):
        choose_settings([[(10, 1.0)]], 0.5)


def _row(layer: str, size: int, drop: float, prune: float) -> SensitivityRow:
    return SensitivityRow(layer, prune, 4, size, 90.0 - drop, drop)


def test_back_off_moves_the_most_sensitive_layer_first() -> None:
    options = {
        "a": [_row("a", 1000, 0.0, 0.0), _row("a", 400, 0.1, 0.5), _row("a", 100, 0.4, 0.9)],
        "b": [_row("b", 1000, 0.0, 0.0), _row("b", 300, 0.2, 0.5)],
    }
    seen: list[dict[str, int]] = []

    def measure(choice: dict[str, int]) -> float:
        seen.append(dict(choice))
        # Not additive: together the layers lose far more than their sum.
        return 3 * sum(options[n][i].drop for n, i in choice.items())

    final, drop, moves = back_off({"a": 2, "b": 1}, options, measure, 0.6)
    # a (0.4) goes first, to its cheapest smaller-drop setting (400 bytes, 0.1): 3 * 0.3 > 0.6;
    # then b (0.2 now the largest) goes to lossless: 3 * 0.1 <= 0.6.
    assert seen == [{"a": 2, "b": 1}, {"a": 1, "b": 1}, {"a": 1, "b": 0}]
    assert final == {"a": 1, "b": 0} and drop == pytest.approx(0.3)
    assert moves[0].startswith("a: prune 0.9") and moves[1].startswith("b: prune 0.5")


def test_spend_slack_keeps_a_larger_plan_budget_only_while_the_measured_drop_fits() -> None:
    costs = {
        "a": [(1000, 0.0), (400, 0.2), (100, 0.6)],
        "b": [(1000, 0.0), (500, 0.2), (200, 0.4)],
    }
    seen: list[dict[str, int]] = []

    def measure(choice: dict[str, int]) -> tuple[float, int]:
        seen.append(dict(choice))
        # Sub-additive: together the layers lose half their sum.
        drop = 0.5 * sum(costs[n][i][1] for n, i in choice.items())
        return drop, sum(costs[n][i][0] for n, i in choice.items())

    start = {"a": 1, "b": 1}  # the knapsack at 0.4: 900 bytes, summed drop 0.4, measured 0.2
    assert choose_settings(list(costs.values()), 0.4) == [1, 1]
    final, drop, kept = spend_slack(start, 0.2, costs, measure, 0.4, rounds=4)
    # 0.6: a 400 + b 200 (600 bytes, measured 0.3) is kept; 0.9 picks the same; 1.35 picks
    # a 100 + b 200 (300 bytes) whose measured 0.5 breaks the budget: stop there.
    assert seen == [{"a": 1, "b": 1}, {"a": 1, "b": 2}, {"a": 2, "b": 2}]
    assert final == {"a": 1, "b": 2} and drop == pytest.approx(0.3) and len(kept) == 1
    assert spend_slack(start, 0.2, costs, measure, 0.4, rounds=0)[0] == start


class TwoBranch(nn.Module):
    """Logits = signal(x[:, :64]) + redundant(x[:, 64:]); the validation inputs of the second
    branch are 1000x smaller, so compressing it hardly moves a logit."""

    def __init__(self) -> None:
        super().__init__()
        self.signal = nn.Linear(64, 16, bias=False)
        self.redundant = nn.Linear(64, 16, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.signal(x[:, :64]) + self.redundant(x[:, 64:])
        return out


@pytest.fixture(scope="module")
def two_branch() -> tuple[TwoBranch, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    model = TwoBranch()
    x = torch.cat([torch.randn(2000, 64), 1e-3 * torch.randn(2000, 64)], dim=1)
    with torch.no_grad():
        labels = model(x).argmax(dim=1)  # the model is 100% right on its own labels
    return model, (x, labels)


SPARSITIES = (0.0, 0.5, 0.9)
BITS = ("ternary", 2, 4, 8)


def test_search_gives_the_sensitive_layer_more_bits(
    two_branch: tuple[TwoBranch, tuple[torch.Tensor, torch.Tensor]],
) -> None:
    model, val = two_branch
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = compression_search(model, val, 0.5, sparsities=SPARSITIES, bits=BITS, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched
    assert result.baseline_accuracy == 100.0
    assert len(result.table) == 2 * len(candidate_settings(SPARSITIES, BITS))
    signal, redundant = result.plan["signal.weight"], result.plan["redundant.weight"]
    assert redundant is not None
    chosen = {
        name: Setting()
        if spec is None
        else Setting(spec["prune"], "ternary" if spec["method"] == "ternary" else spec["bits"])
        for name, spec in result.plan.items()
    }
    assert chosen["signal.weight"].prune < chosen["redundant.weight"].prune
    assert chosen["signal.weight"].precision > chosen["redundant.weight"].precision
    # The table says why: the signal layer at 2 bits loses far more than the budget.
    rows = {(r.layer, r.prune, r.bits): r for r in result.table}
    # The redundant layer is compressed as far as the candidates go: its smallest setting.
    smallest = min(
        (r for r in result.table if r.layer == "redundant.weight"), key=lambda r: r.packed_bytes
    )
    assert chosen["redundant.weight"] == smallest.setting
    assert rows[("signal.weight", 0.0, 2)].drop > 5.0
    assert rows[("redundant.weight", 0.9, "ternary")].drop < 0.5
    assert result.measured_drop <= 0.5
    assert result.file_bytes < result.lossless_bytes
    assert signal == result.plan["signal.weight"]


def test_plan_round_trips_through_json_save_and_load(
    two_branch: tuple[TwoBranch, tuple[torch.Tensor, torch.Tensor]], tmp_path: Path
) -> None:
    model, val = two_branch
    result = compression_search(model, val, 1.0, sparsities=SPARSITIES, bits=BITS, progress=False)
    text = json.dumps(result.plan)
    assert json.loads(text) == result.plan
    result.save_plan(tmp_path / "plan.json")
    plan = read_plan(tmp_path / "plan.json")
    assert plan == result.plan
    (tmp_path / "search.json").write_text(json.dumps(result.to_dict()))
    assert read_plan(tmp_path / "search.json") == result.plan

    codl.save(model, tmp_path / "m.codl", plan=plan)
    assert (tmp_path / "m.codl").stat().st_size == result.file_bytes
    fresh = TwoBranch()
    codl.load_into(fresh, tmp_path / "m.codl")
    assert evaluate(fresh, *val) == result.measured_accuracy
    # The table's packed sizes are the file's own streams, byte for byte.
    rows = {
        (r.layer, r.setting.plan_entry() and tuple(r.setting.plan_entry().values())): r
        for r in result.table
    }
    for info in inspect(tmp_path / "m.codl"):
        spec = plan[info.name]
        key = (info.name, spec and tuple(spec.values()))
        assert info.stored_bytes == rows[key].packed_bytes
    assert (
        compression_plan(model, val, 1.0, sparsities=SPARSITIES, bits=BITS, progress=False)
        == result.plan
    )


def test_packed_bytes_is_the_file_size_less_the_header() -> None:
    torch.manual_seed(1)
    weight = torch.randn(128, 96)
    for setting in (Setting(), Setting(0.9, 4), Setting(0.5, "ternary"), Setting(0.7, None)):
        data, _ = codl.formats.encode_state_dict({"w": weight}, {"w": setting.plan_entry()})
        info = codl.formats.inspect(data)[0]
        assert packed_bytes("w", weight, setting) == info.stored_bytes
        assert info.stored_bytes < len(data) < info.stored_bytes + 400  # the header is small


def test_bad_input_is_named(
    two_branch: tuple[TwoBranch, tuple[torch.Tensor, torch.Tensor]], tmp_path: Path
) -> None:
    model, (x, y) = two_branch
    with pytest.raises(ValueError, match="max_accuracy_drop"):
        compression_search(model, (x, y), -1.0, progress=False)
    with pytest.raises(ValueError, match="val_data"):
        compression_search(model, (x, y[:5]), progress=False)
    with pytest.raises(ValueError, match="layers"):
        compression_search(model, (x, y), layers=["nope.weight"], progress=False)
    with pytest.raises(ValueError, match="bits"):
        compression_search(model, (x, y), bits=(9,), progress=False)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_plan(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text('{"a.weight": {"bits": 12}}')
    with pytest.raises(ValueError, match=r"plan\['a.weight'\].*bits"):
        read_plan(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        read_plan(tmp_path / "bad.json")


def test_refinement_spends_slack_only_within_the_budget(
    two_branch: tuple[TwoBranch, tuple[torch.Tensor, torch.Tensor]],
) -> None:
    model, val = two_branch
    options = {"sparsities": SPARSITIES, "bits": BITS, "progress": False}
    plain = compression_search(model, val, 2.0, refine_rounds=0, **options)  # type: ignore[arg-type]
    refined = compression_search(model, val, 2.0, **options)  # type: ignore[arg-type]
    assert plain.refinements == [] and plain.plan == plain.knapsack_plan
    assert refined.measured_drop <= 2.0 and plain.measured_drop <= 2.0
    assert refined.file_bytes <= plain.file_bytes
    assert (refined.file_bytes < plain.file_bytes) == bool(refined.refinements)
    # Each kept refinement was measured on the validation data: the accuracy is the real one.
    fresh = TwoBranch()
    data, previews = codl.formats.encode_state_dict(model, refined.plan)
    fresh.load_state_dict(previews)
    assert evaluate(fresh, *val) == refined.measured_accuracy and len(data) == refined.file_bytes
