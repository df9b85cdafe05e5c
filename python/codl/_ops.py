"""The one caller of the extension ``codl._C``.

It checks tensors once (type, device, dtype, contiguity), hands them to the core as NumPy views
that share the tensor's memory (no copy), and passes the thread count. Every other module calls
this one, never ``_C`` directly.

Each wrapper calls its ``_C`` function explicitly, inputs through :func:`as_buffer` and outputs
through :func:`_output`, in the binding's argument order: mypy then checks every call against
``_C.pyi``, and the stub is checked against the built extension (stubtest and
tests/python/test_stubs.py). The checks run in argument order, so the first bad argument is the
one reported.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator, Sequence, Sized
from contextlib import contextmanager
from typing import ClassVar

import numpy as np
import torch

from codl import _C

_num_threads: int | None = None
# More threads than this is a mistake, not a machine: each would be a real OS thread.
MAX_THREADS = 1024


def set_num_threads(num_threads: int | None) -> None:
    """Use ``num_threads`` threads in kernels; ``None`` follows ``torch.get_num_threads()``."""
    global _num_threads
    if num_threads is not None and (
        isinstance(num_threads, bool)
        or not isinstance(num_threads, int)
        or not 1 <= num_threads <= MAX_THREADS
    ):
        raise ValueError(
            f"num_threads: expected an int from 1 to {MAX_THREADS}, or None; "
            f"received {num_threads!r}"
        )
    _num_threads = num_threads


def get_num_threads() -> int:
    """Threads codl's kernels use: the value set by :func:`set_num_threads`, else torch's."""
    if _num_threads is not None:
        return _num_threads
    return max(1, min(torch.get_num_threads(), MAX_THREADS))


@contextmanager
def using_threads(num_threads: int) -> Iterator[None]:
    """Run codl's kernels and torch's ops with ``num_threads`` threads inside the block."""
    global _num_threads
    previous, previous_torch = _num_threads, torch.get_num_threads()
    set_num_threads(num_threads)
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        _num_threads = previous
        torch.set_num_threads(previous_torch)


_torch_on_one_thread_lock = threading.Lock()
_torch_on_one_thread_depth = 0
_torch_on_one_thread_saved: tuple[int | None, int] = (None, 1)


def enter_torch_on_one_thread() -> None:
    """From here to the matching :func:`leave_torch_on_one_thread`, torch's own ops run on one
    thread and codl's kernels on the threads they had (torch's count unless set). Nested and
    concurrent entries count: the last to leave restores both settings.

    A model whose every product runs in codl's kernels keeps torch's glue ops between them
    (``torch.cat``, copies) off the second core: a 2-thread torch op leaves libgomp's worker
    spinning on that core for milliseconds while codl's pool needs it (MCNN's frozen model, 2
    threads: 7.05-7.24 ms a call, 4.37-4.52 ms with torch's glue on one thread)."""
    global _torch_on_one_thread_depth, _torch_on_one_thread_saved, _num_threads
    with _torch_on_one_thread_lock:
        if _torch_on_one_thread_depth == 0:
            _torch_on_one_thread_saved = (_num_threads, torch.get_num_threads())
            _num_threads = get_num_threads()
            torch.set_num_threads(1)
        _torch_on_one_thread_depth += 1


def leave_torch_on_one_thread() -> None:
    """Ends one :func:`enter_torch_on_one_thread`."""
    global _torch_on_one_thread_depth, _num_threads
    with _torch_on_one_thread_lock:
        if _torch_on_one_thread_depth == 0:
            return
        _torch_on_one_thread_depth -= 1
        if _torch_on_one_thread_depth == 0:
            _num_threads, torch_threads = _torch_on_one_thread_saved
            torch.set_num_threads(torch_threads)


def get_dispatch_level() -> str:
    """The ISA whose kernels run now: ``scalar``, ``avx2``, ``avx512``, ``amx`` or ``sve``."""
    return _C.get_dispatch()


def set_dispatch_level(level: str) -> None:
    """Run the kernels of ``level``; ValueError if it is not built or the CPU cannot run it.

    ``CODL_CPU_DISPATCH`` does the same for a whole process, at import.
    """
    _C.set_dispatch(level)


def native_info() -> dict[str, object]:
    return dict(_C.native_info())


def buffer_address(tensor: torch.Tensor) -> int:
    """The address the core sees for ``tensor`` (equal to ``tensor.data_ptr()``: no copy)."""
    return int(_C.buffer_address(as_buffer(tensor, "tensor", tensor.dtype)))


# --- tensors to buffers


