"""Export a frozen ternary model to portable C for embedded and FPGA flows.

``export_c(model, example, directory)`` traces the model (``torch.fx``), records every
activation's shape on ``example`` (batch 1), and writes

* ``<name>_weights.h``: the packed 2-bit codes (the ``codl.kernels`` "2bit" layout, one row per
  output feature padded to 128 values), the per-row scales and the biases, as C arrays;
* ``<name>.c`` / ``<name>.h``: a small C11 reference of each layer and ``<name>_forward``.

The C code computes exactly what ``codl::ternary_linear`` computes (int8 activations per row
with an absmax scale, round half to even, int32 accumulation, the same float operations), so
ternary layers match PyTorch bit for bit; float layers (a first or last layer kept float) match
to rounding. Supported: frozen ternary linear and conv layers (any module whose ``weight`` is a
``PackedTernaryWeight``; convs also carry ``kernel_size``, ``stride``, ``padding``,
``dilation``), ``nn.Linear``, ``nn.Conv2d`` (groups=1), ReLU, MaxPool2d (no padding, dilation
1), Flatten / view / reshape, Identity and Dropout (inference). Anything else raises
``ValueError`` naming the node.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.fx
from torch.fx.passes.shape_prop import ShapeProp

from codl.ternary.packed import PackedTernaryWeight, pack_weight, padded_in_features

_C_LIBRARY = r"""
/* Portable C reference of codl's layers (C11, libc and libm only). */
#include <math.h>
#include <stdint.h>
#include <string.h>

/* Same rule as codl's kernels: absmax scale, round half to even (nearbyintf in the default
   rounding mode), zero padding to k_padded. Returns the scale. */
static inline float codl_quantize_row(const float* x, int k, int k_padded, int8_t* q) {
    float absmax = 0.0f;
    for (int i = 0; i < k; ++i) absmax = fmaxf(absmax, fabsf(x[i]));
    const float inverse = absmax > 0.0f ? 127.0f / absmax : 0.0f;
    for (int i = 0; i < k_padded; ++i) q[i] = i < k ? (int8_t)nearbyintf(x[i] * inverse) : 0;
    return absmax > 0.0f ? absmax / 127.0f : 1.0f;
}

/* Code of value i of a packed row: blocks of 128 values in 32 bytes, value 32s + j of a block
   in bits 2s..2s+1 of byte j, stored as code + 1. */
static inline int codl_code(const uint8_t* row, int i) {
    const int block = i / 128, in_block = i % 128;
    return ((row[block * 32 + in_block % 32] >> (2 * (in_block / 32))) & 3) - 1;
}

static inline void codl_ternary_row(const int8_t* q, float scale, int k, const uint8_t* w,
                             const float* alpha, const float* bias, int n, float* y) {
    const int row_bytes = (k + 127) / 128 * 32;
    for (int j = 0; j < n; ++j) {
        int32_t dot = 0;
        for (int i = 0; i < k; ++i) dot += q[i] * codl_code(w + j * row_bytes, i);
        const float value = (float)dot * (scale * alpha[j]);
        y[j] = bias ? value + bias[j] : value;
    }
}

static inline void codl_ternary_linear(const float* x, int k, const uint8_t* w, const float* alpha,
                                const float* bias, int n, float* y, int8_t* scratch) {
    const float scale = codl_quantize_row(x, k, (k + 127) / 128 * 128, scratch);
    codl_ternary_row(scratch, scale, k, w, alpha, bias, n, y);
}

/* im2col row of output pixel (oy, ox) in F.unfold's order (channel, ky, kx), zero padded. */
static inline void codl_patch(const float* x, int c, int h, int w, int kh, int kw, int sy, int sx,
                       int py, int px, int dy, int dx, int oy, int ox, float* patch) {
    int p = 0;
    for (int ch = 0; ch < c; ++ch)
        for (int ky = 0; ky < kh; ++ky)
            for (int kx = 0; kx < kw; ++kx) {
                const int iy = oy * sy - py + ky * dy, ix = ox * sx - px + kx * dx;
                const int inside = iy >= 0 && iy < h && ix >= 0 && ix < w;
                patch[p++] = inside ? x[(ch * h + iy) * w + ix] : 0.0f;
            }
}

static inline void codl_ternary_conv2d(const float* x, int c, int h, int w, int kh, int kw, int sy,
                                int sx, int py, int px, int dy, int dx, const uint8_t* weight,
                                const float* alpha, const float* bias, int n, int oh, int ow,
                                float* y, float* patch, int8_t* scratch, float* column) {
    const int k = c * kh * kw;
    for (int oy = 0; oy < oh; ++oy)
        for (int ox = 0; ox < ow; ++ox) {
            codl_patch(x, c, h, w, kh, kw, sy, sx, py, px, dy, dx, oy, ox, patch);
            codl_ternary_linear(patch, k, weight, alpha, bias, n, column, scratch);
            for (int j = 0; j < n; ++j) y[(j * oh + oy) * ow + ox] = column[j];
        }
}

