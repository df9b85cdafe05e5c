"""Micro-benchmarks: each times codl and its plain-torch baseline in the same process, with the
same threads, and reports the median time of each and the ratio (baseline / codl, so > 1 means
codl is faster).

``codl bench`` runs them from the command line; ``benchmarks/`` in the source tree holds the
recorded figures.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm


@dataclass(frozen=True)
class Case:
    """One comparison: ``codl`` and ``baseline`` do the same work and return comparable results."""

    name: str
    numel: int
    codl: Callable[[], object]
    baseline: Callable[[], object]
    same_result: Callable[[Any, Any], bool]


@dataclass(frozen=True)
class Result:
    benchmark: str
    case: str
    numel: int
    codl_ms: float
    baseline_ms: float
    ratio: float  # baseline / codl
    dispatch: str
    threads: int
    notes: dict[str, float] = field(default_factory=dict)  # e.g. bandwidth achieved


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm up caches, lazy allocations and the thread pool
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def run_cases(
    benchmark: str, cases: Iterable[Case], repeat: int, threads: int, progress: bool = True
) -> list[Result]:
    """Times every case, codl and baseline alternately, after checking they agree."""
    from codl import _ops

    results = []
    with _ops.using_threads(threads):
        for case in tqdm(list(cases), desc=f"bench {benchmark}", disable=not progress, leave=False):
            if not case.same_result(case.codl(), case.baseline()):
                raise RuntimeError(f"{benchmark}/{case.name}: codl and the baseline disagree")
            codl_ms = median_ms(case.codl, repeat)
            baseline_ms = median_ms(case.baseline, repeat)
            results.append(
                Result(
                    benchmark=benchmark,
                    case=case.name,
                    numel=case.numel,
                    codl_ms=round(codl_ms, 4),
                    baseline_ms=round(baseline_ms, 4),
                    ratio=round(baseline_ms / codl_ms, 2),
                    dispatch=_ops.get_dispatch_level(),
                    threads=threads,
                )
            )
    return results


def _registry() -> dict[str, Callable[..., list[Result]]]:
    from codl.bench import codecs, comm, formats, kfac, linalg, pack, ternary

    return {
        "codecs": codecs.run,
        "comm": comm.run,
        "formats": formats.run,
        "kfac": kfac.run,
        "linalg": linalg.run,
        "pack": pack.run,
        "ternary": ternary.run,
    }


def available() -> list[str]:
    return sorted(_registry())


def run(
    names: Iterable[str] | None = None,
    *,
    size: int | None = None,
    repeat: int = 7,
    threads: int = 2,
    progress: bool = True,
) -> list[Result]:
    """Runs the named benchmarks (all by default) and returns their results."""
    registry = _registry()
    chosen = list(names) if names else sorted(registry)
    unknown = [n for n in chosen if n not in registry]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; available: {sorted(registry)}")
    results: list[Result] = []
    for name in chosen:
        results += registry[name](size=size, repeat=repeat, threads=threads, progress=progress)
    return results


def machine() -> dict[str, Any]:
    import codl

    return {
        "cpu": codl.info()["cpu"],
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "codl": codl.info(),
    }


def write_json(results: list[Result], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine(), "results": [asdict(r) for r in results]}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def format_table(results: list[Result]) -> str:
    header = (
        f"{'benchmark':<10} {'case':<24} {'values':>10} {'codl ms':>9} {'torch ms':>9} {'ratio':>7}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r.benchmark:<10} {r.case:<24} {r.numel:>10} {r.codl_ms:>9.3f} "
            f"{r.baseline_ms:>9.3f} {r.ratio:>6.1f}x"
        )
    for r in results:
        if r.notes:
            shown = ", ".join(f"{key} {value:g}" for key, value in r.notes.items())
            lines.append(f"{r.benchmark}/{r.case}: {shown}")
    if results:
        lines.append(f"dispatch {results[0].dispatch}, {results[0].threads} threads on both sides")
    return "\n".join(lines)
