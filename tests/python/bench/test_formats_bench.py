"""``codl bench formats``: the MiniLM-shaped model against torch.save, safetensors and ZipNN.

safetensors and zipnn are optional (the ``bench`` extra, not the ``test`` one): their round
trips are skipped where they are not installed; the rows of a missing library are tested with
the import made to fail, whether or not it is installed."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from codl import bench
from codl.bench import formats

SIDE = 16  # hidden 4, vocabulary 119: 103 tensors, 3,184 values


def _copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in state.items()}


def _bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype
        and a[k].shape == b[k].shape
        and torch.equal(a[k].view(torch.int32), b[k].view(torch.int32))
        for k in a
    )


@pytest.fixture
def missing_baselines(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import safetensors.torch`` and ``import zipnn`` raise ImportError."""
    for name in ("safetensors", "safetensors.torch", "zipnn"):
        monkeypatch.setitem(sys.modules, name, None)


def test_zipnn_file_round_trip_is_bit_exact_and_leaves_the_state_alone(tmp_path: Path) -> None:
    zipnn = pytest.importorskip("zipnn")
    state = formats.minilm_state_dict(SIDE)
    original = _copy(state)
    path = str(tmp_path / "model.zipnn")
    formats.zipnn_save(zipnn, state, path, threads=1)
    # zipnn compresses in place; the benchmark hands it copies, so the weights are unchanged.
    assert _bitwise_equal(state, original)
    assert _bitwise_equal(formats.zipnn_load(zipnn, path, threads=2), original)


def test_safetensors_load_is_bit_exact(tmp_path: Path) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    state = formats.minilm_state_dict(SIDE)
    path = str(tmp_path / "model.safetensors")
    safetensors_torch.save_file(state, path)
    assert _bitwise_equal(formats.safetensors_load(safetensors_torch, path), state)


def test_model_cases_time_real_files_against_each_installed_baseline(tmp_path: Path) -> None:
    pytest.importorskip("safetensors.torch")
    pytest.importorskip("zipnn")
    state = formats.minilm_state_dict(SIDE)
    cases, sizes, skipped = formats.model_cases(SIDE, str(tmp_path), threads=1)
    assert skipped == []
    by_name = {case.name: case for case in cases}
    for baseline, suffix in (("safetensors", "safetensors"), ("ZipNN", "ZipNN")):
        load = by_name[f"MiniLM-L6 lossless load (vs {baseline})"]
        save = by_name[f"MiniLM-L6 lossless save (vs {baseline})"]
        # Both sides of the load return the original weights, bit for bit.
        assert _bitwise_equal(load.baseline(), state)  # type: ignore[arg-type]
        assert _bitwise_equal(load.codl(), state)  # type: ignore[arg-type]
        assert save.baseline() is True and save.codl() is True
        # The sizes are the files' byte counts.
        figures = sizes[load.name]
        assert figures["baseline_file_bytes"] == os.path.getsize(tmp_path / f"lossless.{suffix}")
        assert figures["codl_file_bytes"] == os.path.getsize(tmp_path / "lossless.codl")
        assert figures["raw_bytes"] == 4 * sum(t.numel() for t in state.values())
        ratio = figures["raw_bytes"] / figures["baseline_file_bytes"]
        assert figures["baseline_size_ratio"] == pytest.approx(ratio, abs=1e-4)
        assert "codl_x_smaller_than_torch_save" not in figures
    # The quantized cases stay against torch.save/torch.load only.
    assert not [n for n in by_name if "kmeans8" in n and "torch" not in n]


def test_missing_libraries_give_skipped_rows(
    missing_baselines: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert formats.optional_module("zipnn") is None
    assert formats.optional_module("safetensors.torch") is None
    # Only the lossless model case, the square-weight cases left out: a second or so.
    monkeypatch.setattr(formats, "MODEL_PLANS", {"lossless": None})
    monkeypatch.setattr(formats, "cases", lambda side: ([], {}))
    results = formats.run(size=SIDE, repeat=1, threads=1, progress=False)
    skipped = {r.case: r for r in results if r.skipped is not None}
    assert sorted(skipped) == sorted(
        f"MiniLM-L6 lossless {op} (vs {lib})"
        for op in ("load", "save")
        for lib in formats.OPTIONAL_BASELINES
    )
    for row in skipped.values():
        assert row.skipped is not None and row.skipped.startswith("not installed")
        assert row.ratio_refused() == f"skipped: {row.skipped}"
    timed = [r for r in results if r.skipped is None]
    assert [r.baseline_label for r in timed] == ["torch.load", "torch.save"]
    assert all(r.codl_ms > 0 and r.baseline_ms > 0 for r in timed)
    table = bench.format_table(results)
    assert "skipped: not installed (pip install safetensors)" in table
    assert "| lossless | ZipNN | skipped: not installed (pip install zipnn) |" in table
    rows = json.loads(bench.write_json(results, tmp_path / "out.json").read_text())["results"]
    ratio_refused = {row["case"]: row["ratio_refused"] for row in rows if row["skipped"]}
    assert ratio_refused == {case: f"skipped: {r.skipped}" for case, r in skipped.items()}


def test_markdown_table_reports_sizes_times_and_ratios() -> None:
    notes = {
        "codl_size_ratio": 1.2,
        "baseline_size_ratio": 1.0,
        "codl_x_smaller_than_baseline": 1.2,
    }

    def row(case: str, codl_ms: float, baseline_ms: float) -> bench.Result:
        return bench.Result(
            "formats",
            case,
            10,
            codl_ms,
            baseline_ms,
            round(baseline_ms / codl_ms, 2),
            "avx2",
            2,
            notes=notes,
            codl_iqr_ms=0.5,
            baseline_iqr_ms=0.25,
            baseline_label="safetensors",
        )

    table = formats.markdown_table(
        [
            row("MiniLM-L6 lossless load (vs safetensors)", 10.0, 40.0),
            row("MiniLM-L6 lossless save (vs safetensors)", 50.0, 25.0),
        ]
    )
    assert "2 thread(s)" in table
    assert (
        "| lossless | safetensors | 1.2000 | 1.0000 | 1.200x | 50.0 (0.5) | 25.0 (0.2) | 0.50x "
        "| 10.0 (0.5) | 40.0 (0.2) | 4.00x |"
    ) in table
    assert formats.markdown_table([]) == ""
