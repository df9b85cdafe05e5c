"""TEMPORARY: torch stand-ins for the linalg kernels while their C++ lands (removed then)."""

from __future__ import annotations

import types
from typing import Any

import torch

from codl.linalg import reference


def kernels(ops: Any) -> Any:
    if hasattr(ops, "damped_inverse") and hasattr(ops, "sym_eig"):
        return ops
    shim = types.SimpleNamespace(**{k: getattr(ops, k) for k in dir(ops) if not k.startswith("__")})

    def status_of(mats: Any, dampings: Any) -> list[tuple[int, int]]:
        statuses = []
        for m, d in zip(mats, dampings):
            if not torch.isfinite(m).all():
                statuses.append((2, 0))
                continue
            _, info = torch.linalg.cholesky_ex(m + d * torch.eye(m.shape[0], dtype=m.dtype))
            statuses.append((0, 0) if int(info) == 0 else (1, int(info) - 1))
        return statuses

    def damped_inverse(mats: Any, dampings: Any, outs: Any) -> Any:
        statuses = status_of(mats, dampings)
        for m, d, out, (code, _) in zip(mats, dampings, outs, statuses):
            if code == 0:
                out.copy_(reference.damped_inverse([m], [d])[0])
        return statuses

    def damped_cholesky(mats: Any, dampings: Any, outs: Any) -> Any:
        statuses = status_of(mats, dampings)
        for m, d, out, (code, _) in zip(mats, dampings, outs, statuses):
            if code == 0:
                out.copy_(reference.damped_cholesky([m], [d])[0])
        return statuses

    def cholesky_solve(factors: Any, rhs: Any, outs: Any, side: str) -> None:
        for out, x in zip(outs, reference.cholesky_solve(factors, rhs, side)):
            out.copy_(x)

    def sym_eig(mats: Any, values: Any, vectors: Any) -> list[int]:
        codes = []
        for m, w, v in zip(mats, values, vectors):
            if not torch.isfinite(m).all():
                codes.append(2)
                continue
            ew, ev = torch.linalg.eigh(m)
            w.copy_(ew)
            v.copy_(ev)
            codes.append(0)
        return codes

    def pack_symmetric(mat: Any, out: Any) -> None:
        out.copy_(reference.pack_symmetric(mat))

    def unpack_symmetric(packed: Any, n: int, out: Any) -> None:
        out.copy_(reference.unpack_symmetric(packed, n))

    for name, fn in list(locals().items()):
        if callable(fn) and name not in ("ops", "status_of") and not hasattr(ops, name):
            setattr(shim, name, fn)
    return shim
