"""codl.search.measure_sensitivity re-runs only the layers downstream of the one compressed, on
cached activations: the table must equal, row for row and bit for bit, the one the whole model
gives (``reuse_activations=False``, every setting evaluated with codl.prune.evaluate), on
models with in-place ops on the cached values, tied weights, and none that can be traced."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from codl.models import LeNet5
from codl.search import measure_sensitivity
from codl.search.sensitivity import _Downstream, _full_logits, _trace

SPARSITIES = (0.0, 0.5, 0.9)
BITS = ("ternary", 2, 4)


def _own_labels(model: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels the model gets 100% right; 2,500 examples: three batches of the evaluation."""
    model.eval()
    with torch.no_grad():
        return inputs, model(inputs).argmax(dim=1)


def _both(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    kwargs = {"sparsities": SPARSITIES, "bits": BITS, "progress": False}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cached = measure_sensitivity(model, data, **kwargs)  # type: ignore[arg-type]
    whole = measure_sensitivity(model, data, reuse_activations=False, **kwargs)  # type: ignore[arg-type]
    assert cached == whole
    baseline, rows = whole
    assert baseline == 100.0
    assert len({row.accuracy for row in rows}) > 3  # the settings do move the accuracy
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_lenet_table_equals_the_whole_model_evaluation() -> None:
    torch.manual_seed(0)
    model = LeNet5(channels=(4, 8), hidden=32)
    data = _own_labels(model, torch.randn(2500, 1, 28, 28))
    _both(model, data)
    # Each layer really ran on a cache: the activations just before it.
    traced = _trace(model)
    _, logits = _full_logits(model, data)
    shapes = {}
    for name in ("features.0.weight", "features.4.weight", "classifier.4.weight"):
        downstream = _Downstream.build(model, traced, name, data, logits)
        assert downstream is not None and len(downstream.frontier) == 3
        shapes[name] = [tuple(v.shape) for v in downstream.frontier[0]]
    assert shapes == {
        "features.0.weight": [(1000, 1, 28, 28)],
        "features.4.weight": [(1000, 4, 14, 14)],
        "classifier.4.weight": [(1000, 32)],
    }


class InPlace(nn.Module):
    """``h.add_(b(relu(h)))``: with ``b`` compressed, the cached ``h`` is what it writes into."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 32)
        self.relu = nn.ReLU(inplace=True)
        self.b = nn.Linear(32, 32)
        self.c = nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        h.add_(self.b(torch.relu(h)))
        out: torch.Tensor = self.c(self.relu(h))
        return out


class Tied(nn.Module):
    """One weight used by two layers (under two state_dict names), a layer apart."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(24, 24, bias=False)
        self.middle = nn.Linear(24, 24)
        self.second = nn.Linear(24, 24, bias=False)
        self.second.weight = self.first.weight
        self.head = nn.Linear(24, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.middle(torch.tanh(self.first(x))))
        out: torch.Tensor = self.head(torch.tanh(self.second(h)))
        return out


class Untraceable(nn.Module):
    """Control flow on a tensor's value: torch.fx cannot trace it, the whole model runs."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 32)
        self.b = nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if float(h.sum()) > 1e9:
            h = h * 0
        out: torch.Tensor = self.b(torch.relu(h))
        return out


@pytest.mark.parametrize("cls", [InPlace, Tied, Untraceable])
def test_other_graphs_give_the_same_table(cls: type[nn.Module]) -> None:
    torch.manual_seed(1)
    model = cls()
    width = 24 if cls is Tied else 16
    _both(model, _own_labels(model, torch.randn(2500, width)))


def test_what_runs_cached_and_what_does_not() -> None:
    torch.manual_seed(2)
    assert _trace(Untraceable()) is None
    model = InPlace().eval()
    data = _own_labels(model, torch.randn(2500, 16))
    _, logits = _full_logits(model, data)
    downstream = _Downstream.build(model, _trace(model), "b.weight", data, logits)
    assert downstream is not None
    before = [v.clone() for v in downstream.frontier[0]]
    first = downstream.accuracy()
    assert all(torch.equal(a, b) for a, b in zip(before, downstream.frontier[0]))  # not written
    assert downstream.accuracy() == first == 100.0
    # The tied weight's second use is found: only what precedes the first one is cached.
    tied = Tied().eval()
    data = _own_labels(tied, torch.randn(2500, 24))
    _, logits = _full_logits(tied, data)
    downstream = _Downstream.build(tied, _trace(tied), "second.weight", data, logits)
    assert downstream is not None
    assert [tuple(v.shape) for v in downstream.frontier[0]] == [(1000, 24)]
    assert torch.equal(downstream.frontier[0][0], data[0][:1000])  # the input itself
