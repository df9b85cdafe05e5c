"""Whole-model CPU inference: codl's frozen ternary models against the runtimes a user would
pick, side by side in one process, at the same thread counts (issue 15).

    codl bench inference [--models lenet5 fashioncnn csrnet mcnn] [--threads 1 2]
                         [--batches 1 64] [--runtimes ...] [--quick]

Models: LeNet-5 and FashionCNN (:mod:`codl.models`) trained briefly on Fashion-MNIST (1x28x28,
batch 1 and 64); a CSRNet (VGG-16 frontend plus dilated backend, 16.26M parameters) and an
MCNN-size counting student (0.13M) at 3x256x256, batch 1, with seeded random weights (there is
no crowd data set here).

Runtimes (:data:`RUNTIMES`): torch fp32 eager; ``torch.compile`` (Inductor); torch static int8
(FX graph mode, ``prepare_fx``/``convert_fx`` with the x86 (fbgemm) qconfig mapping: still in
torch 2.13 though it warns that ``torch.ao.quantization`` is deprecated); ONNX Runtime fp32 and
static int8 (``quantize_static``, QDQ, per-channel int8 weights, uint8 activations, calibrated
on a small set); OpenVINO on the same fp32 and QDQ int8 ONNX files (it runs a QDQ model in
int8); codl's frozen ternary model (:func:`codl.quantize_`, for the classifiers a short
ternary-aware fine-tune, then :func:`codl.nn.freeze`: 2-bit weights, int8 activations). A
runtime whose package is missing is skipped and the table says so. Every runtime gets the same
thread count (``torch.set_num_threads`` and :func:`codl.set_num_threads`, ONNX Runtime's
``intra_op_num_threads``, OpenVINO's ``INFERENCE_NUM_THREADS``).

Timing (:func:`codl.bench.timing.measure_pair`): each runtime is timed interleaved with codl's
frozen model (rounds of a block of codl calls then a block of the runtime's), so ``codl x`` (the
runtime's median time over codl's, > 1 when codl is faster) compares two timings taken under the
same load. codl's own row is its pairing with torch fp32 eager. Each row shows the median, its
interquartile range, the 1-minute load average, and "loaded" when that exceeds :data:`LOADED`
(1.5, the rule for figures taken on this shared 2-core machine).

GMAC/s: the float model's convolution and linear multiply-adds per image (the products of taps
that read the zero padding included) times the batch, over the median time. Before the models,
the run times codl's ternary GEMM (4096 x 4096, batch 64, hot) at each thread count: on an
AVX-512 VNNI core it runs within about 10% of vpdpbusd's rate, the int8 multiply-add rate every
runtime on the core shares, so a model near it has speed left to gain only by doing fewer
products (skipping the padding's, for one).

Accuracy, per model and runtime, in the same table: Fashion-MNIST test accuracy (%) for the
classifiers; for the counting nets the relative error of the summed density map (the count)
against the torch fp32 model's, averaged over a few images.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import codl
from codl import _ops
from codl.bench.ternary import gemm_gmacs_per_s
from codl.bench.timing import Timing, measure, measure_pair
from codl.data import load_split
from codl.models import MCNN, CSRNet, FashionCNN, LeNet5
from codl.nn import freeze, fuse
from codl.training import evaluate, fine_tune

#: The runtimes, in table order: name -> what it is.
RUNTIMES: dict[str, str] = {
    "torch": "torch fp32 eager",
    "torch_compile": "torch.compile fp32 (Inductor)",
    "torch_int8": "torch static int8 (FX, x86/fbgemm)",
    "ort": "ONNX Runtime fp32",
    "ort_int8": "ONNX Runtime static int8 (QDQ)",
    "openvino": "OpenVINO fp32",
    "openvino_int8": "OpenVINO int8 (QDQ model)",
    "codl_layers": "codl frozen ternary, layer by layer",
    "codl": "codl frozen ternary, fused chain",
}
#: The models: name -> (label, input shape of one image, classifier?).
MODELS: dict[str, tuple[str, tuple[int, int, int], bool]] = {
    "lenet5": ("LeNet-5", (1, 28, 28), True),
    "fashioncnn": ("FashionCNN", (1, 28, 28), True),
    "csrnet": ("CSRNet-style VGG-16 + dilated", (3, 256, 256), False),
    "mcnn": ("MCNN-size student", (3, 256, 256), False),
}
#: Batches the counting nets run at by default (one 256x256 image is already ~1 s in fp32).
COUNTING_BATCHES = (1,)
#: A load average above this marks a row "loaded" (benchmarks/README.md's rule).
LOADED = 1.5
PACKAGES = {"ort": "onnxruntime", "ort_int8": "onnxruntime"}
PACKAGES |= {"openvino": "openvino", "openvino_int8": "openvino"}


@dataclass(frozen=True)
class Settings:
    """How long the run takes: training of the classifiers, calibration and evaluation sizes,
    timing repeats."""

    epochs: float = 1.0  # float training of the classifiers
    ternary_epochs: float = 1.0  # ternary-aware fine-tuning before freezing
    train_images: int | None = None  # None: all 60,000
    test_images: int | None = None  # None: all 10,000
    calibration_images: int = 256  # classifiers; the counting nets take counting_images
    counting_images: int = 4
    repeat: int = 7
    counting_repeat: int = 3
    data: str = "full"


QUICK = Settings(
    epochs=0.2,
    ternary_epochs=0.2,
    train_images=10_000,
    test_images=2_000,
    calibration_images=64,
    counting_images=2,
    repeat=3,
    counting_repeat=2,
)


@dataclass(frozen=True)
class Row:
    """One runtime on one model at one thread count and batch."""

    model: str
    runtime: str
    threads: int
    batch: int
    median_ms: float | None = None
    iqr_ms: float | None = None
    images_per_s: float | None = None
    load_average: float | None = None
    cpu_wait: float | None = None
    #: This runtime's median over codl's, both from the same interleaved pair (> 1: codl faster).
    codl_x: float | None = None
    #: Test accuracy (%) for a classifier; count relative error against fp32 for a counting net.
    accuracy: float | None = None
    skipped: str | None = None
    #: The float model's convolution and linear multiply-adds per second, in billions.
    gmacs_per_s: float | None = None

    @property
    def loaded(self) -> bool:
        return self.load_average is not None and self.load_average > LOADED


@dataclass
class Prepared:
    """A model in every form the runtimes need."""

    name: str
    float_model: nn.Module
    ternary: nn.Module  # the unfrozen ternary twin the frozen model was packed from
    frozen: nn.Module  # codl.nn.fuse of the frozen model where it is a chain, else the frozen model
    layers: nn.Module  # the frozen model itself, its layers called one by one from Python
    torch_int8: nn.Module | None
    onnx_fp32: Path | None
    onnx_int8: Path | None
    calibration: torch.Tensor
    evaluation: tuple[torch.Tensor, torch.Tensor | None]  # images, labels (None: counting)
    notes: dict[str, str] = field(default_factory=dict)


Predict = Callable[[torch.Tensor], torch.Tensor]


#: The runtimes that read the ONNX file torch exports (the export needs PyPI ``onnx``).
ONNX_RUNTIMES = frozenset({"ort", "ort_int8", "openvino", "openvino_int8"})


def installed(runtime: str) -> bool:
    """True when the packages ``runtime`` needs can be imported (``onnx`` too for those that
    run the exported ONNX file)."""
    package = PACKAGES.get(runtime)
    needed = [package] if package else []
    if runtime in ONNX_RUNTIMES:
        needed.append("onnx")
    return all(importlib.util.find_spec(name) is not None for name in needed)


def counting_images(count: int, shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """``count`` smooth random images (bilinear upsampling of a 1/8-size noise, normalised
    like ImageNet inputs): closer to a photograph's statistics than white noise."""
    channels, height, width = shape
    generator = torch.Generator().manual_seed(seed)
    small = torch.rand(count, channels, height // 8, width // 8, generator=generator)
    images = F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)
    return (images - 0.45) / 0.225


