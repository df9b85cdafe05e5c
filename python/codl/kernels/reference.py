"""The packed formats of :mod:`codl.kernels` written with plain torch ops.

These are what a PyTorch user would write without codl (shifts, sums, views), so they serve
twice: as the independent oracle of the tests and as the baseline of the benchmarks.
"""

from __future__ import annotations

import torch

_TERNARY2_BLOCK, _TERNARY3_BLOCK, _BLOCK_BYTES = 128, 160, 32
_BIT_WEIGHTS = 1 << torch.arange(8, dtype=torch.uint8)
_TWO_BIT_SHIFTS = torch.tensor([0, 2, 4, 6], dtype=torch.uint8)
_TRIT_WEIGHTS = torch.tensor([81, 27, 9, 3, 1], dtype=torch.int32)


def pack_signs(x: torch.Tensor) -> torch.Tensor:
    bits = torch.signbit(x.reshape(-1)).to(torch.uint8)
    bits = torch.nn.functional.pad(bits, (0, -bits.numel() % 8))
    return (bits.view(-1, 8) << torch.arange(8, dtype=torch.uint8)).sum(1, dtype=torch.uint8)


def unpack_signs(packed: torch.Tensor, numel: int) -> torch.Tensor:
    bits = (packed.reshape(-1, 1) & _BIT_WEIGHTS) != 0
    return 1.0 - 2.0 * bits.reshape(-1)[:numel].to(torch.float32)


def _check_codes(codes: torch.Tensor) -> torch.Tensor:
    flat = codes.reshape(-1)
    if bool(((flat < -1) | (flat > 1)).any()):
        raise ValueError("codes must be -1, 0 or +1")
    return (flat + 1).to(torch.uint8)


def pack_ternary2(codes: torch.Tensor) -> torch.Tensor:
    fields = _check_codes(codes)
    whole = fields.numel() // _TERNARY2_BLOCK * _TERNARY2_BLOCK
    blocks = fields[:whole].view(-1, 4, _BLOCK_BYTES) << _TWO_BIT_SHIFTS.view(1, 4, 1)
    tail = torch.nn.functional.pad(fields[whole:], (0, -(fields.numel() - whole) % 4), value=1)
    tail_bytes = (tail.view(-1, 4) << _TWO_BIT_SHIFTS).sum(1, dtype=torch.uint8)
    return torch.cat([blocks.sum(1, dtype=torch.uint8).reshape(-1), tail_bytes])


def unpack_ternary2(packed: torch.Tensor, numel: int) -> torch.Tensor:
    whole_bytes = numel // _TERNARY2_BLOCK * _BLOCK_BYTES
    blocks = (packed[:whole_bytes].view(-1, 1, _BLOCK_BYTES) >> _TWO_BIT_SHIFTS.view(1, 4, 1)) & 3
    tail = (packed[whole_bytes:].view(-1, 1) >> _TWO_BIT_SHIFTS) & 3
    fields = torch.cat([blocks.reshape(-1), tail.reshape(-1)])[:numel]
    if bool((fields == 3).any()):
        raise ValueError("corrupt ternary data: a 2-bit field holds 0b11")
    return fields.to(torch.int8) - 1


def pack_ternary3(codes: torch.Tensor) -> torch.Tensor:
    trits = _check_codes(codes).to(torch.int32)
    whole = trits.numel() // _TERNARY3_BLOCK * _TERNARY3_BLOCK
    block_values = (trits[:whole].view(-1, 5, _BLOCK_BYTES) * _TRIT_WEIGHTS.view(1, 5, 1)).sum(1)
    tail = torch.nn.functional.pad(trits[whole:], (0, -(trits.numel() - whole) % 5), value=1)
    values = torch.cat([block_values.reshape(-1), (tail.view(-1, 5) * _TRIT_WEIGHTS).sum(1)])
    return ((values * 256 + 242) // 243).to(torch.uint8)  # ceil(v * 256 / 243)


def unpack_ternary3(packed: torch.Tensor, numel: int) -> torch.Tensor:
    multipliers = torch.tensor([1, 3, 9, 27, 81], dtype=torch.int32)
    whole_bytes = numel // _TERNARY3_BLOCK * _BLOCK_BYTES
    # Trit k of a byte is ((byte * 3^k mod 256) * 3) >> 8.
    blocks = packed[:whole_bytes].to(torch.int32).view(-1, 1, _BLOCK_BYTES) * multipliers.view(
        1, 5, 1
    )
    tail = packed[whole_bytes:].to(torch.int32).view(-1, 1) * multipliers
    scaled = torch.cat([blocks.reshape(-1), tail.reshape(-1)])[:numel] & 255
    return ((scaled * 3) >> 8).to(torch.int8) - 1
