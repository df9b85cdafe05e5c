"""``codl compress IN -o OUT --plan plan.json``: applies a per-tensor plan; bad plans fail
clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import codl
from codl.cli import main
from codl.formats import encode_state_dict, inspect
from codl.models import LeNet5

PLAN = {
    "features.0.weight": None,
    "features.4.weight": {"prune": 0.5, "bits": 6, "method": "kmeans"},
    "classifier.1.weight": {"prune": 0.9, "bits": 3, "method": "kmeans"},
    "classifier.4.weight": {"prune": 0.0, "bits": 2, "method": "ternary"},
}


@pytest.fixture
def state_path(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "m.pt"
    torch.save(LeNet5(channels=(8, 16), hidden=64).state_dict(), path)
    return path


def test_compress_with_a_plan_file(state_path: Path, tmp_path: Path) -> None:
    (tmp_path / "plan.json").write_text(json.dumps(PLAN))
    out = tmp_path / "m.codl"
    assert (
        main(["compress", str(state_path), "-o", str(out), "--plan", str(tmp_path / "plan.json")])
        == 0
    )
    state = torch.load(state_path, weights_only=True)
    _, expected = encode_state_dict(state, PLAN, level=9)
    loaded = codl.load(out)
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    infos = {i.name: i for i in inspect(out)}
    assert infos["features.0.weight"].encoding == "raw"
    assert infos["features.4.weight"].encoding == "codebook"
    assert infos["features.4.weight"].sparsity == pytest.approx(0.5, abs=1e-3)
    assert infos["classifier.1.weight"].bits == 3
    assert infos["classifier.4.weight"].encoding == "ternary"
    assert set(torch.unique(loaded["classifier.4.weight"][0]).abs().tolist()) <= {
        0.0,
        float(loaded["classifier.4.weight"][0].abs().max()),
    }


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{oops", "not valid JSON"),
        ('["features.0.weight"]', "expected a JSON object"),
        ('{"features.4.weight": {"bits": 9}}', "bits"),
        ('{"features.4.weight": {"prune": 1.5}}', "prune"),
        ('{"features.4.weight": {"sparsity": 0.5}}', "unknown keys"),
        ('{"no.such.weight": {"bits": 4}}', "no.such.weight"),
    ],
)
def test_a_bad_plan_file_is_a_clear_error(
    state_path: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: str,
    message: str,
) -> None:
    (tmp_path / "plan.json").write_text(content)
    out = tmp_path / "m.codl"
    assert (
        main(["compress", str(state_path), "-o", str(out), "--plan", str(tmp_path / "plan.json")])
        == 2
    )
    error = capsys.readouterr().err
    assert error.startswith("codl compress: error:") and message in error
    assert not out.exists()


def test_plan_and_bits_together_are_refused(
    state_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "plan.json").write_text(json.dumps(PLAN))
    argv = ["compress", str(state_path), "-o", str(tmp_path / "m.codl")]
    assert main([*argv, "--plan", str(tmp_path / "plan.json"), "--bits", "4"]) == 2
    assert "--plan" in capsys.readouterr().err
    assert main([*argv, "--plan", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
