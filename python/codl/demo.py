"""``codl demo``: the main job. Shows what codl knows of this machine, then runs each capability
on real data (Fashion-MNIST) against its plain-torch equivalent. Each capability adds a section
to ``SECTIONS``; each stays well under a minute on the shipped data.

Each section prints its report and returns its figures; ``codl demo --json`` prints them as one
JSON document on stdout (the report then goes to stderr), so scripts and tests read numbers, not
sentences.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import torch

Figures = dict[str, Any]
Section = Callable[["DemoContext"], Figures]


class DemoContext:
    """What sections share: the data location and one cached load of the test split."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self._test: tuple[torch.Tensor, torch.Tensor] | None = None

    def test_split(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._test is None:
            from codl.data import load_fashion_mnist

            loaded = load_fashion_mnist("test", root=self.root)
            print(
                f"data: Fashion-MNIST test split, {loaded.source.num_examples} images "
                f"from {loaded.source.kind} ({loaded.source.path})"
            )
            self._test = (loaded.images, loaded.labels)
        return self._test


def _heading(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 70 - len(title)))


def section_info(_: DemoContext) -> Figures:
    import codl

    _heading("codl info")
    info = codl.info()
    for key, value in info.items():
        shown = ", ".join(map(str, value)) if isinstance(value, list) else value
        print(f"  {key:<16} {shown}")
    return dict(info)


def section_packing(context: DemoContext) -> Figures:
    from codl import _ops, kernels
    from codl.bench import format_table, run_cases
    from codl.bench.pack import cases_for

    _heading("bit packing kernels on real data")
    images, _ = context.test_split()
    pixels = images.to(torch.float32) / 255.0
    # Deviation from the mean image: its signs are the 1-bit view a sign compressor sends, and
    # thresholding it as TWN does (delta = 0.7 mean |x|) gives ternary codes.
    deviation = (pixels - pixels.mean(0)).reshape(-1).contiguous()
    delta = 0.7 * deviation.abs().mean()
    codes = (torch.sign(deviation) * (deviation.abs() > delta)).to(torch.int8)
    n = deviation.numel()
    print(
        f"  {n:,} values ({images.shape[0]} images of 28x28); ternary sparsity "
        f"{(codes == 0).float().mean().item():.1%}; threads {_ops.get_num_threads()}, "
        f"dispatch {_ops.get_dispatch_level()}"
    )

    results = run_cases(
        "pack",
        cases_for(deviation, codes),
        repeat=5,
        threads=_ops.get_num_threads(),
        progress=False,
    )
    print("\n".join("  " + line for line in format_table(results).splitlines()))
    print("  (every codl result was checked equal to torch's before timing)")
    signs = kernels.pack_signs(deviation)
    if not torch.equal(
        kernels.unpack_signs(signs, n), torch.where(torch.signbit(deviation), -1.0, 1.0)
    ):
        raise RuntimeError("signs did not survive a round trip")
    print(
        f"  signs: 1 bit per value, {4 * n / signs.numel():.0f}x smaller than float32, "
        "round trip exact"
    )
    figures: Figures = {
        "values": n,
        "ternary_sparsity": (codes == 0).float().mean().item(),
        "kernels": [asdict(result) for result in results],
        "bits_per_value": {"signs": 8 * signs.numel() / n},
    }
    formats: tuple[kernels.TernaryFormat, ...] = ("2bit", "base3")
    for fmt in formats:
        packed = kernels.pack_ternary(codes, format=fmt)
        if not torch.equal(kernels.unpack_ternary(packed, n, format=fmt), codes):
            raise RuntimeError(f"ternary {fmt} did not survive a round trip")
        print(
            f"  ternary {fmt:<5}: {8 * packed.numel() / n:.2f} bits per weight, "
            f"{4 * n / packed.numel():.1f}x smaller than float32, round trip exact"
        )
        figures["bits_per_value"][f"ternary {fmt}"] = 8 * packed.numel() / n
    return figures