def counting_model(name: str) -> nn.Module:
    """The counting net ``name`` with seeded He-normal weights (fan-out, as CSRNet's VGG
    frontend was trained from), so that activations keep their scale through 16 layers."""
    torch.manual_seed(0)
    model = CSRNet() if name == "csrnet" else MCNN()
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model.eval()


def classifier(
    name: str,
    train: tuple[torch.Tensor, torch.Tensor],
    settings: Settings,
) -> tuple[nn.Module, nn.Module]:
    """The float classifier ``name`` trained for ``settings.epochs`` and its ternary twin
    fine-tuned from it for ``settings.ternary_epochs`` (both in eval mode)."""
    torch.manual_seed(0)
    model: nn.Module = LeNet5() if name == "lenet5" else FashionCNN()
    images, labels = train
    # One thread: these small nets gain little from a second, and on a shared machine torch's
    # two-thread training steps collapse under contention (7 s instead of 0.05 s per step).
    with _ops.using_threads(1):
        fine_tune(model, images, labels, epochs=settings.epochs, seed=0)
        ternary = codl.quantize_(copy.deepcopy(model), codl.TernaryConfig())
        fine_tune(ternary, images, labels, epochs=settings.ternary_epochs, lr=1e-3, seed=1)
    return model.eval(), ternary.eval()


