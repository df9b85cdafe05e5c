"""Exact byte accounting of gradient exchange, per rank, against a float32 ring allreduce.

The reference is what ``torch.distributed.all_reduce`` on float32 costs with the bandwidth-
optimal ring algorithm (Patarasuk and Yuan 2009; Thakur et al. 2005, section 4): a reduce-scatter
then an all-gather, each sending P - 1 chunks of n / P values, so every rank sends

    ring(n, P) = 2 (P - 1) / P · 4 n bytes.

The compressed collectives of :mod:`codl.comm.collectives` send, per rank:

- ``two_phase`` (DeepSpeed 1-bit Adam's compressed allreduce, Tang et al. 2021, section 3.3):
  the flat gradient is padded to P chunks of c = ceil(n / P) values; ``all_to_all_single`` sends
  P - 1 encoded chunks plus a one-byte non-finite flag each, and the ring ``all_gather`` of the
  re-encoded reduced chunks forwards P - 1 of them:

      two_phase(n, P) = (P - 1) (codec.encoded_nbytes(c) + 1) + (P - 1) codec.encoded_nbytes(c).

- ``allgather`` (sparse payloads): an ``all_gather`` of one int64 length per rank (its sign
  carries the non-finite flag), then a ring ``all_gather`` of the payloads padded to the longest:

      allgather(P) = (P - 1) (8 + max_i len_i).

Padding and metadata are part of the figures: the ratio is what the wire carries.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from codl.comm.codecs import Codec

#: Bytes of the per-peer non-finite flag appended to each phase-1 payload of ``two_phase``.
FLAG_NBYTES = 1
#: Bytes of the per-rank payload length (int64) exchanged before a sparse ``all_gather``.
LENGTH_NBYTES = 8
#: Bytes of the per-rank element count (int64) that ``allreduce(check_sizes=True)`` gathers
#: first (the DDP hook skips it: DDP checks shapes once); not part of the formulas below.
SIZE_NBYTES = 8


def _check_sizes(numel: int, world_size: int) -> None:
    if not isinstance(numel, int) or numel < 0:
        raise ValueError(f"numel: expected an integer >= 0, received {numel!r}")
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size: expected an integer >= 1, received {world_size!r}")


def chunk_numel(numel: int, world_size: int) -> int:
    """Values per chunk of the two-phase scheme: ceil(n / P) (the last chunk is zero-padded)."""
    _check_sizes(numel, world_size)
    return -(-numel // world_size)


def ring_allreduce_bytes(numel: int, world_size: int, itemsize: int = 4) -> float:
    """Bytes one rank sends in a ring allreduce of ``numel`` values: 2 (P - 1) / P · itemsize · n
    (Patarasuk and Yuan 2009, eq. 1's bandwidth term)."""
    _check_sizes(numel, world_size)
    return 2.0 * (world_size - 1) / world_size * itemsize * numel


def two_phase_bytes(codec: Codec, numel: int, world_size: int) -> int:
    """Bytes one rank sends in the two-phase compressed allreduce (see the module docstring)."""
    _check_sizes(numel, world_size)
    if world_size == 1 or numel == 0:
        return 0
    encoded = codec.encoded_nbytes(chunk_numel(numel, world_size))
    return (world_size - 1) * (encoded + FLAG_NBYTES) + (world_size - 1) * encoded


def allgather_bytes(max_payload_nbytes: int, world_size: int) -> int:
    """Bytes one rank sends gathering sparse payloads padded to ``max_payload_nbytes``."""
    _check_sizes(max_payload_nbytes, world_size)
    if world_size == 1:
        return 0
    return (world_size - 1) * (LENGTH_NBYTES + max_payload_nbytes)


def compressed_bytes(codec: Codec, numel: int, world_size: int) -> int:
    """Bytes one rank sends for ``numel`` values with ``codec`` (for sparse codecs the bound
    from ``codec.encoded_nbytes``, which the fixed-size codecs reach exactly)."""
    if codec.scheme == "two_phase":
        return two_phase_bytes(codec, numel, world_size)
    _check_sizes(numel, world_size)
    if numel == 0:
        return 0
    return allgather_bytes(codec.encoded_nbytes(numel), world_size)


def compression_ratio(codec: Codec | None, numel: int, world_size: int) -> float:
    """Bytes sent with ``codec`` over the float32 ring allreduce's (1.0 for ``codec=None``)."""
    ring = ring_allreduce_bytes(numel, world_size)
    if codec is None:
        return 1.0
    if ring == 0:
        return 0.0
    return compressed_bytes(codec, numel, world_size) / ring


def allgather_break_even_world_size(codec: Codec, numel: int, *, limit: int = 1 << 20) -> int:
    """Smallest world size P >= 2 at which a sparse (``allgather``) codec sends at least as many
    bytes per rank as the float32 ring allreduce: (P - 1)(8 + S_c) >= 2 (P - 1) / P · 4 n, that is
    P >= 8 n / (8 + S_c). Returns ``limit`` if it never happens below it."""
    if codec.scheme != "allgather":
        raise ValueError(f"codec: expected an allgather (sparse) codec, received {codec!r}")
    payload = codec.encoded_nbytes(numel)
    for world_size in range(2, limit):
        if allgather_bytes(payload, world_size) >= ring_allreduce_bytes(numel, world_size):
            return world_size
    return limit


@dataclass
class StepRecord:
    """What one rank sent in one step (or one collective), and where the time went."""

    bytes_sent: float = 0.0
    ring_bytes: float = 0.0
    encode_s: float = 0.0
    decode_s: float = 0.0
    comm_s: float = 0.0
    compressed_tensors: int = 0
    uncompressed_tensors: int = 0
    nonfinite: bool = False
    notes: dict[str, float] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """Bytes sent over the float32 ring allreduce's bytes for the same tensors."""
        return self.bytes_sent / self.ring_bytes if self.ring_bytes else 0.0

    def add(self, other: StepRecord) -> None:
        self.bytes_sent += other.bytes_sent
        self.ring_bytes += other.ring_bytes
        self.encode_s += other.encode_s
        self.decode_s += other.decode_s
        self.comm_s += other.comm_s
        self.compressed_tensors += other.compressed_tensors
        self.uncompressed_tensors += other.uncompressed_tensors
        self.nonfinite = self.nonfinite or other.nonfinite

    def as_dict(self) -> dict[str, Any]:
        result = asdict(self)
        result["ratio"] = self.ratio
        return result