def as_buffer(
    tensor: object, name: str, dtype: torch.dtype, *, writable: bool = False
) -> np.ndarray:
    """A NumPy view of a contiguous CPU tensor; TypeError/ValueError say what was wrong."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, received {type(tensor).__name__}")
    if tensor.device.type != "cpu":
        raise ValueError(f"{name}: expected a CPU tensor, received one on {tensor.device}")
    if tensor.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, received {tensor.dtype}")
    if not tensor.is_contiguous():
        raise ValueError(
            f"{name}: expected a contiguous tensor, received strides {tuple(tensor.stride())} "
            f"for shape {tuple(tensor.shape)} (call .contiguous() first)"
        )
    if writable and tensor.requires_grad:
        raise ValueError(f"{name}: an output tensor must not require grad")
    return tensor.detach().numpy()


def _output(tensor: object, dtype: torch.dtype, name: str = "out") -> np.ndarray:
    return as_buffer(tensor, name, dtype, writable=True)


def _state(tensor: torch.Tensor | None, name: str) -> np.ndarray | None:
    """An optional float32 buffer the kernel updates in place (error feedback, momentum)."""
    return None if tensor is None else _output(tensor, torch.float32, name)


def _buffers(
    tensors: list[torch.Tensor], name: str, dtype: torch.dtype, *, writable: bool = False
) -> list[_C.Buffer]:
    return [as_buffer(t, f"{name}[{i}]", dtype, writable=writable) for i, t in enumerate(tensors)]


_FLOAT_DTYPES = (torch.float32, torch.float64)


def _float_dtype(tensor: object, name: str) -> torch.dtype:
    """The dtype of a float32 or float64 tensor, which the other tensors of its call share."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, received {type(tensor).__name__}")
    if tensor.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{name}: expected dtype torch.float32 or torch.float64, received {tensor.dtype}"
        )
    return tensor.dtype


def _require_one_per(item: str, count: int, **lists: Sized) -> None:
    """ValueError unless each of ``lists`` has ``count`` entries, one per ``item``."""
    for entries in lists.values():
        if len(entries) != count:
            lengths = " and ".join(str(len(other)) for other in lists.values())
            raise ValueError(
                f"{', '.join(lists)}: expected one per {item} ({count}), received {lengths}"
            )


# --- sign and ternary packing


def _run(
    kernel: Callable[[np.ndarray, np.ndarray, int], None],
    source: torch.Tensor,
    source_name: str,
    source_dtype: torch.dtype,
    out: torch.Tensor,
    out_dtype: torch.dtype,
) -> None:
    kernel(as_buffer(source, source_name, source_dtype), _output(out, out_dtype), get_num_threads())


def pack_signs_f32(x: torch.Tensor, out: torch.Tensor) -> None:
    _run(_C.pack_signs_f32, x, "x", torch.float32, out, torch.uint8)


def unpack_signs_f32(packed: torch.Tensor, out: torch.Tensor) -> None:
    _run(_C.unpack_signs_f32, packed, "packed", torch.uint8, out, torch.float32)


def pack_ternary(codes: torch.Tensor, out: torch.Tensor, fmt: str) -> None:
    pack = _C.pack_ternary2 if fmt == "2bit" else _C.pack_ternary3
    try:
        _run(pack, codes, "codes", torch.int8, out, torch.uint8)
    except ValueError as error:
        if "codes must be" not in str(error):
            raise
        flat = codes.reshape(-1)
        invalid = ((flat < -1) | (flat > 1)).nonzero()
        first = int(invalid[0, 0])
        raise ValueError(
            f"codes: expected values in {{-1, 0, 1}}, received {int(flat[first])} at flat "
            f"index {first} ({invalid.numel()} invalid in all)"
        ) from None


def unpack_ternary(packed: torch.Tensor, out: torch.Tensor, fmt: str) -> None:
    unpack = _C.unpack_ternary2 if fmt == "2bit" else _C.unpack_ternary3
    _run(unpack, packed, "packed", torch.uint8, out, torch.int8)


# Weight tensors already found free of 0b11 fields, by id, with a weak reference (an id is
# reused once its tensor is freed; the reference's callback drops the entry then) and the
# (address, version) they had: a weight is validated once, and again only after it is written
# in place (torch bumps ``_version``) or its storage moves. Not a WeakKeyDictionary: that
# compares keys with ``==``, elementwise for tensors.
_VALID_TERNARY2: dict[int, tuple[weakref.ref[torch.Tensor], tuple[int, int]]] = {}


def check_ternary2_rows(packed: torch.Tensor, rows: int) -> None:
    """Raise ``ValueError`` naming the first of ``rows`` packed 2-bit rows holding a field 0b11
    (which maps to no code; the kernels would compute with it as +2). One parallel
    OR-reduction over the bytes the first time a tensor is seen, and after each in-place write
    to it; then a dictionary lookup."""
    stamp = (packed.data_ptr(), packed._version)
    key = id(packed)
    seen = _VALID_TERNARY2.get(key)
    if seen is not None and seen[0]() is packed and seen[1] == stamp:
        return
    first = _C.first_invalid_ternary2_row(
        as_buffer(packed, "packed", torch.uint8), rows, get_num_threads()
    )
    if first >= 0:
        raise ValueError(
            f"packed: expected 2-bit fields 0b00, 0b01 or 0b10 (codes -1, 0, +1), received 0b11 "
            f"in weight row {first} (corrupt, or not written by pack_ternary)"
        )
    _VALID_TERNARY2[key] = (
        weakref.ref(packed, lambda _: _VALID_TERNARY2.pop(key, None)),
        stamp,
    )


