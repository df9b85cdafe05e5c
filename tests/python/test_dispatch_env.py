"""CODL_CPU_DISPATCH (in fresh interpreters) and fork safety of the thread pool.

The suite itself may run with CODL_CPU_DISPATCH set (CI runs it with ``scalar``); the
subprocesses here set or remove the variable explicitly, so they do not depend on that.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
from typing import Any

import numpy as np
import pytest
import torch

import codl
from codl import _ops
from codl.kernels import pack_signs, pack_ternary, unpack_ternary
from codl.kernels import reference as ref

NATIVE = _ops.native_info()
RUNNABLE: list[str] = list(NATIVE["isas_runnable"])  # type: ignore[call-overload]
BUILT: list[str] = list(NATIVE["isas_built"])  # type: ignore[call-overload]
NOT_RUNNABLE = [lvl for lvl in ("scalar", "avx2", "avx512", "sve", "amx") if lvl not in RUNNABLE]
ACCEPTED = "scalar, avx2, avx512, sve, amx"

# Prints codl.info() and checks the kernels at the level it starts with against the reference.
INFO_SCRIPT = """
import json, torch, codl
from codl.kernels import pack_signs, pack_ternary, reference as ref
info = codl.info()
x = torch.randn(5000, generator=torch.Generator().manual_seed(0))
codes = torch.randint(-1, 2, (5000,), dtype=torch.int8)
info["kernels_ok"] = (
    torch.equal(pack_signs(x), ref.pack_signs(x))
    and torch.equal(pack_ternary(codes, format="2bit"), ref.pack_ternary2(codes))
    and torch.equal(pack_ternary(codes, format="base3"), ref.pack_ternary3(codes))
)
print(json.dumps(info))
"""

IMPORT_SCRIPT = """
try:
    import codl._C
except ImportError as e:
    print("ImportError:", e)
    raise SystemExit(3)
