"""Shared pytest setup: the per-dispatch-level ``level`` fixture and, in CI (CI=true), a
hypothesis profile that draws the same examples on every run, so a red build is reproducible
and never a matter of luck (locally hypothesis keeps exploring)."""

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

import codl
from codl import _ops

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


RUNNABLE_LEVELS: list[str] = list(_ops.native_info()["isas_runnable"])  # type: ignore[call-overload]
# amx has its own kernels only in the ternary family (elsewhere it runs avx512's, already covered):
# tests/python/ternary/conftest.py adds it there, so the suite does not grow by a level.
LEVELS_WITH_OWN_KERNELS = [lvl for lvl in RUNNABLE_LEVELS if lvl != "amx"]


@pytest.fixture(params=LEVELS_WITH_OWN_KERNELS)
def level(request: pytest.FixtureRequest) -> Iterator[str]:
    """Runs the test once per dispatch level this CPU runs, restoring the level it found."""
    original = codl.get_dispatch_level()
    codl.set_dispatch_level(request.param)
    assert codl.get_dispatch_level() == request.param
    yield request.param
    codl.set_dispatch_level(original)
