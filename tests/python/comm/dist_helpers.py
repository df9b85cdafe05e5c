"""Shared helpers of the codl.comm tests: spawn gloo process groups on 127.0.0.1 (through
codl's launcher: a file store, a timeout on every wait so a fault never hangs CI) and small
pure-torch codecs to test the collectives against while the native ones are written."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from codl._launch import launch
from codl.comm.codecs import Codec


def _ddp_batteries(rank: int, world_size: int) -> dict[str, Any]:
    # Imported here, in the child: the test modules import this one.
    import test_hook
    import test_powersgd

    return {
        "hook": test_hook._battery(rank, world_size),
        "powersgd": test_powersgd._battery(rank, world_size),
    }


@functools.cache
def ddp_results(world_size: int = 2) -> list[dict[str, Any]]:
    """The DDP scenarios of test_hook.py and test_powersgd.py, run in one spawn (a spawn costs
    seconds of interpreter and torch start-up per rank) and shared by both test files."""
    return run_distributed(_ddp_batteries, world_size, timeout_s=180)


def run_distributed(
    worker: Callable[..., Any],
    world_size: int,
    *args: Any,
    timeout_s: float = 60.0,
    answering: list[int] | None = None,
) -> list[Any]:
    """Runs ``worker(rank, world_size, *args)`` in ``world_size`` spawned processes joined in a
    gloo group (whose timeout is ``timeout_s / 2``), one thread each; returns the results of the
    ``answering`` ranks (all by default) in rank order. A worker error or a timeout fails the
    call (stragglers are killed), so a fault never hangs the test run
    (:func:`codl._launch.launch`)."""
    return launch(worker, world_size, *args, timeout_s=timeout_s, answering=answering)


class Float32Codec(Codec):
    """Raw float32 bytes: lossless, so the collective's result is exactly the rank-order sum."""

    name = "float32-test"
    lossy = False

    def encoded_nbytes(self, numel: int) -> int:
        return 4 * numel

    def encode(
        self, x: torch.Tensor, *, error: torch.Tensor | None = None, key: int = 0, step: int = 0
    ) -> torch.Tensor:
        return x.clone().view(torch.uint8)

    def decode(
        self,
        payload: torch.Tensor,
        numel: int,
        *,
        out: torch.Tensor | None = None,
        accumulate: bool = False,
    ) -> torch.Tensor:
        values = payload.view(torch.float32)
        assert values.numel() == numel
        if out is None:
            return values.clone()
        return out.add_(values) if accumulate else out.copy_(values)


