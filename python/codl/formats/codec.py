"""DEFLATE for the ``.codl`` format: the C++ core's (libdeflate or zlib) when it was built with
one, else Python's own ``zlib`` module. Both write raw RFC 1951 streams that any inflater
reads (``zlib.decompress(data, wbits=-15)``), and both inflate with a fixed output bound.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from codl import _ops

__all__ = [
    "DEFAULT_LEVEL",
    "core_codec",
    "crc32",
    "deflate",
    "deflate_planes",
    "encode_plane",
    "huffman_only",
    "inflate_python",
    "stored",
]

#: Compression level of :func:`codl.save`. On float weights libdeflate's 3 is within 0.3% of
#: its 9's size at 4-6x its speed (the exponent plane's long runs make the high levels'
#: match search slow; docs/format.md has the table); decoding speed does not depend on it.
DEFAULT_LEVEL = 3

Bytes = bytes | bytearray | memoryview


def core_codec() -> str:
    """``"libdeflate"``, ``"zlib"`` or ``"none"`` (then Python's zlib does the work)."""
    return _ops.format_codec()


def _as_bytes_like(data: Bytes | torch.Tensor) -> Bytes | np.ndarray:
    if isinstance(data, torch.Tensor):
        return _ops.as_buffer(data, "data", torch.uint8)
    return data


def _python_bytes(data: Bytes | torch.Tensor) -> Bytes:
    """What Python's zlib takes: a uint8 tensor becomes a view of its memory."""
    if isinstance(data, torch.Tensor):
        return memoryview(_ops.as_buffer(data, "data", torch.uint8).data)
    return data


def deflate(data: Bytes | torch.Tensor, level: int = DEFAULT_LEVEL) -> bytes:
    """Raw DEFLATE stream of ``data``."""
    if core_codec() != "none":
        return _ops.deflate(_as_bytes_like(data), level)
    compressor = zlib.compressobj(min(level, 9), zlib.DEFLATED, -15)
    return compressor.compress(_python_bytes(data)) + compressor.flush()


#: A byte plane whose sample DEFLATE shrinks by less than this is stored, not Huffman coded.
MIN_PLANE_SAVING = 0.02
#: Bytes of each plane that DEFLATE compresses to judge it (from the plane's middle).
PLANE_SAMPLE_BYTES = 1 << 18
#: DEFLATE level the plane samples are compressed at.
SAMPLE_LEVEL = 1
_STORED_BLOCK_MAX = 65535


def _stored_blocks(data: memoryview, final: bool) -> bytes:
    """``data`` as DEFLATE stored blocks (RFC 1951 §3.2.4): a byte-aligned 3-bit header, LEN,
    NLEN, then the bytes verbatim; the last block carries BFINAL when ``final``."""
    out = bytearray()
    for start in range(0, max(len(data), 1), _STORED_BLOCK_MAX):
        chunk = data[start : start + _STORED_BLOCK_MAX]
        last = final and start + _STORED_BLOCK_MAX >= len(data)
        out.append(1 if last else 0)
        out += len(chunk).to_bytes(2, "little") + (0xFFFF ^ len(chunk)).to_bytes(2, "little")
        out += chunk
    return bytes(out)


def deflate_planes(data: torch.Tensor, itemsize: int, level: int = DEFAULT_LEVEL) -> bytes:
    """Raw DEFLATE stream of byte-plane-shuffled floats that stores the planes that do not
    compress (the low mantissa bytes of trained weights are close to random).

    Huffman-coding random bytes saves under 1% yet makes inflating them several times slower
    than copying a stored block. So each plane whose sample shrinks by less than
    :data:`MIN_PLANE_SAVING` goes out as stored blocks, and each run of compressible planes as
    compressed blocks ending on a byte boundary (zlib's sync flush; libdeflate for a run that
    ends the stream): still one RFC 1951 stream that any inflater reads.
    """
    plane = data.numel() // itemsize
    if itemsize < 2 or plane < _STORED_BLOCK_MAX:
        return deflate(data, level)
    sample_bytes = min(plane, PLANE_SAMPLE_BYTES)
    stored = []
    for index in range(itemsize):
        start = index * plane + (plane - sample_bytes) // 2
        sample = data[start : start + sample_bytes]
        # Judged at a fast level: whether a plane saves 2% does not depend on the level, and
        # a high level on the exponent plane's long runs costs more than the whole save.
        saved = len(deflate(sample, min(level, SAMPLE_LEVEL)))
        stored.append(saved >= (1.0 - MIN_PLANE_SAVING) * sample_bytes)
    if not any(stored):
        return deflate(data, level)
    pieces: list[bytes] = []
    index = 0
    while index < itemsize:
        run_end = index + 1
        while run_end < itemsize and stored[run_end] == stored[index]:
            run_end += 1
        run = data[index * plane : run_end * plane]
        last = run_end == itemsize
        if stored[index]:
            pieces.append(_stored_blocks(_byte_view(run), final=last))
        elif last:
            pieces.append(deflate(run, level))
        else:
            compressor = zlib.compressobj(min(level, 9), zlib.DEFLATED, -15)
            pieces.append(
                compressor.compress(_byte_view(run)) + compressor.flush(zlib.Z_SYNC_FLUSH)
            )
        index = run_end
    return b"".join(pieces)


def stored(data: Bytes) -> bytes:
    """``data`` as one DEFLATE stream of stored blocks only (no compression)."""
    return _stored_blocks(memoryview(data).cast("B"), final=True)


#: Pieces of a plane :func:`huffman_only` codes: each merged into the block before it while one
#: Huffman code for both costs no more bits than a code each.
HUFFMAN_PIECE_BYTES = 1 << 14


def huffman_only(data: Bytes) -> bytes:
    """Raw DEFLATE of ``data`` with literals only: one order-0 Huffman code per block, a block
    growing by pieces of :data:`HUFFMAN_PIECE_BYTES` while its distribution holds, each block
    stored instead where that is smaller (the core's ``deflate_literals``; the GIL is released).

    On a float's exponent plane this is ZipNN's Huffman coding: the exponents of trained weights
    repeat in short runs of varying values, which LZ77 matches code worse than literals (MiniLM's
    float32 exponent plane: 2.63 bits/byte with zlib's Z_HUFFMAN_ONLY, the plane's order-0
    entropy; 3.10 at libdeflate level 3, 2.63 again only at level 12, 20x slower). Against
    zlib's Z_HUFFMAN_ONLY, which ends a block every 32 Ki symbols, the merged blocks make the
    whole MiniLM file 0.04% smaller and decode ~15% faster (fewer decoding tables to build)."""
    return _ops.deflate_literals(memoryview(data).cast("B"), HUFFMAN_PIECE_BYTES)


#: Bytes of a plane its coding is judged on: this many pieces of PLANE_PIECE_BYTES, spread
#: evenly over the plane (planes this small or smaller are coded whole every way).
PLANE_PIECES = 8
PLANE_PIECE_BYTES = 8192
#: A plane whose sample Huffman codes less than this much smaller is stored: random mantissa
#: bytes, whose Huffman codes would save nothing and inflate ~8x slower than a copy.
MIN_HUFFMAN_SAVING = 0.005
#: LZ77 (DEFLATE at the caller's level) replaces Huffman-only coding of a plane when its sample
#: comes out this much smaller: runs and repeats (zero or constant tensors, integer-valued floats).
MIN_LZ_SAVING = 0.1


def encode_plane(plane: Bytes, level: int = DEFAULT_LEVEL) -> bytes:
    """One byte plane as a raw DEFLATE stream: stored, Huffman-only or DEFLATE at ``level``,
    whichever a sample of it says (the whole plane when it is small). Level 0 stores."""
    view = memoryview(plane).cast("B")
    if level == 0:
        return stored(view)
    size = len(view)
    if size <= PLANE_PIECES * PLANE_PIECE_BYTES:
        candidates = [stored(view), huffman_only(view), deflate(view, level)]
        return min(candidates, key=len)  # ties: the first, the cheapest to read
    step = (size - PLANE_PIECE_BYTES) // (PLANE_PIECES - 1)
    sample = b"".join(view[i * step : i * step + PLANE_PIECE_BYTES] for i in range(PLANE_PIECES))
    huffman, lz = len(huffman_only(sample)), len(deflate(sample, min(level, SAMPLE_LEVEL)))
    if lz < (1.0 - MIN_LZ_SAVING) * huffman:
        return deflate(view, level)
    if huffman > (1.0 - MIN_HUFFMAN_SAVING) * len(sample):
        return stored(view)
    return huffman_only(view)


def _byte_view(data: torch.Tensor) -> memoryview:
    return _ops.as_buffer(data, "data", torch.uint8).data.cast("B")


def crc32(data: Bytes | torch.Tensor) -> int:
    if core_codec() != "none":
        return _ops.crc32(_as_bytes_like(data))
    return zlib.crc32(_python_bytes(data)) & 0xFFFFFFFF


def inflate_python(data: Bytes, raw_size: int) -> tuple[bytes, str | None]:
    """Inflate with Python's zlib, never producing more than ``raw_size`` bytes (plus one, to
    tell a stream that is too long); returns the bytes and None, or what was wrong."""
    inflater = zlib.decompressobj(wbits=-15)
    try:
        out = inflater.decompress(data, raw_size + 1)
    except zlib.error:
        return b"", "not a valid raw DEFLATE stream"
    if len(out) > raw_size:
        return b"", "the DEFLATE stream inflates to more than its recorded size"
    if not inflater.eof:
        return b"", "the DEFLATE stream ends before its recorded size"
    if len(out) < raw_size:
        return b"", "the DEFLATE stream ends before its recorded size"
    if inflater.unused_data:
        return b"", "bytes follow the end of the DEFLATE stream"
    return out, None
