"""The whole-model path of frozen ternary CNNs: direct int8 convolutions, static scales from
calibration images, convolutions chained in int8 NHWC with ReLU and pooling fused, checked bit
for bit against a float64 simulation of the same arithmetic, against the unfrozen model, under
torch.compile and torch.export, and with the fallbacks reported."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import codl
from codl import _ops
from codl.models import FashionCNN, LeNet5
from codl.nn import (
    FrozenTernaryConv2d,
    FrozenTernaryLinear,
    FusedChain,
    Int8MaxPool2d,
    freeze,
    frozen_summary,
    fuse,
)
from codl.prune import SparseLinear


def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            count = module.num_features
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.copy_(torch.randn(count, generator=generator) * 0.3)
            module.running_var.copy_(torch.rand(count, generator=generator) + 0.5)
            with torch.no_grad():
                module.weight.copy_(torch.randn(count, generator=generator).abs() + 0.5)
                module.bias.copy_(torch.randn(count, generator=generator) * 0.1)
    return model.eval()


def ternary(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return trained_like(codl.quantize_(model, codl.TernaryConfig()))


def images(count: int, seed: int) -> torch.Tensor:
    return torch.rand(count, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def quantize(x: torch.Tensor, scale: float) -> torch.Tensor:
    """The core's quantize_i8 in float32: x * (1 / scale), clamped, rounded half to even."""
    inverse = torch.tensor(1.0, dtype=torch.float32) / torch.tensor(scale, dtype=torch.float32)
    return torch.round((x * inverse).clamp(-127, 127))


def simulate_conv(
    q: torch.Tensor, conv: FrozenTernaryConv2d, input_scale: float, relu: bool
) -> torch.Tensor:
    """Float32 output of a frozen convolution from its int8 input values ``q`` (NCHW floats):
    exact integer sums in float64, then the epilogue in float32 as conv.h states it."""
    codes = conv.weight.unpack().reshape(conv.out_channels, conv.in_channels, *conv.kernel_size)
    sums = F.conv2d(
        q.double(),
        codes.double(),
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
    )
    multiplier = torch.tensor(input_scale, dtype=torch.float32) * conv.weight.alpha
    y = sums.float() * multiplier[None, :, None, None]
    if conv.bias is not None:
        y = y + conv.bias[None, :, None, None]
    return y.clamp_min(0) if relu else y


def test_chained_fashion_cnn_is_bit_exact_against_a_float64_simulation() -> None:
    model = ternary(FashionCNN())
    calibration = images(48, seed=1)
    frozen = freeze(model, calibration=calibration)
    first, second = (m for m in frozen.modules() if isinstance(m, FrozenTernaryConv2d))
    assert first.relu and second.relu
    assert not first.int8_input and second.int8_input
    assert first.output_scale == second.input_scale
    # The calibrated scales: absmax of each convolution's input over the calibration set.
    assert first.input_scale == pytest.approx(float(calibration.abs().max()) / 127)
    assert isinstance(frozen[2], Int8MaxPool2d) and frozen[2].dequantize_scale is None
    assert isinstance(frozen[5], Int8MaxPool2d) and frozen[5].dequantize_scale is not None

    x = images(5, seed=2)
    assert first.input_scale is not None and second.input_scale is not None
    assert second.output_scale is not None
    q1 = quantize(x, first.input_scale)
    y1 = simulate_conv(q1, first, first.input_scale, relu=True)
    q2 = F.max_pool2d(quantize(y1, second.input_scale), 2)
    y2 = simulate_conv(q2, second, second.input_scale, relu=True)
    pooled = F.max_pool2d(quantize(y2, second.output_scale), 2) * second.output_scale
    with torch.no_grad():
        layers = list(frozen)
        features = nn.Sequential(*layers[:7])(x)
        assert torch.equal(features, pooled.flatten(1))
        expected_logits = nn.Sequential(*layers[7:])(pooled.flatten(1))
        assert torch.equal(frozen(x), expected_logits)


@pytest.mark.parametrize("architecture", [LeNet5, FashionCNN])
def test_chained_model_stays_close_to_the_unfrozen_ternary_model(
    architecture: type[nn.Module],
) -> None:
    model = ternary(architecture())
    frozen = freeze(model, calibration=images(64, seed=1))
    dynamic = freeze(model)
    x = images(32, seed=3)
    with torch.no_grad():
        expected = model(x)
        chained = frozen(x)
        per_call = dynamic(x)
    for got in (chained, per_call):
        assert (got - expected).norm() <= 0.06 * expected.norm()
        assert (got.argmax(1) == expected.argmax(1)).float().mean() >= 0.85
    kinds = [type(m) for m in frozen.modules()]
    assert Int8MaxPool2d in kinds and nn.ReLU not in kinds[:4]