# --- ternary linear: every packed layout and activation mode shares one call shape
_LinearKernel = Callable[
    [np.ndarray, int, int, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, int], None
]


def _ternary_linear(
    kernel: _LinearKernel,
    x: torch.Tensor,
    packed: torch.Tensor,
    alpha: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
) -> None:
    rows, in_features = x.shape
    kernel(
        as_buffer(x, "x", torch.float32),
        rows,
        in_features,
        as_buffer(packed, "packed", torch.uint8),
        as_buffer(alpha, "alpha", torch.float32),
        None if bias is None else as_buffer(bias, "bias", torch.float32),
        _output(out, torch.float32),
        get_num_threads(),
    )


class BoundTernaryLinear:
    """One packed ternary linear layer bound once: its weight checked (no 0b11 field, for the
    2-bit layout) and turned into NumPy views here, so a call hands the core only the input
    and output. ``layout``: ``"2bit"`` (int8 activations), ``"base3"`` or ``"2bit_float"``
    (float32 activations). The tensors must outlive this object and stay where they are."""

    _KERNELS: ClassVar[dict[str, Callable[..., None]]] = {
        "2bit": _C.ternary_linear_f32,
        "base3": _C.ternary3_linear_f32,
        "2bit_float": _C.ternary_linear_f32act,
    }

    def __init__(
        self,
        layout: str,
        packed: torch.Tensor,
        alpha: torch.Tensor,
        in_features: int,
        bias: torch.Tensor | None,
    ) -> None:
        if layout not in self._KERNELS:
            raise ValueError(
                f"layout: expected one of {sorted(self._KERNELS)}, received {layout!r}"
            )
        if layout != "base3":
            check_ternary2_rows(packed, alpha.shape[0])
        self._kernel = self._KERNELS[layout]
        self._packed = as_buffer(packed, "packed", torch.uint8)
        self._alpha = as_buffer(alpha, "alpha", torch.float32)
        self._bias = None if bias is None else as_buffer(bias, "bias", torch.float32)
        self._in_features = in_features

    def __call__(self, x: torch.Tensor, out: torch.Tensor) -> None:
        """``out`` (M, N) = ``x`` (M, K, contiguous float32) times the weight, plus bias."""
        self._kernel(
            x.detach().numpy(),
            x.shape[0],
            self._in_features,
            self._packed,
            self._alpha,
            self._bias,
            out.detach().numpy(),
            get_num_threads(),
        )


def ternary_linear_f32(
    x: torch.Tensor,
    packed: torch.Tensor,
    alpha: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
) -> None:
    """out (M, N) = int8-quantized x (M, K) times the packed ternary rows, scaled, plus bias."""
    _ternary_linear(_C.ternary_linear_f32, x, packed, alpha, bias, out)


def ternary3_linear_f32(
    x: torch.Tensor,
    packed: torch.Tensor,
    alpha: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
) -> None:
    """As :func:`ternary_linear_f32` with the rows in the base-3 (1.6-bit) layout."""
    _ternary_linear(_C.ternary3_linear_f32, x, packed, alpha, bias, out)


def ternary_linear_f32act(
    x: torch.Tensor,
    packed: torch.Tensor,
    alpha: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
) -> None:
    """out (M, N) = float32 x (M, K) times the 2-bit packed ternary rows (no activation
    quantization, float32 sums), scaled, plus bias."""
    _ternary_linear(_C.ternary_linear_f32act, x, packed, alpha, bias, out)


# --- sparse linear: 1x4 blocks (int32 row pointers, uint16 block columns, int8 values) or row
# panels (uint16 masks, int32 starts, int8 values)
_VALID_SPARSE: dict[int, tuple[weakref.ref[torch.Tensor], tuple[object, ...]]] = {}


def _check_once(
    tensors: tuple[torch.Tensor, ...], sizes: tuple[int, ...], check: Callable[[], None]
) -> None:
    """Run ``check`` (which raises) the first time these tensors are seen with these sizes and
    after each in-place write to one of them; then a lookup. Keyed on the first tensor."""
    stamp = tuple((t.data_ptr(), t._version) for t in tensors) + sizes
    anchor = tensors[0]
    key = id(anchor)
    seen = _VALID_SPARSE.get(key)
    if seen is not None and seen[0]() is anchor and seen[1] == stamp:
        return
    check()
    _VALID_SPARSE[key] = (weakref.ref(anchor, lambda _: _VALID_SPARSE.pop(key, None)), stamp)


