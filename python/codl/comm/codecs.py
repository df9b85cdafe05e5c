"""Gradient codecs: a flat float32 gradient in, an exact byte payload out, and back.

Every codec states how many bytes it sends for ``numel`` values (metadata and padding included)
so the collectives can account for traffic exactly, and how its payloads combine across ranks
(:attr:`Codec.scheme`):

- ``"two_phase"``: dense payloads that cannot be summed while encoded. Each rank encodes its
  gradient in P chunks, ``all_to_all_single`` sends chunk j to rank j, rank j decodes and sums
  its P chunks in float32, re-encodes the sum (with its own error feedback) and ``all_gather``
  returns every rank's chunk (DeepSpeed 1-bit Adam's compressed allreduce). Per rank this sends
  2 (P - 1) / P times the encoded size, as a ring allreduce of the encoded tensor would.
- ``"allgather"``: sparse payloads (indices and values) whose union grows with P; every rank
  gathers every payload and sums them in float32.

Error feedback (Seide et al. 2014; Karimireddy et al. 2019, "EF-SGD") is fused into ``encode``:
given an ``error`` buffer it compresses ``x + error`` and leaves in ``error`` what the payload
did not carry, in the same pass (as BytePS fuses its one-bit pack with the error update). The
collectives own the buffers, one per bucket and phase.

Stochastic codecs draw from a counter-based generator keyed by ``(seed, key, step)``, so a run
is reproducible and ranks need not share generator state.
"""

from __future__ import annotations

import abc
import math
from typing import ClassVar, Literal

import torch

from codl import _ops

Scheme = Literal["two_phase", "allgather"]


