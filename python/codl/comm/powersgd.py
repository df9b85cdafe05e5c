"""PowerSGD: rank-r gradient compression by one step of subspace (power) iteration.

Vogels, Karimireddy and Jaggi 2019, "PowerSGD: Practical Low-Rank Gradient Compression for
Distributed Optimization", algorithms 1 and 2. For each gradient reshaped to an n x m matrix
(first dimension by the rest, as torch's ``powerSGD_hook`` does) with error feedback:

    M = grad + error                                 (algorithm 2, line 5)
    P = M Q;        P <- allreduce_sum(P)             (algorithm 1, lines 3-4)
    P_hat = orthogonalize(P)                          (Gram-Schmidt, line 5)
    Q = M^T P_hat;  Q <- allreduce_mean(Q)            (lines 6-7)
    approx = P_hat Q^T                                (line 8: the mean gradient's rank-r image)
    error = M - approx                                (algorithm 2, line 7)

Q is warm-started from the previous step (section 3, "reuse of the previous low-rank
approximation") and first drawn from a generator seeded identically on every rank. Tensors with
one dimension, and matrices where r (n + m) >= n m / ``min_compression_rate``, go uncompressed
in one float32 allreduce. Warm-up steps (uncompressed) are the hook's ``warmup_steps``
(torch's ``start_powerSGD_iter``).

Bytes per rank are those of three float32 ring allreduces: 2 (P - 1) / P · 4 (sum of n r + sum
of m r + uncompressed values), counted exactly in :attr:`StepRecord.bytes_sent`.

Unlike torch's hook, the error buffer covers only the compressed matrices: torch adds its error
to the whole bucket, 1-D tensors included, whose "error" is the local minus the mean gradient.

The arithmetic runs on the gradients' device (CUDA included) and so do the error and Q buffers;
the allreduces go to the backend where the data lies when it takes that device (NCCL: CUDA,
gloo: CPU), and through a staged copy otherwise (:class:`codl.comm.collectives.Channel`).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Hashable, Sequence
from typing import Any

import torch
import torch.distributed as dist

from codl._finite import all_finite
from codl.comm.accounting import StepRecord, ring_allreduce_bytes
from codl.comm.collectives import Channel, Link, NonFiniteGradientError


def orthogonalize_(matrix: torch.Tensor, epsilon: float = 1e-8) -> torch.Tensor:
    """Modified Gram-Schmidt on the columns of ``matrix`` (n x r), in place; ``epsilon`` keeps a
    zero column from dividing by zero (as torch's ``_orthogonalize_gram_schmidt``)."""
    for i in range(matrix.shape[1]):
        column = matrix[:, i]
        column.div_(column.norm() + epsilon)
        if i + 1 < matrix.shape[1]:
            rest = matrix[:, i + 1 :]
            rest.sub_(column.unsqueeze(1) * (column @ rest).unsqueeze(0))
    return matrix


class PowerSGD:
    """Rank-``rank`` PowerSGD for :func:`codl.comm.ddp_hook` (see the module docstring).

    ``rank``: the approximation rank r (the paper's default experiments use 1, 2 and 4).
    ``error_feedback``: keep the residual M - approx (algorithm 2). ``warm_start``: reuse Q.
    ``min_compression_rate``: compress an n x m matrix only if n m >= rate · r (n + m).
    ``seed``: seeds Q's first draw, the same on every rank.
    """

    name = "powersgd"
    lossy = True

    def __init__(
        self,
        rank: int = 1,
        *,
        error_feedback: bool = True,
        warm_start: bool = True,
        min_compression_rate: float = 2.0,
        seed: int = 0,
        epsilon: float = 1e-8,
    ) -> None:
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank: expected an integer >= 1, received {rank!r}")
        if min_compression_rate < 1:
            raise ValueError(
                f"min_compression_rate: expected a number >= 1, received {min_compression_rate!r}"
            )
        self.rank = rank
        self.error_feedback = bool(error_feedback)
        self.warm_start = bool(warm_start)
        self.min_compression_rate = float(min_compression_rate)
        self.seed = int(seed)
        self.epsilon = float(epsilon)
        self.errors: dict[Hashable, torch.Tensor] = {}
        self.qs: dict[Hashable, torch.Tensor] = {}
        # Scratch matrices per key (M and the approximation), kept between steps: a fresh
        # allocation of a large gradient's size costs its page faults on every step.
        self._scratch: dict[Hashable, list[torch.Tensor]] = {}

    def __repr__(self) -> str:
        return f"PowerSGD(rank={self.rank}, error_feedback={self.error_feedback})"

    def compresses(self, shape: Sequence[int]) -> bool:
        """Whether a tensor of ``shape`` is compressed (matrix-shaped and worth it)."""
        if len(shape) < 2:
            return False
        n = int(shape[0])
        m = 1
        for size in shape[1:]:
            m *= int(size)
        r = min(n, m, self.rank)
        return n * m >= self.min_compression_rate * r * (n + m)

    def bytes_sent(self, shapes: Sequence[Sequence[int]], world_size: int) -> float:
        """Per-rank bytes of one compressed step over tensors of ``shapes``: float32 ring
        allreduces of the uncompressed values, of all P and of all Q."""
        uncompressed = p_numel = q_numel = 0
        for shape in shapes:
            numel = 1
            for size in shape:
                numel *= int(size)
            if self.compresses(shape):
                n, m = int(shape[0]), numel // int(shape[0])
                r = min(n, m, self.rank)
                p_numel += n * r
                q_numel += m * r
            else:
                uncompressed += numel
        return sum(ring_allreduce_bytes(k, world_size) for k in (uncompressed, p_numel, q_numel))

    def state_dict(self) -> dict[str, Any]:
        return {
            "errors": {k: v.clone() for k, v in self.errors.items()},
            "qs": {k: v.clone() for k, v in self.qs.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.errors = {k: v.clone() for k, v in state["errors"].items()}
        self.qs = {k: v.clone() for k, v in state["qs"].items()}

    def initial_q(
        self, key: Hashable, sizes: Sequence[tuple[int, int]], device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """Q's first draw for the m x r matrices of ``sizes`` under ``key``: the same on every
        rank (drawn on the CPU, then moved to ``device``)."""
        # crc32, not hash(): str hashes differ between processes, Q must not.
        mixed = zlib.crc32(repr(key).encode())
        generator = torch.Generator().manual_seed(self.seed * 4_294_967_311 + mixed)
        total = sum(m * r for m, r in sizes)
        return torch.randn(total, generator=generator).to(device)

    def allreduce_(
        self,
        tensors: Sequence[torch.Tensor],
        *,
        key: Hashable = 0,
        group: dist.ProcessGroup | None = None,
        link: Link | None = None,
    ) -> StepRecord:
        """Replaces each tensor (float32 gradients on one device, shaped like their parameters)
        by the PowerSGD estimate of its mean over ranks; returns the step's bytes and times."""
        world_size = dist.get_world_size(group)
        record = StepRecord()
        device = tensors[0].device if tensors else torch.device("cpu")
        channel = Channel.for_data(group, device)
        compressed = [t for t in tensors if self.compresses(t.shape)]
        uncompressed = [t for t in tensors if not self.compresses(t.shape)]
        record.compressed_tensors = len(compressed)
        record.uncompressed_tensors = len(uncompressed)
        record.ring_bytes = ring_allreduce_bytes(sum(t.numel() for t in tensors), world_size)

        def reduce(flat: torch.Tensor) -> torch.Tensor:
            start = time.perf_counter()
            if flat.numel():
                channel.all_reduce(flat)
                ring = ring_allreduce_bytes(flat.numel(), world_size)
                if link is not None:
                    link.wait(2 * (world_size - 1), ring)
                record.bytes_sent += ring
                if channel.staged_bytes:
                    record.notes["staged_bytes"] = float(channel.staged_bytes)
            record.comm_s += time.perf_counter() - start
            return flat

        if uncompressed:
            flat = reduce(torch.cat([t.reshape(-1) for t in uncompressed]))
            flat.div_(world_size)
            self._check_finite(flat, "the uncompressed tensors")
            offset = 0
            for t in uncompressed:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()
        if not compressed:
            return record

        start = time.perf_counter()
        matrices = [t.reshape(t.shape[0], -1) for t in compressed]
        sizes = [(m.shape[0], m.shape[1], min(m.shape[0], m.shape[1], self.rank)) for m in matrices]
        total = sum(n * m for n, m, _ in sizes)
        error: torch.Tensor | None = None
        if self.error_feedback:
            error = self.errors.get(key)
            if error is None or error.numel() != total:
                if error is not None and error.numel() != total:
                    raise ValueError(
                        f"key {key!r}: PowerSGD's error buffer holds {error.numel()} values, the "
                        f"tensors now hold {total}; their shapes changed"
                    )
                error = torch.zeros(total, device=device)
                self.errors[key] = error
        # Every matrix product runs on operands of their own allocation: BLAS results depend on
        # the alignment of their inputs, and the bucket puts a matrix wherever DDP's layout
        # does, so this keeps the result independent of the layout (a restored DDP's first step
        # buckets differently from the run it continues).
        scratch = self._scratch.get(key)
        layout = [(m.shape, m.device) for m in matrices]
        if scratch is None or [(t.shape, t.device) for t in scratch[::2]] != layout:
            scratch = [t for m in matrices for t in (torch.empty_like(m), torch.empty_like(m))]
            self._scratch[key] = scratch
        errors: list[torch.Tensor] = []
        work = scratch[::2]  # M = gradient + error (algorithm 2, line 5)
        approximations = scratch[1::2]
        offset = 0
        for matrix, corrected in zip(matrices, work):
            if error is not None:
                errors.append(error[offset : offset + matrix.numel()].view_as(matrix))
                torch.add(matrix, errors[-1], out=corrected)
            else:
                corrected.copy_(matrix)
            offset += matrix.numel()
        q_flat = self.qs.get(key) if self.warm_start else None
        q_total = sum(m * r for _, m, r in sizes)
        if q_flat is None or q_flat.numel() != q_total:
            q_flat = self.initial_q(key, [(m, r) for _, m, r in sizes], device)
        q_views = []
        q_offset = 0
        for _, m, r in sizes:
            q_views.append(q_flat[q_offset : q_offset + m * r].view(m, r))
            q_offset += m * r
        p_flat = torch.empty(sum(n * r for n, _, r in sizes), device=device)
        p_views = []
        p_offset = 0
        for (n, _, r), matrix, q in zip(sizes, work, q_views):
            p_views.append(p_flat[p_offset : p_offset + n * r].view(n, r))
            # A column-major Q: MKL's product with a row-major n x r right factor is several
            # times slower (0.9 against 0.16 ms for 1024 x 784 times 784 x 2).
            column_major = orthogonalize_(q.clone(), self.epsilon).t().contiguous().t()
            p_views[-1].copy_(matrix @ column_major)
            p_offset += n * r
        record.encode_s += time.perf_counter() - start

        reduce(p_flat)
        self._check_finite(p_flat, "P")
        start = time.perf_counter()
        ps = []
        for p, q, matrix in zip(p_views, q_views, work):
            ps.append(orthogonalize_(p.clone(), self.epsilon))
            q.copy_((ps[-1].t() @ matrix).t())  # M^T P as (P^T M)^T: reads M in row order
        record.encode_s += time.perf_counter() - start

        reduce(q_flat)
        if not all_finite(q_flat):  # a peer's Q held NaN or Inf: drop the corrupted warm start
            self.qs.pop(key, None)
            self._check_finite(q_flat, "Q")
        start = time.perf_counter()
        q_flat.div_(world_size)
        for index, (p, q, matrix) in enumerate(zip(ps, q_views, work)):
            approx = torch.matmul(p, q.clone().t(), out=approximations[index])  # line 8
            matrices[index].copy_(approx)
            if errors:
                torch.sub(matrix, approx, out=errors[index])  # algorithm 2, line 7
        if self.warm_start:
            self.qs[key] = q_flat
        for tensor, matrix in zip(compressed, matrices):
            if matrix.data_ptr() != tensor.data_ptr():
                tensor.copy_(matrix.view_as(tensor))
        record.decode_s += time.perf_counter() - start
        return record

    @staticmethod
    def _check_finite(values: torch.Tensor, what: str) -> None:
        # The allreduced sums are identical on every rank, so every rank raises together.
        if not all_finite(values):
            raise NonFiniteGradientError(f"PowerSGD: non-finite values (NaN or Inf) in {what}")
