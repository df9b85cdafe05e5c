"""The ternary tests run at every dispatch level this CPU runs, amx included: the ternary family
is the one with AMX kernels (the top-level ``level`` fixture leaves amx out elsewhere)."""

from collections.abc import Iterator

import pytest

import codl
from codl import _ops


@pytest.fixture(params=list(_ops.native_info()["isas_runnable"]))  # type: ignore[call-overload]
def level(request: pytest.FixtureRequest) -> Iterator[str]:
    """Runs the test once per dispatch level this CPU runs, restoring the level it found."""
    original = codl.get_dispatch_level()
    codl.set_dispatch_level(request.param)
    assert codl.get_dispatch_level() == request.param
    yield request.param
    codl.set_dispatch_level(original)