def section_ternary(context: DemoContext) -> Figures:
    from codl.bench import median_ms
    from codl.data import load_split
    from codl.nn import freeze, fuse
    from codl.nn.lenet import train_models
    from codl.ternary import TernaryConfig, pack_weight, ternary_linear
    from codl.training import evaluate

    _heading("ternary weights {-a, 0, +a}: training, packing, inference")
    side = 4096
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(-1, 2, (side, side), dtype=torch.int8, generator=generator)
    weight = pack_weight(codes, torch.rand(side, generator=generator) + 0.5)
    dense = weight.dequantize()
    x = torch.randn(1, side, generator=generator)
    codl_ms = median_ms(lambda: ternary_linear(x, weight), 21)
    torch_ms = median_ms(lambda: x @ dense.T, 11)
    print(
        f"  {side}x{side} layer at batch 1: codl ternary {codl_ms:.3f} ms, torch float32 "
        f"{torch_ms:.3f} ms ({torch_ms / codl_ms:.1f}x); weights {weight.nbytes() / 2**20:.1f} "
        f"MiB vs {4 * side * side / 2**20:.0f} MiB ({4 * side * side / weight.nbytes():.1f}x "
        "smaller)"
    )

    print(
        "  LeNet-5 on the shipped Fashion-MNIST subset (3000 train / 1000 test), float and "
        "ternary twin (every layer ternary, so the frozen model is one chain of codl kernels), "
        "3 epochs each:"
    )
    report, float_model, ternary_model = train_models(
        epochs=3, data="subset", progress=False, config=TernaryConfig()
    )
    print(
        f"  accuracy: float {report['float_accuracy']:.1f}%, ternary "
        f"{report['ternary_accuracy']:.1f}% (gap {report['gap']:.1f} points; float layers "
        f"kept: {', '.join(report['float_layers']) or 'none'}); trained in "
        f"{report['seconds']:.0f} s"
    )
    for layer in report["sparsity"]:
        print(
            f"    {layer['name']:<14} {tuple(layer['shape'])!s:<18} sparsity "
            f"{layer['sparsity']:.1%}"
        )
    train_images = load_split("train", "subset")[0]
    images, labels, _ = load_split("test", "subset")
    frozen = freeze(ternary_model, calibration=train_images[:256])
    path = "one call into the core"
    try:
        frozen = fuse(frozen, images[:1])
    except ValueError:  # a float layer kept (skip_first_and_last): the layers run one by one
        path = "layer by layer: a float first layer is not chained"
    frozen_accuracy = evaluate(frozen, images, labels)
    ort = _ort_session(float_model, images[:1])
    speed: dict[str, dict[str, float]] = {}
    print(
        f"  frozen (2-bit packed, BatchNorm folded, int8 activations chained, {path}): "
        f"accuracy {frozen_accuracy:.1f}%; images/s, {torch.get_num_threads()} thread(s):"
    )
    with torch.no_grad():
        for batch in (1, 64):
            x = images[:batch].contiguous()
            rounds = 51 if batch == 1 else 7
            runs: dict[str, Callable[[], object]] = {
                "codl": partial(frozen, x),
                "torch_fp32": partial(float_model, x),
            }
            if ort is not None:
                runs["onnxruntime_fp32"] = partial(
                    ort.run, None, {ort.get_inputs()[0].name: x.numpy()}
                )
            figures = {}
            for name, run in runs.items():
                time.sleep(0.05)  # let the previous runtime's spinning threads go to sleep
                figures[name] = batch * 1e3 / median_ms(run, rounds)
            speed[f"batch_{batch}"] = figures
            others = ", ".join(f"{k} {v:,.0f}" for k, v in figures.items() if k != "codl")
            print(f"    batch {batch:>2}: codl {figures['codl']:,.0f} vs {others}")
    if ort is None:
        print("    (ONNX Runtime not installed: pip install onnxruntime onnx to compare)")
    frozen_ms = 64e3 / speed["batch_64"]["codl"]
    float_ms = 64e3 / speed["batch_64"]["torch_fp32"]
    return {
        "layer": {
            "side": side,
            "codl_ms": codl_ms,
            "torch_ms": torch_ms,
            "weight_bytes": weight.nbytes(),
            "float32_bytes": 4 * side * side,
        },
        "lenet5": {
            "float_accuracy": report["float_accuracy"],
            "ternary_accuracy": report["ternary_accuracy"],
            "frozen_accuracy": frozen_accuracy,
            "float_layers": report["float_layers"],
            "sparsity": report["sparsity"],
            "frozen_images_per_s": 64e3 / frozen_ms,
            "float_images_per_s": 64e3 / float_ms,
            "images_per_s": speed,
        },
    }


