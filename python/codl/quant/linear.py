"""Linear (uniform, symmetric) per-channel quantization to int8 or int4.

Each channel ``c`` along ``axis`` gets one float32 scale ``s_c = max|W_c| / q`` with
``q = 2^(b-1) - 1`` and codes ``round(W / s_c)`` clamped to ``[-q, q]`` (the symmetric range,
without ``-2^(b-1)``, so negation never overflows: B. Jacob et al., "Quantization and training
of neural networks for efficient integer-arithmetic-only inference", CVPR 2018, and the
per-channel weight scheme of R. Krishnamoorthi, arXiv:1806.08342, 2018, §2). Round to nearest
bounds the error of every entry by ``s_c / 2``. A channel of zeros gets scale 0 and codes 0.
"""

from __future__ import annotations

import torch

from codl.quant.kmeans import check_bits

__all__ = ["linear_dequantize", "linear_quantize"]


def _check_axis(axis: object, dims: int) -> int:
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise TypeError(f"axis: expected an int, received {type(axis).__name__}")
    if not -dims <= axis < dims:
        raise ValueError(f"axis: expected an int in [{-dims}, {dims}), received {axis}")
    return axis % dims


def linear_quantize(
    weight: torch.Tensor, bits: int = 8, axis: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel symmetric quantization of ``weight`` along ``axis``.

    Args:
        weight: a floating-point tensor with at least one dimension.
        bits: 2..8 (8 and 4 are the usual widths; the codes are int8 whatever the width, the
            format packs them to ``bits``).
        axis: the channel axis: one scale per index along it (0: output channels).

    Returns:
        ``(codes, scales)``: int8 codes of ``weight``'s shape in ``[-2^(bits-1)+1,
        2^(bits-1)-1]`` and float32 scales of shape ``(weight.shape[axis],)``;
        ``linear_dequantize(codes, scales, axis)`` is within ``scales/2`` of ``weight``.
    """
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight: expected a torch.Tensor, received {type(weight).__name__}")
    if not weight.is_floating_point():
        raise TypeError(f"weight: expected a floating-point tensor, received {weight.dtype}")
    if weight.dim() == 0 or weight.numel() == 0:
        raise ValueError(
            f"weight: expected a non-empty tensor of >= 1 dims, received {tuple(weight.shape)}"
        )
    if not bool(torch.isfinite(weight).all()):
        raise ValueError("weight: expected finite values, received NaN or Inf")
    levels = (1 << (check_bits(bits, low=2) - 1)) - 1
    dim = _check_axis(axis, weight.dim())
    values = weight.detach().cpu().double().movedim(dim, 0)
    rows = values.reshape(values.shape[0], -1)
    scales = (rows.abs().amax(dim=1) / levels).float()
    # Codes from the float32 scales that are stored, so decoding reproduces this rounding.
    divisor = scales.double().clamp(min=torch.finfo(torch.float64).tiny)
    codes = torch.round(rows / divisor[:, None]).clamp_(-levels, levels)
    codes = codes.to(torch.int8).reshape(values.shape).movedim(0, dim).contiguous()
    return codes, scales


def linear_dequantize(codes: torch.Tensor, scales: torch.Tensor, axis: int = 0) -> torch.Tensor:
    """``codes * scales`` (broadcast along ``axis``) as float32."""
    if not isinstance(codes, torch.Tensor) or codes.dtype != torch.int8:
        raise TypeError("codes: expected an int8 tensor")
    if not isinstance(scales, torch.Tensor) or scales.dtype != torch.float32:
        raise TypeError("scales: expected a float32 tensor")
    dim = _check_axis(axis, codes.dim())
    if scales.shape != (codes.shape[dim],):
        raise ValueError(
            f"scales: expected shape ({codes.shape[dim]},) for axis {axis}, "
            f"received {tuple(scales.shape)}"
        )
    shape = [1] * codes.dim()
    shape[dim] = -1
    return codes.float() * scales.reshape(shape)
