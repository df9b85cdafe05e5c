"""Gradient codecs (codl.comm) against the same math written with torch ops: encode (with error
feedback where the codec has it) and decode of a flat float32 gradient. Throughput is GB/s of
float32 input (4 bytes per value); the link model of ``codl bench comm`` uses these figures.

Baselines, the best plain-torch form of each codec (what GRACE-style compressors run):

- int8: per block ``max|v|`` by ``amax``, ``(v * (127 / max)).round().to(int8)``, residual.
- sign: per block ``mean|v|``, ``torch.signbit`` packed by ``numpy.packbits``, residual.
- terngrad: per block ``max|v|``, ``torch.rand`` Bernoulli draws, 2-bit fields packed with
  shifts.
- qsgd: per block norm, ``torch.rand`` stochastic rounding, one byte per value (sign and level;
  bit-packing in torch would only slow it down further).
- topk: ``torch.topk`` of ``|v|`` (exact k, no sampling), gather, residual cleared at the
  indices.

The stochastic codecs cannot agree bit for bit with torch's generator, so their check compares
the norm of what each side decodes; the others compare decoded values within one
quantization step (int8), signs and scales (sign) or the index sets (topk).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from codl.bench import Case, Result, run_cases
from codl.comm import QSGD, Int8, SignEF, TernGrad, TopK

# 1M values, and ResNet-50's 25.56M parameters rounded up to whole 2048-value blocks (any
# size works: the baselines treat a partial last block as the codecs do).
DEFAULT_SIZES = (1 << 20, 25_559_040)
INT8_BLOCK, SIGN_BLOCK, STOCHASTIC_BLOCK = 512, 512, 512  # the codecs' default blocks


def _pieces(t: torch.Tensor, block: int) -> list[torch.Tensor]:
    """``t`` (flat) as rows of whole blocks, then its partial last block as one row: views,
    so writing into them writes into ``t``."""
    full = t.numel() // block * block
    pieces = [t[:full].view(-1, block)] if full else []
    if full < t.numel():
        pieces.append(t[full:].view(1, -1))
    return pieces


def _scale_pieces(scales: torch.Tensor, numel: int, block: int) -> list[torch.Tensor]:
    """Per-block scales (one per block, the partial last one included) as columns matching
    :func:`_pieces` of ``numel`` values."""
    full = numel // block
    pieces = [scales[:full].view(-1, 1)] if full else []
    if numel % block:
        pieces.append(scales[full:].view(1, 1))
    return pieces


def _block_count(numel: int, block: int) -> int:
    return -(-numel // block)


def _flat(parts: list[torch.Tensor]) -> torch.Tensor:
    """The parts flattened into one tensor (no copy when there is one part)."""
    return parts[0].view(-1) if len(parts) == 1 else torch.cat([p.reshape(-1) for p in parts])


def torch_int8_encode(x: torch.Tensor, error: torch.Tensor) -> torch.Tensor:
    v = x + error
    scales, codes = [], []
    for rows, residual in zip(_pieces(v, INT8_BLOCK), _pieces(error, INT8_BLOCK)):
        largest = rows.abs().amax(dim=1, keepdim=True)
        scale = largest / 127.0
        q = (rows * (127.0 / largest.clamp_min(1e-30))).round().to(torch.int8)
        torch.sub(rows, q.float() * scale, out=residual)
        scales.append(scale)
        codes.append(q)
    return torch.cat([_flat(scales).view(torch.uint8), _flat(codes).view(torch.uint8)])


def torch_int8_decode(payload: torch.Tensor, numel: int, out: torch.Tensor) -> torch.Tensor:
    blocks = _block_count(numel, INT8_BLOCK)
    scales = _scale_pieces(payload[: 4 * blocks].view(torch.float32), numel, INT8_BLOCK)
    codes = _pieces(payload[4 * blocks :].view(torch.int8), INT8_BLOCK)
    for q, scale, o in zip(codes, scales, _pieces(out, INT8_BLOCK)):
        torch.mul(q, scale, out=o)
    return out


def torch_sign_encode(x: torch.Tensor, error: torch.Tensor) -> torch.Tensor:
    v = x + error
    negative = torch.signbit(v)
    bits = torch.from_numpy(np.packbits(negative.numpy(), axis=None, bitorder="little"))
    scales = []
    for rows, signs, residual in zip(
        _pieces(v, SIGN_BLOCK), _pieces(negative, SIGN_BLOCK), _pieces(error, SIGN_BLOCK)
    ):
        scale = rows.abs().mean(dim=1, keepdim=True)  # over the block's own length
        torch.sub(rows, torch.where(signs, -scale, scale), out=residual)
        scales.append(scale)
    return torch.cat([_flat(scales).view(torch.uint8), bits])


def torch_sign_decode(payload: torch.Tensor, numel: int, out: torch.Tensor) -> torch.Tensor:
    blocks = _block_count(numel, SIGN_BLOCK)
    scales = _scale_pieces(payload[: 4 * blocks].view(torch.float32), numel, SIGN_BLOCK)
    negative = np.unpackbits(payload[4 * blocks :].numpy(), count=numel, bitorder="little")
    signs = _pieces(torch.from_numpy(negative).bool(), SIGN_BLOCK)
    for rows, scale, o in zip(signs, scales, _pieces(out, SIGN_BLOCK)):
        torch.where(rows, -scale, scale, out=o)
    return out


def _pack_2bit(fields: torch.Tensor) -> torch.Tensor:
    if fields.numel() % 4:  # padding fields are 0
        fields = torch.nn.functional.pad(fields, (0, 4 - fields.numel() % 4))
    f = fields.view(-1, 4)
    return f[:, 0] | f[:, 1] << 2 | f[:, 2] << 4 | f[:, 3] << 6


def torch_terngrad_encode(x: torch.Tensor) -> torch.Tensor:
    scales, codes = [], []
    for rows in _pieces(x, STOCHASTIC_BLOCK):
        s = rows.abs().amax(dim=1, keepdim=True)
        keep = torch.rand_like(rows) * s < rows.abs()
        codes.append(torch.where(keep, torch.where(torch.signbit(rows), 0, 2), 1).to(torch.uint8))
        scales.append(s)
    return torch.cat([_flat(scales).view(torch.uint8), _pack_2bit(_flat(codes))])


def torch_terngrad_decode(payload: torch.Tensor, numel: int, out: torch.Tensor) -> torch.Tensor:
    blocks = _block_count(numel, STOCHASTIC_BLOCK)
    scales = _scale_pieces(payload[: 4 * blocks].view(torch.float32), numel, STOCHASTIC_BLOCK)
    packed = payload[4 * blocks :]
    fields = torch.stack([(packed >> shift) & 3 for shift in (0, 2, 4, 6)], dim=1)
    codes = fields.view(-1)[:numel].to(torch.float32) - 1.0
    for rows, s, o in zip(_pieces(codes, STOCHASTIC_BLOCK), scales, _pieces(out, STOCHASTIC_BLOCK)):
        torch.mul(rows, s, out=o)
    return out


def torch_qsgd_encode(x: torch.Tensor, levels: int) -> torch.Tensor:
    norms, codes = [], []
    for rows in _pieces(x, STOCHASTIC_BLOCK):
        norm = rows.norm(dim=1, keepdim=True)
        r = rows.abs() / norm * (levels - 1)
        lower = r.floor()
        level = (lower + (torch.rand_like(r) < r - lower).float()).to(torch.uint8)
        codes.append(level | (torch.signbit(rows) & (level > 0)).to(torch.uint8) << 7)
        norms.append(norm)
    return torch.cat([_flat(norms).view(torch.uint8), _flat(codes)])


def torch_qsgd_decode(
    payload: torch.Tensor, numel: int, levels: int, out: torch.Tensor
) -> torch.Tensor:
    blocks = _block_count(numel, STOCHASTIC_BLOCK)
    norms = _scale_pieces(payload[: 4 * blocks].view(torch.float32), numel, STOCHASTIC_BLOCK)
    codes = _pieces(payload[4 * blocks :], STOCHASTIC_BLOCK)
    for code, norm, o in zip(codes, norms, _pieces(out, STOCHASTIC_BLOCK)):
        magnitude = (code & 0x7F).float() * norm / (levels - 1)
        torch.where(code >= 0x80, -magnitude, magnitude, out=o)
    return out


def torch_topk_encode(x: torch.Tensor, error: torch.Tensor, k: int) -> torch.Tensor:
    error.add_(x)
    indices = torch.topk(error.abs(), k, sorted=False).indices.sort().values
    values = error[indices]
    error[indices] = 0.0
    count = torch.tensor([k], dtype=torch.int32)
    return torch.cat(
        [count.view(torch.uint8), indices.int().view(torch.uint8), values.view(torch.uint8)]
    )


def torch_topk_decode(payload: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    k = int(payload[:4].view(torch.int32))
    indices = payload[4 : 4 + 4 * k].view(torch.int32).long()
    out.zero_()
    out[indices] = payload[4 + 4 * k :].view(torch.float32)
    return out


def _close_norms(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Two independent stochastic decodes of the same gradient: norms within 5%, widened by
    ``4 / sqrt(n)`` for short gradients, whose norms scatter more."""
    na, nb = float(a.norm()), float(b.norm())
    return abs(na - nb) <= (0.05 + 4 / math.sqrt(a.numel())) * max(na, nb)


