"""The compression benchmark on a slice of the shipped subset: every phase runs, the .codl file
holds the compressed model bit for bit, and the reported sizes are those of the files."""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

import codl
from codl.bench import compression
from codl.data import load_split

TINY = compression.PipelineConfig(
    epochs=0.25, prune_epochs=0.5, quant_epochs=0.25, batch_size=64, decode_repeat=1
)


@pytest.fixture(scope="module")
def data() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    images, labels, _ = load_split("train", "subset")
    test_images, test_labels, _ = load_split("test", "subset")
    return (images[:512], labels[:512]), (test_images[:200], test_labels[:200])


@pytest.mark.parametrize("name", ["lenet300100", "lenet5"])
def test_pipeline_file_holds_the_compressed_model_exactly(
    name: str,
    data: tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    tmp_path: Path,
) -> None:
    recipe = compression.RECIPES[name]
    train, test = data
    result = compression.compress_model(recipe, train, test, TINY, workdir=tmp_path)

    # The model as trained, written by torch.save; the .codl file must give it back bit for bit.
    expected = torch.load(tmp_path / f"{name}.compressed.pt", weights_only=True)
    loaded = codl.load(tmp_path / f"{name}.codl")
    assert loaded.keys() == expected.keys()
    for key, tensor in expected.items():
        assert loaded[key].dtype == tensor.dtype, key
        assert torch.equal(loaded[key], tensor), key
    assert result.exact_round_trip

    # Each weight pruned to its recipe sparsity, at most 2^bits distinct kept values.
    for weight_name, sparsity in recipe.sparsity.items():
        weight = expected[weight_name]
        assert int((weight == 0).sum()) >= round(sparsity * weight.numel()), weight_name
        kept = weight[weight != 0]
        assert torch.unique(kept).numel() <= 2 ** recipe.bits[weight_name], weight_name

    # Sizes are the files' sizes; the ratio follows from them.
    pt_size = os.path.getsize(tmp_path / f"{name}.pt")
    codl_size = os.path.getsize(tmp_path / f"{name}.codl")
    gz = (tmp_path / f"{name}.pt.gz").read_bytes()
    assert gzip.decompress(gz) == (tmp_path / f"{name}.pt").read_bytes()
    assert (result.torch_save_bytes, result.codl_bytes, result.gzip_bytes) == (
        pt_size,
        codl_size,
        len(gz),
    )
    assert result.ratio == pytest.approx(pt_size / codl_size, abs=0.05)
    assert result.ratio_vs_gzip == pytest.approx(len(gz) / codl_size, abs=0.05)
    # A float32 state_dict of this model takes 4 bytes per value plus the zip's overhead.
    values = sum(t.numel() for t in expected.values() if t.is_floating_point())
    assert 4 * values < pt_size < 4 * values + 64 * 1024
    assert sum(layer.stored_bytes for layer in result.layers) < codl_size
    assert result.ratio > 10  # 95% zeros and 4-5 bit codes pack far below float32

    # The accuracy reported for the file is that of the tensors in it.
    fresh = recipe.build()
    fresh.load_state_dict(expected)
    fresh.eval()
    with torch.no_grad():
        predicted = fresh(test[0]).argmax(dim=1)
    accuracy = 100.0 * float((predicted == test[1]).double().mean())
    assert result.codl_accuracy == pytest.approx(accuracy, abs=1e-9)
    assert result.accuracy_drop == pytest.approx(result.float_accuracy - accuracy, abs=0.01)
    assert compression.format_markdown([result]).count(f"| {name} |") == 2


def test_save_plan_reproduces_shared_weights_exactly(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(3)
    layer = torch.nn.Linear(64, 32)
    codebook = torch.randn(16, generator=generator, dtype=torch.float64).float()
    with torch.no_grad():
        shared = codebook[torch.randint(0, 16, (32, 64), generator=generator)]
        shared[torch.rand(32, 64, generator=generator) < 0.9] = 0.0
        layer.weight.copy_(shared)
    plan = compression.save_plan(layer, {"weight": 4})
    assert plan["weight"]["bits"] == 4
    assert plan["weight"]["prune"] == pytest.approx(float((shared == 0).double().mean()))
    codl.save(layer, tmp_path / "layer.codl", plan=plan)
    loaded = codl.load(tmp_path / "layer.codl")
    assert torch.equal(loaded["weight"], shared)
    assert torch.equal(loaded["bias"], layer.bias.detach())
    (info,) = [i for i in codl.formats.inspect(tmp_path / "layer.codl") if i.name == "weight"]
    assert info.encoding == "codebook" and info.sparse
    assert info.count == int((shared != 0).sum())


def test_config_and_model_names_are_checked() -> None:
    with pytest.raises(ValueError, match="epochs"):
        compression.PipelineConfig(epochs=-1.0)
    with pytest.raises(ValueError, match="batch_size"):
        compression.PipelineConfig(batch_size=0)
    with pytest.raises(ValueError, match="ramp_fraction"):
        compression.PipelineConfig(ramp_fraction=0.0)
    with pytest.raises(ValueError, match="unknown"):
        compression.run(["alexnet"], data="subset")


def test_command_line_quick_run_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "compression.json"
    argv = ["--models", "lenet300100", "--data", "subset", "--quick", "--train-limit", "256"]
    record = compression.main([*argv, "--threads", "1", "--out", str(out)])
    written = json.loads(out.read_text())
    assert written["data"] == "subset" and written["quick"] is True
    (result,) = written["results"]
    assert result == json.loads(json.dumps(record["results"][0]))
    assert result["model"] == "lenet300100" and result["train_examples"] == 256
    assert result["config"] == asdict(compression.RECIPES["lenet300100"].quick)
    assert result["exact_round_trip"] is True
    assert result["ratio"] == pytest.approx(
        result["torch_save_bytes"] / result["codl_bytes"], abs=0.05
    )
