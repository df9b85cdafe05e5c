r"""Spectral pruning: keep the channels that best reconstruct all the others.

T. Suzuki, H. Abe, T. Murata, S. Horiuchi, K. Ito, T. Wachi, S. Hirai, M. Yukishima and
T. Nishimura, "Spectral pruning: compressing deep neural networks via spectral analysis and its
generalization error", IJCAI 2020 (arXiv:1808.08558). For a layer with output ``φ_F(x)`` (all
``m`` channels ``F``, after the activation) the method picks a subset ``J`` of channels and a
linear map ``A`` such that ``φ_F ≈ A φ_J``, then drops the channels outside ``J`` and folds
``A`` into the next layer (``W_next φ_F ≈ (W_next A) φ_J``).

With the empirical (uncentred) covariance ``Σ = (1/n) Σ_i φ_F(x_i) φ_F(x_i)ᵀ`` on calibration
data and a ridge term ``λ``, the best ``A`` for a given ``J`` is

    Â_J = Σ_FJ (Σ_JJ + λ I)⁻¹                                  (the paper's ridge estimator)

and the *input-aware* reconstruction error it leaves is

    L⁽ᴬ⁾(J) = min_A ‖φ_F - A φ_J‖²_n + λ‖A‖²_F = Tr[Σ_FF - Σ_FJ (Σ_JJ + λI)⁻¹ Σ_JF].

The *output-aware* error weights the same residual by the next layer ``Z`` (its weight, as a
(outputs, m) matrix): ``L⁽ᴮ⁾(J) = Tr[Z (Σ_FF - Σ_FJ (Σ_JJ + λI)⁻¹ Σ_JF) Zᵀ]``; the paper
mixes the two, ``min_{|J| = m♯} L⁽ᴬ⁾(J) + θ L⁽ᴮ⁾(J)``. Here ``ZᵀZ`` is normalised to unit mean
diagonal so that ``θ`` compares terms of the same scale. Choosing ``J`` exactly is
combinatorial; we add channels greedily (forward selection). Adding channel ``j``
to ``J`` lowers ``Tr R`` (with ``R = Σ - Σ_FJ(Σ_JJ+λI)⁻¹Σ_JF``, the residual covariance) by
``‖R_{:j}‖² / (R_jj + λ)`` (a block-inverse identity), and ``R`` updates by the rank-one
``R ← R - R_{:j} R_{j:} / (R_jj + λ)``, so the greedy search costs O(m² m♯).

The width can come from the *degrees of freedom* of the layer (the paper's N̂(λ)):

    N̂(λ) = Σ_j μ̂_j / (μ̂_j + λ)

with ``μ̂_j`` the eigenvalues of ``Σ``: the number of directions whose variance stands above
``λ``. The paper's bounds need ``m♯`` of the order of ``N̂(λ)`` (up to a log factor); with
``dof=λ`` each layer keeps ``⌈N̂(λ)⌉`` channels. Both ``λ`` here are relative to the mean
eigenvalue ``Tr Σ / m``, so one value fits layers of any activation scale.

For convolutions the channels of every pixel are samples of the same ``φ_F`` (one ``A`` shared by
all positions, which is what removing a channel allows); the covariance is taken at the next
layer's input, after activation and pooling, since that is what ``A`` must reconstruct.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from codl import linalg
from codl.prune.channel import (
    ChannelGroup,
    _consumer_columns,
    find_channel_groups,
    remove_channels_,
    resolve_widths,
)

__all__ = [
    "SpectralLayer",
    "SpectralSelection",
    "consumer_covariance",
    "degrees_of_freedom",
    "reconstruction_error",
    "spectral_",
    "spectral_select",
]

#: Default ridge λ relative to the mean eigenvalue of Σ: small enough to keep Â_J close to the
#: least-squares fit, large enough that Σ_JJ + λI is well conditioned.
DEFAULT_LAMBDA = 1e-3


@dataclass(frozen=True)
class SpectralSelection:
    """The kept channel set ``J``, ``Â_J`` (m x |J|) and the objective reached.

    ``input_error`` is ``L⁽ᴬ⁾(J) = Tr[Σ_FF - Σ_FJ(Σ_JJ+λI)⁻¹Σ_JF]`` (λ absolute);
    ``relative_error`` divides it by ``Tr Σ``.
    """

    kept: list[int]
    fold: torch.Tensor
    input_error: float
    relative_error: float
    ridge: float


@dataclass(frozen=True)
class SpectralLayer:
    """What :func:`spectral_` did to one producer layer."""

    kept: list[int]
    channels: int
    #: N̂(λ) of the layer's covariance at the ``dof`` λ (NaN when widths came otherwise).
    degrees_of_freedom: float
    input_error: float
    relative_error: float


def _check_covariance(cov: object) -> torch.Tensor:
    if not isinstance(cov, torch.Tensor):
        raise TypeError(f"cov: expected a torch.Tensor, received {type(cov).__name__}")
    if cov.dim() != 2 or cov.shape[0] != cov.shape[1] or cov.shape[0] == 0:
        raise ValueError(f"cov: expected a non-empty square matrix, received {tuple(cov.shape)}")
    if not cov.is_floating_point():
        raise TypeError(f"cov: expected a floating-point matrix, received {cov.dtype}")
    if not bool(torch.isfinite(cov).all()):
        raise ValueError("cov: expected finite values, received NaN or Inf")
    return cov.detach().double()


def _check_positive(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a positive float, received {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{name}: expected a positive finite float, received {value!r}")
    return number


def _mean_eigenvalue(cov: torch.Tensor) -> float:
    scale = float(cov.diagonal().mean())
    return scale if scale > 0 else 1.0


def reconstruction_error(cov: torch.Tensor, kept: list[int], ridge: float) -> float:
    """``Tr[Σ_FF - Σ_FJ (Σ_JJ + λI)⁻¹ Σ_JF]`` computed densely (λ = ``ridge``, absolute)."""
    sigma = _check_covariance(cov)
    index = torch.tensor(kept, dtype=torch.long)
    inner = sigma[index][:, index] + ridge * torch.eye(len(kept), dtype=torch.float64)
    cross = sigma[:, index]
    return float(sigma.trace() - (cross @ torch.linalg.solve(inner, cross.T)).trace())


def degrees_of_freedom(cov: torch.Tensor, lam: float) -> float:
    """``N̂(λ) = Σ_j μ̂_j / (μ̂_j + λ)`` over the eigenvalues of ``cov`` (λ relative to the mean
    eigenvalue; Suzuki et al.'s degrees of freedom), eigenvalues from
    :func:`codl.linalg.sym_eig`."""
    sigma = _check_covariance(cov)
    ridge = _check_positive(lam, "lam") * _mean_eigenvalue(sigma)
    (values,), _ = linalg.sym_eig([sigma])
    values = values.clamp(min=0.0)  # round-off can leave tiny negative eigenvalues of a PSD Σ
    return float((values / (values + ridge)).sum())


def spectral_select(
    cov: torch.Tensor,
    width: int,
    lam: float = DEFAULT_LAMBDA,
    output_weight: torch.Tensor | None = None,
    theta: float = 0.0,
) -> SpectralSelection:
    """Greedy ``J`` with ``|J| = width`` minimising ``L⁽ᴬ⁾(J) + θ L⁽ᴮ⁾(J)``, and ``Â_J``.

    Args:
        cov: Σ, the (m, m) uncentred covariance of the layer's output.
        width: ``m♯``, the channels kept.
        lam: ridge λ relative to the mean eigenvalue ``Tr Σ / m``.
        output_weight: ``Z`` (any rows, m columns), the next layer, for the output-aware term.
        theta: weight ``θ`` of the output-aware term (0: input-aware only).
    """
    sigma = _check_covariance(cov)
    channels = sigma.shape[0]
    if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= channels:
        raise ValueError(f"width: expected an int in [1, {channels}], received {width!r}")
    ridge = _check_positive(lam, "lam") * _mean_eigenvalue(sigma)
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not theta >= 0:
        raise ValueError(f"theta: expected a float >= 0, received {theta!r}")
    residual = sigma.clone()
    gram_residual = None
    if output_weight is not None and theta > 0:
        if output_weight.dim() != 2 or output_weight.shape[1] != channels:
            raise ValueError(
                f"output_weight: expected shape (rows, {channels}), "
                f"received {tuple(output_weight.shape)}"
            )
        z = output_weight.detach().double()
        gram = z.T @ z
        gram = gram * (channels / max(float(gram.trace()), 1e-300))
        gram_residual = gram @ residual  # G R, kept in step with R by the same rank-one updates
    chosen: list[int] = []
    available = torch.ones(channels, dtype=torch.bool)
    for _ in range(width):
        gain = (residual * residual).sum(dim=0)
        if gram_residual is not None:
            gain = gain + theta * (residual * gram_residual).sum(dim=0)
        gain = gain / (residual.diagonal() + ridge)
        gain[~available] = -math.inf
        j = int(torch.argmax(gain))
        chosen.append(j)
        available[j] = False
        column = residual[:, j].clone()
        denominator = float(column[j]) + ridge
        if gram_residual is not None:
            gram_column = gram_residual[:, j].clone()
            gram_residual.addr_(gram_column, column, alpha=-1.0 / denominator)
        residual.addr_(column, column, alpha=-1.0 / denominator)
    kept = sorted(chosen)
    index = torch.tensor(kept, dtype=torch.long)
    (inverse,) = linalg.damped_inverse([sigma[index][:, index].contiguous()], ridge)
    fold = sigma[:, index] @ inverse
    error = float(residual.trace())
    total = float(sigma.trace())
    return SpectralSelection(kept, fold, error, error / total if total > 0 else 0.0, ridge)


def _batches(
    calib_data: torch.Tensor | Iterable[object], batch_size: int
) -> Iterator[torch.Tensor]:
    if isinstance(calib_data, torch.Tensor):
        for start in range(0, calib_data.shape[0], batch_size):
            yield calib_data[start : start + batch_size]
        return
    for index, item in enumerate(calib_data):
        batch = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(batch, torch.Tensor):
            raise TypeError(
                f"calib_data[{index}]: expected a tensor or an (inputs, ...) tuple, "
                f"received {type(item).__name__}"
            )
        yield batch


def _channel_rows(inputs: torch.Tensor, channels: int, spatial: int) -> torch.Tensor:
    """The consumer's input as (samples, channels): every pixel of a channel map is a sample."""
    if inputs.dim() == 2:
        return inputs.reshape(-1, channels, spatial).transpose(1, 2).reshape(-1, channels)
    return inputs.transpose(1, -1).reshape(-1, channels)


@torch.no_grad()
def consumer_covariance(
    model: nn.Module,
    group: ChannelGroup,
    calib_data: torch.Tensor | Iterable[object],
    batch_size: int = 256,
) -> torch.Tensor:
    """Σ of ``group``'s channels at its consumer's input (float64, uncentred), over the data."""
    consumer = model.get_submodule(group.consumer)
    channels = group.channels(model)
    total = torch.zeros(channels, channels, dtype=torch.float64)
    count = 0

    def capture(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        nonlocal total, count
        rows = _channel_rows(args[0].detach(), channels, group.spatial).double()
        total += rows.T @ rows
        count += rows.shape[0]

    handle = consumer.register_forward_pre_hook(capture)
    was_training = model.training
    model.eval()
    try:
        for batch in _batches(calib_data, batch_size):
            model(batch)
    finally:
        handle.remove()
        model.train(was_training)
    if count == 0:
        raise ValueError("calib_data: expected at least one example, received none")
    return total / count


def spectral_(
    model: nn.Module,
    calib_data: torch.Tensor | Iterable[object],
    ratio: float | None = None,
    dof: float | None = None,
    lam: float = DEFAULT_LAMBDA,
    *,
    widths: Mapping[str, int] | None = None,
    theta: float = 0.0,
    batch_size: int = 256,
) -> dict[str, SpectralLayer]:
    """Spectral pruning of every prunable channel group of ``model`` (in place).

    Layer by layer in forward order (each on the activations of the already pruned layers
    before it): Σ of the channels at the consumer's input on ``calib_data``, greedy ``J``
    (:func:`spectral_select`), the other channels removed and ``Â_J`` folded into the consumer.

    Args:
        model: a model ``torch.fx`` can trace (see :mod:`codl.prune.channel`).
        calib_data: an input tensor (N, ...) or an iterable of input batches (or of
            ``(inputs, labels)`` pairs). A few hundred to a few thousand examples suffice.
        ratio: the fraction of channels removed per layer (as in :func:`channel_`), or
        dof: λ (relative to the mean eigenvalue) at which each layer keeps ``⌈N̂(λ)⌉`` channels,
            or ``widths``: the channels kept per producer name. Exactly one of the three.
        lam: ridge λ of ``Â_J`` (relative to the mean eigenvalue).
        theta: weight of the output-aware term ``L⁽ᴮ⁾`` (0: input-aware only, the default:
            θ = 0, 0.5 and 2 gave the same accuracy within noise on short Fashion-MNIST runs of
            LeNet-5 and FashionCNN, ``benchmarks/spectral_vs_l1.py --theta``).
        batch_size: examples per forward pass when ``calib_data`` is one tensor.

    Returns:
        Per pruned producer: kept channels (original numbering), N̂, reconstruction error.
    """
    given = sum(option is not None for option in (ratio, dof, widths))
    if given != 1:
        raise ValueError(f"expected exactly one of ratio, dof and widths, received {given}")
    _check_positive(lam, "lam")
    groups = find_channel_groups(model)
    targets = None if dof is not None else resolve_widths(model, groups, ratio, widths)
    dof_lambda = None if dof is None else _check_positive(dof, "dof")
    report: dict[str, SpectralLayer] = {}
    for group in groups:
        if targets is not None and group.producer not in targets:
            continue
        cov = consumer_covariance(model, group, calib_data, batch_size)
        channels = cov.shape[0]
        freedom = math.nan
        if dof_lambda is not None:
            freedom = degrees_of_freedom(cov, dof_lambda)
            width = min(channels, max(1, math.ceil(freedom - 1e-9)))
        else:
            assert targets is not None
            width = targets[group.producer]
        consumer_weight = model.get_submodule(group.consumer).weight
        assert isinstance(consumer_weight, torch.Tensor)
        columns = _consumer_columns(consumer_weight.detach(), channels, group.spatial)
        output_weight = columns.permute(0, 2, 1).reshape(-1, channels)
        selection = spectral_select(cov, width, lam, output_weight, theta)
        remove_channels_(model, group, torch.tensor(selection.kept), selection.fold)
        report[group.producer] = SpectralLayer(
            selection.kept, channels, freedom, selection.input_error, selection.relative_error
        )
    return report
