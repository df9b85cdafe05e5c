# Type stub of the C++ extension. Call it through codl._ops, not directly.
# Checked against the built module: `python -m mypy.stubtest codl._C` (names, both ways) and
# tests/python/test_stubs.py (each function's parameters, defaults and types, read from the
# signature pybind11 writes into its docstring, which stubtest cannot see).
from collections.abc import Sequence
from typing import Any

import numpy as np
from typing_extensions import Buffer as _PEP688Buffer

# NumPy arrays are what codl._ops passes; any C-contiguous buffer-protocol object is accepted.
# A name of this stub only (listed in .ci/stubtest-allowlist.txt).
Buffer = _PEP688Buffer | np.ndarray[Any, Any]

__version__: str

def native_info() -> dict[str, Any]: ...
def get_dispatch() -> str: ...
def set_dispatch(level: str) -> None: ...
def buffer_address(buffer: Buffer) -> int: ...
def pack_signs_f32(x: Buffer, out: Buffer, num_threads: int = 1) -> None: ...
def unpack_signs_f32(packed: Buffer, out: Buffer, num_threads: int = 1) -> None: ...
def pack_ternary2(codes: Buffer, out: Buffer, num_threads: int = 1) -> None: ...
def unpack_ternary2(packed: Buffer, out: Buffer, num_threads: int = 1) -> None: ...
def pack_ternary3(codes: Buffer, out: Buffer, num_threads: int = 1) -> None: ...
def unpack_ternary3(packed: Buffer, out: Buffer, num_threads: int = 1) -> None: ...
def first_invalid_ternary2_row(packed: Buffer, rows: int, num_threads: int = 1) -> int: ...
def first_invalid_sparse_row(
    row_ptr: Buffer, cols: Buffer, values: Buffer, in_features: int, out_features: int
) -> int: ...
def sparse_linear_f32(
    x: Buffer,
    rows: int,
    in_features: int,
    row_ptr: Buffer,
    cols: Buffer,
    values: Buffer,
    scale: Buffer,
    bias: Buffer | None,
    out: Buffer,
    num_threads: int = 1,
) -> None: ...
def first_invalid_sparse_panel(
    masks: Buffer, starts: Buffer, values: Buffer, in_features: int, out_features: int
) -> int: ...
def sparse_panel_linear_f32(
    x: Buffer,
    rows: int,
    in_features: int,
    masks: Buffer,
    starts: Buffer,
    values: Buffer,
    scale: Buffer,
    bias: Buffer | None,
    out: Buffer,
    num_threads: int = 1,
) -> None: ...
def ternary_linear_f32(
    x: Buffer,
    rows: int,
    in_features: int,
    packed: Buffer,
    alpha: Buffer,
    bias: Buffer | None,
    out: Buffer,
    num_threads: int = 1,
) -> None: ...
def ternary3_linear_f32(
    x: Buffer,
    rows: int,
    in_features: int,
    packed: Buffer,
    alpha: Buffer,
    bias: Buffer | None,
    out: Buffer,
    num_threads: int = 1,
) -> None: ...
def ternary_linear_f32act(
    x: Buffer,
    rows: int,
    in_features: int,
    packed: Buffer,
    alpha: Buffer,
    bias: Buffer | None,
    out: Buffer,
    num_threads: int = 1,
) -> None: ...
def sym_eig(
    mats: list[Buffer],
    eigenvalues_out: list[Buffer],
    eigenvectors_out: list[Buffer],
    num_threads: int = 1,
) -> list[int]: ...
def damped_cholesky(
    mats: list[Buffer], dampings: Sequence[float], outs: list[Buffer], num_threads: int = 1
) -> list[tuple[int, int]]: ...
def damped_inverse(
    mats: list[Buffer], dampings: Sequence[float], outs: list[Buffer], num_threads: int = 1
) -> list[tuple[int, int]]: ...
def cholesky_solve(
    factors: list[Buffer],
    rhs: list[Buffer],
    outs: list[Buffer],
    side: str,
    num_threads: int = 1,
) -> None: ...
def pack_symmetric(mat: Buffer, out: Buffer) -> None: ...
def unpack_symmetric(packed: Buffer, n: int, out: Buffer) -> None: ...