def check_sparse_blocks(
    row_ptr: torch.Tensor,
    cols: torch.Tensor,
    values: torch.Tensor,
    in_features: int,
    out_features: int,
) -> None:
    """Raise ``ValueError`` naming the first output row whose row pointers are not monotone
    from 0 to the block count or whose block columns reach past ``in_features``. One pass the
    first time these tensors are seen and after each in-place write to them; then a lookup.
    (The kernels clamp bad indices, so an unchecked call reads no memory out of bounds.)"""

    def check() -> None:
        first = _C.first_invalid_sparse_row(
            as_buffer(row_ptr, "row_ptr", torch.int32),
            as_buffer(cols, "cols", torch.uint16),
            as_buffer(values, "values", torch.int8),
            in_features,
            out_features,
        )
        if first < 0:
            return
        lo, hi = int(row_ptr[first]), int(row_ptr[first + 1])
        row_cols = cols[max(lo, 0) : max(hi, lo)].to(torch.int32)
        raise ValueError(
            f"row_ptr, cols: expected row pointers rising from 0 to {cols.numel()} (the block "
            f"count) and block columns below {(in_features + 3) // 4}, received row {first} "
            f"with row_ptr {lo}..{hi}"
            + (
                f" and block columns up to {int(row_cols.max())}"
                if 0 <= lo < hi <= cols.numel()
                else ""
            )
        )

    _check_once((cols, row_ptr, values), (in_features, out_features), check)


def check_sparse_panels(
    masks: torch.Tensor,
    starts: torch.Tensor,
    values: torch.Tensor,
    in_features: int,
    out_features: int,
) -> None:
    """Raise ``ValueError`` naming the first panel of 4 rows whose starts are not the running
    count of kept blocks, whose masks name rows or columns past the weight's, or (the last
    panel) whose blocks do not add up to ``values``; checked once per tensor version, as above."""

    def check() -> None:
        first = _C.first_invalid_sparse_panel(
            as_buffer(masks, "masks", torch.uint16),
            as_buffer(starts, "starts", torch.int32),
            as_buffer(values, "values", torch.int8),
            in_features,
            out_features,
        )
        if first >= 0:
            raise ValueError(
                f"masks, starts: expected each step's start to count the blocks kept before it,"
                f" masks naming rows below {out_features} and block columns below"
                f" {(in_features + 3) // 4}, and {values.numel() // 4} blocks in all, received"
                f" panel {first} (rows {4 * first}..{4 * first + 3})"
            )

    _check_once((masks, starts, values), (in_features, out_features), check)


def sparse_linear_f32(
    x: torch.Tensor,
    row_ptr: torch.Tensor,
    cols: torch.Tensor,
    values: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
) -> None:
    """out (M, N) = int8-quantized x (M, K) times the 1x4-block sparse rows, scaled, plus bias."""
    _sparse_linear(
        _C.sparse_linear_f32,
        x,
        as_buffer(row_ptr, "row_ptr", torch.int32),
        as_buffer(cols, "cols", torch.uint16),
        values, scale, bias, out,
    )  # fmt: skip


def sparse_panel_linear_f32(
    x: torch.Tensor,
    masks: torch.Tensor,
    starts: torch.Tensor,
    values: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
) -> None:
    """out (M, N) = int8-quantized x (M, K) times the row-panel sparse weight, scaled, plus
    bias."""
    _sparse_linear(
        _C.sparse_panel_linear_f32,
        x,
        as_buffer(masks, "masks", torch.uint16),
        as_buffer(starts, "starts", torch.int32),
        values, scale, bias, out,
    )  # fmt: skip


def _sparse_linear(
    kernel: Callable[..., None],
    x: torch.Tensor,
    first_index: np.ndarray,
    second_index: np.ndarray,
    values: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
) -> None:
    """The hand-off both layouts share: x, the layout's two index buffers, values, scales, bias."""
    rows, in_features = x.shape
    kernel(
        as_buffer(x, "x", torch.float32),
        rows,
        in_features,
        first_index,
        second_index,
        as_buffer(values, "values", torch.int8),
        as_buffer(scale, "scale", torch.float32),
        None if bias is None else as_buffer(bias, "bias", torch.float32),
        _output(out, torch.float32),
        get_num_threads(),
    )


# --- batched symmetric eigendecomposition, damped Cholesky / inverse / solve, symmetric packing
# One call takes a list of matrices of one dtype (float32 or float64, the first one's).


def sym_eig(
    mats: list[torch.Tensor],
    eigenvalues_out: list[torch.Tensor],
    eigenvectors_out: list[torch.Tensor],
) -> list[int]:
    """Eigenvalues (ascending) into ``eigenvalues_out[i]`` and eigenvectors (columns) into
    ``eigenvectors_out[i]`` for each symmetric ``mats[i]`` (lower triangle used), in one call.

    Returns one status per matrix: 0 ok, 1 the iteration did not converge, 2 NaN or Inf in the
    input (the outputs of a failed matrix are NaN). All tensors share one dtype, float32 or
    float64. Each eigenvector's largest-magnitude component is positive.
    """
    _require_one_per(
        "matrix", len(mats), eigenvalues_out=eigenvalues_out, eigenvectors_out=eigenvectors_out
    )
    if not mats:
        return []
    dtype = _float_dtype(mats[0], "mats[0]")
    return list(
        _C.sym_eig(
            _buffers(mats, "mats", dtype),
            _buffers(eigenvalues_out, "eigenvalues_out", dtype, writable=True),
            _buffers(eigenvectors_out, "eigenvectors_out", dtype, writable=True),
            get_num_threads(),
        )
    )