def cases(numel: int) -> list[Case]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(numel, generator=generator)
    start = torch.randn(numel, generator=generator) * 0.1
    out = torch.empty(numel)

    int8, sign = Int8(block=INT8_BLOCK, error_feedback=True), SignEF(block=SIGN_BLOCK)
    # TernGrad's kernel against the torch-op encode of the same values: clipping (a torch clamp
    # before the kernel, the same on both sides) is left out of the comparison.
    terngrad = TernGrad(block=STOCHASTIC_BLOCK, clip=None)
    qsgd = QSGD(levels=16, block=STOCHASTIC_BLOCK)
    topk = TopK(density=0.01)
    k = topk.count(numel)
    # Each side keeps its own error buffer across repeats, as training would; the agreement
    # check runs on the first call, from equal buffers.
    int8_errors = {side: start.clone() for side in ("codl", "torch")}
    sign_errors = {side: start.clone() for side in ("codl", "torch")}
    topk_errors = {side: start.clone() for side in ("codl", "torch")}
    int8_payload = int8.encode(x)
    sign_payload = sign.encode(x)
    terngrad_payload = terngrad.encode(x)
    qsgd_payload = qsgd.encode(x)
    torch_qsgd_payload = torch_qsgd_encode(x, 16)
    topk_payload = topk.encode(x, error=start.clone())
    step = [0]

    def next_step() -> int:
        step[0] += 1
        return step[0]

    def int8_close(a: torch.Tensor, b: torch.Tensor) -> bool:
        da, db = int8.decode(a, numel), int8.decode(b, numel)
        return bool(((da - db).abs() <= 1.01 * (x + start).abs().max() / 127).all())

    def sign_close(a: torch.Tensor, b: torch.Tensor) -> bool:
        da, db = sign.decode(a, numel), sign.decode(b, numel)
        return torch.equal(torch.signbit(da), torch.signbit(db)) and torch.allclose(
            da, db, rtol=1e-5
        )

    def topk_same(a: torch.Tensor, b: torch.Tensor) -> bool:
        return torch.equal(a[: 4 + 4 * k], b[: 4 + 4 * k])

    return [
        Case(
            "int8 encode+EF",
            numel,
            lambda: int8.encode(x, error=int8_errors["codl"]),
            lambda: torch_int8_encode(x, int8_errors["torch"]),
            int8_close,
        ),
        Case(
            "int8 decode",
            numel,
            lambda: int8.decode(int8_payload, numel, out=out),
            lambda: torch_int8_decode(int8_payload, numel, out).clone(),
            torch.equal,
        ),
        Case(
            "sign encode+EF",
            numel,
            lambda: sign.encode(x, error=sign_errors["codl"]),
            lambda: torch_sign_encode(x, sign_errors["torch"]),
            sign_close,
        ),
        Case(
            "sign decode",
            numel,
            lambda: sign.decode(sign_payload, numel, out=out),
            lambda: torch_sign_decode(sign_payload, numel, out).clone(),
            torch.equal,
        ),
        Case(
            "terngrad encode",
            numel,
            lambda: terngrad.encode(x, step=next_step()),
            lambda: torch_terngrad_encode(x),
            # Same layout: codl decodes both.
            lambda a, b: _close_norms(terngrad.decode(a, numel), terngrad.decode(b, numel)),
        ),
        Case(
            "terngrad decode",
            numel,
            lambda: terngrad.decode(terngrad_payload, numel, out=out),
            lambda: torch_terngrad_decode(terngrad_payload, numel, out).clone(),
            torch.equal,
        ),
        Case(
            "qsgd encode",
            numel,
            lambda: qsgd.encode(x, step=next_step()),
            lambda: torch_qsgd_encode(x, 16),
            lambda a, b: _close_norms(
                qsgd.decode(a, numel), torch_qsgd_decode(b, numel, 16, torch.empty(numel))
            ),
        ),
        Case(
            "qsgd decode",
            numel,
            lambda: qsgd.decode(qsgd_payload, numel, out=out),
            lambda: torch_qsgd_decode(torch_qsgd_payload, numel, 16, out).clone(),
            _close_norms,
        ),
        Case(
            "topk 1% encode+EF",
            numel,
            lambda: topk.encode(x, error=topk_errors["codl"]),
            lambda: torch_topk_encode(x, topk_errors["torch"], k),
            topk_same,
        ),
        Case(
            "topk 1% decode",
            numel,
            lambda: topk.decode(topk_payload, numel, out=out),
            lambda: torch_topk_decode(topk_payload, out).clone(),
            torch.equal,
        ),
    ]


def run(*, size: int | None, repeat: int, threads: int, progress: bool) -> list[Result]:
    """``size``: values of the gradient, any count (default 1M and 25.56M, ResNet-50's); a
    partial last block is encoded as the codecs do, its scale over its own length."""
    results: list[Result] = []
    for numel in (size,) if size else DEFAULT_SIZES:
        for result in run_cases("codecs", cases(numel), repeat, threads, progress):
            gigabytes = 4 * numel / 1e9
            result.notes["codl_GBps"] = round(gigabytes / (result.codl_ms / 1e3), 2)
            result.notes["torch_GBps"] = round(gigabytes / (result.baseline_ms / 1e3), 2)
            results.append(result)
    return results