# --- format
def format_codec() -> str: ...
def format_backends() -> list[str]: ...
def format_deflate(data: Buffer, level: int, backend: str = "best") -> bytes: ...
def format_deflate_literals(data: Buffer, block_bytes: int = 32768) -> bytes: ...
def format_inflate(data: Buffer, out: Buffer, backend: str = "best") -> str | None: ...
def format_crc32(data: Buffer, crc: int = 0) -> int: ...
def format_pack_fields(values: Buffer, width: int, out: Buffer) -> None: ...
def format_unpack_fields(packed: Buffer, width: int, out: Buffer) -> None: ...
def format_encode_positions(positions: Buffer) -> bytes: ...
def format_decode_positions(data: Buffer, numel: int, out: Buffer) -> str | None: ...
def format_shuffle(data: Buffer, itemsize: int, out: Buffer, inverse: bool = False) -> None: ...
def format_split_planes(data: Buffer, itemsize: int, sign_last: bool, out: Buffer) -> None: ...
def format_advise_huge_pages(out: Buffer, at_least: int) -> None: ...
def format_decode_planes(
    planes: Sequence[tuple[Buffer, int, int]],
    itemsize: int,
    sign_last: bool,
    out: Buffer,
    backend: str = "best",
) -> tuple[int, str] | None: ...
def format_decode_plane_chunks(
    chunks: Sequence[tuple[Sequence[tuple[Buffer, int, int]], Buffer]],
    itemsize: int,
    sign_last: bool,
    backend: str = "best",
) -> tuple[int, int, str] | None: ...
def format_decode_tensor(
    encoding: str,
    numel: int,
    count: int,
    sparse: bool,
    itemsize: int,
    shuffle: bool,
    bits: int,
    width: int,
    rows: int,
    compressed: bool,
    positions: tuple[Buffer, int, int] | None,
    values: tuple[Buffer, int, int],
    table: tuple[Buffer, int, int] | None,
    out: Buffer,
    backend: str = "best",
) -> tuple[str, str] | None: ...
def comm_counter_uniform(seed: int, key: int, step: int, out: Buffer) -> None: ...
def comm_int8_encode(
    x: Buffer, error: Buffer | None, block: int, payload: Buffer, num_threads: int = 1
) -> None: ...
def comm_int8_decode(
    payload: Buffer, block: int, out: Buffer, accumulate: bool, num_threads: int = 1
) -> None: ...
def comm_sign_encode(
    x: Buffer, error: Buffer | None, block: int, payload: Buffer, num_threads: int = 1
) -> None: ...
def comm_sign_decode(
    payload: Buffer, block: int, out: Buffer, accumulate: bool, num_threads: int = 1
) -> None: ...
def comm_terngrad_encode(
    x: Buffer,
    error: Buffer | None,
    block: int,
    seed: int,
    key: int,
    step: int,
    payload: Buffer,
    num_threads: int = 1,
) -> None: ...
def comm_terngrad_decode(
    payload: Buffer, block: int, out: Buffer, accumulate: bool, num_threads: int = 1
) -> None: ...
def comm_qsgd_encode(
    x: Buffer,
    error: Buffer | None,
    block: int,
    levels: int,
    seed: int,
    key: int,
    step: int,
    payload: Buffer,
    num_threads: int = 1,
) -> None: ...
def comm_qsgd_decode(
    payload: Buffer, block: int, levels: int, out: Buffer, accumulate: bool, num_threads: int = 1
) -> None: ...
def comm_topk_encode(
    x: Buffer,
    error: Buffer | None,
    momentum: Buffer | None,
    momentum_factor: float,
    k: int,
    sample: int,
    seed: int,
    key: int,
    step: int,
    payload: Buffer,
    num_threads: int = 1,
) -> None: ...
def comm_topk_decode(
    payload: Buffer, out: Buffer, accumulate: bool, num_threads: int = 1
) -> None: ...
def conv2d_i8(
    x: Buffer,
    input_layout: str,
    shape: Sequence[int],
    weight: Buffer,
    weight_format: str,
    out_channels: int,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    weight_scale: Buffer,
    bias: Buffer | None,
    relu: bool,
    out: Buffer,
    output_layout: str,
    input_scale: float,
    output_scale: float,
    num_threads: int = 1,
    w_sums: Buffer | None = None,
) -> float: ...
def conv_chain_build(layers: list[tuple[object, ...]], input_shape: Sequence[int]) -> object: ...
def conv_chain_output_elements(chain: object) -> int: ...
def conv_chain_run(
    chain: object, x: Buffer, batch: int, out: Buffer, num_threads: int = 1
) -> None: ...
def conv_blocked_bytes(out_channels: int, in_channels: int, kernel_size: Sequence[int]) -> int: ...
def conv_prepare_weights(
    weight: Buffer,
    weight_format: str,
    out_channels: int,
    in_channels: int,
    kernel_size: Sequence[int],
    blocked: Buffer,
    w_sums: Buffer,
) -> None: ...
def maxpool2x2_i8_nhwc(
    x: Buffer, shape: Sequence[int], out: Buffer, num_threads: int = 1
) -> None: ...