print("imported")
"""


def _run(script: str, dispatch: str | None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("CODL_CPU_DISPATCH", None)
    if dispatch is not None:
        env["CODL_CPU_DISPATCH"] = dispatch
    return subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=os.path.dirname(os.path.abspath(__file__)),
        check=False,
    )


def _info(dispatch: str | None) -> dict[str, Any]:
    proc = _run(INFO_SCRIPT, dispatch)
    assert proc.returncode == 0, proc.stderr
    info: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["kernels_ok"] is True
    return info


def _import_error(dispatch: str) -> str:
    proc = _run(IMPORT_SCRIPT, dispatch)
    assert proc.returncode == 3, (proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout


@pytest.mark.parametrize("dispatch", [None, ""], ids=["unset", "empty"])
def test_env_unset_selects_best(dispatch: str | None) -> None:
    info = _info(dispatch)
    assert info["dispatch"] == info["best_dispatch"] == NATIVE["best_dispatch"]


def test_env_scalar() -> None:
    info = _info("scalar")
    assert info["dispatch"] == "scalar"
    # Only the starting level changes: detection and the runnable set do not.
    assert info["best_dispatch"] == NATIVE["best_dispatch"]
    assert info["isas_runnable"] == RUNNABLE


@pytest.mark.skipif("avx2" not in RUNNABLE, reason="this CPU/build cannot run avx2")
def test_env_avx2() -> None:
    assert _info("avx2")["dispatch"] == "avx2"


@pytest.mark.parametrize("level", [lvl for lvl in RUNNABLE if lvl not in ("scalar", "avx2")])
def test_env_other_runnable_levels(level: str) -> None:
    assert _info(level)["dispatch"] == level


def test_env_scalar_can_be_changed_later() -> None:
    script = (
        "import codl\n"
        "assert codl.get_dispatch_level() == 'scalar'\n"
        f"codl.set_dispatch_level({NATIVE['best_dispatch']!r})\n"
        "print(codl.get_dispatch_level())\n"
    )
    proc = _run(script, "scalar")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == NATIVE["best_dispatch"]


@pytest.mark.skipif(NATIVE["arch"] != "x86_64", reason="x86_64 only")
def test_env_sve_on_x86() -> None:
    message = _import_error("sve")
    assert "CODL_CPU_DISPATCH=sve" in message
    assert "the sve kernels are not built" in message


@pytest.mark.parametrize("level", NOT_RUNNABLE or ["none"])
def test_env_level_not_runnable(level: str) -> None:
    if level == "none":
        pytest.skip("every level is runnable here")
    message = _import_error(level)
    assert f"CODL_CPU_DISPATCH={level}: " in message
    if level in BUILT:
        assert f"this CPU cannot run the {level} kernels: it lacks" in message
    else:
        assert f"the {level} kernels are not built into this codl" in message


@pytest.mark.parametrize("value", ["bogus", "AVX2", "scalar,avx2"])
def test_env_bogus(value: str) -> None:
    message = _import_error(value)
    assert f"CODL_CPU_DISPATCH={value} is not a dispatch level" in message
    assert f"expected one of {ACCEPTED}" in message


def test_env_bogus_fails_kernels_not_codl_import() -> None:
    """``import codl`` stays lazy; the kernels fail to import with the reason."""
    script = (
        "import codl\n"
        "try:\n"
        "    import codl.kernels\n"
        "except ImportError as e:\n"
        "    print('ImportError:', e)\n"
        "    raise SystemExit(3)\n"
    )
    proc = _run(script, "bogus")
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    assert "CODL_CPU_DISPATCH=bogus" in proc.stdout


# --------------------------------------------------------------------------------------------
# Fork safety
# --------------------------------------------------------------------------------------------

N_FORK = 1_000_000


def _fork_child(x: torch.Tensor, signs: bytes, codes: torch.Tensor, two_bit: bytes) -> None:
    # As a DataLoader worker does; the codl thread count is set explicitly below.
    torch.set_num_threads(1)
    codl.set_num_threads(2)
    got = pack_signs(x).numpy().tobytes()
    if got != signs:
        sys.exit(2)
    packed = pack_ternary(codes, format="2bit")
    if packed.numpy().tobytes() != two_bit:
        sys.exit(3)
    if not np.array_equal(unpack_ternary(packed, codes.shape).numpy(), codes.numpy()):
        sys.exit(4)
    sys.exit(0)


def _fork_inputs() -> tuple[torch.Tensor, bytes, torch.Tensor, bytes]:
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(N_FORK, generator=gen)
    codes = torch.randint(-1, 2, (N_FORK,), generator=gen, dtype=torch.int8)
    signs = ref.pack_signs(x).numpy().tobytes()
    two_bit = ref.pack_ternary2(codes).numpy().tobytes()
    return x, signs, codes, two_bit


def _join(process: Any) -> None:
    process.join(timeout=60)
    if process.is_alive():
        process.kill()
        process.join(timeout=10)
        pytest.fail("the forked child did not finish within 60 s (deadlock in the pool?)")
    assert process.exitcode == 0, f"child failed with exit code {process.exitcode}"


def test_fork_after_threads() -> None:
    inputs = _fork_inputs()
    x, signs, _, _ = inputs
    codl.set_num_threads(2)
    try:
        assert pack_signs(x).numpy().tobytes() == signs  # the parent's pool runs
        assert int(_ops.native_info()["pool_threads_started"]) >= 1  # type: ignore[call-overload]
        child = multiprocessing.get_context("fork").Process(target=_fork_child, args=inputs)
        child.start()
        _join(child)
        # The parent's pool still works after the fork.
        assert pack_signs(x).numpy().tobytes() == signs
    finally:
        codl.set_num_threads(None)


def test_fork_while_parent_threads_run_kernels() -> None:
    """Fork while another parent thread is inside a 2-thread job (the pool's locks may be
    held at the moment of the fork): the child must not wait on them."""
    inputs = _fork_inputs()
    x, signs, _, _ = inputs
    stop = threading.Event()
    errors: list[str] = []

    def busy() -> None:
        while not stop.is_set():
            if pack_signs(x).numpy().tobytes() != signs:
                errors.append("parent result wrong")

    codl.set_num_threads(2)
    worker = threading.Thread(target=busy)
    worker.start()
    try:
        context = multiprocessing.get_context("fork")
        for _ in range(3):
            child = context.Process(target=_fork_child, args=inputs)
            child.start()
            _join(child)
    finally:
        stop.set()
        worker.join(timeout=60)
        codl.set_num_threads(None)
    assert not worker.is_alive()
    assert errors == []