def _check_flat_float32(x: object, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, received {type(x).__name__}")
    if x.dtype != torch.float32 or x.dim() != 1 or not x.is_contiguous() or x.device.type != "cpu":
        raise ValueError(
            f"{name}: expected a contiguous 1-D float32 CPU tensor, received dtype {x.dtype}, "
            f"shape {tuple(x.shape)}, device {x.device}, contiguous={x.is_contiguous()}"
        )
    return x


def _check_payload(payload: object, expected: int, codec: str) -> torch.Tensor:
    if not isinstance(payload, torch.Tensor):
        raise TypeError(
            f"{codec}: payload must be a torch.Tensor, received {type(payload).__name__}"
        )
    if payload.dtype != torch.uint8 or payload.dim() != 1 or not payload.is_contiguous():
        raise ValueError(
            f"{codec}: payload must be a contiguous 1-D uint8 tensor, received dtype "
            f"{payload.dtype}, shape {tuple(payload.shape)}"
        )
    if payload.numel() != expected:
        raise ValueError(f"{codec}: payload holds {payload.numel()} bytes, expected {expected}")
    return payload


class Codec(abc.ABC):
    """Base of every codec. Subclasses set the class attributes and the three methods."""

    name: ClassVar[str]
    scheme: ClassVar[Scheme] = "two_phase"
    #: Whether decode(encode(x)) can differ from x (lossy codecs get error feedback and warm-up).
    lossy: ClassVar[bool] = True

    def __init__(self, *, error_feedback: bool = False) -> None:
        self.error_feedback = bool(error_feedback)

    @abc.abstractmethod
    def encoded_nbytes(self, numel: int) -> int:
        """Exact payload size in bytes for ``numel`` values (for ``allgather`` codecs: the most)."""

    @abc.abstractmethod
    def encode(
        self, x: torch.Tensor, *, error: torch.Tensor | None = None, key: int = 0, step: int = 0
    ) -> torch.Tensor:
        """``x`` (1-D float32) → 1-D uint8 payload; with ``error``, encodes ``x + error`` and
        updates ``error`` in place to what the payload lost. ``key`` and ``step`` feed the
        counter-based generator of stochastic codecs (a bucket index and the training step)."""

    @abc.abstractmethod
    def decode(
        self,
        payload: torch.Tensor,
        numel: int,
        *,
        out: torch.Tensor | None = None,
        accumulate: bool = False,
    ) -> torch.Tensor:
        """payload → ``numel`` float32 values, written to (or with ``accumulate`` added to)
        ``out`` when given, else a new tensor."""

    def nonfinite_payload(self, numel: int) -> torch.Tensor:
        """A payload of ``numel`` values that decodes to NaN (at least its first value): what
        the two-phase collective's chunk owner sends when its sum is not finite, so every rank
        finds it in the result. The default encodes NaNs (codecs that refuse them override)."""
        return self.encode(torch.full((int(numel),), float("nan")))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(error_feedback={self.error_feedback})"


class _CastCodec(Codec):
    """Rounds to a 16-bit float type; lossless enough that error feedback is off by default."""

    dtype: ClassVar[torch.dtype]

    def encoded_nbytes(self, numel: int) -> int:
        return 2 * int(numel)

    def encode(
        self, x: torch.Tensor, *, error: torch.Tensor | None = None, key: int = 0, step: int = 0
    ) -> torch.Tensor:
        x = _check_flat_float32(x, f"{self.name}.encode: x")
        if error is None:
            return x.to(self.dtype).view(torch.uint8)
        _check_flat_float32(error, f"{self.name}.encode: error")
        corrected = x + error
        rounded = corrected.to(self.dtype)
        torch.sub(corrected, rounded.float(), out=error)
        return rounded.view(torch.uint8)

    def decode(
        self,
        payload: torch.Tensor,
        numel: int,
        *,
        out: torch.Tensor | None = None,
        accumulate: bool = False,
    ) -> torch.Tensor:
        values = _check_payload(payload, self.encoded_nbytes(numel), self.name).view(self.dtype)
        if out is None:
            return values.float()
        _check_flat_float32(out, f"{self.name}.decode: out")
        if out.numel() != numel:
            raise ValueError(
                f"{self.name}.decode: out holds {out.numel()} values, expected {numel}"
            )
        if accumulate:
            out.add_(values)
        else:
            out.copy_(values)
        return out


class FP16(_CastCodec):
    """IEEE half precision: 2 bytes per value, ratio 0.50 to a float32 allreduce. Values beyond
    ±65504 overflow to Inf, which the collectives report (torch's ``fp16_compress_hook`` sends
    them on silently)."""

    name = "fp16"
    dtype = torch.float16


class BF16(_CastCodec):
    """bfloat16: float32's range with 8 bits of mantissa; decoded and summed in float32 because
    gloo cannot reduce bfloat16."""

    name = "bf16"
    dtype = torch.bfloat16


# --- native codecs (C++ kernels through codl._ops; layouts in cpp/include/codl/comm.h) --------


def _check_count(value: object, name: str, *, multiple_of: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % multiple_of:
        extra = f" divisible by {multiple_of}" if multiple_of > 1 else ""
        raise ValueError(f"{name}: expected a positive int{extra}, received {value!r}")
    return value


def _check_counter(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
        raise ValueError(f"{name}: expected an int in [0, 2**64), received {value!r}")
    return value


def _check_error(error: torch.Tensor | None, x: torch.Tensor, name: str) -> torch.Tensor | None:
    if error is None:
        return None
    _check_flat_float32(error, name)
    if error.numel() != x.numel():
        raise ValueError(f"{name}: holds {error.numel()} values, x holds {x.numel()}")
    return error


def _decode_target(
    codec: str, numel: int, out: torch.Tensor | None, accumulate: bool
) -> tuple[torch.Tensor, bool]:
    """The tensor to decode into, and whether to add to it."""
    if out is None:
        return torch.empty(numel, dtype=torch.float32), False
    _check_flat_float32(out, f"{codec}.decode: out")
    if out.numel() != numel:
        raise ValueError(f"{codec}.decode: out holds {out.numel()} values, expected {numel}")
    return out, bool(accumulate)


def _check_numel(numel: object, codec: str) -> int:
    if isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
        raise ValueError(f"{codec}: numel must be a non-negative int, received {numel!r}")
    return numel


class _BlockCodec(Codec):
    """A float32 scale per block of ``block`` values, then fixed-width codes."""

    block_multiple: ClassVar[int] = 1

    def __init__(self, *, block: int, error_feedback: bool) -> None:
        super().__init__(error_feedback=error_feedback)
        self.block = _check_count(block, "block", multiple_of=self.block_multiple)

    def _blocks(self, numel: int) -> int:
        return (_check_numel(numel, self.name) + self.block - 1) // self.block

    def _encode_args(
        self, x: torch.Tensor, error: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        x = _check_flat_float32(x, f"{self.name}.encode: x")
        error = _check_error(error, x, f"{self.name}.encode: error")
        payload = torch.empty(self.encoded_nbytes(x.numel()), dtype=torch.uint8)
        return x, error, payload

    def _decode_args(
        self, payload: torch.Tensor, numel: int, out: torch.Tensor | None, accumulate: bool
    ) -> tuple[torch.Tensor, torch.Tensor, bool]:
        payload = _check_payload(payload, self.encoded_nbytes(numel), self.name)
        target, add = _decode_target(self.name, numel, out, accumulate)
        return payload, target, add

    def nonfinite_payload(self, numel: int) -> torch.Tensor:
        """Zeros encoded, then a NaN first scale (every block codec's payload starts with its
        float32 scales, and decode multiplies by them)."""
        payload = self.encode(torch.zeros(int(numel)))
        if numel:
            payload[:4].view(torch.float32).fill_(float("nan"))
        return payload

    def __repr__(self) -> str:
        return f"{type(self).__name__}(block={self.block}, error_feedback={self.error_feedback})"


class _DeterministicBlockCodec(_BlockCodec):
    """Block codecs with no random draws: encode and decode are one kernel call each."""

    kernel: ClassVar[Literal["int8", "sign"]]

    def encode(
        self, x: torch.Tensor, *, error: torch.Tensor | None = None, key: int = 0, step: int = 0
    ) -> torch.Tensor:
        x, error, payload = self._encode_args(x, error)
        _ops.comm_block_encode(self.kernel, x, error, self.block, payload)
        return payload

    def decode(
        self,
        payload: torch.Tensor,
        numel: int,
        *,
        out: torch.Tensor | None = None,
        accumulate: bool = False,
    ) -> torch.Tensor:
        payload, target, add = self._decode_args(payload, numel, out, accumulate)
        _ops.comm_block_decode(self.kernel, payload, self.block, target, add)
        return target


class Int8(_DeterministicBlockCodec):
    """Block-wise absmax int8: per block of ``block`` values a float32 scale ``max|v| / 127`` and
    int8 codes ``round_half_even(v * 127 / max|v|)`` (``127 / max|v|`` rounded to float32 first,
    as the kernels compute it); decode ``code * scale``. ``v = x + error`` with error feedback.

    Payload: ``ceil(n / block)`` float32 scales, then ``n`` int8 codes; ``4 ceil(n / block) + n``
    bytes, a ratio ``(1 + 4 / block) / 4`` (0.252 at block 512) to a float32 allreduce.
    A block whose largest magnitude is below ``127 / FLT_MAX`` (~3.7e-37, where the quotient
    overflows) is sent as zeros with scale 0; error feedback keeps it. Non-finite values raise
    ValueError (the payload and ``error`` are then partly written).
    """

    name = "int8"
    kernel = "int8"

    def __init__(self, block: int = 512, *, error_feedback: bool = False) -> None:
        super().__init__(block=block, error_feedback=error_feedback)

    def encoded_nbytes(self, numel: int) -> int:
        return 4 * self._blocks(numel) + int(numel)


class SignEF(_DeterministicBlockCodec):
    """Scaled sign with error feedback (Karimireddy et al. 2019, EF-SignSGD, Algorithm 1:
    ``p = v, delta = (||p||_1 / d) sign(p)``, ``e = p - delta``), ``v = x + error``, applied per
    block of ``block`` values (default 512) so one outlier does not set the scale of a whole
    bucket: scale = mean |v| over the block, decode ``-scale`` where the sign bit is set, else
    ``+scale`` (the sign of -0.0 is negative).

    The mean is summed in a fixed order (value i of a block into float32 lane i % 16, the 16
    lanes in float64), so every ISA gives identical payloads.

    Payload: ``ceil(n / block)`` float32 scales, then ``ceil(n / 8)`` bytes of sign bits (bit
    i % 8 of byte i / 8 is signbit(v[i]), the order of ``codl.kernels`` sign packing); ratio
    ``(1 / 8 + 4 / block) / 4`` = 0.0332 at block 512 (0.0317 at 2048). ``block`` must be
    divisible by 8.
    """

    name = "sign_ef"
    kernel = "sign"
    block_multiple = 8

    def __init__(self, block: int = 512, *, error_feedback: bool = True) -> None:
        super().__init__(block=block, error_feedback=error_feedback)

    def encoded_nbytes(self, numel: int) -> int:
        return 4 * self._blocks(numel) + (int(numel) + 7) // 8


class TernGrad(_BlockCodec):
    """Stochastic ternary gradients (Wen et al. 2017, eq. 2-3): per block ``s = max|v|``, and
    each value becomes ``s * sign(v) * b`` with ``b ~ Bernoulli(|v| / s)``, so ``E[decode] = v``
    (unbiased). ``b`` is ``u < |v| / s`` for the counter-based draw ``u`` of (seed, key, step,
    index), so the same key and step give the same payload on every ISA and thread count.

    ``clip``: Wen et al.'s gradient clipping (section 3.3), on by default as in all their
    experiments: before ternarizing, values are clamped to ``clip`` times the root mean square
    of the tensor being encoded (the standard deviation of a zero-mean gradient), so one large
    value no longer sets the scale of its block and the variance drops. Without it, SGD at
    momentum 0.9 and a constant rate rose after warm-up in DDP (issue 14; with it the loss
    follows float32's). Clipping biases the few clamped values; with ``error_feedback`` the
    clamped-off part goes into the error buffer. ``None`` ternarizes the values as they are
    (then ``E[decode] = v`` exactly).

    Payload: ``ceil(n / block)`` float32 scales, then ``ceil(n / 4)`` bytes of 2-bit fields
    ``code + 1`` in {0, 1, 2}, value i in bits ``2 (i % 4)`` of byte ``i / 4`` (padding 0); ratio
    ``(1 / 4 + 4 / block) / 4`` = 0.064 at block 512. ``block`` must be divisible by 8.
    """

    name = "terngrad"
    block_multiple = 8

    def __init__(
        self,
        block: int = 512,
        *,
        seed: int = 0,
        error_feedback: bool = False,
        clip: float | None = 2.5,
    ) -> None:
        super().__init__(block=block, error_feedback=error_feedback)
        self.seed = _check_counter(seed, "seed")
        if clip is not None and (
            isinstance(clip, bool) or not isinstance(clip, (int, float)) or not clip > 0
        ):
            raise ValueError(f"clip: expected a float > 0 or None, received {clip!r}")
        self.clip = None if clip is None else float(clip)

    def encoded_nbytes(self, numel: int) -> int:
        return 4 * self._blocks(numel) + (int(numel) + 3) // 4

    def encode(
        self, x: torch.Tensor, *, error: torch.Tensor | None = None, key: int = 0, step: int = 0
    ) -> torch.Tensor:
        x, error, payload = self._encode_args(x, error)
        key, step = _check_counter(key, "key"), _check_counter(step, "step")
        clipped_off = None
        if self.clip is not None and x.numel():
            values = x if error is None else x + error
            # float64 accumulation, rounded to float32: the bound does not move with the
            # reduction order of a thread count.
            rms = torch.linalg.vector_norm(values, dtype=torch.float64) / math.sqrt(x.numel())
            bound = float(torch.tensor(self.clip * float(rms), dtype=torch.float32))
            if 0.0 < bound < math.inf:  # NaN/Inf values are left for the kernel to refuse
                x = values.clamp(-bound, bound)
                if error is not None:
                    # The kernel then leaves clamped - decode in the zeroed error buffer.
                    clipped_off = values - x
                    error.zero_()
        _ops.comm_terngrad_encode(x, error, self.block, self.seed, key, step, payload)
        if clipped_off is not None and error is not None:
            error += clipped_off
        return payload

    def __repr__(self) -> str:
        return (
            f"TernGrad(block={self.block}, seed={self.seed}, "
            f"error_feedback={self.error_feedback}, clip={self.clip})"
        )

    def decode(
        self,
        payload: torch.Tensor,
        numel: int,
        *,
        out: torch.Tensor | None = None,
        accumulate: bool = False,
    ) -> torch.Tensor:
        payload, target, add = self._decode_args(payload, numel, out, accumulate)
        _ops.comm_terngrad_decode(payload, self.block, target, add)
        return target


class QSGD(_BlockCodec):
    """QSGD (Alistarh et al. 2017, eq. 2): per block the norm ``||v||_2`` and, for each value,
    ``r = (levels - 1) |v| / ||v||`` rounded stochastically to ``floor(r)`` or ``floor(r) + 1``
    (up with probability ``r - floor(r)``), so ``E[decode] = v``. ``levels`` counts the
    magnitude levels including 0 (QSGD's ``s`` is ``levels - 1``); decode
    ``sign * ||v|| * level / (levels - 1)``. The norm is summed in float64, in index order.

    Payload: ``ceil(n / block)`` float32 norms, then ``w = ceil(log2(levels)) + 1``-bit fields,
    LSB first, the level in the low ``w - 1`` bits and the sign in the top one (5 bits at 16
    levels: ratio ``(5 / 8 + 4 / block) / 4`` = 0.158 at block 512). ``block`` must be divisible
    by 8; ``levels`` from 2 to 256.
    """

    name = "qsgd"
    block_multiple = 8

    def __init__(
        self, levels: int = 16, block: int = 512, *, seed: int = 0, error_feedback: bool = False
    ) -> None:
        super().__init__(block=block, error_feedback=error_feedback)
        if isinstance(levels, bool) or not isinstance(levels, int) or not 2 <= levels <= 256:
            raise ValueError(f"levels: expected an int from 2 to 256, received {levels!r}")
        self.levels = levels
        self.seed = _check_counter(seed, "seed")

    @property
    def field_bits(self) -> int:
        """Bits per value: the level's bits plus the sign."""
        return (self.levels - 1).bit_length() + 1

    def encoded_nbytes(self, numel: int) -> int:
        return 4 * self._blocks(numel) + (int(numel) * self.field_bits + 7) // 8

    def encode(
        self, x: torch.Tensor, *, error: torch.Tensor | None = None, key: int = 0, step: int = 0
    ) -> torch.Tensor:
        x, error, payload = self._encode_args(x, error)
        key, step = _check_counter(key, "key"), _check_counter(step, "step")
        _ops.comm_qsgd_encode(x, error, self.block, self.levels, self.seed, key, step, payload)
        return payload

    def decode(
        self,
        payload: torch.Tensor,
        numel: int,
        *,
        out: torch.Tensor | None = None,
        accumulate: bool = False,
    ) -> torch.Tensor:
        payload, target, add = self._decode_args(payload, numel, out, accumulate)
        _ops.comm_qsgd_decode(payload, self.block, self.levels, target, add)
        return target

    def __repr__(self) -> str:
        return (
            f"QSGD(levels={self.levels}, block={self.block}, error_feedback={self.error_feedback})"
        )


class TopK(Codec):
    """Top-k sparsification with a sampled threshold (Lin et al. 2018, Deep Gradient
    Compression, section 3 and Algorithm 1 with momentum correction, eq. 5-6).

    ``v = error + x`` (error feedback: what is not sent stays in ``error``); with
    ``momentum > 0`` and a ``momentum_buffer`` u, DGC's momentum correction: ``u = m u + x``,
    ``v = error + u``, and both ``u`` and ``error`` are cleared where sent. The threshold is the
    k-th largest |v| of a stratified random sample of ``max(min_sample, sample * n)`` values
    (one counter-based draw of (seed, key, step) per stride), moved along the sample's order
    statistics until between k and 4k values reach it; then exactly ``k = ceil(density * n)``
    (at least 1) go out: the k largest |v|, ties to the lower index.

    Payload: uint32 count k, k uint32 indices (increasing), k float32 values: ``4 + 8k`` bytes
    (:meth:`encoded_nbytes`; this codec always sends exactly that many, and :meth:`decode`
    reads the count, so a shorter payload from another producer decodes too). Scheme
    ``"allgather"``: payloads of different ranks concatenate, they do not sum.
    """

    name = "topk"
    scheme = "allgather"

    def __init__(
        self,
        density: float = 0.01,
        *,
        sample: float = 0.01,
        min_sample: int = 512,
        momentum: float = 0.0,
        seed: int = 0,
        error_feedback: bool = True,
    ) -> None:
        super().__init__(error_feedback=error_feedback)
        if isinstance(density, bool) or not isinstance(density, (int, float)):
            raise ValueError(f"density: expected a float in (0, 1], received {density!r}")
        if not 0.0 < float(density) <= 1.0:
            raise ValueError(f"density: expected a float in (0, 1], received {density!r}")
        if isinstance(sample, bool) or not isinstance(sample, (int, float)):
            raise ValueError(f"sample: expected a fraction in (0, 1], received {sample!r}")
        if not 0.0 < float(sample) <= 1.0:
            raise ValueError(f"sample: expected a fraction in (0, 1], received {sample!r}")
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)):
            raise ValueError(f"momentum: expected a float in [0, 1), received {momentum!r}")
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"momentum: expected a float in [0, 1), received {momentum!r}")
        self.density = float(density)
        self.sample = float(sample)
        self.min_sample = _check_count(min_sample, "min_sample")
        self.momentum = float(momentum)
        self.seed = _check_counter(seed, "seed")

    def count(self, numel: int) -> int:
        """Values sent for ``numel``: ``ceil(density * numel)``, at least 1 (0 for 0)."""
        numel = _check_numel(numel, self.name)
        return min(numel, max(1, math.ceil(self.density * numel))) if numel else 0

    def sample_size(self, numel: int) -> int:
        """Values drawn to estimate the threshold."""
        return max(1, min(numel, max(self.min_sample, math.ceil(self.sample * numel))))

    def encoded_nbytes(self, numel: int) -> int:
        return 4 + 8 * self.count(numel)

    def encode(
        self,
        x: torch.Tensor,
        *,
        error: torch.Tensor | None = None,
        key: int = 0,
        step: int = 0,
        momentum_buffer: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """As :meth:`Codec.encode`; ``momentum_buffer`` (float32, like ``error``, which it
        needs) holds DGC's velocity u when ``momentum > 0``."""
        x = _check_flat_float32(x, "topk.encode: x")
        error = _check_error(error, x, "topk.encode: error")
        momentum_buffer = _check_error(momentum_buffer, x, "topk.encode: momentum_buffer")
        if self.momentum > 0.0 and error is not None and momentum_buffer is None:
            raise ValueError(
                f"momentum_buffer: TopK(momentum={self.momentum}) with error feedback needs a "
                "float32 momentum buffer like error, received None"
            )
        if momentum_buffer is not None and error is None:
            raise ValueError("momentum_buffer: momentum correction needs an error buffer too")
        key, step = _check_counter(key, "key"), _check_counter(step, "step")
        numel = x.numel()
        payload = torch.empty(self.encoded_nbytes(numel), dtype=torch.uint8)
        _ops.comm_topk_encode(
            x,
            error,
            momentum_buffer,
            self.momentum,
            self.count(numel),
            self.sample_size(numel),
            self.seed,
            key,
            step,
            payload,
        )
        return payload

    def decode(
        self,
        payload: torch.Tensor,
        numel: int,
        *,
        out: torch.Tensor | None = None,
        accumulate: bool = False,
    ) -> torch.Tensor:
        if not isinstance(payload, torch.Tensor):
            raise TypeError(
                f"topk: payload must be a torch.Tensor, received {type(payload).__name__}"
            )
        if payload.dtype != torch.uint8 or payload.dim() != 1 or not payload.is_contiguous():
            raise ValueError(
                f"topk: payload must be a contiguous 1-D uint8 tensor, received dtype "
                f"{payload.dtype}, shape {tuple(payload.shape)}"
            )
        if payload.numel() > self.encoded_nbytes(numel):
            raise ValueError(
                f"topk: payload holds {payload.numel()} bytes, at most "
                f"{self.encoded_nbytes(numel)} expected for {numel} values"
            )
        target, add = _decode_target(self.name, numel, out, accumulate)
        _ops.comm_topk_decode(payload, target, add)
        return target

    def __repr__(self) -> str:
        return (
            f"TopK(density={self.density}, momentum={self.momentum}, "
            f"error_feedback={self.error_feedback})"
        )