def test_results_do_not_depend_on_threads_or_batch() -> None:
    model = ternary(LeNet5())
    frozen = freeze(model, calibration=images(32, seed=1))
    x = images(9, seed=4)
    with torch.no_grad(), _ops.using_threads(1):
        one_thread = frozen(x)
        one_by_one = torch.cat([frozen(x[i : i + 1]) for i in range(len(x))])
    with torch.no_grad(), _ops.using_threads(2):
        two_threads = frozen(x)
    assert torch.equal(one_thread, two_threads)
    assert torch.equal(one_thread, one_by_one)


def test_chained_model_runs_under_torch_compile_and_torch_export() -> None:
    frozen = freeze(ternary(FashionCNN()), calibration=images(16, seed=1))
    x = images(3, seed=5)
    with torch.no_grad():
        expected = frozen(x)
        compiled = torch.compile(copy.deepcopy(frozen), fullgraph=True, backend="aot_eager")
        assert torch.equal(compiled(x), expected)
        exported = torch.export.export(frozen, (x,))
    targets = {str(node.target) for node in exported.graph.nodes}
    assert "codl.conv2d_int8_blocked.default" in targets
    assert "codl.max_pool2x2_int8.default" in targets
    with torch.no_grad():
        assert torch.equal(exported.module()(x), expected)


def test_summary_says_what_runs_where_and_unsupported_layers_warn() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=4),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, padding_mode="reflect"),
        nn.Flatten(),
        nn.Linear(16 * 28 * 28, 10),
    )
    codl.quantize_(model, codl.TernaryConfig())
    with pytest.warns(UserWarning) as caught:
        frozen = freeze(trained_like(model), calibration=images(8, seed=1))
    messages = " ".join(str(w.message) for w in caught)
    assert "'2' (groups=4)" in messages
    rows = {row["name"]: row for row in frozen_summary(frozen)}
    assert rows["0"]["runs_on"].startswith("codl direct conv + ReLU")
    assert rows["2"]["runs_on"] == "torch float32"
    assert rows["6"]["layer"].startswith("FrozenTernaryLinear")
    assert rows["0"]["weight_bytes"] > 0
    x = images(2, seed=6)
    with torch.no_grad():
        assert torch.isfinite(frozen(x)).all()


def test_bad_calibration_and_inputs_raise_clear_errors() -> None:
    model = ternary(LeNet5())
    with pytest.raises(ValueError, match="calibration"):
        freeze(model, calibration=torch.zeros(0, 1, 28, 28))
    with pytest.raises(ValueError, match="calibration"):
        freeze(model, calibration=torch.zeros(4, 1, 28, 28, dtype=torch.int64))
    frozen = freeze(model, calibration=images(8, seed=1))
    with torch.no_grad(), pytest.raises(ValueError, match="1 channels"):
        frozen(torch.zeros(2, 3, 28, 28))
    with torch.no_grad(), pytest.raises(ValueError, match="finite"):
        frozen(torch.full((1, 1, 28, 28), float("nan")))


def test_freeze_without_calibration_keeps_float_boundaries_and_export_c_layout() -> None:
    model = ternary(LeNet5())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frozen = freeze(model)
    convs = [m for m in frozen.modules() if isinstance(m, FrozenTernaryConv2d)]
    assert all(not c.int8_input and c.output_scale is None and not c.relu for c in convs)
    assert any(isinstance(m, FrozenTernaryLinear) for m in frozen.modules())
    assert not any(isinstance(m, Int8MaxPool2d) for m in frozen.modules())


def test_pruned_linear_layers_become_sparse_int8_layers() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 300),
        nn.ReLU(),
        nn.Linear(300, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    ).eval()
    with torch.no_grad():
        for layer, keep in ((model[1], 0.05), (model[3], 0.5)):
            weight = layer.weight
            threshold = weight.abs().flatten().kthvalue(int((1 - keep) * weight.numel())).values
            weight.mul_(weight.abs() > threshold)
    frozen = freeze(model)
    assert isinstance(frozen[1], SparseLinear)  # 95% zeros: the sparse kernel pays
    assert type(frozen[3]) is nn.Linear  # 50% zeros: stays dense
    rows = {row["name"]: row for row in frozen_summary(frozen)}
    assert rows["1"]["runs_on"].startswith("codl sparse int8")
    assert rows["1"]["weight_bytes"] < model[1].weight.numel() * 4 * 0.15
    x = images(16, seed=7)
    with torch.no_grad():
        expected, got = model(x), frozen(x)
    # int8 values per row: within about 1% of the float model's outputs.
    assert (got - expected).norm() <= 0.02 * expected.norm()
    assert torch.equal(model[1].weight != 0, frozen[1].dense_weight() != 0)


