"""codl.prune spectral pruning (Suzuki et al., IJCAI 2020) against dense float64 references:
the greedy selection step by step, the reconstruction error formula, Â_J, the degrees of
freedom, the error actually left in the pruned network, and a low-rank problem where spectral
selection must beat L1 and random channel selection."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from codl.models import FashionCNN, LeNet5
from codl.prune import (
    channel_,
    degrees_of_freedom,
    find_channel_groups,
    spectral_,
    spectral_select,
)
from codl.prune.channel import remove_channels_


def _covariance(m: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(400, m, generator=generator, dtype=torch.float64)
    mixing = torch.randn(m, m, generator=generator, dtype=torch.float64)
    samples = torch.relu(features @ mixing) + 0.01 * torch.rand(400, m, generator=generator)
    return samples.T @ samples / 400


def _dense_error(
    cov: torch.Tensor, kept: list[int], ridge: float, gram: torch.Tensor | None = None
) -> float:
    """Tr[Σ - Σ_FJ (Σ_JJ + λI)^-1 Σ_JF] (and with G: Tr[G (...)]), by explicit inverse."""
    index = torch.tensor(kept)
    inverse = torch.linalg.inv(cov[index][:, index] + ridge * torch.eye(len(kept), dtype=cov.dtype))
    residual = cov - cov[:, index] @ inverse @ cov[index, :]
    if gram is None:
        return float(residual.trace())
    return float((gram @ residual).trace())


@pytest.mark.parametrize("theta", [0.0, 0.7])
def test_greedy_choice_matches_a_dense_greedy_search(theta: float) -> None:
    cov = _covariance(14, seed=1)
    lam = 1e-2
    ridge = lam * float(cov.diagonal().mean())
    z = torch.randn(5, 14, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    gram = z.T @ z
    gram = gram * (14 / float(gram.trace()))
    width = 6
    selection = spectral_select(cov, width, lam, output_weight=z, theta=theta)
    # Independent greedy: at each step add the channel with the lowest dense objective.
    chosen: list[int] = []
    for _ in range(width):
        best = min(
            (j for j in range(14) if j not in chosen),
            key=lambda j: (
                _dense_error(cov, [*chosen, j], ridge)
                + theta * _dense_error(cov, [*chosen, j], ridge, gram)
            ),
        )
        chosen.append(best)
    assert selection.kept == sorted(chosen)
    assert selection.ridge == pytest.approx(ridge)


def test_error_and_fold_equal_the_dense_formulas() -> None:
    cov = _covariance(20, seed=3)
    selection = spectral_select(cov, 7, lam=1e-3)
    ridge = 1e-3 * float(cov.diagonal().mean())
    dense = _dense_error(cov, selection.kept, ridge)
    assert selection.input_error == pytest.approx(dense, rel=1e-9, abs=1e-12)
    assert selection.relative_error == pytest.approx(dense / float(cov.trace()), rel=1e-9)
    index = torch.tensor(selection.kept)
    fold = cov[:, index] @ torch.linalg.inv(cov[index][:, index] + ridge * torch.eye(7))
    torch.testing.assert_close(selection.fold, fold, rtol=1e-8, atol=1e-10)


def test_error_is_the_regularised_least_squares_residual() -> None:
    """L(J) = mean ||φ_F - Â φ_J||² + λ||Â||²_F on the samples Σ came from."""
    generator = torch.Generator().manual_seed(4)
    phi = torch.relu(torch.randn(500, 6, generator=generator, dtype=torch.float64))
    phi = phi @ torch.rand(6, 16, generator=generator, dtype=torch.float64)
    cov = phi.T @ phi / 500
    selection = spectral_select(cov, 5, lam=1e-2)
    a = selection.fold
    residual = phi - phi[:, selection.kept] @ a.T
    objective = residual.square().sum(dim=1).mean() + selection.ridge * a.square().sum()
    assert selection.input_error == pytest.approx(float(objective), rel=1e-8)


def test_degrees_of_freedom_against_eigenvalues() -> None:
    generator = torch.Generator().manual_seed(5)
    low_rank = torch.randn(400, 4, generator=generator, dtype=torch.float64)
    samples = low_rank @ torch.randn(4, 24, generator=generator, dtype=torch.float64)
    samples += 1e-3 * torch.randn(400, 24, generator=generator, dtype=torch.float64)
    cov = samples.T @ samples / 400
    eigenvalues = torch.linalg.eigvalsh(cov)
    for lam in (1e-4, 1e-2, 0.5):
        ridge = lam * float(cov.diagonal().mean())
        expected = float((eigenvalues / (eigenvalues + ridge)).sum())
        assert degrees_of_freedom(cov, lam) == pytest.approx(expected, rel=1e-9)
    # A rank-4 structure plus faint noise: about four directions stand above a moderate λ.
    assert 3.5 < degrees_of_freedom(cov, 1e-2) < 6.0


def _low_rank_network(seed: int) -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    """Hidden units in 8 groups of 6 scaled copies (ReLU(a·x) = a·ReLU(x) for a > 0): the
    post-activation covariance has rank 8. Two groups get large scales, so ranking by weight
    norm (L1) keeps copies of those two and loses the other six groups."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(8, 16, generator=generator)
    scales = torch.rand(8, 6, generator=generator) + 0.5
    scales[:2] *= 10.0
    first = nn.Linear(16, 48, bias=False)
    second = nn.Linear(48, 5)
    with torch.no_grad():
        first.weight.copy_((scales[:, :, None] * base[:, None, :]).reshape(48, 16))
        second.weight.copy_(torch.randn(5, 48, generator=generator))
    model = nn.Sequential(first, nn.ReLU(), second)
    calib = torch.randn(400, 16, generator=generator)
    test = torch.randn(400, 16, generator=generator)
    return model, calib, test


