"""Tests for codl.info(): the keys, and what it says about the build and this CPU.

The expectations about the CPU are computed here from /proc/cpuinfo (the kernel's view of
cpuid), not from codl's own detection.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import codl
import codl._C

KEYS = {
    "version",
    "compiler",
    "isas_built",
    "isas_runnable",
    "cpu_features",
    "dispatch",
    "best_dispatch",
    "threads",
    "torch",
    "python",
    "arch",
}
LEVELS = ("scalar", "avx2", "avx512", "amx", "sve")
AVX512_FLAGS = ("avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni")


def _cpuinfo_flags() -> set[str] | None:
    """The flags (x86) or Features (Arm) line of the first CPU in /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return None


FLAGS = _cpuinfo_flags()
IS_X86 = platform.machine().lower() in ("x86_64", "amd64")
HAS_AVX2 = IS_X86 and FLAGS is not None and "avx2" in FLAGS


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    torch_threads = torch.get_num_threads()
    level = codl.get_dispatch_level()
    yield
    codl.set_num_threads(None)
    torch.set_num_threads(torch_threads)
    codl.set_dispatch_level(level)


def test_keys_and_types() -> None:
    info = codl.info()
    assert isinstance(info, dict)
    assert set(info) >= KEYS, KEYS - set(info)
    for key in ("version", "compiler", "dispatch", "best_dispatch", "torch", "python", "arch"):
        assert isinstance(info[key], str) and info[key], key
    for key in ("isas_built", "isas_runnable", "cpu_features"):
        assert isinstance(info[key], list), key
        assert all(isinstance(item, str) for item in info[key]), key
    assert isinstance(info["threads"], int) and not isinstance(info["threads"], bool)
    assert re.fullmatch(r"(GCC|Clang) \d+\.\d+.*|unknown", info["compiler"]), info["compiler"]


def test_levels_are_consistent() -> None:
    info = codl.info()
    assert "scalar" in info["isas_built"]
    assert "scalar" in info["isas_runnable"]
    assert set(info["isas_built"]) <= set(LEVELS)
    assert set(info["isas_runnable"]) <= set(info["isas_built"])
    # Listed in LEVELS order, without repeats.
    assert info["isas_built"] == [lvl for lvl in LEVELS if lvl in info["isas_built"]]
    assert info["best_dispatch"] in info["isas_runnable"]
    assert info["dispatch"] in info["isas_runnable"]


def test_arch() -> None:
    machine = platform.machine().lower()
    expected = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}
    assert codl.info()["arch"] == expected.get(machine, "other")


@pytest.mark.skipif(not HAS_AVX2, reason="needs an x86_64 CPU with avx2 in /proc/cpuinfo")
def test_x86_avx2_built_and_runnable() -> None:
    info = codl.info()
    assert "avx2" in info["isas_built"]
    assert "avx2" in info["isas_runnable"]
    assert "avx2" in info["cpu_features"]
    assert "sve" not in info["isas_built"]


@pytest.mark.skipif(not HAS_AVX2, reason="needs an x86_64 CPU with avx2 in /proc/cpuinfo")
def test_x86_best_dispatch_from_cpuinfo() -> None:
    assert FLAGS is not None
    info = codl.info()
    has_avx512 = all(flag in FLAGS for flag in AVX512_FLAGS)
    if has_avx512 and "avx512" not in info["isas_built"]:
        pytest.skip("built with CODL_ENABLE_AVX512=OFF")
    # AMX also needs the kernel's permission (arch_prctl), so the flags bound it from above.
    has_amx = has_avx512 and all(flag in FLAGS for flag in ("amx_tile", "amx_int8"))
    amx_runs = "amx" in info["isas_runnable"]
    assert not amx_runs or has_amx
    assert info["best_dispatch"] == ("amx" if amx_runs else "avx512" if has_avx512 else "avx2")
    assert ("avx512" in info["isas_runnable"]) == has_avx512


@pytest.mark.skipif(not IS_X86 or FLAGS is None, reason="x86_64 with /proc/cpuinfo only")
def test_x86_cpu_features_match_cpuinfo() -> None:
    assert FLAGS is not None
    features = set(codl.info()["cpu_features"])
    for flag in ("avx2", "fma", *AVX512_FLAGS):
        assert (flag in features) == (flag in FLAGS), flag


def test_dispatch_at_start() -> None:
    """dispatch is CODL_CPU_DISPATCH when set (CI runs the suite so), else the best level."""
    forced = os.environ.get("CODL_CPU_DISPATCH")
    info = codl.info()
    assert info["dispatch"] == (forced or info["best_dispatch"])
    assert info["dispatch"] == codl.get_dispatch_level()


def test_dispatch_follows_set_dispatch_level() -> None:
    info = codl.info()
    for level in info["isas_runnable"]:
        codl.set_dispatch_level(level)
        now = codl.info()
        assert now["dispatch"] == level
        assert now["best_dispatch"] == info["best_dispatch"]
        assert now["isas_runnable"] == info["isas_runnable"]


def test_threads_follow_torch() -> None:
    codl.set_num_threads(None)
    for n in (1, 2, 3):
        torch.set_num_threads(n)
        assert codl.info()["threads"] == n
        assert codl.get_num_threads() == n


def test_threads_set_by_codl() -> None:
    torch.set_num_threads(1)
    codl.set_num_threads(5)
    assert codl.info()["threads"] == 5
    torch.set_num_threads(2)
    assert codl.info()["threads"] == 5  # no longer follows torch
    codl.set_num_threads(None)
    assert codl.info()["threads"] == 2  # follows torch again


def test_version() -> None:
    info = codl.info()
    assert info["version"] == codl.__version__
    assert info["version"] == codl._C.__version__
    assert info["version"] == importlib.metadata.version("codl")


def test_torch_and_python() -> None:
    info = codl.info()
    assert info["torch"] == torch.__version__
    assert info["python"] == platform.python_version()