def _ort_session(model: torch.nn.Module, example: torch.Tensor) -> Any:
    """An ONNX Runtime session of ``model`` (fp32, torch's thread count), or None when
    onnxruntime or onnx is not installed."""
    from codl.bench.inference import export_onnx, installed

    if not installed("ort"):
        return None
    import onnxruntime  # type: ignore[import-untyped, import-not-found, unused-ignore]

    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model.eval(), example, Path(tmp) / "model.onnx")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def section_kfac(_: DemoContext) -> Figures:
    from codl import _ops, linalg
    from codl.bench import median_ms
    from codl.bench.linalg import RESNET20_A, RESNET20_G, factors
    from codl.bench.training import train
    from codl.data import load_split
    from codl.linalg import reference

    _heading("K-FAC: batched Kronecker-factor inversion and natural-gradient training")
    mats, dampings = factors(RESNET20_A + RESNET20_G)
    codl_ms = median_ms(lambda: linalg.damped_inverse(mats, dampings), 5)
    torch_ms = median_ms(lambda: reference.damped_inverse(mats, dampings), 5)
    eig_ms = median_ms(lambda: linalg.sym_eig(mats), 3)
    eigh_ms = median_ms(lambda: reference.sym_eig(mats), 3)
    print(
        f"  ResNet-20's {len(mats)} factors (10 to 576 wide), {_ops.get_num_threads()} threads: "
        f"damped inverse codl {codl_ms:.1f} ms vs a torch cholesky loop {torch_ms:.1f} ms "
        f"({torch_ms / codl_ms:.1f}x); eigendecomposition {eig_ms:.1f} ms vs torch.linalg.eigh "
        f"{eigh_ms:.1f} ms ({eigh_ms / eig_ms:.1f}x)"
    )
    train_data = load_split("train", "subset")[:2]
    test_data = load_split("test", "subset")[:2]
    print(
        "  FashionCNN on the shipped subset (3000 train / 1000 test), 3 epochs, batch 128, "
        "same seed and batches, each optimizer at the best rate of a small grid on this subset:"
    )
    labels = {"sgd": "SGD+momentum (torch)", "adam": "Adam (torch)", "kfac": "K-FAC (codl)"}
    figures: Figures = {
        "factors": len(mats),
        "damped_inverse_ms": {"codl": codl_ms, "torch": torch_ms},
        "sym_eig_ms": {"codl": eig_ms, "torch": eigh_ms},
        "training": {},
    }
    for name, lr in (("sgd", 0.1), ("adam", 1e-3), ("kfac", 0.03)):
        run = train(name, lr, train_data, test_data, epochs=3, seed=0, progress=False)
        last = run.points[-1]
        label = f"{labels[name]:<20}"
        print(
            f"    {label} lr {lr:g}: test accuracy {last.test_accuracy:.1f}%, training loss "
            f"{last.train_loss:.3f}, {last.seconds:.1f} s"
        )
        figures["training"][name] = {
            "lr": lr,
            "test_accuracy": last.test_accuracy,
            "train_loss": last.train_loss,
            "seconds": last.seconds,
        }
    return figures