class ScaledSignCodec(Codec):
    """1-bit sign with the mean magnitude as scale (Karimireddy et al. 2019, EF-SignSGD):
    payload = float32 scale + ceil(n / 8) sign bytes."""

    name = "scaled-sign-test"

    def encoded_nbytes(self, numel: int) -> int:
        return 4 + (numel + 7) // 8

    def encode(
        self, x: torch.Tensor, *, error: torch.Tensor | None = None, key: int = 0, step: int = 0
    ) -> torch.Tensor:
        corrected = x + error if error is not None else x
        scale = corrected.abs().mean() if corrected.numel() else torch.zeros(())
        bits = (corrected >= 0).to(torch.uint8)
        padded = torch.zeros((corrected.numel() + 7) // 8 * 8, dtype=torch.uint8)
        padded[: corrected.numel()] = bits
        weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
        packed = (padded.view(-1, 8) * weights).sum(dim=1, dtype=torch.uint8)
        if error is not None:
            error.copy_(corrected - self.decode_values(bits, scale))
        header = scale.reshape(1).to(torch.float32).view(torch.uint8)
        return torch.cat([header, packed])

    @staticmethod
    def decode_values(bits: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return (bits.to(torch.float32) * 2 - 1) * scale

    def decode(
        self,
        payload: torch.Tensor,
        numel: int,
        *,
        out: torch.Tensor | None = None,
        accumulate: bool = False,
    ) -> torch.Tensor:
        assert payload.numel() == self.encoded_nbytes(numel)
        scale = payload[:4].clone().view(torch.float32)[0]
        packed = payload[4:]
        shifts = torch.arange(8, dtype=torch.uint8)
        bits = ((packed.unsqueeze(1) >> shifts) & 1).reshape(-1)[:numel]
        values = self.decode_values(bits, scale)
        if out is None:
            return values
        return out.add_(values) if accumulate else out.copy_(values)


class TopKCodec(Codec):
    """The k = ceil(density n) largest magnitudes: int32 indices then float32 values (8 k bytes)."""

    name = "topk-test"
    scheme = "allgather"

    def __init__(self, density: float = 0.01, *, error_feedback: bool = False) -> None:
        super().__init__(error_feedback=error_feedback)
        self.density = density

    def _k(self, numel: int) -> int:
        return min(numel, max(1, math.ceil(self.density * numel)))

    def encoded_nbytes(self, numel: int) -> int:
        return 8 * self._k(numel)

    def encode(
        self, x: torch.Tensor, *, error: torch.Tensor | None = None, key: int = 0, step: int = 0
    ) -> torch.Tensor:
        corrected = x + error if error is not None else x
        k = self._k(corrected.numel())
        indices = corrected.abs().topk(k, sorted=True).indices.to(torch.int32)
        values = corrected[indices.long()]
        if error is not None:
            error.copy_(corrected)
            error[indices.long()] = 0
        return torch.cat([indices.view(torch.uint8), values.view(torch.uint8)])

    def decode(
        self,
        payload: torch.Tensor,
        numel: int,
        *,
        out: torch.Tensor | None = None,
        accumulate: bool = False,
    ) -> torch.Tensor:
        k = payload.numel() // 8
        indices = payload[: 4 * k].view(torch.int32).long()
        values = payload[4 * k :].view(torch.float32)
        if out is None:
            out = torch.zeros(numel, dtype=torch.float32)
        elif not accumulate:
            out.zero_()
        out.index_add_(0, indices, values)
        return out


def rank_gradient(rank: int, numel: int, step: int = 0) -> torch.Tensor:
    """The test gradient of ``rank`` at ``step`` (the parent rebuilds it for its references)."""
    generator = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(numel, generator=generator)


class RefusingCodec(Codec):
    """Float16 that refuses (ValueError) magnitudes above 1e6, as a native codec refuses a block
    whose magnitudes overflow float32 when summed."""

    name = "refusing-test"

    def encoded_nbytes(self, numel: int) -> int:
        return 2 * numel

    def encode(
        self, x: torch.Tensor, *, error: torch.Tensor | None = None, key: int = 0, step: int = 0
    ) -> torch.Tensor:
        if x.numel() and float(x.abs().max()) > 1e6:
            raise ValueError("x: magnitudes out of range")
        return x.to(torch.float16).view(torch.uint8)

    def decode(
        self,
        payload: torch.Tensor,
        numel: int,
        *,
        out: torch.Tensor | None = None,
        accumulate: bool = False,
    ) -> torch.Tensor:
        values = payload.view(torch.float16).float()
        if out is None:
            return values
        return out.add_(values) if accumulate else out.copy_(values)


class CorruptingPeer(Codec):
    """Wraps ``inner``; on rank ``rank`` at ``step`` the payload of chunk 0 in ``phase`` (1: the
    all_to_all, 2: the all_gather) gets a NaN first float32 (a block codec's first scale, a cast
    codec's first value): a scale corrupted on the network, or a faulty peer."""

    def __init__(self, inner: Codec, *, rank: int, phase: int, step: int) -> None:
        super().__init__(error_feedback=inner.error_feedback)
        self.inner, self.rank, self.phase, self.step = inner, rank, phase, step
        self.name = f"corrupting-{inner.name}"  # type: ignore[misc]
        self.scheme = inner.scheme  # type: ignore[misc]

    def encoded_nbytes(self, numel: int) -> int:
        return self.inner.encoded_nbytes(numel)

    def encode(
        self, x: torch.Tensor, *, error: torch.Tensor | None = None, key: int = 0, step: int = 0
    ) -> torch.Tensor:
        payload = self.inner.encode(x, error=error, key=key, step=step)
        # The generator key's layout (codl.comm.collectives._subkey): phase in bits 38-39,
        # chunk in bits 0-19.
        if (
            dist.get_rank() == self.rank
            and step == self.step
            and (key >> 38) & 3 == self.phase
            and key & 0xFFFFF == 0
        ):
            payload = payload.clone()
            payload[:4].view(torch.float32).fill_(float("nan"))
        return payload

    def decode(
        self,
        payload: torch.Tensor,
        numel: int,
        *,
        out: torch.Tensor | None = None,
        accumulate: bool = False,
    ) -> torch.Tensor:
        return self.inner.decode(payload, numel, out=out, accumulate=accumulate)

    def nonfinite_payload(self, numel: int) -> torch.Tensor:
        return self.inner.nonfinite_payload(numel)
