"""python/codl/_C.pyi against the built extension, function by function.

``python -m mypy.stubtest codl._C`` (run by .ci/run) proves that the stub and the module hold the
same names, but it cannot compare signatures: a pybind11 function has no ``__text_signature__``.
pybind11 writes the signature as the first line of the docstring instead, so this test parses that
line and compares parameter names, order, defaults, annotations and the return annotation.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import codl._C

STUB = Path(codl._C.__file__).with_name("_C.pyi")

# pybind11's spelling of an argument type -> the stub's. Its numeric casters accept anything with
# __int__/__float__/__index__; the stub says int and float as the type checker should see them.
_RUNTIME_TO_STUB = [
    ("typing.SupportsInt | typing.SupportsIndex", "int"),
    ("typing.SupportsFloat | typing.SupportsIndex", "float"),
    ("typing_extensions.Buffer", "Buffer"),
    ("collections.abc.Sequence", "Sequence"),
]
# py::list and py::dict carry no element type; the stub names the one codl passes.
_UNTYPED_CONTAINERS = {"list", "dict"}


def _stub_functions() -> dict[str, ast.FunctionDef]:
    tree = ast.parse(STUB.read_text())
    return {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}


def _runtime_functions() -> dict[str, ast.FunctionDef]:
    functions = {}
    for name in dir(codl._C):
        value = getattr(codl._C, name)
        if name.startswith("__") or not callable(value):
            continue
        first_line = (value.__doc__ or "").splitlines()[0]
        assert first_line.startswith(f"{name}("), f"{name}: no pybind11 signature in its docstring"
        definition = ast.parse(f"def {first_line}: ...").body[0]
        assert isinstance(definition, ast.FunctionDef)
        functions[name] = definition
    return functions


STUBS = _stub_functions()
RUNTIME = _runtime_functions()


def _as_stub_spells(annotation: ast.expr | None) -> str:
    text = "" if annotation is None else ast.unparse(annotation)
    for runtime, stub in _RUNTIME_TO_STUB:
        text = text.replace(runtime, stub)
    return text


def _matches(stub: ast.expr | None, runtime: ast.expr | None) -> bool:
    stub_text, runtime_text = _as_stub_spells(stub), _as_stub_spells(runtime)
    if runtime_text in _UNTYPED_CONTAINERS and isinstance(stub, ast.Subscript):
        return ast.unparse(stub.value) == runtime_text
    return stub_text == runtime_text


def test_same_functions() -> None:
    assert sorted(STUBS) == sorted(RUNTIME)


@pytest.mark.parametrize("name", sorted(RUNTIME))
def test_signature(name: str) -> None:
    if name not in STUBS:
        pytest.fail(f"{name} is in the extension but not in {STUB.name}")
    stub, runtime = STUBS[name].args, RUNTIME[name].args
    assert not (stub.posonlyargs or stub.kwonlyargs or stub.vararg or stub.kwarg), (
        f"{name}: the binding takes plain positional-or-keyword arguments"
    )
    assert [a.arg for a in stub.args] == [a.arg for a in runtime.args]
    stub_defaults = [ast.literal_eval(d) for d in stub.defaults]
    runtime_defaults = [ast.literal_eval(d) for d in runtime.defaults]
    assert stub_defaults == runtime_defaults
    for stub_arg, runtime_arg in zip(stub.args, runtime.args):
        assert _matches(stub_arg.annotation, runtime_arg.annotation), (
            f"{name}({stub_arg.arg}): stub {_as_stub_spells(stub_arg.annotation)!r}, "
            f"extension {_as_stub_spells(runtime_arg.annotation)!r}"
        )
    assert _matches(STUBS[name].returns, RUNTIME[name].returns), (
        f"{name} returns: stub {_as_stub_spells(STUBS[name].returns)!r}, "
        f"extension {_as_stub_spells(RUNTIME[name].returns)!r}"
    )