static inline void codl_linear(const float* x, int k, const float* weight, const float* bias, int n,
                        float* y) {
    for (int j = 0; j < n; ++j) {
        float total = bias ? bias[j] : 0.0f;
        for (int i = 0; i < k; ++i) total += weight[j * k + i] * x[i];
        y[j] = total;
    }
}

static inline void codl_conv2d(const float* x, int c, int h, int w, int kh, int kw, int sy, int sx,
                        int py, int px, int dy, int dx, const float* weight, const float* bias,
                        int n, int oh, int ow, float* y, float* patch) {
    const int k = c * kh * kw;
    for (int oy = 0; oy < oh; ++oy)
        for (int ox = 0; ox < ow; ++ox) {
            codl_patch(x, c, h, w, kh, kw, sy, sx, py, px, dy, dx, oy, ox, patch);
            for (int j = 0; j < n; ++j) {
                float total = bias ? bias[j] : 0.0f;
                for (int i = 0; i < k; ++i) total += weight[j * k + i] * patch[i];
                y[(j * oh + oy) * ow + ox] = total;
            }
        }
}

static inline void codl_relu(const float* x, int size, float* y) {
    for (int i = 0; i < size; ++i) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

static inline void codl_max_pool2d(const float* x, int c, int h, int w, int kh, int kw,
                                   int sy, int sx, int oh, int ow, float* y) {
    for (int ch = 0; ch < c; ++ch)
        for (int oy = 0; oy < oh; ++oy)
            for (int ox = 0; ox < ow; ++ox) {
                float best = -INFINITY;
                for (int ky = 0; ky < kh; ++ky)
                    for (int kx = 0; kx < kw; ++kx) {
                        const float v = x[(ch * h + oy * sy + ky) * w + ox * sx + kx];
                        best = v > best ? v : best;
                    }
                y[(ch * oh + oy) * ow + ox] = best;
            }
}
"""


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


class _FrozenLeavesTracer(torch.fx.Tracer):
    """Keeps codl's frozen layers as single nodes instead of tracing into their kernels."""

    def is_leaf_module(self, m: torch.nn.Module, module_qualified_name: str) -> bool:
        # Read the instance dict: getattr would go through the tracer's attribute patching and
        # record a get_attr node for an ordinary Parameter.
        frozen = isinstance(m.__dict__.get("weight"), PackedTernaryWeight)
        return frozen or super().is_leaf_module(m, module_qualified_name)


def _c_float(value: float) -> str:
    # Hexadecimal float literals are exact: the C arrays hold the very same float32 values.
    return float(value).hex() + "f"


def export_c(
    model: torch.nn.Module, example: torch.Tensor, directory: str | Path, name: str = "codl_model"
) -> list[Path]:
    """Write ``<name>_weights.h``, ``<name>.h`` and ``<name>.c`` into ``directory``.

    ``example`` is one input (batch 1) used to record shapes. Returns the paths written.
    """
    if not name.isidentifier():
        raise ValueError(f"name: expected a C identifier, received {name!r}")
    if (
        not isinstance(example, torch.Tensor)
        or example.dtype != torch.float32
        or example.shape[0] != 1
    ):
        raise ValueError("example: expected a float32 tensor with batch size 1")
    model = model.eval()
    graph_module = torch.fx.GraphModule(model, _FrozenLeavesTracer().trace(model))
    with torch.no_grad():
        ShapeProp(graph_module).propagate(example)
    modules = dict(graph_module.named_modules())

    weights: list[str] = []
    body: list[str] = []
    buffers: dict[str, int] = {}
    values: dict[str, str] = {}  # fx node -> C buffer holding its output
    scratch = {"floats": 1, "bytes": 1, "patch": 1}
    input_size = 0

    def c_array(symbol: str, ctype: str, tensor: torch.Tensor) -> str:
        flat = tensor.detach().reshape(-1)
        if ctype == "uint8_t":
            items = [str(int(v)) for v in flat.tolist()]
        else:
            items = [_c_float(v) for v in flat.to(torch.float32).tolist()]
        lines = [", ".join(items[i : i + 16]) for i in range(0, len(items), 16)]
        weights.append(
            f"static const {ctype} {name}_{symbol}[{max(len(items), 1)}] = {{\n  "
            + ",\n  ".join(lines)
            + "\n};"
        )
        return f"{name}_{symbol}"

    def shape_of(node: torch.fx.Node) -> tuple[int, ...]:
        meta = node.meta.get("tensor_meta")
        if meta is None:
            raise ValueError(f"node {node.name}: no tensor shape recorded (is it a tensor?)")
        return tuple(int(d) for d in meta.shape)

    def output_buffer(node: torch.fx.Node) -> str:
        symbol = f"act_{len(buffers)}"
        buffers[symbol] = max(1, int(torch.Size(shape_of(node)).numel()))
        values[node.name] = symbol
        return symbol

    def source(node: torch.fx.Node) -> str:
        argument = node.args[0]
        if not isinstance(argument, torch.fx.Node):
            raise ValueError(f"node {node.name}: expected a tensor input")
        return values[argument.name]

    def chw(shape: tuple[int, ...]) -> tuple[int, int, int]:
        if len(shape) != 4:
            raise ValueError(f"expected an (N, C, H, W) activation, received shape {shape}")
        return shape[1], shape[2], shape[3]

    for index, node in enumerate(graph_module.graph.nodes):
        layer = f"l{index}"
        if node.op == "placeholder":
            if values:
                raise ValueError("export_c supports models with one input")
            values[node.name] = "input"
            input_size = int(torch.Size(shape_of(node)).numel())
            continue
        if node.op == "output":
            result = node.args[0]
            if not isinstance(result, torch.fx.Node):
                raise ValueError("export_c supports models with one tensor output")
            output_size = int(torch.Size(shape_of(result)).numel())
            body.append(
                f"    memcpy(output, {values[result.name]}, sizeof(float) * {output_size});"
            )
            continue
        target = node.target
        module = modules.get(str(target)) if node.op == "call_module" else None
        in_shape = (
            shape_of(node.args[0]) if node.args and isinstance(node.args[0], torch.fx.Node) else ()
        )
        out_shape = shape_of(node)
        size = int(torch.Size(out_shape).numel())
        is_relu = (
            isinstance(module, torch.nn.ReLU)
            or target in (torch.relu, torch.nn.functional.relu)
            or (node.op == "call_method" and target == "relu")
        )
        is_reshape = (
            isinstance(module, (torch.nn.Flatten, torch.nn.Identity, torch.nn.Dropout))
            or target is torch.flatten
            or (node.op == "call_method" and target in ("view", "reshape", "flatten"))
        )
        if is_relu:
            body.append(f"    codl_relu({source(node)}, {size}, {output_buffer(node)});")
        elif is_reshape:
            values[node.name] = source(node)  # same memory, row-major
        elif module is not None and isinstance(
            getattr(module, "weight", None), PackedTernaryWeight
        ):
            packed: PackedTernaryWeight = module.weight
            if packed.activations != "int8":
                raise ValueError(
                    f"model: layer {node.target!r} keeps float activations; the C reference "
                    "quantizes them to int8 (freeze with activations='int8' to export)"
                )
            if packed.packing != "2bit":
                # The C reference reads the 2-bit layout; the integer results are the same.
                packed = pack_weight(packed.unpack(), packed.alpha)
            w = c_array(f"{layer}_codes", "uint8_t", packed.packed)
            alpha = c_array(f"{layer}_alpha", "float", packed.alpha)
            bias_tensor = getattr(module, "bias", None)
            bias = (
                c_array(f"{layer}_bias", "float", bias_tensor) if bias_tensor is not None else "0"
            )
            k = packed.in_features
            scratch["bytes"] = max(scratch["bytes"], padded_in_features(k))
            if hasattr(module, "kernel_size"):
                c, h, w_in = chw(in_shape)
                kh, kw = _pair(module.kernel_size)
                sy, sx = _pair(module.stride)
                py, px = _pair(module.padding)
                dy, dx = _pair(module.dilation)
                oh, ow = out_shape[2], out_shape[3]
                scratch["patch"] = max(scratch["patch"], k)
                scratch["floats"] = max(scratch["floats"], packed.out_features)
                body.append(
                    f"    codl_ternary_conv2d({source(node)}, {c}, {h}, {w_in}, {kh}, {kw}, {sy}, "
                    f"{sx}, {py}, {px}, {dy}, {dx}, {w}, {alpha}, {bias}, {packed.out_features}, "
                    f"{oh}, {ow}, {output_buffer(node)}, patch, scratch, column);"
                )
            else:
                body.append(
                    f"    codl_ternary_linear({source(node)}, {k}, {w}, {alpha}, {bias}, "
                    f"{packed.out_features}, {output_buffer(node)}, scratch);"
                )
        elif isinstance(module, torch.nn.Linear):
            w = c_array(f"{layer}_weight", "float", module.weight)
            bias = (
                c_array(f"{layer}_bias", "float", module.bias) if module.bias is not None else "0"
            )
            body.append(
                f"    codl_linear({source(node)}, {module.in_features}, {w}, {bias}, "
                f"{module.out_features}, {output_buffer(node)});"
            )
        elif isinstance(module, torch.nn.Conv2d):
            if (
                module.groups != 1
                or module.padding_mode != "zeros"
                or isinstance(module.padding, str)
            ):
                raise ValueError(
                    f"node {node.name}: only groups=1, zero-padded Conv2d is supported"
                )
            c, h, w_in = chw(in_shape)
            kh, kw = _pair(module.kernel_size)
            sy, sx = _pair(module.stride)
            py, px = _pair(module.padding)
            dy, dx = _pair(module.dilation)
            w = c_array(f"{layer}_weight", "float", module.weight)
            bias = (
                c_array(f"{layer}_bias", "float", module.bias) if module.bias is not None else "0"
            )
            scratch["patch"] = max(scratch["patch"], c * kh * kw)
            body.append(
                f"    codl_conv2d({source(node)}, {c}, {h}, {w_in}, {kh}, {kw}, {sy}, {sx}, {py}, "
                f"{px}, {dy}, {dx}, {w}, {bias}, {module.out_channels}, {out_shape[2]}, "
                f"{out_shape[3]}, {output_buffer(node)}, patch);"
            )
        elif isinstance(module, torch.nn.MaxPool2d) or target is torch.nn.functional.max_pool2d:
            if module is not None:
                kernel, stride = module.kernel_size, module.stride or module.kernel_size
                padding, dilation = module.padding, module.dilation
            else:
                kernel = node.args[1] if len(node.args) > 1 else node.kwargs["kernel_size"]
                stride = node.kwargs.get("stride") or (
                    node.args[2] if len(node.args) > 2 else kernel
                )
                padding, dilation = node.kwargs.get("padding", 0), node.kwargs.get("dilation", 1)
            if _pair(padding) != (0, 0) or _pair(dilation) != (1, 1):
                raise ValueError(f"node {node.name}: MaxPool2d with padding or dilation")
            c, h, w_in = chw(in_shape)
            kh, kw = _pair(kernel)
            sy, sx = _pair(stride)
            body.append(
                f"    codl_max_pool2d({source(node)}, {c}, {h}, {w_in}, {kh}, {kw}, {sy}, {sx}, "
                f"{out_shape[2]}, {out_shape[3]}, {output_buffer(node)});"
            )
        else:
            what = type(module).__name__ if module is not None else str(target)
            raise ValueError(f"export_c: node {node.name} ({node.op} {what}) is not supported")

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    output_shape = shape_of(next(n for n in graph_module.graph.nodes if n.op == "output").args[0])
    output_size = int(torch.Size(output_shape).numel())
    header = directory / f"{name}.h"
    header.write_text(
        f"/* Generated by codl.ternary.export_c: do not edit. */\n"
        f"#ifndef {name.upper()}_H\n#define {name.upper()}_H\n\n"
        f"#define {name.upper()}_INPUT_SIZE {input_size}\n"
        f"#define {name.upper()}_OUTPUT_SIZE {output_size}\n\n"
        f"/* One example (batch 1) of {input_size} floats in, {output_size} floats out. */\n"
        f"void {name}_forward(const float* input, float* output);\n\n#endif\n"
    )
    weights_header = directory / f"{name}_weights.h"
    weights_header.write_text(
        "/* Generated by codl.ternary.export_c: packed ternary codes (2 bits each, the codl\n"
        "   '2bit' layout, rows padded to 128 values), per-row scales and biases. */\n"
        "#include <stdint.h>\n\n" + "\n\n".join(weights) + "\n"
    )
    statics = "\n".join(f"static float {symbol}[{count}];" for symbol, count in buffers.items())
    source_file = directory / f"{name}.c"
    source_file.write_text(
        f'/* Generated by codl.ternary.export_c: do not edit. */\n#include "{name}.h"\n'
        f'#include "{name}_weights.h"\n{_C_LIBRARY}\n'
        f"{statics}\nstatic float patch[{scratch['patch']}];\n"
        f"static float column[{scratch['floats']}];\nstatic int8_t scratch[{scratch['bytes']}];\n\n"
        f"void {name}_forward(const float* input, float* output) {{\n" + "\n".join(body) + "\n}\n"
    )
    return [header, weights_header, source_file]


__all__ = ["export_c"]
