"""``codl bench scale``: KAISA's bytes and the K-FAC projection against hand-computed values,
and a quick run of the program (table, JSON, PNG)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from codl.bench import scale
from codl.comm.linkmodel import StepProfile
from codl.optim import KFACPreconditioner
from codl.optim.profile import KFACWork


def blocks() -> dict[str, Any]:
    """Linear(6, 12), LayerNorm(12), Linear(12, 10), Linear(10, 3): names 0, 1, 3, 5."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 12),
        nn.LayerNorm(12),
        nn.Tanh(),
        nn.Linear(12, 10),
        nn.Tanh(),
        nn.Linear(10, 3),
    )
    precond = KFACPreconditioner(model)
    precond.remove()
    return dict(precond.blocks)


def test_kaisa_bytes_by_hand() -> None:
    # (a, g) = (7, 12), (13, 10), (11, 3): sum of a^2 + g^2 = 193 + 269 + 130 = 592 values;
    # the LayerNorm is not KAISA's. Factors: ring allreduce of the whole matrices, 2 (P - 1) S
    # on the wire; inverses: (grad_workers - 1) S per broadcast.
    full = scale.kaisa_wire_bytes(blocks(), "inverse", 4, 1.0)
    assert full == {"factors": 2 * 3 * 4 * 592, "states": 3 * 4 * 592, "gradients": 0}
    # Eigen with the eigenvalues' outer product (g x a): 84 + 130 + 33 more values.
    eigen = scale.kaisa_wire_bytes(blocks(), "eigen", 4, 1.0)
    assert eigen["states"] == 3 * 4 * (592 + 247)
    # Fraction 1/4: one gradient worker per layer, no inverse broadcast, every gradient
    # (weight and bias: 84 + 130 + 33 values) to the 3 other ranks of the row.
    quarter = scale.kaisa_wire_bytes(blocks(), "inverse", 4, 0.25)
    assert quarter == {"factors": 2 * 3 * 4 * 592, "states": 0, "gradients": 3 * 4 * 247}


def test_codl_bytes_against_kaisa_by_hand() -> None:
    rows = scale.bytes_rows(blocks(), [4], ["1"], 10, 100)
    inverse = next(r for r in rows if r["method"] == "inverse")
    # codl at 4 ranks: chunks of 93 values (372 / 4), rows of 384 bytes, 4 * 2 * 3 of them; the
    # inverses as upper triangles with a flag each: 28 + 78 + 91 + 55 + 66 + 6 + 6 = 330 values.
    codl = 4 * 2 * 3 * 384 / 10 + 3 * 4 * 330 / 100
    kaisa = 2 * 3 * 4 * 592 / 10 + 3 * 4 * 592 / 100
    assert inverse["codl_MB_per_step"] == pytest.approx(codl / 1e6, abs=1e-4)
    assert inverse["kaisa_MB_per_step"] == pytest.approx(kaisa / 1e6, abs=1e-4)
    assert inverse["ratio"] == pytest.approx(codl / kaisa, abs=1e-4)


def test_kfac_projection_by_hand() -> None:
    profile = StepProfile(forward_s=0.01, backward_s=0.02, bucket_numels=(1000,))
    inversion = {
        ("3", "A"): 5.0,
        ("3", "G"): 3.0,
        ("0", "A"): 1.0,
        ("0", "G"): 4.0,
        ("5", "A"): 2.0,
        ("5", "G"): 0.5,
    }
    work = KFACWork(1.0, inversion, {"0": 0.1, "3": 0.2, "5": 0.4}, 0.05)
    measured = scale.Measured("tiny", profile, work, blocks(), {}, 0.0)
    projector = scale.Projector(measured, overlap=False)  # factors every 10, inverses every 100
    result = projector.project(scale.CONFIGS["kfac"], 2, 1e9, 1e-6)
    # Data-parallel part: ring allreduce of 4000 bytes over 2 ranks.
    base = 0.03 + 2e-6 + 4000 / 1e9
    # Factors: the statistics (1.0 s), then an all-to-all and an all-gather of one 752-byte row
    # (186 float32 values padded to 16 bytes) each.
    factors = 1.0 + 2 * (1e-6 + 752 / 1e9)
    # Inverses: rank 0's decompositions (3.A, 0.A, 5.A: 8.0 s), then its 752-byte and rank 1's
    # 568-byte broadcasts (a tree of one step at 2 ranks).
    inverses = 8.0 + (1e-6 + 752 / 1e9) + (1e-6 + 568 / 1e9)
    step = base + factors / 10 + inverses / 100 + 0.7 + 0.05
    assert result.step_s == pytest.approx(step, rel=1e-9)
    single = 0.03 + 1.0 / 10 + 15.5 / 100 + 0.75  # one node does everything, no exchange
    assert result.efficiency == pytest.approx(single / step, rel=1e-9)
    sgd = projector.project(scale.CONFIGS["sgd"], 2, 1e9, 1e-6)
    assert sgd.step_s == pytest.approx(base, rel=1e-12)


def test_fraction_specs() -> None:
    assert scale.fraction_of("1", 8) == 1.0
    assert scale.fraction_of("1/P", 8) == 0.125
    assert scale.fraction_of("1/4", 8) == 0.25
    assert scale.fraction_of("1/4", 2) == 0.5  # clamped to 1/P
    with pytest.raises(ValueError, match="nodes: expected an integer >= 1"):
        scale.fraction_of("1", 0)
    with pytest.raises(ValueError, match="fraction: expected"):
        scale.fraction_of("half", 8)


def test_scale_program_prints_the_table_and_draws_the_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "scale.json"
    args = ["--model", "mlp", "--nodes", "2", "1024", "--links", "Tofu-D", "--repeat", "1"]
    args += ["--configs", "sgd", "kfac", "kfac+int8", "--kaisa-nodes", "4", "--out", str(out)]
    assert scale.main(args) == 0
    printed = capsys.readouterr().out
    assert "Tofu-D: projected step ms" in printed and "against KAISA" in printed
    payload = json.loads(out.read_text())
    assert {(r["config"], r["nodes"]) for r in payload["projection"]} == {
        (c, n) for c in ("sgd", "kfac", "kfac+int8") for n in (2, 1024)
    }
    assert len(payload["efficiency_at_1024"]) == 3
    assert all(r["ratio"] < 1 for r in payload["kaisa_bytes"])
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="--nodes: expected integers >= 1"):
        scale.main(["--nodes", "0", "--out", str(out)])