def section_downsizing(_: DemoContext) -> Figures:
    from codl import _ops
    from codl.bench.compression import RECIPES, PipelineConfig, compress_model
    from codl.data import load_split

    _heading("downsizing: pruning, k-means weight sharing and the DEFLATE-packed .codl file")
    recipe = RECIPES["lenet5"]
    train = load_split("train", "subset")[:2]
    test = load_split("test", "subset")[:2]
    config = PipelineConfig(
        epochs=3.0, prune_epochs=3.0, ramp_fraction=0.4, quant_epochs=1.0, decode_repeat=7
    )
    print(
        f"  LeNet-5 on the shipped subset ({len(train[0])} train / {len(test[0])} test), 1 "
        f"thread: float {config.epochs:g} epochs, AGP pruning + fine-tuning "
        f"{config.prune_epochs:g}, k-means sharing + codebook fine-tuning {config.quant_epochs:g}:"
    )
    # One thread: batches of 128 small images gain little from a second one, and lose much
    # (spinning OpenMP workers) when the cores are shared with other work.
    with _ops.using_threads(1):
        r = compress_model(recipe, train, test, config)
    for layer in r.layers:
        if layer.encoding != "raw":
            print(
                f"    {layer.name:<20} {'x'.join(map(str, layer.shape)):<10} "
                f"{layer.sparsity:6.1%} pruned, {layer.bits}-bit codebook: "
                f"{layer.dense_bytes:>8,} -> {layer.stored_bytes:>6,} bytes"
            )
    print(
        f"  files: torch.save {r.torch_save_bytes:,} bytes, gzip -9 of it {r.gzip_bytes:,}, "
        f"gzip -9 of the compressed model's torch.save {r.compressed_torch_gzip_bytes:,}, "
        f".codl {r.codl_bytes:,}: {r.ratio:.1f}x smaller than torch.save ({r.ratio_vs_gzip:.1f}x "
        "smaller than gzip)"
    )
    print(
        f"  accuracy: float {r.float_accuracy:.1f}%, pruned {r.pruned_accuracy:.1f}%, shared "
        f"{r.shared_accuracy:.1f}%, loaded from .codl {r.codl_accuracy:.1f}% (the full-data "
        "benchmark, benchmarks/compression.py, trains and fine-tunes longer); codl.load gave "
        f"back every tensor bit for bit: {'yes' if r.exact_round_trip else 'NO'}"
    )
    out_mb = sum(layer.dense_bytes for layer in r.layers) / 1e6
    print(
        f"  decoding the whole state_dict ({out_mb:.2f} MB of float32), 1 thread, median of "
        f"{config.decode_repeat}: codl.load {r.codl_load_ms:.2f} ms "
        f"({out_mb / (r.codl_load_ms * 1e-3):.0f} MB/s), torch.load of the float file "
        f"{r.torch_load_ms:.2f} ms, gunzip + torch.load {r.gzip_torch_load_ms:.2f} ms; "
        f"pipeline {r.seconds:.0f} s"
    )
    return asdict(r)


