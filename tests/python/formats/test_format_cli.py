"""``codl compress`` (from .pt and .safetensors) and ``codl inspect``."""

from __future__ import annotations

import json
import struct
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

import codl
from codl.cli import main
from codl.formats import encode_state_dict
from codl.formats.safetensors_io import read_safetensors
from codl.models import LeNet5


def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """The documented layout, written by hand: u64 header size, JSON, raw little-endian bytes."""
    names = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64"}
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    chunks, offset = [], 0
    for name, tensor in tensors.items():
        raw = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {
            "dtype": names[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"".join(chunks))


class Opaque:
    """An arbitrary pickled object: torch.load(weights_only=True) must refuse it."""


@pytest.fixture
def model() -> LeNet5:
    torch.manual_seed(0)
    return LeNet5(channels=(8, 16), hidden=64)


def test_compress_a_pt_state_dict_and_inspect_it(
    model: LeNet5, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.save(model.state_dict(), tmp_path / "m.pt")
    out = tmp_path / "m.codl"
    assert (
        main(["compress", str(tmp_path / "m.pt"), "-o", str(out), "--prune", "0.9", "--bits", "5"])
        == 0
    )
    assert "x; the input file was" in capsys.readouterr().out
    plan = {"*": {"prune": 0.9, "bits": 5, "method": None}}
    _, expected = encode_state_dict(model.state_dict(), plan)
    for name, tensor in codl.load(out).items():
        assert torch.equal(tensor, expected[name])

    assert main(["inspect", str(out)]) == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith("classifier.1.weight "))
    fields = row.split()
    assert fields[1] == "64x400" and fields[2] == "codebook" and fields[3] == "90.0%"
    assert fields[4] == "5" and fields[5] == f"{64 * 400 * 4:,}"
    assert "total (file, header included)" in table and f"{out.stat().st_size:,}" in table

    assert main(["inspect", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {r["tensor"]: r for r in report["tensors"]}
    assert rows["classifier.1.weight"]["bits"] == 5
    assert rows["classifier.1.weight"]["sparsity"] == pytest.approx(0.9)
    assert rows["classifier.2.running_var"]["encoding"] == "raw"
    assert report["metadata"]["plan"]["*"]["bits"] == 5


def test_compress_a_checkpoint_and_linear_method(model: LeNet5, tmp_path: Path) -> None:
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, tmp_path / "c.pt")
    out = tmp_path / "c.codl"
    args = ["compress", str(tmp_path / "c.pt"), "-o", str(out), "--bits", "8", "--method", "linear"]
    assert main(args) == 0
    assert {i.encoding for i in codl.formats.inspect(out)} == {"linear", "raw"}


@pytest.mark.parametrize("use_package", [True, False])
def test_compress_a_safetensors_file_losslessly(tmp_path: Path, use_package: bool) -> None:
    tensors = OrderedDict(
        a=torch.randn(3, 4),
        b=torch.randn(5).half(),
        c=torch.randn(2, 2).bfloat16(),
        n=torch.arange(4),
    )
    _write_safetensors(tmp_path / "t.safetensors", tensors)
    read = read_safetensors(tmp_path / "t.safetensors", use_package=use_package)
    for name, tensor in tensors.items():
        assert torch.equal(read[name], tensor) and read[name].dtype == tensor.dtype
    assert main(["compress", str(tmp_path / "t.safetensors"), "-o", str(tmp_path / "t.codl")]) == 0
    for name, tensor in codl.load(tmp_path / "t.codl").items():
        assert torch.equal(tensor, tensors[name])


def test_malformed_safetensors_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    _write_safetensors(path, {"a": torch.zeros(4)})
    blob = path.read_bytes()
    path.write_bytes(blob[:-1])  # the data section is one byte short
    with pytest.raises(ValueError, match=r"tensor 'a': data_offsets \[0, 16\] fall outside"):
        read_safetensors(path, use_package=False)
    path.write_bytes(struct.pack("<Q", 10**9) + blob[8:])
    with pytest.raises(ValueError, match="does not fit"):
        read_safetensors(path, use_package=False)
    header = json.dumps({"a": {"dtype": "F32", "shape": [5], "data_offsets": [0, 16]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    with pytest.raises(ValueError, match="expected 20 bytes for shape"):
        read_safetensors(path, use_package=False)


def test_errors_exit_2_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    assert main(["compress", str(tmp_path / "list.pt"), "-o", str(tmp_path / "x.codl")]) == 2
    assert "expected a state_dict" in capsys.readouterr().err
    torch.save({"w": Opaque()}, tmp_path / "pickled.pt")  # weights_only refuses to load it
    assert main(["compress", str(tmp_path / "pickled.pt"), "-o", str(tmp_path / "x.codl")]) == 2
    assert "weights_only" in capsys.readouterr().err

    (tmp_path / "bad.codl").write_bytes(b"\x89CODL\r\n\x1a" + bytes(40))
    assert main(["inspect", str(tmp_path / "bad.codl")]) == 2
    assert "codl inspect: error:" in capsys.readouterr().err
    torch.save({"w": torch.zeros(3, 3)}, tmp_path / "ok.pt")
    args = ["compress", str(tmp_path / "ok.pt"), "-o", str(tmp_path / "x.codl"), "--prune", "1.5"]
    assert main(args) == 2
    assert "prune" in capsys.readouterr().err
