"""codl.save / codl.load / codl.load_into: lossless round trips of every dtype, and pruned and
quantized tensors decoded bit-exactly against the writer's own values and against an
independent reader of the spec (codl_reference: zlib + NumPy, float64)."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from codl_reference import decode as reference_decode
from torch import nn

import codl
from codl import _ops
from codl.formats import (
    CompressionSpec,
    codec,
    decode_preview,
    encode_state_dict,
    inspect,
    resolve_plan,
)
from codl.models import LeNet5


def _bits(t: torch.Tensor) -> torch.Tensor:
    """Tensor bits as integers, so NaN, -0.0 and every payload compare exactly."""
    view = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.contiguous().view(view) if t.dim() else t.reshape(1).view(view)


def assert_identical(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(_bits(a), _bits(b))


def _against_reference(blob: bytes, loaded: dict[str, torch.Tensor]) -> None:
    reference = reference_decode(blob)
    assert list(reference) == list(loaded)
    for name, tensor in loaded.items():
        expected = torch.from_numpy(np.array(reference[name], copy=True))
        got = tensor.float() if tensor.dtype == torch.bfloat16 else tensor
        if got.dtype == torch.float16 and expected.dtype == torch.float32:
            got = got.float()  # a quantized float16 tensor: the reference stops at float32
            expected = expected.half().float()
        assert_identical(got, expected.to(got.dtype) if got.dtype != expected.dtype else expected)


def _every_dtype() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 13, generator=g)
    specials = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-45, 3.4e38])
    return {
        "f32": x,
        "f32_specials": specials,
        "f64": x.double() * 1e-300,
        "f16": x.half(),
        "bf16": x.bfloat16(),
        "i64": torch.randint(-(2**62), 2**62, (5, 3), generator=g),
        "i32": torch.randint(-(2**31), 2**31 - 1, (9,), generator=g, dtype=torch.int32),
        "i16": torch.randint(-(2**15), 2**15 - 1, (4, 4), generator=g, dtype=torch.int16),
        "i8": torch.randint(-128, 127, (33,), generator=g, dtype=torch.int8),
        "u8": torch.randint(0, 255, (2, 3, 4), generator=g, dtype=torch.uint8),
        "bool": torch.rand(17, generator=g) > 0.5,
        "scalar": torch.tensor(3.5),
        "scalar_int": torch.tensor(12, dtype=torch.int64),
        "empty": torch.empty(0, 5),
        "big": torch.randn(300, 257, generator=g),
    }


def test_lossless_round_trip_of_every_dtype(tmp_path: Path) -> None:
    tensors = _every_dtype()
    path = tmp_path / "all.codl"
    codl.save(tensors, path)
    loaded = codl.load(path)
    assert list(loaded) == list(tensors)
    for name, tensor in tensors.items():
        assert_identical(loaded[name], tensor)
    _against_reference(path.read_bytes(), loaded)
    # Loading from the bytes gives the same, and every thread count decodes the same.
    for threads in (1, 2, 4):
        again = codl.load(path.read_bytes(), num_threads=threads)
        for name in tensors:
            assert_identical(again[name], loaded[name])


def test_non_contiguous_and_grad_tensors_are_saved_by_value(tmp_path: Path) -> None:
    base = torch.randn(6, 8, requires_grad=True)
    tensors = {"t": base.t(), "sliced": base[:, ::3]}
    codl.save(tensors, tmp_path / "v.codl")
    loaded = codl.load(tmp_path / "v.codl")
    for name, tensor in tensors.items():
        assert_identical(loaded[name], tensor.detach().contiguous())
        assert not loaded[name].requires_grad


PLANS = {
    "kmeans5_prune90": {"*": {"prune": 0.9, "bits": 5}},
    "kmeans1": {"*": {"bits": 1}},
    "kmeans8_prune50": {"*": {"prune": 0.5, "bits": 8, "method": "kmeans"}},
    "linear8": {"*": {"bits": 8, "method": "linear"}},
    "linear4_prune70": {"*": {"prune": 0.7, "bits": 4, "method": "linear"}},
    "ternary": {"*": {"method": "ternary"}},
    "ternary_prune50": {"*": {"method": "ternary", "prune": 0.5}},
    "prune_only": {"*": {"prune": 0.8}},
    "mixed": {
        "features.0.weight": {"bits": 8, "method": "linear"},
        "classifier.*": {"prune": 0.9, "bits": 5},
        "features.*": {"method": "ternary"},
        "classifier.4.bias": {"bits": 3},
        "classifier.1.weight": None,
    },
}


@pytest.mark.parametrize("plan_name", list(PLANS))
def test_quantized_round_trip_is_bit_exact(plan_name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = LeNet5(channels=(8, 16), hidden=64)
    plan = PLANS[plan_name]
    path = tmp_path / "m.codl"
    codl.save(model, path, plan=plan)
    loaded = codl.load(path)
    _, previews = encode_state_dict(model, plan)
    specs = resolve_plan(plan, model.state_dict())
    for name, tensor in model.state_dict().items():
        assert_identical(loaded[name], previews[name])
        # The preview of a single tensor is the same as the whole model's.
        assert_identical(decode_preview(tensor, specs[name]), previews[name])
        if specs[name] is None:
            assert_identical(loaded[name], tensor)
    _against_reference(path.read_bytes(), loaded)


def test_plan_values_follow_the_quantizers(tmp_path: Path) -> None:
    """Per tensor, what the file holds is what codl.prune / codl.quant / codl.ternary give."""
    from codl.prune import magnitude_mask
    from codl.quant import kmeans_quantize, linear_quantize
    from codl.ternary import ternarize

    g = torch.Generator().manual_seed(3)
    w = torch.randn(40, 30, generator=g)
    plans = {
        "k": {"prune": 0.9, "bits": 5},
        "l": {"bits": 4, "method": "linear"},
        "t": {"method": "ternary"},
        "p": {"prune": 0.6},
    }
    codl.save({n: w for n in plans}, tmp_path / "q.codl", plan=plans)
    loaded = codl.load(tmp_path / "q.codl")
    mask = magnitude_mask(w, 0.9)
    codebook, indices = kmeans_quantize(w, 5, mask)
    expected_k = torch.where(mask, codebook.double()[indices], 0.0).float()
    codes, scales = linear_quantize(w, 4)
    expected_l = (codes.double() * scales.double()[:, None]).float()
    tern = ternarize(w, "twn", granularity="row")
    expected_t = (tern.codes.double() * tern.scale.double()[:, None]).float()
    expected_p = torch.where(magnitude_mask(w, 0.6), w, 0.0)
    for name, expected in {
        "k": expected_k,
        "l": expected_l,
        "t": expected_t,
        "p": expected_p,
    }.items():
        assert_identical(loaded[name], expected)
    assert int((loaded["k"] != 0).sum()) == int(mask.sum()) == 120
    assert loaded["k"].unique().numel() <= 33  # 32 centroids and the pruned zeros


def test_quantized_half_precision_tensors_come_back_in_their_dtype(tmp_path: Path) -> None:
    w = torch.randn(16, 16, dtype=torch.float64)
    tensors = {"d": w, "h": w.half(), "b": w.bfloat16()}
    codl.save(tensors, tmp_path / "h.codl", plan={"*": {"bits": 3}})
    loaded = codl.load(tmp_path / "h.codl")
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype
        assert_identical(loaded[name], decode_preview(tensor, {"bits": 3}))


def test_globs_skip_vectors_and_integers_unless_named() -> None:
    tensors = {
        "a.weight": torch.randn(4, 4),
        "a.bias": torch.randn(4),
        "a.count": torch.tensor(3),
        "b.weight": torch.randn(2, 2, 3),
    }
    specs = resolve_plan({"a.*": {"bits": 4}, "*": {"prune": 0.5}, "a.bias": {"bits": 2}}, tensors)
    assert specs["a.weight"] == CompressionSpec(bits=4, method="kmeans")
    assert specs["a.bias"] == CompressionSpec(bits=2, method="kmeans")
    assert specs["a.count"] is None
    assert specs["b.weight"] == CompressionSpec(prune=0.5)
    with pytest.raises(ValueError, match=r"\['a\.weigth'\]"):
        resolve_plan({"a.weigth": {"bits": 4}}, tensors)
    with pytest.raises(ValueError, match="floating-point"):
        resolve_plan({"a.count": {"bits": 4}}, tensors)
    with pytest.raises(ValueError, match=r"bits: expected 2\.\.8"):
        resolve_plan({"*": {"bits": 1, "method": "linear"}}, tensors)
    with pytest.raises(ValueError, match=r"prune: expected a float in \[0, 1\)"):
        resolve_plan({"*": {"prune": 1.0}}, tensors)
    with pytest.raises(ValueError, match="unknown keys"):
        resolve_plan({"*": {"sparsity": 0.5}}, tensors)
    with pytest.raises(ValueError, match="needs bits"):
        CompressionSpec(method="kmeans")


def test_load_into_is_strict_like_torch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source, target = LeNet5(channels=(4, 8), hidden=16), LeNet5(channels=(4, 8), hidden=16)
    codl.save(source, tmp_path / "m.codl")
    result = codl.load_into(target, tmp_path / "m.codl")
    assert result.missing_keys == [] and result.unexpected_keys == []
    for name, tensor in source.state_dict().items():
        assert_identical(target.state_dict()[name], tensor)
    state = source.state_dict()
    extra = {**state, "extra.weight": torch.zeros(1)}
    del extra["classifier.4.bias"]
    codl.save(extra, tmp_path / "x.codl")
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*classifier\.4\.bias") as info:
        codl.load_into(target, tmp_path / "x.codl")
    assert "Unexpected key(s)" in str(info.value) and "extra.weight" in str(info.value)
    loose = codl.load_into(nn.Linear(2, 2), tmp_path / "m.codl", strict=False)
    assert set(loose.missing_keys) == {"weight", "bias"}
    assert "classifier.4.bias" in loose.unexpected_keys


def test_every_stream_inflates_with_pythons_zlib_and_both_backends_read_each_other() -> None:
    data = torch.randint(0, 7, (200_000,), dtype=torch.uint8)
    raw = data.numpy().tobytes()
    for backend in _ops.format_backends():
        stream = _ops.deflate(data, 9, backend)
        assert zlib.decompress(stream, wbits=-15) == raw
        for reader in _ops.format_backends():
            out = torch.empty(len(raw), dtype=torch.uint8)
            assert _ops.inflate_into(stream, out, reader) is None
            assert out.numpy().tobytes() == raw
    python_stream = zlib.compressobj(6, zlib.DEFLATED, -15)
    from_python = python_stream.compress(raw) + python_stream.flush()
    out = torch.empty(len(raw), dtype=torch.uint8)
    assert _ops.inflate_into(from_python, out) is None
    assert torch.equal(out, data)


@pytest.mark.parametrize("pattern", ["RCRC", "CRRR", "RRRC", "CCCC", "RR"])
def test_planes_that_do_not_compress_are_stored_in_one_valid_stream(pattern: str) -> None:
    """Each plane is random (R) or compressible (C); the stream stores exactly the random
    ones verbatim, and every inflater reads it back."""
    plane = 100_000
    generator = torch.Generator().manual_seed(3)
    planes = [
        torch.randint(0, 256, (plane,), dtype=torch.uint8, generator=generator)
        if kind == "R"
        else torch.randint(0, 4, (plane,), dtype=torch.uint8, generator=generator)
        for kind in pattern
    ]
    data = torch.cat(planes)
    stream = codec.deflate_planes(data, len(pattern), 9)
    raw = data.numpy().tobytes()
    assert zlib.decompress(stream, wbits=-15) == raw
    for reader in _ops.format_backends():
        out = torch.empty(len(raw), dtype=torch.uint8)
        assert _ops.inflate_into(stream, out, reader) is None
        assert torch.equal(out, data)
    stored = pattern.count("R") * plane
    # Stored blocks carry every random byte plus 5 bytes per 64 KiB; compressible planes of
    # 2-bit symbols shrink at least 3x.
    assert (
        stored
        <= len(stream)
        <= stored + 5 * (stored // 65535 + 2) + pattern.count("C") * plane // 3
    )
    for start in range(0, len(pattern) * plane, plane):
        if pattern[start // plane] == "R":
            assert bytes(data[start : start + 1000].numpy()) in stream


def test_sizes_against_torch_save(tmp_path: Path) -> None:
    """Lossless is no bigger than torch.save; pruned + 5-bit k-means is > 30x smaller."""
    torch.manual_seed(0)
    model = LeNet5()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    codl.save(model, tmp_path / "l.codl")
    codl.save(model, tmp_path / "q.codl", plan={"*": {"prune": 0.9, "bits": 5}})
    lossless, packed = (tmp_path / "l.codl").stat().st_size, (tmp_path / "q.codl").stat().st_size
    assert lossless < len(buffer.getvalue())
    assert len(buffer.getvalue()) / packed > 30
    infos = {i.name: i for i in inspect(tmp_path / "q.codl")}
    assert infos["classifier.1.weight"].sparsity == pytest.approx(0.9)
    assert (
        infos["classifier.1.weight"].bits == 5
        and infos["classifier.1.weight"].encoding == "codebook"
    )
    assert infos["classifier.2.bias"].encoding == "raw"


def test_bad_arguments_raise_with_the_argument_named(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="model_or_state_dict"):
        codl.save([torch.zeros(1)], tmp_path / "x.codl")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"state_dict\['x'\]: expected a tensor"):
        codl.save({"x": 1.0}, tmp_path / "x.codl")  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="complex64"):
        codl.save({"x": torch.zeros(2, dtype=torch.complex64)}, tmp_path / "x.codl")
    with pytest.raises(ValueError, match="level"):
        codl.save({"x": torch.zeros(2)}, tmp_path / "x.codl", level=13)
    with pytest.raises(ValueError, match="finite"):
        codl.save(
            {"x": torch.tensor([[1.0, float("nan")]])}, tmp_path / "x.codl", plan={"x": {"bits": 2}}
        )
    with pytest.raises(TypeError, match="model"):
        codl.load_into({}, tmp_path / "x.codl")  # type: ignore[arg-type]
    assert not (tmp_path / "x.codl").exists()
