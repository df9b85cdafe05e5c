"""Turning one tensor into the streams of the ``.codl`` format, and the values a reader gets.

:func:`quantize` applies a :class:`~codl.formats.spec.CompressionSpec` with torch ops (magnitude
pruning from :mod:`codl.prune`, k-means and linear codes from :mod:`codl.quant`, TWN codes from
:mod:`codl.ternary`) and computes the values :func:`codl.load` will return, independently of the
C++ decoder. :func:`encode` packs and DEFLATE-compresses the streams.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import torch

from codl import _ops, kernels
from codl.formats import codec
from codl.formats.spec import CompressionSpec
from codl.prune import magnitude_mask
from codl.quant import kmeans_dequantize, kmeans_quantize, linear_dequantize, linear_quantize
from codl.ternary import ternarize

__all__ = [
    "CHUNK_ELEMENTS",
    "DTYPES",
    "ENCODINGS",
    "EncodedTensor",
    "Quantized",
    "StoredStream",
    "chunk_bounds",
    "decode_preview",
    "dtype_name",
    "encode",
    "encode_chunk",
    "encode_planes",
    "planes_layout",
    "quantize",
    "tensor_bytes",
]

#: dtypes the format stores, by the name the header uses.
DTYPES: Final[dict[str, torch.dtype]] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
ENCODINGS: Final[tuple[str, ...]] = ("raw", "codebook", "linear", "ternary")
#: Elements per chunk of a dense float tensor in byte planes (format 2): each chunk's planes are
#: streams of their own, so one large tensor encodes and decodes on several threads.
CHUNK_ELEMENTS: Final = 1 << 20
_NAMES: Final[dict[torch.dtype, str]] = {v: k for k, v in DTYPES.items()}


def dtype_name(dtype: torch.dtype, where: str) -> str:
    if dtype not in _NAMES:
        raise TypeError(f"{where}: expected one of the dtypes {sorted(DTYPES)}, received {dtype}")
    return _NAMES[dtype]


def _bytes_of(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's memory as a flat uint8 tensor (little-endian, as the format stores it)."""
    return tensor.contiguous().reshape(-1).view(torch.uint8)


def tensor_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor's values as a flat uint8 tensor (a copy only if it is not contiguous)."""
    return _bytes_of(tensor.detach().cpu())


@dataclass
class Quantized:
    """One tensor as the format stores it, before packing (all torch tensors).

    ``values`` depends on ``encoding``: the kept elements in the tensor's dtype (raw), uint8
    codebook indices (codebook), uint8 fields ``code + 2^(bits-1)`` (linear), int8 codes in
    {-1, 0, 1} (ternary). ``table`` is the float32 codebook, per-channel scales or per-row
    scales. ``preview`` is what the reader returns: dense, in the original dtype.
    """

    encoding: str
    values: torch.Tensor
    preview: torch.Tensor
    bits: int = 0
    positions: torch.Tensor | None = None
    table: torch.Tensor | None = None


