"""codl._ops.sym_eig against torch.linalg.eigh in float64, every dispatch level.

Tolerances: float64 eigenvalues within 1e-12 * ||A||_2 and reconstruction within 1e-12 relative;
float32 eigenvalues within 2e-5 * ||A||_2 (about n * eps32 for n <= 600) and reconstruction
within 1e-5 relative; eigenvectors are compared up to sign where eigenvalues are well separated.
"""

from __future__ import annotations

import pytest
import torch

from codl import _ops

MIX = [27, 144, 145, 288, 65, 16, 32, 64, 10, 1, 2, 3]


def covariance(n: int, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    x = torch.randn(n, n + 8, dtype=torch.float64, generator=generator)
    return (x @ x.T / x.shape[1]).to(dtype)


def decompose(
    mats: list[torch.Tensor],
) -> tuple[list[int], list[torch.Tensor], list[torch.Tensor]]:
    values = [torch.empty(m.shape[0], dtype=m.dtype) for m in mats]
    vectors = [torch.empty_like(m) for m in mats]
    return _ops.sym_eig(mats, values, vectors), values, vectors


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_torch_eigh(level: str, dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(3)
    mats = [covariance(n, dtype, generator) for n in MIX]
    mats.append(torch.randn(40, 40, dtype=torch.float64, generator=generator).to(dtype))
    mats[-1] = (mats[-1] + mats[-1].T) / 2
    statuses, values, vectors = decompose(mats)
    assert statuses == [0] * len(mats)
    value_tol, recon_tol = (1e-12, 1e-12) if dtype == torch.float64 else (2e-5, 1e-5)
    for a, w, v in zip(mats, values, vectors):
        exact = a.double()
        w_ref, v_ref = torch.linalg.eigh(exact)
        norm = float(w_ref.abs().max())
        torch.testing.assert_close(w.double(), w_ref, atol=value_tol * norm, rtol=0)
        n = a.shape[0]
        vd = v.double()
        eye = torch.eye(n, dtype=torch.float64)
        assert float((vd.T @ vd - eye).abs().max()) <= recon_tol * 10
        residual = exact - vd @ torch.diag(w.double()) @ vd.T
        assert float(residual.norm() / exact.norm()) <= recon_tol
        # Each eigenvector agrees with torch's up to sign where its eigenvalue stands apart.
        gaps = torch.full((n,), float("inf"), dtype=torch.float64)
        if n > 1:
            diffs = w_ref[1:] - w_ref[:-1]
            gaps[1:] = diffs
            gaps[:-1] = torch.minimum(gaps[:-1], diffs)
        separated = gaps > 1e-3 * norm
        dots = (vd * v_ref).sum(dim=0).abs()
        vector_tol = 1e-9 if dtype == torch.float64 else 1e-3
        assert bool(((dots - 1).abs()[separated] <= vector_tol).all())
        # Sign convention: the largest-magnitude component of each column is positive.
        largest = vd.abs().argmax(dim=0)
        assert bool((vd[largest, torch.arange(n)] > 0).all())


def test_uses_lower_triangle_like_eigh() -> None:
    generator = torch.Generator().manual_seed(5)
    a = covariance(20, torch.float64, generator)
    scrambled = a.clone()
    upper = torch.triu(torch.ones(20, 20, dtype=torch.bool), diagonal=1)
    scrambled[upper] = 1e3
    _, values, _ = decompose([scrambled])
    torch.testing.assert_close(values[0], torch.linalg.eigh(scrambled)[0], atol=1e-12, rtol=0)


def test_threads_give_identical_bits() -> None:
    generator = torch.Generator().manual_seed(7)
    mats = [covariance(n, torch.float32, generator) for n in [144, 288, 27, 64, 10, 145]]
    results = []
    for threads in (1, 2):
        with _ops.using_threads(threads):
            results.append(decompose(mats))
    for w1, w2 in zip(results[0][1], results[1][1]):
        assert torch.equal(w1, w2)
    for v1, v2 in zip(results[0][2], results[1][2]):
        assert torch.equal(v1, v2)


def test_status_per_matrix_nan_inf() -> None:
    generator = torch.Generator().manual_seed(9)
    good = covariance(12, torch.float64, generator)
    nan = good.clone()
    nan[3, 7] = float("nan")
    inf = good.clone()
    inf[0, 0] = float("inf")
    statuses, values, vectors = decompose([good, nan, inf, torch.zeros(0, 0, dtype=torch.float64)])
    assert statuses == [0, 2, 2, 0]
    assert bool(values[1].isnan().all()) and bool(vectors[2].isnan().all())
    torch.testing.assert_close(values[0], torch.linalg.eigh(good)[0], atol=1e-12, rtol=0)


def test_bad_input_names_argument() -> None:
    a = torch.eye(3)
    w, v = torch.empty(3), torch.empty(3, 3)
    with pytest.raises(ValueError, match="one per matrix"):
        _ops.sym_eig([a], [w], [])
    with pytest.raises(
        TypeError, match=r"mats\[0\]: expected dtype torch.float32 or torch.float64"
    ):
        _ops.sym_eig([a.int()], [w], [v])
    with pytest.raises(TypeError, match=r"mats\[1\]: expected dtype torch.float32"):
        _ops.sym_eig([a, a.double()], [w, w], [v, v])
    with pytest.raises(TypeError, match=r"eigenvalues_out\[0\]: expected dtype torch.float32"):
        _ops.sym_eig([a], [w.double()], [v])
    with pytest.raises(
        ValueError, match=r"mats\[0\]: expected a square 2-D matrix, received shape \(3, 4\)"
    ):
        _ops.sym_eig([torch.zeros(3, 4)], [w], [torch.empty(3, 4)])
    with pytest.raises(ValueError, match=r"eigenvalues_out\[0\]: expected 3 elements"):
        _ops.sym_eig([a], [torch.empty(4)], [v])
    with pytest.raises(ValueError, match=r"eigenvectors_out\[0\]: expected 9 elements"):
        _ops.sym_eig([a], [w], [torch.empty(2, 3)])
    with pytest.raises(ValueError, match=r"mats\[0\]: expected a contiguous tensor"):
        _ops.sym_eig([torch.zeros(3, 6)[:, :3]], [w], [v])
    with pytest.raises(ValueError, match="overlapping"):
        _ops.sym_eig([a], [w], [a])
    with pytest.raises(TypeError, match=r"mats\[0\]: expected a torch.Tensor"):
        _ops.sym_eig([[1.0]], [w], [v])  # type: ignore[list-item]