def _damped(
    kernel: Callable[[list[_C.Buffer], list[float], list[_C.Buffer], int], list[tuple[int, int]]],
    mats: list[torch.Tensor],
    dampings: list[float],
    outs: list[torch.Tensor],
) -> list[tuple[int, int]]:
    _require_one_per("matrix", len(mats), dampings=dampings, outs=outs)
    if not mats:
        return []
    dtype = _float_dtype(mats[0], "mats[0]")
    return [
        (int(code), int(pivot))
        for code, pivot in kernel(
            _buffers(mats, "mats", dtype),
            [float(d) for d in dampings],
            _buffers(outs, "outs", dtype, writable=True),
            get_num_threads(),
        )
    ]


def damped_cholesky(
    mats: list[torch.Tensor], dampings: list[float], outs: list[torch.Tensor]
) -> list[tuple[int, int]]:
    """``outs[i] = L`` with ``L Lᵀ = mats[i] + dampings[i] I`` (lower triangle read, upper zero).

    Returns ``(status, pivot)`` per matrix: 0 ok; 1 not positive definite (``pivot`` is the
    first row whose pivot was not > 0); 2 NaN or Inf anywhere in the input; 3 a finite input
    whose result is not finite (overflow). Failed outputs are NaN.
    """
    return _damped(_C.damped_cholesky, mats, dampings, outs)


def damped_inverse(
    mats: list[torch.Tensor], dampings: list[float], outs: list[torch.Tensor]
) -> list[tuple[int, int]]:
    """``outs[i] = (mats[i] + dampings[i] I)⁻¹`` (both triangles); statuses as damped_cholesky."""
    return _damped(_C.damped_inverse, mats, dampings, outs)


def cholesky_solve(
    factors: list[torch.Tensor], rhs: list[torch.Tensor], outs: list[torch.Tensor], side: str
) -> None:
    """``outs[i] = (L Lᵀ)⁻¹ rhs[i]`` (side ``"left"``, rhs n x m) or ``rhs[i] (L Lᵀ)⁻¹``
    (side ``"right"``, rhs m x n), ``L = factors[i]`` as damped_cholesky writes it."""
    _require_one_per("factor", len(factors), rhs=rhs, outs=outs)
    if not factors:
        return
    dtype = _float_dtype(factors[0], "factors[0]")
    _C.cholesky_solve(
        _buffers(factors, "factors", dtype),
        _buffers(rhs, "rhs", dtype),
        _buffers(outs, "outs", dtype, writable=True),
        side,
        get_num_threads(),
    )


def pack_symmetric(mat: torch.Tensor, out: torch.Tensor) -> None:
    """``out`` (n(n+1)/2 values) = the upper triangle of ``mat``, row by row."""
    dtype = _float_dtype(mat, "mat")
    _C.pack_symmetric(as_buffer(mat, "mat", dtype), _output(out, dtype))


def unpack_symmetric(packed: torch.Tensor, n: int, out: torch.Tensor) -> None:
    """``out`` (n x n, both triangles) from :func:`pack_symmetric`'s layout."""
    dtype = _float_dtype(packed, "packed")
    _C.unpack_symmetric(as_buffer(packed, "packed", dtype), n, _output(out, dtype))


# --- format
# The .codl format's core (codl.formats calls these). Byte arguments are anything exposing a
# contiguous uint8 buffer (bytes, memoryview slices of a file, uint8 tensors as NumPy views).
ByteBuffer = bytes | bytearray | memoryview | np.ndarray


def _bytes_view(data: ByteBuffer | torch.Tensor, name: str) -> ByteBuffer:
    if isinstance(data, torch.Tensor):
        return as_buffer(data, name, torch.uint8)
    return data


def format_codec() -> str:
    """The DEFLATE library of the core: ``"libdeflate"``, ``"zlib"`` or ``"none"``."""
    return str(_C.format_codec())


def format_backends() -> list[str]:
    return list(_C.format_backends())


def deflate(data: ByteBuffer | torch.Tensor, level: int, backend: str = "best") -> bytes:
    """Raw DEFLATE (RFC 1951) of ``data`` at ``level`` (0-12; zlib stops at 9)."""
    return bytes(_C.format_deflate(_bytes_view(data, "data"), level, backend))


def deflate_literals(data: ByteBuffer | torch.Tensor, block_bytes: int = 1 << 15) -> bytes:
    """Literal-only raw DEFLATE of ``data``: pieces of ``block_bytes`` merged into blocks while
    one code costs no more bits than two, one order-0 Huffman code (at most 15 bits) per block,
    stored blocks where those are smaller. GIL released."""
    return bytes(_C.format_deflate_literals(_bytes_view(data, "data"), block_bytes))


def inflate_into(data: ByteBuffer, out: torch.Tensor, backend: str = "best") -> str | None:
    """Inflate exactly ``out.numel()`` bytes into the uint8 ``out``; None, or what was wrong."""
    return _C.format_inflate(data, _output(out, torch.uint8), backend)


def crc32(data: ByteBuffer | torch.Tensor, crc: int = 0) -> int:
    return int(_C.format_crc32(_bytes_view(data, "data"), crc))