def quantize(tensor: torch.Tensor, spec: CompressionSpec | None, name: str = "tensor") -> Quantized:
    """Apply ``spec`` (None: lossless) to ``tensor``; errors name ``name``."""
    original = tensor.detach().cpu().contiguous()
    if spec is None or spec.lossless:
        return Quantized("raw", original.reshape(-1), original)
    if not original.is_floating_point() or original.dim() == 0:
        raise ValueError(f"{name}: expected a floating-point tensor of >= 1 dims to compress")
    if not bool(torch.isfinite(original).all()):
        raise ValueError(
            f"{name}: expected finite values to prune or quantize, received NaN or Inf"
        )
    weight = original.float()
    mask = magnitude_mask(weight, spec.prune) if spec.prune > 0 else None
    positions = None if mask is None else mask.reshape(-1).nonzero().reshape(-1)
    dtype = original.dtype

    def kept(flat: torch.Tensor) -> torch.Tensor:
        return flat if positions is None else flat[positions]

    if spec.method is None:  # pruned, values kept exactly
        zero = torch.zeros((), dtype=dtype)
        assert mask is not None and positions is not None
        preview = torch.where(mask, original, zero)
        return Quantized("raw", original.reshape(-1)[positions], preview, positions=positions)
    assert spec.bits is not None
    if spec.method == "kmeans":
        codebook, indices = kmeans_quantize(weight, spec.bits, mask)
        preview = kmeans_dequantize(codebook, indices, mask).to(dtype)
        values = kept(indices.reshape(-1)).to(torch.uint8)
        return Quantized(
            "codebook", values, preview, spec.bits, positions, codebook.float().contiguous()
        )
    if spec.method == "linear":
        masked = weight if mask is None else weight * mask
        codes, scales = linear_quantize(masked, spec.bits, axis=0)
        preview = linear_dequantize(codes, scales, axis=0).to(dtype)
        offset = 1 << (spec.bits - 1)
        # code + 2^(bits-1) lies in [1, 2^bits - 1]: adding it to the int8 code's byte, modulo
        # 256, gives it in one pass.
        values = kept(codes.reshape(-1)).view(torch.uint8) + offset
        return Quantized("linear", values, preview, spec.bits, positions, scales.contiguous())
    # ternary: TWN codes per row; pruned entries are zero before ternarizing, so they stay 0.
    masked = weight if mask is None else weight * mask
    result = ternarize(masked, "twn", granularity="row")
    scale = result.scale.float().reshape(-1).contiguous()
    preview = result.dequantize(torch.float32).to(dtype)
    return Quantized("ternary", result.codes.reshape(-1).contiguous(), preview, 2, None, scale)


def decode_preview(
    tensor: torch.Tensor, spec: CompressionSpec | dict[str, object] | None
) -> torch.Tensor:
    """What :func:`codl.load` returns for ``tensor`` saved with ``spec``, bit for bit."""
    resolved = None if spec is None else CompressionSpec.of(spec)
    return quantize(tensor, resolved).preview


@dataclass(frozen=True)
class StoredStream:
    """A DEFLATE stream as written: the compressed bytes, their inflated size and CRC32."""

    data: bytes
    raw_length: int
    crc32: int

    @classmethod
    def of(cls, raw: torch.Tensor | bytes, level: int) -> StoredStream:
        data = codec.deflate(raw, level)
        size = raw.numel() if isinstance(raw, torch.Tensor) else len(raw)
        return cls(data, size, codec.crc32(data))