@pytest.mark.parametrize("architecture", [LeNet5, FashionCNN])
def test_fused_chain_gives_the_frozen_models_floats_bit_for_bit(
    architecture: type[nn.Module],
) -> None:
    frozen = freeze(ternary(architecture()), calibration=images(32, seed=1))
    fused = fuse(frozen, images(1, seed=2))
    assert isinstance(fused, FusedChain) and fused.input_shape == (1, 28, 28)
    assert_fused_equals_frozen(fused, frozen, batches=(1, 5), seed=8)


def assert_fused_equals_frozen(
    fused: nn.Module, frozen: nn.Module, batches: tuple[int, ...], seed: int
) -> None:
    """The fused chain's floats are the frozen model's bit for bit, at 1 and 2 threads, for
    each batch size, and not a constant."""
    for batch in batches:
        x = images(batch, seed=seed + batch)
        with torch.no_grad():
            expected = frozen(x)
            with _ops.using_threads(1):
                one = fused(x)
            with _ops.using_threads(2):
                two = fused(x)
        assert expected.std() > 0
        assert torch.equal(one, expected) and torch.equal(two, expected)


class TwoStages(nn.Module):
    """CSRNet's shape in small: a frontend and a dilated backend, two Sequentials, so that
    freeze hands float32 from one to the other."""

    def __init__(self) -> None:
        super().__init__()
        self.frontend = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
        )
        self.backend = nn.Sequential(
            nn.Conv2d(16, 16, 3, padding=2, dilation=2), nn.ReLU(), nn.Conv2d(16, 8, 3, padding=1)
        )
        self.output_layer = nn.Conv2d(8, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_layer(self.backend(self.frontend(x)))


def test_fused_chain_keeps_int8_across_sequentials_and_the_frozen_models_floats() -> None:
    frozen = freeze(ternary(TwoStages()), calibration=images(16, seed=1))
    boundary = frozen.frontend[3]
    assert isinstance(boundary, FrozenTernaryConv2d) and boundary.output_scale is None
    fused = fuse(frozen, images(1, seed=2))
    # The frontend's last convolution requantizes for the backend instead of writing floats,
    # and the backend's last one for the 1x1 output layer (another module's Sequential
    # boundary): only the input and the chain's output are float32.
    assert fused._chain.conv_layouts == [
        ("nchw", "int8_nhwc"),
        ("int8_nhwc", "int8_nhwc"),
        ("int8_nhwc", "int8_nhwc"),
        ("int8_nhwc", "int8_nhwc"),
        ("int8_nhwc", "nchw"),
    ]
    assert frozen.backend[2].output_scale is None  # the frozen layers hand floats there
    for batch in (1, 3):
        x = images(batch, seed=20 + batch)
        with torch.no_grad():
            assert torch.equal(fused(x), frozen(x))


class WideLayers(nn.Sequential):
    """Layers of 32 and 64 channels, which run by pixels (not in channel planes): each hands its
    int8 output to the next as that layer's padded image, straight after a convolution (with
    dilation and a wider border) and after a pooling; the last one reads a plain int8 tensor
    (its 20 channels run in planes)."""

    def __init__(self) -> None:
        super().__init__(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=2, dilation=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 20, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(20, 1, 1),
        )


def test_fused_chain_hands_padded_images_between_layers_bit_for_bit(level: str) -> None:
    frozen = freeze(ternary(WideLayers()), calibration=images(16, seed=1))
    fused = fuse(frozen, images(1, seed=2))
    assert isinstance(fused, FusedChain), level
    assert_fused_equals_frozen(fused, frozen, batches=(1, 3), seed=30)


def test_fused_chain_falls_back_to_the_frozen_model_when_traced_or_reshaped() -> None:
    frozen = freeze(ternary(FashionCNN()), calibration=images(16, seed=1))
    fused = fuse(frozen, images(1, seed=2))
    x = images(2, seed=3)
    with torch.no_grad():
        expected = frozen(x)
        compiled = torch.compile(copy.deepcopy(fused), fullgraph=True, backend="aot_eager")
        assert torch.equal(compiled(x), expected)
        exported = torch.export.export(fused, (x,))
        assert torch.equal(exported.module()(x), expected)
        # Another image size: the frozen layers run (the chain was built for 28x28).
        with pytest.raises(ValueError, match="1 channels"):
            fused(torch.zeros(1, 3, 28, 28))
    with torch.no_grad(), pytest.raises(ValueError, match="finite"):
        fused(torch.full((1, 1, 28, 28), float("nan")))


def test_fuse_names_the_layer_it_cannot_chain() -> None:
    model = ternary(FashionCNN())
    frozen = freeze(model)  # no calibration: ReLU is not fused, so the chain stops there
    with pytest.raises(ValueError, match=r"layer '1' \(ReLU\) cannot be chained"):
        fuse(frozen, images(1, seed=2))

    class Branches(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Identity()
            self.b = nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([self.a(x), self.b(x)], 1)

    with pytest.raises(ValueError, match=r"not a layer of a chain|not the last layer"):
        fuse(Branches(), images(1, seed=2))
    with pytest.raises(ValueError, match="example"):
        fuse(frozen, torch.zeros(28, 28))


def test_calibrated_ranges_replace_the_images_bit_for_bit() -> None:
    model = ternary(FashionCNN())
    calibration = images(32, seed=1)
    calibrated = freeze(model, calibration=calibration)
    ranges = calibrated.calibrated_ranges
    first_name = next(
        n for n, m in calibrated.named_modules() if isinstance(m, FrozenTernaryConv2d)
    )
    assert ranges[first_name][0] == float(calibration.abs().max())
    from_ranges = freeze(model, ranges=ranges)
    x = images(3, seed=4)
    with torch.no_grad():
        assert torch.equal(from_ranges(x), calibrated(x))
    assert [r["runs_on"] for r in frozen_summary(from_ranges)] == [
        r["runs_on"] for r in frozen_summary(calibrated)
    ]


def test_ranges_naming_no_convolution_or_given_with_images_are_refused() -> None:
    model = ternary(FashionCNN())
    with pytest.raises(ValueError, match="name no direct convolution"):
        freeze(model, ranges={"nowhere": (1.0, 1.0)})
    with pytest.raises(ValueError, match="not both"):
        freeze(model, calibration=images(2, seed=0), ranges={})


class _ThreadsSeen(nn.Module):
    """Records torch's and codl's thread counts when it runs (a glue op between layers)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((torch.get_num_threads(), _ops.get_num_threads()))
        return x


def test_an_all_codl_model_runs_torchs_glue_on_one_thread_and_codl_on_the_callers() -> None:
    model = ternary(FashionCNN())
    model.insert(7, _ThreadsSeen())  # after the Flatten
    frozen = freeze(model, calibration=images(8, seed=1))
    probe = frozen[7]
    x = images(2, seed=7)
    with torch.no_grad(), _ops.using_threads(2):
        expected = frozen(x)
        assert probe.seen[-1] == (1, 2)
        assert torch.get_num_threads() == 2 and _ops.get_num_threads() == 2
        # codl's count follows torch's where it is not set: torch's count from before the call.
        _ops.set_num_threads(None)
        torch.set_num_threads(2)
        assert torch.equal(frozen(x), expected)
        assert probe.seen[-1] == (1, 2)
        assert torch.get_num_threads() == 2 and _ops._num_threads is None
        # An error inside the model restores both counts as well.
        with pytest.raises(ValueError):
            frozen(torch.zeros(2, 3, 28, 28))
        assert torch.get_num_threads() == 2 and _ops._num_threads is None


def test_a_model_with_torch_float_layers_keeps_torchs_threads() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, groups=1), _ThreadsSeen(), nn.Flatten())
    codl.quantize_(model, codl.TernaryConfig())
    model.append(nn.Linear(4 * 28 * 28, 10))  # stays torch float32: it has parameters
    frozen = freeze(model, calibration=images(4, seed=1))
    with torch.no_grad(), _ops.using_threads(2):
        frozen(images(1, seed=2))
    assert frozen[1].seen[-1] == (2, 2)


def test_torch_on_one_thread_nests_and_ignores_an_unmatched_leave() -> None:
    with _ops.using_threads(2):
        _ops.leave_torch_on_one_thread()  # nothing entered: nothing changes
        assert torch.get_num_threads() == 2
        _ops.enter_torch_on_one_thread()
        _ops.enter_torch_on_one_thread()
        assert torch.get_num_threads() == 1 and _ops.get_num_threads() == 2
        _ops.leave_torch_on_one_thread()
        assert torch.get_num_threads() == 1
        _ops.leave_torch_on_one_thread()
        assert torch.get_num_threads() == 2