def pack_fields(values: torch.Tensor, width: int) -> torch.Tensor:
    """uint8 ``values`` (each below ``2**width``) packed at ``width`` bits, LSB first."""
    out = torch.empty((values.numel() * width + 7) // 8, dtype=torch.uint8)
    _C.format_pack_fields(
        as_buffer(values, "values", torch.uint8), width, _output(out, torch.uint8)
    )
    return out


def unpack_fields(packed: ByteBuffer | torch.Tensor, count: int, width: int) -> torch.Tensor:
    out = torch.empty(count, dtype=torch.uint8)
    _C.format_unpack_fields(_bytes_view(packed, "packed"), width, _output(out, torch.uint8))
    return out


def encode_positions(positions: torch.Tensor) -> bytes:
    """LEB128 gaps of strictly increasing int64 ``positions``."""
    return bytes(_C.format_encode_positions(as_buffer(positions, "positions", torch.int64)))


def decode_positions(data: ByteBuffer, count: int, numel: int) -> tuple[torch.Tensor, str | None]:
    out = torch.empty(count, dtype=torch.int64)
    error = _C.format_decode_positions(data, numel, _output(out, torch.int64))
    return out, error


def shuffle_bytes(data: torch.Tensor, itemsize: int, *, inverse: bool = False) -> torch.Tensor:
    """Byte-plane shuffle of a uint8 tensor of ``itemsize``-byte elements (or its inverse)."""
    out = torch.empty_like(data)
    _C.format_shuffle(
        as_buffer(data, "data", torch.uint8), itemsize, _output(out, torch.uint8), inverse
    )
    return out


StreamArgument = tuple[ByteBuffer, int, int]  # stored bytes, inflated size, CRC32 of the bytes


def split_planes(data: torch.Tensor, itemsize: int, *, sign_last: bool) -> torch.Tensor:
    """Byte planes of a uint8 tensor of ``itemsize``-byte elements, each element rotated left by
    one bit first when ``sign_last`` (format 2's float layout)."""
    out = torch.empty_like(data)
    _C.format_split_planes(
        as_buffer(data, "data", torch.uint8), itemsize, sign_last, _output(out, torch.uint8)
    )
    return out


def advise_huge_pages(out: torch.Tensor, *, at_least: int = 4 << 20) -> None:
    """Ask the kernel for 2 MB pages on a fresh tensor of at least ``at_least`` bytes before it
    is first written: faulting in its memory then costs ~4x less (a hint; Linux only)."""
    _C.format_advise_huge_pages(_output(out.view(torch.uint8), torch.uint8), at_least)


def decode_planes(
    planes: Sequence[StreamArgument],
    itemsize: int,
    *,
    sign_last: bool,
    out: torch.Tensor,
    backend: str = "best",
) -> tuple[int, str] | None:
    """Decode one chunk's byte-plane streams into ``out`` (uint8 bytes of the elements); None on
    success, else (the plane at fault, what was wrong). GIL released while it runs."""
    return _C.format_decode_planes(planes, itemsize, sign_last, _output(out, torch.uint8), backend)


def decode_plane_chunks(
    chunks: Sequence[tuple[Sequence[StreamArgument], torch.Tensor]],
    itemsize: int,
    *,
    sign_last: bool,
    backend: str = "best",
) -> tuple[int, int, str] | None:
    """Decode several chunks, each its byte-plane streams and its ``out`` (uint8 bytes of the
    elements), the Huffman-coded planes of two chunks at a time in one interleaved loop; None on
    success, else (chunk, plane, what was wrong), with no ``out`` written. GIL released."""
    arguments = [(planes, _output(out, torch.uint8)) for planes, out in chunks]
    return _C.format_decode_plane_chunks(arguments, itemsize, sign_last, backend)


def decode_tensor(
    encoding: str,
    *,
    numel: int,
    count: int,
    sparse: bool,
    itemsize: int,
    shuffle: bool,
    bits: int,
    width: int,
    rows: int,
    compressed: bool,
    positions: StreamArgument | None,
    values: StreamArgument,
    table: StreamArgument | None,
    out: torch.Tensor,
    backend: str = "best",
) -> tuple[str, str] | None:
    """Decode one tensor's streams into ``out`` (uint8 bytes of the result); None on success,
    else (the stream at fault, what was wrong with it). GIL released while it runs."""
    return _C.format_decode_tensor(
        encoding,
        numel,
        count,
        sparse,
        itemsize,
        shuffle,
        bits,
        width,
        rows,
        compressed,
        positions,
        values,
        table,
        _output(out, torch.uint8),
        backend,
    )


# --- comm codecs: gradient encoders with fused error feedback (codl.comm.codecs; layouts in
# cpp/include/codl/comm.h). Each checks its tensors here and its parameters in the binding.
# Encoders read float32 x, update the optional float32 error buffer and write a uint8 payload;
# decoders read the payload and write (or add into) float32 out.


def comm_counter_uniform(seed: int, key: int, step: int, out: torch.Tensor) -> None:
    """``out[i]`` = draw ``i`` of the codecs' counter-based generator for (seed, key, step)."""
    _C.comm_counter_uniform(seed, key, step, _output(out, torch.float32))


def _gradient(x: torch.Tensor) -> np.ndarray:
    return as_buffer(x, "x", torch.float32)


def _payload(payload: torch.Tensor) -> np.ndarray:
    return as_buffer(payload, "payload", torch.uint8)


def _payload_output(payload: torch.Tensor) -> np.ndarray:
    return _output(payload, torch.uint8, "payload")


def comm_block_encode(
    codec: str, x: torch.Tensor, error: torch.Tensor | None, block: int, payload: torch.Tensor
) -> None:
    """Int8 (``codec="int8"``) or scaled-sign (``"sign"``) encode of ``x`` (+ ``error``)."""
    encode = _C.comm_int8_encode if codec == "int8" else _C.comm_sign_encode
    encode(_gradient(x), _state(error, "error"), block, _payload_output(payload), get_num_threads())


def comm_block_decode(
    codec: str, payload: torch.Tensor, block: int, out: torch.Tensor, accumulate: bool
) -> None:
    decode = _C.comm_int8_decode if codec == "int8" else _C.comm_sign_decode
    decode(_payload(payload), block, _output(out, torch.float32), accumulate, get_num_threads())


def comm_terngrad_encode(
    x: torch.Tensor,
    error: torch.Tensor | None,
    block: int,
    seed: int,
    key: int,
    step: int,
    payload: torch.Tensor,
) -> None:
    _C.comm_terngrad_encode(
        _gradient(x),
        _state(error, "error"),
        block,
        seed,
        key,
        step,
        _payload_output(payload),
        get_num_threads(),
    )


def comm_terngrad_decode(
    payload: torch.Tensor, block: int, out: torch.Tensor, accumulate: bool
) -> None:
    _C.comm_terngrad_decode(
        _payload(payload), block, _output(out, torch.float32), accumulate, get_num_threads()
    )


def comm_qsgd_encode(
    x: torch.Tensor,
    error: torch.Tensor | None,
    block: int,
    levels: int,
    seed: int,
    key: int,
    step: int,
    payload: torch.Tensor,
) -> None:
    _C.comm_qsgd_encode(
        _gradient(x),
        _state(error, "error"),
        block,
        levels,
        seed,
        key,
        step,
        _payload_output(payload),
        get_num_threads(),
    )


def comm_qsgd_decode(
    payload: torch.Tensor, block: int, levels: int, out: torch.Tensor, accumulate: bool
) -> None:
    _C.comm_qsgd_decode(
        _payload(payload), block, levels, _output(out, torch.float32), accumulate, get_num_threads()
    )


def comm_topk_encode(
    x: torch.Tensor,
    error: torch.Tensor | None,
    momentum: torch.Tensor | None,
    momentum_factor: float,
    k: int,
    sample: int,
    seed: int,
    key: int,
    step: int,
    payload: torch.Tensor,
) -> None:
    _C.comm_topk_encode(
        _gradient(x),
        _state(error, "error"),
        _state(momentum, "momentum_buffer"),
        momentum_factor,
        k,
        sample,
        seed,
        key,
        step,
        _payload_output(payload),
        get_num_threads(),
    )


def comm_topk_decode(payload: torch.Tensor, out: torch.Tensor, accumulate: bool) -> None:
    _C.comm_topk_decode(
        _payload(payload), _output(out, torch.float32), accumulate, get_num_threads()
    )


# --- direct convolution (int8 activations, int8 or 2-bit ternary weights)

_CONV_DTYPE = {"nchw": torch.float32, "nhwc": torch.float32, "int8_nhwc": torch.int8}
_CONV_WEIGHT_DTYPE = {"int8": torch.int8, "ternary2": torch.uint8, "blocked": torch.int8}


def conv2d_i8(
    x: torch.Tensor,
    input_layout: str,
    shape: tuple[int, int, int, int],
    weight: torch.Tensor,
    weight_format: str,
    out_channels: int,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    relu: bool,
    out: torch.Tensor,
    output_layout: str,
    input_scale: float,
    output_scale: float,
    w_sums: torch.Tensor | None = None,
) -> float:
    """Direct convolution (``codl/conv.h``); returns the activation scale it used.
    ``weight_format="blocked"`` takes :func:`conv_prepare_weights`' output and its ``w_sums``."""
    return _C.conv2d_i8(
        as_buffer(x, "x", _CONV_DTYPE[input_layout]),
        input_layout,
        shape,
        as_buffer(weight, "weight", _CONV_WEIGHT_DTYPE.get(weight_format, torch.int8)),
        weight_format,
        out_channels,
        kernel_size,
        stride,
        padding,
        dilation,
        as_buffer(weight_scale, "weight_scale", torch.float32),
        None if bias is None else as_buffer(bias, "bias", torch.float32),
        relu,
        _output(out, _CONV_DTYPE[output_layout]),
        output_layout,
        input_scale,
        output_scale,
        get_num_threads(),
        None if w_sums is None else as_buffer(w_sums, "w_sums", torch.int32),
    )


def conv_blocked_bytes(out_channels: int, in_channels: int, kernel_size: tuple[int, int]) -> int:
    """Bytes of :func:`conv_prepare_weights`' blocked weights for this layer."""
    return _C.conv_blocked_bytes(out_channels, in_channels, kernel_size)


def conv_prepare_weights(
    weight: torch.Tensor,
    weight_format: str,
    out_channels: int,
    in_channels: int,
    kernel_size: tuple[int, int],
    blocked: torch.Tensor,
    w_sums: torch.Tensor,
) -> None:
    """The blocked weights and their sums (``codl/conv.h``), once, for the ``"blocked"``
    format of :func:`conv2d_i8`."""
    _C.conv_prepare_weights(
        as_buffer(weight, "weight", _CONV_WEIGHT_DTYPE.get(weight_format, torch.int8)),
        weight_format,
        out_channels,
        in_channels,
        kernel_size,
        _output(blocked, torch.int8, "blocked"),
        _output(w_sums, torch.int32, "w_sums"),
    )


class BoundConv:
    """:func:`conv2d_i8` with blocked weights and every argument but the input and output
    fixed: the fixed buffers are checked and turned into NumPy views once, so a call costs the
    core's own checks and two views. The tensors given must outlive this object and stay
    where they are (their owner rebuilds it when they move)."""

    def __init__(
        self,
        blocked: torch.Tensor,
        w_sums: torch.Tensor,
        out_channels: int,
        kernel_size: tuple[int, int],
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
        weight_scale: torch.Tensor,
        bias: torch.Tensor | None,
        relu: bool,
        input_layout: str,
        input_scale: float,
        output_layout: str,
        output_scale: float,
    ) -> None:
        self._blocked = as_buffer(blocked, "blocked", torch.int8)
        self._sums = as_buffer(w_sums, "w_sums", torch.int32)
        self._scale = as_buffer(weight_scale, "weight_scale", torch.float32)
        self._bias = None if bias is None else as_buffer(bias, "bias", torch.float32)
        self._geometry = (out_channels, kernel_size, stride, padding, dilation)
        self._epilogue = (relu, input_layout, input_scale, output_layout, output_scale)
        self._input_dtype = _CONV_DTYPE[input_layout]
        self._output_dtype = _CONV_DTYPE[output_layout]

    def __call__(self, x: torch.Tensor, out: torch.Tensor) -> float:
        """``out`` = the convolution of ``x`` (contiguous, in the input layout)."""
        if x.dtype != self._input_dtype or out.dtype != self._output_dtype:
            raise TypeError(
                f"x, out: expected {self._input_dtype} and {self._output_dtype}, received "
                f"{x.dtype} and {out.dtype}"
            )
        out_channels, kernel_size, stride, padding, dilation = self._geometry
        relu, input_layout, input_scale, output_layout, output_scale = self._epilogue
        n, a, b, c = x.shape
        shape = (n, c, a, b) if input_layout == "int8_nhwc" else (n, a, b, c)
        return _C.conv2d_i8(
            x.detach().numpy(),
            input_layout,
            shape,
            self._blocked,
            "blocked",
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            self._scale,
            self._bias,
            relu,
            out.detach().numpy(),
            output_layout,
            input_scale,
            output_scale,
            get_num_threads(),
            self._sums,
        )


class ConvChain:
    """A chain of conv, int8 2x2 max-pool and ternary linear layers run by one call into the
    core (``codl::run_chain``); ``layers`` are the specs :mod:`codl.nn.fused` builds (their
    buffers are checked here, once, and kept alive by the chain)."""

    def __init__(self, layers: list[tuple[object, ...]], input_shape: tuple[int, int, int]) -> None:
        self._chain = _C.conv_chain_build(layers, input_shape)
        self._specs = (layers, input_shape)
        self.layers = len(layers)
        self.output_elements = _C.conv_chain_output_elements(self._chain)

    @property
    def conv_layouts(self) -> list[tuple[str, str]]:
        """(input layout, output layout) of each convolution in the chain, in order: "nchw"
        (float32) or "int8_nhwc"."""
        return [(str(spec[1]), str(spec[13])) for spec in self._specs[0] if spec[0] == "conv"]

    def __reduce__(self) -> tuple[type[ConvChain], tuple[object, ...]]:
        # Copies and pickles rebuild the core's chain from its layers (the buffers copied).
        return (ConvChain, self._specs)

    def __call__(self, x: torch.Tensor, out: torch.Tensor) -> None:
        """``out`` = the chain on ``x`` (contiguous float32 N x C x H x W)."""
        _C.conv_chain_run(
            self._chain,
            x.detach().numpy(),
            x.shape[0],
            _output(out, torch.float32),
            get_num_threads(),
        )


def maxpool2x2_i8_nhwc(x: torch.Tensor, out: torch.Tensor) -> None:
    n, h, w, c = x.shape
    _C.maxpool2x2_i8_nhwc(
        as_buffer(x, "x", torch.int8), (n, h, w, c), _output(out, torch.int8), get_num_threads()
    )
