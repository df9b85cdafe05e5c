"""``codl bench inference`` on tiny settings with the torch-only runtimes and codl's frozen
model: the counting nets have the published sizes and CSRNet's parameter names, and every
accuracy figure in the table is the one an independent computation gives."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import codl
from codl import bench
from codl.bench import inference
from codl.data import load_split
from codl.models import MCNN, CSRNet
from codl.training import evaluate

TINY = inference.Settings(
    epochs=0.1,
    ternary_epochs=0.1,
    calibration_images=32,
    counting_images=2,
    repeat=1,
    counting_repeat=1,
    data="subset",
)
TORCH_ONLY = ["torch", "torch_int8", "codl"]


def _parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _conv(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k + cout


def test_csrnet_has_the_papers_size_and_the_reference_parameter_names() -> None:
    model = CSRNet()
    # Li et al. 2018, Table 3: 16.26M. VGG-16's conv1_1..conv4_3, the dilated backend, 1x1 out.
    frontend = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256)]
    frontend += [(256, 512), (512, 512), (512, 512)]
    backend = [(512, 512), (512, 512), (512, 512), (512, 256), (256, 128), (128, 64)]
    expected = sum(_conv(a, b, 3) for a, b in frontend + backend) + _conv(64, 1, 1)
    assert _parameters(model) == expected == 16_263_489
    # The reference make_layers: conv, ReLU per layer, max-pools as their own entries.
    conv_indices = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21]
    names = [f"frontend.{i}.{p}" for i in conv_indices for p in ("weight", "bias")]
    names += [f"backend.{i}.{p}" for i in range(0, 12, 2) for p in ("weight", "bias")]
    names += ["output_layer.weight", "output_layer.bias"]
    assert list(model.state_dict()) == names
    assert all(m.dilation == (2, 2) for m in model.backend if isinstance(m, nn.Conv2d))
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 96)).shape == (1, 1, 8, 12)


def test_mcnn_is_mcnn_sized() -> None:
    model = MCNN()
    columns = [(3, 16, 9), (16, 32, 7), (32, 16, 7), (16, 8, 7)]
    columns += [(3, 20, 7), (20, 40, 5), (40, 20, 5), (20, 10, 5)]
    columns += [(3, 24, 5), (24, 48, 3), (48, 24, 3), (24, 12, 3)]
    expected = sum(_conv(a, b, k) for a, b, k in columns) + _conv(30, 1, 1)
    assert _parameters(model) == expected == 133_705  # Zhang et al. 2016: 0.13M
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 96)).shape == (1, 1, 16, 24)


def test_count_relative_error_is_the_relative_error_of_the_sums() -> None:
    outputs = torch.tensor([[[[1.0, 2.0]]], [[[3.0, 3.0]]]])
    reference = torch.tensor([[[[2.0, 2.0]]], [[[2.0, 2.0]]]])
    # Image 0: |3 - 4| / 4; image 1: |6 - 4| / 4.
    assert inference.count_relative_error(outputs, reference) == pytest.approx((0.25 + 0.5) / 2)


def test_inference_is_a_registered_program() -> None:
    assert "inference" in bench.programs()


def test_bad_selections_are_value_errors() -> None:
    with pytest.raises(ValueError, match="model"):
        inference.run(["resnet"], ["torch"], [1], [1], TINY)
    with pytest.raises(ValueError, match="runtime"):
        inference.run(["lenet5"], ["tensorrt"], [1], [1], TINY)
    with pytest.raises(ValueError, match="threads"):
        inference.run(["lenet5"], ["torch"], [0], [1], TINY)
    with pytest.raises(ValueError, match="batches"):
        inference.run(["lenet5"], ["torch"], [1], [], TINY)


def test_table_marks_loaded_rows_and_skipped_runtimes() -> None:
    rows = [
        inference.Row("lenet5", "torch", 1, 1, 1.0, 0.1, 1000.0, 2.0, None, 0.5, 88.0),
        inference.Row("lenet5", "ort", 1, 1, skipped="not installed (pip install onnxruntime)"),
        inference.Row("mcnn", "codl", 1, 1, 10.0, 0.1, 100.0, 0.4, None, 1.0, 0.0123, None, 1.5),
    ]
    lines = inference.format_table(rows).splitlines()
    assert "88.00%" in lines[2] and "2.00 loaded" in lines[2] and "| 0.50 |" in lines[2]
    assert "skipped: not installed (pip install onnxruntime)" in lines[3]
    assert "count err 1.23%" in lines[4] and "loaded" not in lines[4]
    assert "| 100.0 | 1.5 | 1.00 |" in lines[4]
    # Every line has the header's columns.
    assert len({line.count("|") for line in lines}) == 1


def test_multiply_adds_count_each_convolution_and_linear_layer() -> None:
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 4, 3, stride=2, padding=1, groups=2),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 8 * 8, 10),
    )
    # 16x16 outputs of 8 channels over 3x3x3 inputs; 8x8 of 4 over 3x3x(8 / 2); 256 x 10.
    expected = 16 * 16 * 8 * 27 + 8 * 8 * 4 * 36 + 256 * 10
    assert inference.multiply_adds(model, (3, 16, 16)) == expected
    # The counting hooks are gone afterwards.
    assert all(not m._forward_hooks for m in model.modules())


@pytest.fixture(scope="module")
def data() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    images, labels, _ = load_split("train", "subset")
    test_images, test_labels, _ = load_split("test", "subset")
    return (images[:1024], labels[:1024]), (test_images[:300], test_labels[:300])


@pytest.mark.slow
def test_classifier_rows_report_the_accuracy_of_each_model(
    data: tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # CI has neither ONNX Runtime nor OpenVINO: they must show up as skipped, not fail.
    monkeypatch.setattr(inference, "installed", lambda runtime: runtime not in inference.PACKAGES)
    runtimes = [*TORCH_ONLY, "ort"]
    prepared = inference.prepare("lenet5", TINY, tmp_path, runtimes, data)
    rows = inference.bench_model(prepared, runtimes, [1], [1, 4], repeat=1)
    assert [(r.batch, r.runtime) for r in rows] == [
        (b, r) for b in (1, 4) for r in ["torch", "torch_int8", "ort", "codl"]
    ]
    by_runtime = {r.runtime: r for r in rows if r.batch == 4}
    test_images, test_labels = data[1]
    assert by_runtime["torch"].accuracy == pytest.approx(
        evaluate(prepared.float_model, test_images, test_labels), abs=1e-4
    )
    assert by_runtime["codl"].accuracy == pytest.approx(
        evaluate(prepared.frozen, test_images, test_labels), abs=1e-4
    )
    assert prepared.torch_int8 is not None
    assert by_runtime["torch_int8"].accuracy == pytest.approx(
        evaluate(prepared.torch_int8, test_images, test_labels), abs=1e-4
    )
    assert by_runtime["ort"].skipped is not None and "not installed" in by_runtime["ort"].skipped
    # codl's row is its pairing with torch eager; every timed row has a positive time.
    assert by_runtime["codl"].codl_x == 1.0
    for r in rows:
        if r.skipped is None:
            assert r.median_ms is not None and r.median_ms > 0
            assert r.images_per_s == pytest.approx(r.batch / (r.median_ms * 1e-3), rel=1e-3)
            assert r.load_average is not None
    # The fused chain (LeNet-5 is one) gives the frozen layers' floats bit for bit.
    assert isinstance(prepared.frozen, codl.nn.FusedChain)
    with torch.no_grad():
        assert torch.equal(prepared.frozen(test_images), prepared.layers(test_images))
    # The frozen model computes its unfrozen ternary twin: int8 activations, quantized per row,
    # move the logits by a few percent at most, and the top-1 classes almost never.
    with torch.no_grad():
        frozen = prepared.frozen(test_images)
        twin = prepared.ternary(test_images)
    relative = float((frozen - twin).norm() / twin.norm())
    assert relative < 0.05
    agreement = float((frozen.argmax(1) == twin.argmax(1)).float().mean())
    assert agreement >= 0.97


@pytest.mark.slow
def test_counting_rows_report_the_count_error_against_fp32(tmp_path: Path) -> None:
    runtimes = ["torch", "codl"]
    prepared = inference.prepare("mcnn", TINY, tmp_path, runtimes, None)
    rows = inference.bench_model(prepared, runtimes, [1], [1], repeat=1)
    by_runtime = {r.runtime: r for r in rows}
    images, labels = prepared.evaluation
    assert labels is None and images.shape == (2, 3, 256, 256)
    with torch.no_grad():
        frozen = prepared.frozen(images).double()
        reference = prepared.float_model(images).double()
    # Independently: the count (sum of the density map) of each image, relative error, mean.
    expected = sum(
        abs(float(f.sum()) - float(r.sum())) / abs(float(r.sum()))
        for f, r in zip(frozen, reference, strict=True)
    ) / len(images)
    assert by_runtime["codl"].accuracy == pytest.approx(expected, rel=1e-3)
    assert by_runtime["torch"].accuracy == pytest.approx(0.0, abs=1e-6)
    # The frozen net is its ternary twin with int8 activations: the counts agree closely.
    with torch.no_grad():
        twin = prepared.ternary(images).double()
    assert (
        float(((frozen.sum((1, 2, 3)) - twin.sum((1, 2, 3))) / twin.sum((1, 2, 3))).abs().max())
        < 0.05
    )


def test_times_keep_six_significant_digits_however_small() -> None:
    # A fast model's median (40 us) kept to 4 decimals of a millisecond lost 0.1%.
    assert inference.significant(0.04035712345) == 0.0403571
    assert inference.significant(1234.56789) == 1234.57
    assert inference.significant(0.0) == 0.0
    median = inference.significant(0.04035712345)
    assert 1 / (median * 1e-3) == pytest.approx(1 / (0.04035712345e-3), rel=1e-5)