def torch_static_int8(model: nn.Module, calibration: torch.Tensor) -> nn.Module:
    """torch's static int8 model: FX graph mode with the x86 (fbgemm) qconfig mapping, its
    observers calibrated on ``calibration`` (conv/BN/ReLU fused by ``prepare_fx``)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notices
        prepared = prepare_fx(
            copy.deepcopy(model).eval(),
            get_default_qconfig_mapping("x86"),
            (calibration[:1],),
        )
        with torch.no_grad():
            for start in range(0, len(calibration), 32):
                prepared(calibration[start : start + 32])
        quantized: nn.Module = convert_fx(prepared)
    return quantized.eval()


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """The fp32 model as ONNX with a dynamic batch (the TorchScript exporter: no onnxscript
    needed, and these CNNs need nothing newer)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            input_names=["images"],
            output_names=["outputs"],
            dynamic_axes={"images": {0: "batch"}, "outputs": {0: "batch"}},
        )
    return path


def ort_static_int8(fp32: Path, calibration: torch.Tensor, path: Path) -> Path:
    """ONNX Runtime's static int8 model (``quantize_static``: QDQ format, per-channel int8
    weights, uint8 activations, min-max calibration on ``calibration``)."""
    from onnxruntime.quantization import (  # type: ignore[import-untyped, import-not-found, unused-ignore]
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import (  # type: ignore[import-untyped, import-not-found, unused-ignore]
        quant_pre_process,
    )

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.batches = iter(
                [{"images": chunk.numpy()} for chunk in torch.split(calibration, 16)]
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    preprocessed = path.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(preprocessed))
    quantize_static(
        str(preprocessed),
        str(path),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    return path


def prepare(
    name: str,
    settings: Settings,
    workdir: Path,
    runtimes: Sequence[str],
    data: tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None,
) -> Prepared:
    """Model ``name`` in every form ``runtimes`` need; ``data`` (train, test) for a
    classifier."""
    _, shape, is_classifier = MODELS[name]
    if is_classifier:
        if data is None:
            raise ValueError(f"{name}: a classifier needs (train, test) data")
        train, test = data
        float_model, ternary = classifier(name, train, settings)
        calibration = train[0][: settings.calibration_images]
        evaluation: tuple[torch.Tensor, torch.Tensor | None] = test
    else:
        float_model = counting_model(name)
        ternary = codl.quantize_(copy.deepcopy(float_model), codl.TernaryConfig())
        calibration = counting_images(settings.counting_images, shape, seed=1)
        evaluation = (counting_images(settings.counting_images, shape, seed=2), None)
    # Static activation scales from the same calibration images the int8 runtimes get.
    layers = freeze(ternary, calibration=calibration)
    notes: dict[str, str] = {}
    try:
        frozen: nn.Module = fuse(layers, calibration[:1])
    except ValueError as why:  # not a straight chain (MCNN's concatenated columns)
        frozen = layers
        notes["codl"] = f"layer by layer: {why}"
    wanted = set(runtimes)
    int8 = torch_static_int8(float_model, calibration) if "torch_int8" in wanted else None
    onnx_fp32 = onnx_int8 = None
    if any(installed(runtime) for runtime in wanted & ONNX_RUNTIMES):
        onnx_fp32 = export_onnx(float_model, calibration[:1], workdir / f"{name}.onnx")
        if wanted & {"ort_int8", "openvino_int8"} and installed("ort_int8"):
            onnx_int8 = ort_static_int8(onnx_fp32, calibration, workdir / f"{name}.int8.onnx")
    return Prepared(
        name,
        float_model,
        ternary,
        frozen,
        layers,
        int8,
        onnx_fp32,
        onnx_int8,
        calibration,
        evaluation,
        notes,
    )


def predictor(runtime: str, prepared: Prepared, threads: int, batch: int | None) -> Predict | str:
    """A function from a batch of images to the model's outputs on ``runtime`` with
    ``threads`` threads (the caller sets torch's and codl's), static at ``batch`` where the
    runtime compiles for a shape (None: any batch); or why the runtime is skipped."""
    if not installed(runtime):
        extra = " onnx" if runtime in ONNX_RUNTIMES else ""
        return f"not installed (pip install {PACKAGES[runtime]}{extra})"
    if runtime == "torch":
        return torch.no_grad()(prepared.float_model)
    if runtime == "codl":
        return torch.no_grad()(prepared.frozen)
    if runtime == "codl_layers":
        return torch.no_grad()(prepared.layers)
    if runtime == "torch_int8":
        assert prepared.torch_int8 is not None
        return torch.no_grad()(prepared.torch_int8)
    if runtime == "torch_compile":
        compiled = torch.compile(prepared.float_model, dynamic=False)
        return torch.no_grad()(compiled)
    path = prepared.onnx_int8 if runtime.endswith("int8") else prepared.onnx_fp32
    if path is None:
        return "no int8 ONNX model (quantize_static needs onnxruntime)"
    if runtime.startswith("ort"):
        return onnxruntime_predictor(path, threads)
    import openvino  # type: ignore[import-untyped, import-not-found, unused-ignore]

    core = openvino.Core()
    model = core.read_model(str(path))
    if batch is not None:
        _, shape, _ = MODELS[prepared.name]
        model.reshape([batch, *shape])
    config: dict[str, object] = {
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
    }
    if runtime == "openvino":
        # fp32 means fp32: on AMX CPUs OpenVINO otherwise runs an fp32 model in bf16.
        config["INFERENCE_PRECISION_HINT"] = "f32"
    compiled_model = core.compile_model(model, "CPU", config)
    return partial(_run_openvino, compiled_model.create_infer_request())


def onnxruntime_predictor(path: Path, threads: int) -> Predict:
    """The ONNX model at ``path`` (input ``images``) in an ONNX Runtime CPU session on
    ``threads`` intra-op threads, as a function of a batch."""
    import onnxruntime  # type: ignore[import-untyped, import-not-found, unused-ignore]

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return partial(_run_ort, session)


def _run_ort(session: Any, images: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(session.run(None, {"images": images.numpy()})[0])


def _run_openvino(request: Any, images: torch.Tensor) -> torch.Tensor:
    request.infer({0: images.numpy()})
    return torch.from_numpy(request.get_output_tensor(0).data.copy())


def count_relative_error(outputs: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean over images of ``|sum(outputs) - sum(reference)| / |sum(reference)|`` (the count a
    density map gives against the fp32 model's)."""
    ours = outputs.double().flatten(1).sum(dim=1)
    exact = reference.double().flatten(1).sum(dim=1)
    return float(((ours - exact).abs() / exact.abs().clamp_min(1e-12)).mean())


def accuracy(predict: Predict, prepared: Prepared, batch: int = 500) -> float:
    """Test accuracy (%) of a classifier, or the count relative error of a counting net
    against the fp32 torch model."""
    images, labels = prepared.evaluation
    if labels is not None:
        # evaluate() calls .eval()/.train() on a module; a Module wrapper keeps it generic.
        return evaluate(_Wrapped(predict), images, labels, batch_size=batch)
    outputs = torch.cat([predict(image[None]) for image in images])
    with torch.no_grad():
        reference = prepared.float_model(images)
    return count_relative_error(outputs, reference)


class _Wrapped(nn.Module):
    def __init__(self, predict: Predict) -> None:
        super().__init__()
        self.predict = predict

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.predict(images)


def significant(value: float, digits: int = 6) -> float:
    """``value`` to ``digits`` significant digits: a median of 40 us kept to 4 decimals of a
    millisecond was 0.1% off, more than the images/s computed from it."""
    return float(f"{value:.{digits}g}")


def multiply_adds(model: nn.Module, shape: tuple[int, int, int]) -> int:
    """Multiply-adds of one image of ``shape`` through ``model``'s convolutions and linear
    layers (the work every runtime does, whatever it skips or fuses)."""
    total = 0

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(module, (nn.Conv2d, nn.Linear))
        # An output value of a convolution sums (in_channels / groups) x kernel products.
        per_output = module.weight[0].numel()
        total += output[0].numel() * per_output

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    hooks = [layer.register_forward_hook(count) for layer in layers]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *shape))
    finally:
        for hook in hooks:
            hook.remove()
    return total


def _row(
    prepared: Prepared,
    runtime: str,
    threads: int,
    batch: int,
    timing: Timing,
    codl_x: float | None,
    score: float | None,
    macs: int,
) -> Row:
    return Row(
        model=prepared.name,
        runtime=runtime,
        threads=threads,
        batch=batch,
        median_ms=significant(timing.median_ms),
        iqr_ms=significant(timing.iqr_ms),
        images_per_s=round(batch / (timing.median_ms * 1e-3), 2),
        load_average=round(timing.load_average, 2),
        cpu_wait=None if timing.cpu_wait is None else round(timing.cpu_wait, 3),
        codl_x=None if codl_x is None else round(codl_x, 3),
        accuracy=None if score is None else round(score, 4),
        gmacs_per_s=significant(macs * batch / (timing.median_ms * 1e-3) / 1e9, 4),
    )


def bench_model(
    prepared: Prepared,
    runtimes: Sequence[str],
    threads_list: Sequence[int],
    batches: Sequence[int],
    repeat: int,
    *,
    progress: bool = False,
) -> list[Row]:
    """Every runtime on ``prepared`` at every thread count and batch: accuracy once (at the
    first thread count), times interleaved with codl's where codl is among ``runtimes``."""
    rows: list[Row] = []
    scores: dict[str, float | None] = {}
    _, shape, _ = MODELS[prepared.name]
    macs = multiply_adds(prepared.float_model, shape)
    for threads in threads_list:
        with _ops.using_threads(threads):
            # Inductor bakes the thread count into its kernels: compile afresh per count.
            torch._dynamo.reset()
            if not scores:
                for runtime in runtimes:
                    predict = predictor(runtime, prepared, threads, None)
                    scores[runtime] = (
                        None if isinstance(predict, str) else accuracy(predict, prepared)
                    )
            for batch in batches:
                images = _inputs(prepared, batch, shape)
                fns: dict[str, Callable[[], object] | str] = {}
                for runtime in runtimes:
                    predict = predictor(runtime, prepared, threads, batch)
                    fns[runtime] = predict if isinstance(predict, str) else partial(predict, images)
                codl_fn = fns.get("codl")
                codl_timing: Timing | None = None
                for runtime in runtimes:
                    fn = fns[runtime]
                    if isinstance(fn, str):
                        rows.append(Row(prepared.name, runtime, threads, batch, skipped=fn))
                        continue
                    if runtime == "codl" and codl_timing is not None:
                        continue
                    if progress:
                        print(
                            f"  {prepared.name} {runtime} threads {threads} batch {batch}",
                            flush=True,
                        )
                    if callable(codl_fn) and runtime != "codl":
                        ours, theirs = measure_pair(codl_fn, fn, repeat)
                        if codl_timing is None:
                            codl_timing = ours
                            rows.append(
                                _row(
                                    prepared,
                                    "codl",
                                    threads,
                                    batch,
                                    ours,
                                    1.0,
                                    scores["codl"],
                                    macs,
                                )
                            )
                        codl_x = theirs.median_ms / ours.median_ms
                        rows.append(
                            _row(
                                prepared,
                                runtime,
                                threads,
                                batch,
                                theirs,
                                codl_x,
                                scores[runtime],
                                macs,
                            )
                        )
                    else:
                        timing = measure(fn, repeat)
                        if runtime == "codl":
                            codl_timing = timing
                        rows.append(
                            _row(
                                prepared,
                                runtime,
                                threads,
                                batch,
                                timing,
                                None,
                                scores[runtime],
                                macs,
                            )
                        )
    order = {name: index for index, name in enumerate(RUNTIMES)}
    rows.sort(key=lambda r: (r.threads, r.batch, order[r.runtime]))
    return rows


def _inputs(prepared: Prepared, batch: int, shape: tuple[int, int, int]) -> torch.Tensor:
    images = prepared.evaluation[0]
    if len(images) >= batch:
        return images[:batch].contiguous()
    return counting_images(batch, shape, seed=3)


def format_table(rows: Sequence[Row]) -> str:
    """A Markdown table: one line per model, threads, batch and runtime."""
    lines = [
        "| model | threads | batch | runtime | median ms | IQR ms | images/s | GMAC/s | codl x | "
        "accuracy | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        label = MODELS[r.model][0]
        head = f"| {label} | {r.threads} | {r.batch} | {RUNTIMES[r.runtime]} |"
        if r.skipped is not None:
            lines.append(f"{head} skipped: {r.skipped} | | | | | | |")
            continue
        score = ""
        if r.accuracy is not None:
            score = f"{r.accuracy:.2f}%" if MODELS[r.model][2] else f"count err {r.accuracy:.2%}"
        codl_x = "" if r.codl_x is None else f"{r.codl_x:.2f}"
        load = f"{r.load_average:.2f}" + (" loaded" if r.loaded else "")
        rate = "" if r.gmacs_per_s is None else f"{r.gmacs_per_s:,.1f}"
        lines.append(
            f"{head} {r.median_ms:.3f} | {r.iqr_ms:.3f} | {r.images_per_s:,.1f} | {rate} | "
            f"{codl_x} | {score} | {load} |"
        )
    return "\n".join(lines)


def run(
    models: Sequence[str],
    runtimes: Sequence[str],
    threads: Sequence[int],
    batches: Sequence[int],
    settings: Settings,
    *,
    counting_batches: Sequence[int] = COUNTING_BATCHES,
    progress: bool = False,
    on_model: Callable[[list[Row]], None] | None = None,
) -> list[Row]:
    """Prepares each model and times it on every runtime (:func:`bench_model`); calls
    ``on_model`` with the rows so far after each model (a long run keeps what it measured)."""
    for name, known, what in ((models, MODELS, "model"), (runtimes, RUNTIMES, "runtime")):
        unknown = [n for n in name if n not in known]
        if unknown:
            raise ValueError(f"unknown {what}(s) {unknown}; expected some of {list(known)}")
    if not threads or any(isinstance(t, bool) or not isinstance(t, int) or t < 1 for t in threads):
        raise ValueError(f"threads: expected positive ints, received {list(threads)}")
    if not batches or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batches):
        raise ValueError(f"batches: expected positive ints, received {list(batches)}")
    data = None
    if any(MODELS[name][2] for name in models):
        train_images, train_labels, _ = load_split("train", settings.data)  # type: ignore[arg-type]
        test_images, test_labels, _ = load_split("test", settings.data)  # type: ignore[arg-type]
        n_train, n_test = settings.train_images, settings.test_images
        data = (
            (train_images[:n_train], train_labels[:n_train]),
            (test_images[:n_test], test_labels[:n_test]),
        )
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="codl-inference-") as tmp:
        for name in models:
            if progress:
                print(f"preparing {name}", flush=True)
            prepared = prepare(name, settings, Path(tmp), runtimes, data)
            for runtime, note in prepared.notes.items():
                print(f"  {runtime}: {note}", flush=True)
            classifier_model = MODELS[name][2]
            rows += bench_model(
                prepared,
                runtimes,
                threads,
                batches if classifier_model else counting_batches,
                settings.repeat if classifier_model else settings.counting_repeat,
                progress=progress,
            )
            if on_model is not None:
                on_model(rows)
    return rows


def main(argv: Sequence[str] | None = None, *, results_dir: Path | None = None) -> int:
    from codl.bench import default_results_dir, machine

    out_dir = results_dir or default_results_dir()
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=list(RUNTIMES))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument(
        "--batches",
        nargs="+",
        type=int,
        default=[1, 64],
        help="batches of the classifiers (default 1 64)",
    )
    parser.add_argument(
        "--counting-batches",
        nargs="+",
        type=int,
        default=list(COUNTING_BATCHES),
        help="batches of the 3x256x256 counting nets (default 1)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short training on 10k images, 2k test images, fewer repeats",
    )
    parser.add_argument("--repeat", type=int, default=None, help="timed rounds per runtime")
    parser.add_argument("--epochs", type=float, default=None, help="float training epochs")
    parser.add_argument(
        "--ternary-epochs", type=float, default=None, help="ternary fine-tuning epochs"
    )
    parser.add_argument("--data", choices=["full", "subset"], default="full")
    parser.add_argument("--out", type=Path, default=out_dir / "inference.json")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else Settings()
    settings = Settings(**{**asdict(settings), "data": args.data})
    if args.repeat is not None:
        settings = Settings(
            **{**asdict(settings), "repeat": args.repeat, "counting_repeat": args.repeat}
        )
    for option in ("epochs", "ternary_epochs"):
        if getattr(args, option) is not None:
            settings = Settings(**{**asdict(settings), option: getattr(args, option)})
    skipped = [r for r in args.runtimes if not installed(r)]
    if skipped:
        print(f"not installed, skipped: {skipped}", flush=True)
    # Near the int8 multiply-add rate of a VNNI core: what the GMAC/s column is read against.
    # The machine's speed drifts over a long run: the rate is taken before the models and again
    # after each, and the table is read against its range.
    gemm_rates: dict[int, list[float]] = {t: [round(gemm_gmacs_per_s(t), 1)] for t in args.threads}

    def write(rows: list[Row]) -> None:
        table = format_table(rows)
        print(table, flush=True)
        print(f"load average now {os.getloadavg()[0]:.2f}; codl x: runtime time / codl time")
        for threads, rates in gemm_rates.items():
            rates.append(round(gemm_gmacs_per_s(threads), 1))
            print(
                f"codl's ternary GEMM (4096 x 4096, batch 64, hot) at {threads} thread(s): "
                f"{min(rates):,.1f}-{max(rates):,.1f} GMAC/s (before the models and after each)"
            )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "machine": machine(),
            "settings": asdict(settings),
            "argv": list(argv) if argv is not None else None,
            "rows": [asdict(r) for r in rows],
            "table": table,
            "ternary_gemm_gmacs_per_s": {str(t): rates for t, rates in gemm_rates.items()},
        }
        args.out.write_text(json.dumps(payload, indent=2, default=_finite) + "\n")

    run(
        args.models,
        args.runtimes,
        args.threads,
        args.batches,
        settings,
        counting_batches=args.counting_batches,
        progress=True,
        on_model=write,
    )
    return 0


def _finite(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)