def section_comm(_: DemoContext) -> Figures:
    from functools import partial

    from torch import nn

    from codl import _ops, comm
    from codl.bench import median_ms
    from codl.bench.codecs import torch_int8_encode, torch_sign_encode
    from codl.comm import accounting, linkmodel
    from codl.data import load_split
    from codl.models import FashionCNN

    _heading("parallelization: compressed gradients for torch.distributed (DDP comm hooks)")
    numel = 1 << 22
    gradient = torch.randn(numel, generator=torch.Generator().manual_seed(0))
    threads = _ops.get_num_threads()
    figures: Figures = {"encode": [], "projection": []}
    for label, codec, baseline in (
        ("SignEF (1 bit + scale, error feedback)", comm.SignEF(), torch_sign_encode),
        ("Int8 (block scale, error feedback)", comm.Int8(error_feedback=True), torch_int8_encode),
    ):
        error, torch_error = torch.zeros(numel), torch.zeros(numel)
        codl_ms = median_ms(partial(codec.encode, gradient, error=error), 5)
        torch_ms = median_ms(partial(baseline, gradient, torch_error), 5)
        print(
            f"  encode {label}, {numel:,} values, {threads} threads: codl {codl_ms:.1f} ms "
            f"({4 * numel / codl_ms / 1e6:.1f} GB/s) vs the same math in torch ops "
            f"{torch_ms:.1f} ms ({torch_ms / codl_ms:.1f}x)"
        )
        figures["encode"].append(
            {"codec": label, "values": numel, "codl_ms": codl_ms, "torch_ms": torch_ms}
        )
    model = FashionCNN()
    images, labels = load_split("test", "subset")[:2]
    profile = linkmodel.profile_step(
        model, (images[:64], labels[:64]), nn.functional.cross_entropy, repeat=3
    )
    codecs: list[tuple[str, comm.Codec | None]] = [
        ("float32 allreduce", None),
        ("FP16", comm.FP16()),
        ("Int8", comm.Int8()),
        ("SignEF", comm.SignEF()),
    ]
    link, nodes = linkmodel.ETHERNET_10G, 64
    print(
        f"  FashionCNN ({profile.gradient_numel:,} gradient values, step "
        f"{1e3 * profile.compute_s:.0f} ms at batch 64 here), projected on {nodes} nodes over "
        f"{link.name} (alpha-beta model, communication after backward, as break-even assumes):"
    )
    for name, candidate in codecs:
        speed = None if candidate is None else linkmodel.measure_throughput(candidate, repeat=3)
        projected = linkmodel.project(
            profile, candidate, nodes, link.bandwidth, link.latency, throughput=speed, overlap=False
        )
        ratio = accounting.compression_ratio(candidate, profile.gradient_numel, nodes)
        pays = ""
        break_even = None
        if candidate is not None and speed is not None:
            break_even = linkmodel.break_even_bandwidth(
                profile, candidate, nodes, link.latency, speed
            )
            pays = f", pays below {break_even / 1e9:.2f} GB/s"
        print(
            f"    {name:<18} bytes {ratio:6.3f} of float32's, communication "
            f"{1e3 * projected.comm_s:6.2f} ms, step {1e3 * projected.step_s:6.1f} ms, "
            f"efficiency {projected.efficiency:.0%}{pays}"
        )
        figures["projection"].append(
            {
                "codec": name,
                "nodes": nodes,
                "link": link.name,
                "bytes_ratio": ratio,
                "comm_ms": 1e3 * projected.comm_s,
                "step_ms": 1e3 * projected.step_s,
                "efficiency": projected.efficiency,
                "break_even_bytes_per_s": break_even,
            }
        )
    return figures


def section_distill(_: DemoContext) -> Figures:
    from codl import _ops
    from codl.data import load_split
    from codl.distill.quick import quick_kd

    _heading("learning algorithm: knowledge distillation with unlabeled data")
    train = load_split("train", "subset")[:2]
    test = load_split("test", "subset")[:2]
    with _ops.using_threads(1):
        # T = 1: a student this small cannot follow the teacher's softer (T = 4) distribution
        # and loses to the labels-only baseline with it (benchmarks/README.md, distillation).
        r = quick_kd(
            train, test, teacher_epochs=3, student_epochs=4, labeled_fraction=0.1, temperature=1.0
        )
    print(
        f"  FashionCNN teacher ({r.teacher_parameters:,} parameters, {r.teacher_accuracy:.1f}%) "
        f"and a student CNN 1/{r.teacher_parameters // r.student_parameters} its size, on the "
        f"shipped subset with 90% of the training labels hidden, 1 thread:"
    )
    print(
        f"    student on the labeled 10% alone (torch cross-entropy): {r.labels_only_accuracy:.1f}%"
        f"; with codl.distill.KDLoss(T=1) on every image (soft targets where labels are hidden): "
        f"{r.kd_accuracy:.1f}% ({r.kd_accuracy - r.labels_only_accuracy:+.1f} points), "
        f"{r.seconds:.0f} s"
    )
    return asdict(r)


OPTIMIZER_NAMES = {"kfac": "K-FAC", "sgd": "SGD", "adam": "Adam"}