@dataclass
class EncodedTensor:
    """One tensor ready to be written: its header fields and its compressed streams. In the
    byte-plane layout (``chunk`` > 0) ``streams["values"]`` is the list of the chunks' planes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    encoding: str
    count: int
    sparse: bool
    bits: int = 0
    width: int = 0
    shuffle: bool = False
    streams: dict[str, StoredStream | list[StoredStream]] = field(default_factory=dict)
    preview: torch.Tensor | None = None
    chunk: int = 0
    sign_last: bool = False

    @property
    def stored_bytes(self) -> int:
        """Bytes of all its streams in the file."""
        return sum(
            sum(len(p.data) for p in s) if isinstance(s, list) else len(s.data)
            for s in self.streams.values()
        )


def planes_layout(tensor: torch.Tensor, spec: CompressionSpec | None) -> bool:
    """Whether ``tensor`` is stored in format 2's byte planes: a lossless dense float tensor of
    2 or more bytes per element, with at least one element."""
    return (
        (spec is None or spec.lossless)
        and tensor.is_floating_point()
        and tensor.element_size() >= 2
        and tensor.numel() > 0
    )


def chunk_bounds(count: int, chunk: int | None = None) -> list[tuple[int, int]]:
    """The [start, stop) element ranges of the chunks of ``count`` elements (``chunk``, by
    default :data:`CHUNK_ELEMENTS`, each; the last one shorter)."""
    size = CHUNK_ELEMENTS if chunk is None else chunk
    return [(start, min(start + size, count)) for start in range(0, count, size)]


def encode_chunk(
    raw: torch.Tensor, itemsize: int, start: int, stop: int, level: int
) -> list[StoredStream]:
    """Elements [start, stop) of ``raw`` (a tensor's bytes, flat uint8) as ``itemsize`` plane
    streams, each element rotated left one bit first (the sign to bit 0, the exponent to the
    top byte): :func:`codec.encode_plane` picks each plane's coding."""
    count = stop - start
    planes = _ops.split_planes(raw[start * itemsize : stop * itemsize], itemsize, sign_last=True)
    streams = []
    for k in range(itemsize):
        data = codec.encode_plane(planes[k * count : (k + 1) * count].numpy().data, level)
        streams.append(StoredStream(data, count, codec.crc32(data)))
    return streams


def encode_planes(
    name: str, tensor: torch.Tensor, chunks: list[list[StoredStream]]
) -> EncodedTensor:
    """The tensor's entry from its chunks' plane streams (:func:`encode_chunk` of each range of
    :func:`chunk_bounds`)."""
    encoded = EncodedTensor(
        name,
        dtype_name(tensor.dtype, name),
        tuple(int(d) for d in tensor.shape),
        "raw",
        tensor.numel(),
        False,
        shuffle=True,
        preview=tensor.detach().cpu().contiguous(),
        chunk=CHUNK_ELEMENTS,
        sign_last=True,
    )
    encoded.streams["values"] = [stream for chunk in chunks for stream in chunk]
    return encoded


def _smaller_packing(values: torch.Tensor, bits: int, level: int) -> tuple[int, StoredStream]:
    """Fields packed at ``bits`` bits, or one byte each (DEFLATE's Huffman codes then see whole
    symbols and often beat the tighter packing): whichever compresses smaller."""
    candidates = [bits] if bits == 8 else [bits, 8]
    best: tuple[int, StoredStream] | None = None
    for width in candidates:
        stream = StoredStream.of(_ops.pack_fields(values, width), level)
        if best is None or len(stream.data) < len(best[1].data):
            best = (width, stream)
    assert best is not None
    return best


def encode(
    name: str,
    tensor: torch.Tensor,
    spec: CompressionSpec | None,
    *,
    level: int = codec.DEFAULT_LEVEL,
    shuffle: bool = True,
) -> EncodedTensor:
    """Quantize ``tensor`` by ``spec`` and compress its streams (lossless dense floats: in
    byte planes, chunk after chunk on this thread)."""
    dtype = dtype_name(tensor.dtype, name)
    if shuffle and planes_layout(tensor, spec):
        raw = _bytes_of(tensor.detach().cpu())
        itemsize = tensor.element_size()
        chunks = [
            encode_chunk(raw, itemsize, start, stop, level)
            for start, stop in chunk_bounds(tensor.numel())
        ]
        return encode_planes(name, tensor, chunks)
    q = quantize(tensor, spec, name)
    count = q.values.numel()
    encoded = EncodedTensor(
        name,
        dtype,
        tuple(int(d) for d in tensor.shape),
        q.encoding,
        count,
        q.positions is not None,
        bits=q.bits,
        preview=q.preview,
    )
    if q.positions is not None:
        encoded.streams["positions"] = StoredStream.of(_ops.encode_positions(q.positions), level)
    if q.encoding == "raw":
        raw = _bytes_of(q.values)
        itemsize = q.values.element_size()
        encoded.shuffle = shuffle and q.values.is_floating_point() and itemsize > 1
        if encoded.shuffle:
            shuffled = _ops.shuffle_bytes(raw, itemsize)
            data = codec.deflate_planes(shuffled, itemsize, level)
            encoded.streams["values"] = StoredStream(data, shuffled.numel(), codec.crc32(data))
        else:
            encoded.streams["values"] = StoredStream.of(raw, level)
        return encoded
    if q.encoding == "ternary":
        packed = kernels.pack_ternary(q.values, format="2bit")
        encoded.streams["values"] = StoredStream.of(packed, level)
    else:
        encoded.width, encoded.streams["values"] = _smaller_packing(q.values, q.bits, level)
    assert q.table is not None
    encoded.streams["table"] = StoredStream.of(_bytes_of(q.table), level)
    return encoded
