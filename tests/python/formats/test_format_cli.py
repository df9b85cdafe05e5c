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
    assert f"pickled {__name__}.Opaque object" in capsys.readouterr().err

    (tmp_path / "bad.codl").write_bytes(b"\x89CODL\r\n\x1a" + bytes(40))
    assert main(["inspect", str(tmp_path / "bad.codl")]) == 2
    assert "codl inspect: error:" in capsys.readouterr().err
    torch.save({"w": torch.zeros(3, 3)}, tmp_path / "ok.pt")
    args = ["compress", str(tmp_path / "ok.pt"), "-o", str(tmp_path / "x.codl"), "--prune", "1.5"]
    assert main(args) == 2
    assert "prune" in capsys.readouterr().err


def one_error_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    """The command's stderr: one line ``codl COMMAND: error: ...``, no traceback."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"codl {command}: error: "), err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("key", ["model_state_dict", "model", "state_dict"])
def test_compress_takes_the_tensors_of_a_training_checkpoint(
    key: str, model: LeNet5, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 14 item 11: the checkpoints users have, with entries that are not tensors."""
    state = model.state_dict()
    inner = dict(state, step=7)  # a non-tensor inside the state_dict too
    checkpoint = {key: inner, "optimizer_state_dict": {"state": {}}, "epoch": 3}
    torch.save(checkpoint, tmp_path / "c.pt")
    out = tmp_path / "c.codl"
    assert main(["compress", str(tmp_path / "c.pt"), "-o", str(out)]) == 0
    note = capsys.readouterr().out.splitlines()[0]
    assert f"took the {len(state)} tensors of checkpoint[{key!r}]" in note
    assert "skipped 3 entries that are not tensors" in note
    for skipped in ("'optimizer_state_dict' (dict)", "'epoch' (int)", "'step' (int)"):
        assert skipped in note
    loaded = codl.load(out)
    assert list(loaded) == list(state)
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor)


def test_compress_reads_safetensors_by_content(tmp_path: Path) -> None:
    tensors = {"a": torch.randn(3, 4), "n": torch.arange(5)}
    _write_safetensors(tmp_path / "weights.bin", tensors)
    assert main(["compress", str(tmp_path / "weights.bin"), "-o", str(tmp_path / "w.codl")]) == 0
    for name, tensor in codl.load(tmp_path / "w.codl").items():
        assert torch.equal(tensor, tensors[name])


def test_compress_refuses_what_is_not_a_state_dict_in_one_line(
    model: LeNet5, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 14 item 11: a whole pickled model, a .codl file, text files (one gave a
    `KeyError: 101` traceback, another torch's page-long unpickler message), damaged archives."""
    torch.save(model, tmp_path / "whole.pt")
    (tmp_path / "m.codl").write_bytes(encode_state_dict({"w": torch.zeros(3)})[0])
    (tmp_path / "notes.txt").write_text("e 1 2 3\n")
    (tmp_path / "hello.pt").write_text("hello world\n")
    (tmp_path / "pickle.pt").write_bytes(b"\x80\x02garbage")
    (tmp_path / "zip.pt").write_bytes(b"PK\x03\x04" + bytes(60))
    torch.save({"epoch": 3}, tmp_path / "empty.pt")
    cases = {
        "whole.pt": "pickled codl.models.LeNet5 object, which codl does not unpickle (a whole "
        "model?): save model.state_dict() instead",
        "m.codl": "is already a .codl file",
        "notes.txt": "not a model file",
        "hello.pt": "not a model file",
        "pickle.pt": "not a state_dict torch.load(weights_only=True) can read",
        "zip.pt": "not a torch.save file torch.load can read",
        "empty.pt": "holds no tensors",
        "absent.pt": "No such file or directory",
    }
    for name, message in cases.items():
        assert main(["compress", str(tmp_path / name), "-o", str(tmp_path / "x.codl")]) == 2, name
        assert message in one_error_line(capsys, "compress"), name
    assert not (tmp_path / "x.codl").exists()


def test_inspect_checks_every_stream_and_exits_2_on_corruption(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 14 item 8: a flipped bit in a stream made `codl inspect` exit 0."""
    blob, _ = encode_state_dict({"a": torch.randn(16, 16), "b": torch.arange(40)})
    (tmp_path / "ok.codl").write_bytes(blob)
    assert main(["inspect", str(tmp_path / "ok.codl")]) == 0
    capsys.readouterr()
    flipped = bytearray(blob)
    flipped[-3] ^= 0x04  # in the last stream: b's values
    (tmp_path / "bad.codl").write_bytes(bytes(flipped))
    assert main(["inspect", str(tmp_path / "bad.codl")]) == 2
    err = one_error_line(capsys, "inspect")
    assert "tensor 'b', field 'streams.values': CRC32 mismatch" in err
    assert main(["inspect", str(tmp_path / "bad.codl"), "--json"]) == 2
    one_error_line(capsys, "inspect")
    assert main(["inspect", str(tmp_path / "bad.codl"), "--header-only"]) == 0
    assert "total (file, header included)" in capsys.readouterr().out


def test_any_failure_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No traceback from any command: an unexpected exception is one line too."""
    import codl.cli

    def broken(args: object) -> int:
        raise RuntimeError("the kernel failed\nwith a second line")

    monkeypatch.setattr(codl.cli, "_cmd_info", broken)
    assert main(["info"]) == 2
    assert one_error_line(capsys, "info") == "codl info: error: RuntimeError: the kernel failed\n"
    assert main(["compress", str(tmp_path), "-o", str(tmp_path / "x.codl")]) == 2
    one_error_line(capsys, "compress")  # a folder: IsADirectoryError
    monkeypatch.setenv("CODL_TRACEBACK", "1")
    with pytest.raises(RuntimeError, match="the kernel failed"):
        main(["info"])