def section_crowd(_: DemoContext) -> Figures:
    from codl.apps.crowd import RunConfig, report_figures, run_pipeline
    from codl.apps.crowd.teacher import TeacherNotInstalledError, teacher_weights_path

    _heading("application: crowd counting, teacher to a 1/1000-size student")
    try:
        teacher_weights_path()
    except TeacherNotInstalledError as error:
        print(f"  {error}; running the synthetic-only part")
        return _crowd_synthetic_only()
    config = RunConfig.demo()
    with tempfile.TemporaryDirectory(prefix="codl-demo-crowd-") as folder:
        run_pipeline(folder, config, progress=False)
        figures = report_figures(folder)
    errors, sizes, scene = figures.errors, figures.sizes, figures.scene
    print(
        f"  pretrained CSRNet ({figures.parameters['teacher']:,} parameters) adapted to "
        f"{config.train_frames} synthetic {config.height}x{config.width} frames with "
        f"{' and '.join(OPTIMIZER_NAMES[name] for name in config.optimizers)}; held-out count "
        f"MAE {errors['teacher_pretrained']['mae']:.1f} before, "
        f"{errors['teacher_adapted']['mae']:.1f} after"
    )
    print(
        f"  student ({figures.parameters['student']:,} parameters) distilled on "
        f"{config.unlabeled_frames} unlabeled frames, ternarized: {sizes['student_codl']:,}-byte "
        f".codl file (1/{sizes['teacher_float32'] // sizes['student_codl']:,} of float32 CSRNet), "
        f"MAE {errors['student']['mae']:.1f}; new scene {scene['before_mae']:.1f} -> "
        f"{scene['after_mae']:.1f} after re-distilling on {scene['frames']:.0f} frames"
    )
    for row, cells in figures.table.items():
        print(f"    {row:<19} speed {cells['speed'].text()}")
    print(
        "  (a toy run at tiny resolution; `codl crowd RUN_DIR` runs the full pipeline, "
        "docs/crowd/report.md has its report)"
    )
    return {
        "errors": errors,
        "sizes": sizes,
        "scene": scene,
        "table": {
            row: {kind: asdict(cell) for kind, cell in cells.items()}
            for row, cells in figures.table.items()
        },
    }


def _crowd_synthetic_only() -> Figures:
    """Without the teacher: a student trained on the synthetic ground truth, compressed and
    run from its .codl file."""
    from codl.apps.crowd import (
        CrowdStudent,
        RunConfig,
        count_errors,
        distill_student,
        load_student,
        save_student,
    )
    from codl.apps.crowd.pipeline import stack_frames

    config = RunConfig.demo()
    frames, truth = stack_frames(config.data("unlabeled"))
    student, _ = distill_student(frames, truth, student=CrowdStudent(), epochs=12, ternary_epochs=3)
    test_frames, test_truth = stack_frames(config.data("test"))
    with tempfile.TemporaryDirectory(prefix="codl-demo-crowd-") as folder:
        path = save_student(student, Path(folder) / "student.codl", calibration=frames)
        size = path.stat().st_size
        with torch.no_grad():
            mae, _ = count_errors(load_student(path)(test_frames), test_truth)
    print(f"  student trained on ground truth: {size:,}-byte .codl file, count MAE {mae:.1f}")
    return {"student_codl_bytes": size, "student_mae": mae}


SECTIONS: list[Section] = [
    section_info,
    section_packing,
    section_ternary,
    section_kfac,
    section_comm,
    section_distill,
    section_downsizing,
    section_crowd,
]


def section_name(section: Section) -> str:
    return section.__name__.removeprefix("section_")


def main(root: Path | None = None, as_json: bool = False) -> Figures:
    """Run every section; return their figures by section name. With ``as_json`` the report
    goes to stderr and stdout carries only the figures, as one JSON document."""
    start = time.perf_counter()
    context = DemoContext(root)
    figures: Figures = {}
    report = contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()
    with report:
        for section in SECTIONS:
            figures[section_name(section)] = section(context)
        figures["seconds"] = time.perf_counter() - start
        print(f"\ndemo finished in {figures['seconds']:.1f} s")
    if as_json:
        print(json.dumps(figures, indent=2, default=str))
    return figures