def _mse(model: nn.Module, reference: nn.Module, inputs: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(inputs) - reference(inputs)).square().mean())


def test_spectral_beats_l1_and_random_on_a_low_rank_layer() -> None:
    model, calib, test = _low_rank_network(seed=6)
    spectral_model = copy.deepcopy(model)
    report = spectral_(spectral_model, calib, widths={"0": 8}, lam=1e-6)
    kept = report["0"].kept
    assert sorted(k // 6 for k in kept) == list(range(8))  # one unit of every group
    l1_model = copy.deepcopy(model)
    channel_(l1_model, widths={"0": 8})
    spectral_error = _mse(spectral_model, model, test)
    l1_error = _mse(l1_model, model, test)
    generator = torch.Generator().manual_seed(7)
    random_errors = []
    group = find_channel_groups(model)[0]
    for _ in range(10):
        random_model = copy.deepcopy(model)
        keep = torch.randperm(48, generator=generator)[:8].sort().values
        remove_channels_(random_model, group, keep)
        random_errors.append(_mse(random_model, model, test))
    assert spectral_error < 1e-6
    assert spectral_error < 1e-3 * l1_error
    assert spectral_error < 1e-3 * min(random_errors)


def test_full_width_with_tiny_ridge_keeps_the_function() -> None:
    torch.manual_seed(8)
    model = FashionCNN().eval()
    calib = torch.randn(64, 1, 28, 28)
    pruned = copy.deepcopy(model)
    # Both convolutions at full width (the 256-unit hidden layer is left out to keep it quick).
    report = spectral_(pruned, calib, widths={"0": 32, "3": 64}, lam=1e-7)
    assert all(len(layer.kept) == layer.channels for layer in report.values())
    with torch.no_grad():
        torch.testing.assert_close(pruned(calib[:8]), model(calib[:8]), rtol=1e-3, atol=1e-3)


def test_spectral_on_lenet5_with_dof_widths() -> None:
    torch.manual_seed(9)
    model = LeNet5().eval()
    calib = torch.randn(128, 1, 28, 28)
    report = spectral_(model, calib, dof=0.05)
    assert set(report) == {"features.0", "features.4", "classifier.1"}
    for name, layer in report.items():
        assert len(layer.kept) == min(layer.channels, math.ceil(layer.degrees_of_freedom - 1e-9))
        assert model.get_submodule(name).weight.shape[0] == len(layer.kept)
        assert 0.0 <= layer.relative_error < 1.0
    assert model(calib[:2]).shape == (2, 10)


def test_calibration_data_as_batches_of_pairs() -> None:
    model, calib, _ = _low_rank_network(seed=10)
    batches = [(calib[i : i + 100], torch.zeros(100)) for i in range(0, 400, 100)]
    one = spectral_(copy.deepcopy(model), calib, widths={"0": 8})
    many = spectral_(copy.deepcopy(model), batches, widths={"0": 8})
    assert one["0"].kept == many["0"].kept
    assert one["0"].input_error == pytest.approx(many["0"].input_error, rel=1e-6)


def test_bad_input() -> None:
    model, calib, _ = _low_rank_network(seed=11)
    with pytest.raises(ValueError, match="exactly one"):
        spectral_(model, calib)
    with pytest.raises(ValueError, match="exactly one"):
        spectral_(model, calib, ratio=0.5, dof=0.1)
    with pytest.raises(ValueError, match="lam"):
        spectral_(model, calib, ratio=0.5, lam=0.0)
    with pytest.raises(ValueError, match="dof"):
        spectral_(model, calib, dof=-1.0)
    with pytest.raises(ValueError, match="calib_data"):
        spectral_(model, calib[:0], ratio=0.5)
    with pytest.raises(TypeError, match="calib_data"):
        spectral_(model, ["not a tensor"], ratio=0.5)
    cov = _covariance(6)
    with pytest.raises(ValueError, match="width"):
        spectral_select(cov, 0)
    with pytest.raises(ValueError, match="width"):
        spectral_select(cov, 7)
    with pytest.raises(ValueError, match="cov"):
        spectral_select(cov[:, :5], 2)
    with pytest.raises(ValueError, match="cov"):
        spectral_select(torch.full((3, 3), float("nan")), 2)
    with pytest.raises(ValueError, match="output_weight"):
        spectral_select(cov, 2, output_weight=torch.ones(3, 5), theta=1.0)
