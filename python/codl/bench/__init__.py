"""Benchmarks of codl, runnable from an installed wheel.

Micro-benchmarks (``codl bench [NAME ...]``, :func:`available`) time codl and its plain-torch
baseline in the same process, with the same threads, interleaved (rounds of a codl block then a
baseline block), and report the median time of each with its interquartile range, the load
average and the CPU wait, and the ratio (baseline / codl, so > 1 means codl is faster)
unless the timings cannot support it: spreads that overlap, an unstable side or a contended CPU
(:mod:`codl.bench.timing`). Each benchmark says what ``--size`` means for it
(:func:`size_help`, :func:`listing`).

Programs (``codl bench NAME [options]``, :func:`programs`) are longer runs with their own
options: training grids, convergence and validation runs, device checks. ``benchmarks/`` in the
source tree holds their recorded figures and one thin entry point per program.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from codl.bench.timing import Timing, measure, measure_pair, refusal_reason, usable_cpus


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
    codl_iqr_ms: float = 0.0
    baseline_iqr_ms: float = 0.0
    load_average: float | None = None  # the higher 1-minute load of the two sides' timings
    #: The higher of the two sides' CPU wait (seconds the threads waited for a CPU per second
    #: timed, :mod:`codl.bench.timing`), None where the system does not report it.
    cpu_wait: float | None = None
    cpus: int | None = None  # the CPUs the process could use
    #: What the two sides are, for the table's columns ("codl ms", "torch ms" unless set).
    codl_label: str = "codl"
    baseline_label: str = "torch"
    #: Why the case was not timed (its baseline's package is not installed, say); its times
    #: and ratio are then 0 and mean nothing.
    skipped: str | None = None
    #: What the case ran on, where a benchmark takes options of its own: the formats
    #: benchmark's whole-model rows record ``model``, ``source`` and ``dtype``.
    setup: dict[str, str] = field(default_factory=dict)

    def ratio_refused(self) -> str | None:
        """Why :attr:`ratio` means nothing (:func:`codl.bench.timing.refusal_reason`), or
        None."""
        if self.skipped is not None:
            return f"skipped: {self.skipped}"
        return refusal_reason(
            self.codl_ms,
            self.codl_iqr_ms,
            self.baseline_ms,
            self.baseline_iqr_ms,
            cpu_wait=self.cpu_wait,
            load_average=self.load_average,
            cpus=self.cpus,
        )


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    """The median milliseconds per call of ``fn`` (:func:`codl.bench.timing.measure`)."""
    return measure(fn, repeat).median_ms


def run_cases(
    benchmark: str, cases: Iterable[Case], repeat: int, threads: int, progress: bool = True
) -> list[Result]:
    """Times every case after checking that codl and the baseline agree: interleaved, rounds
    of one block of codl calls then one block of baseline calls
    (:func:`codl.bench.timing.measure_pair`)."""
    from codl import _ops

    results = []
    with _ops.using_threads(threads):
        for case in tqdm(list(cases), desc=f"bench {benchmark}", disable=not progress, leave=False):
            if not case.same_result(case.codl(), case.baseline()):
                raise RuntimeError(f"{benchmark}/{case.name}: codl and the baseline disagree")
            codl, baseline = measure_pair(case.codl, case.baseline, repeat)
            results.append(
                compare(
                    benchmark,
                    case.name,
                    case.numel,
                    codl,
                    baseline,
                    dispatch=_ops.get_dispatch_level(),
                    threads=threads,
                )
            )
    return results


def compare(
    benchmark: str,
    case: str,
    numel: int,
    codl: Timing,
    baseline: Timing,
    *,
    dispatch: str,
    threads: int,
) -> Result:
    """The result of timing ``codl`` against ``baseline``: medians, interquartile ranges, the
    higher of the two load averages and CPU waits, and the ratio of the medians."""
    waits = [t.cpu_wait for t in (codl, baseline) if t.cpu_wait is not None]
    return Result(
        benchmark=benchmark,
        case=case,
        numel=numel,
        # Nanoseconds: the cheapest cases take a microsecond, where 0.1 us steps moved the
        # ratio of the rounded medians 5% away from the ratio.
        codl_ms=round(codl.median_ms, 6),
        baseline_ms=round(baseline.median_ms, 6),
        ratio=round(baseline.median_ms / codl.median_ms, 2),
        dispatch=dispatch,
        threads=threads,
        codl_iqr_ms=round(codl.iqr_ms, 6),
        baseline_iqr_ms=round(baseline.iqr_ms, 6),
        load_average=round(max(codl.load_average, baseline.load_average), 2),
        cpu_wait=round(max(waits), 3) if len(waits) == 2 else None,
        cpus=usable_cpus(),
    )


#: The micro-benchmarks (``codl bench [NAME ...]``): name -> (summary, what ``--size`` means
#: for it). Each is the module ``codl.bench.NAME`` with ``run(*, size, repeat, threads,
#: progress)``.
MICROBENCHMARKS: dict[str, tuple[str, str]] = {
    "codecs": (
        "gradient codecs' encode and decode against the same math in torch ops",
        "values of the gradient (any count; default 1M and 25.56M, ResNet-50's)",
    ),
    "comm": (
        "projected data-parallel step with each codec against a float32 allreduce",
        "values of the tensor the codecs' throughput is measured on (default: the CNN's "
        "gradient, which the projected step always uses)",
    ),
    "formats": (
        ".codl decode against gzip + torch.load of the same tensor; a MiniLM model's save "
        "and load against torch.save, safetensors and ZipNN (--model: synthetic, minilm or a "
        ".safetensors file; --dtype)",
        "side of the square float32 weight (default 4096), which scales the synthetic model",
    ),
    "kfac": (
        "K-FAC's training steps against SGD with momentum on the Fashion-MNIST CNN",
        "training steps per timed window (default 100)",
    ),
    "linalg": (
        "batched damped inverses and eigendecompositions against torch loops",
        "cap on the factor matrices' side (default: none, ResNet-20's and ResNet-50's sizes)",
    ),
    "pack": (
        "sign and ternary packing kernels against torch ops",
        "values per case (default 16M)",
    ),
    "sparse": (
        "sparse int8 linear layers (1x4 blocks, row panels) against torch dynamic int8 and float32",
        "largest input features of the layer shapes (default: all, up to 4096)",
    ),
    "ternary": (
        "ternary linear layers against torch float32 and dynamic int8",
        "side of the square weight (default 4096)",
    ),
}


def _registry() -> dict[str, Callable[..., list[Result]]]:
    return {name: importlib.import_module(f"codl.bench.{name}").run for name in MICROBENCHMARKS}


def available() -> list[str]:
    """The micro-benchmarks (``codl bench [NAME ...]``)."""
    return sorted(MICROBENCHMARKS)


def size_help() -> str:
    """What ``--size`` means for each micro-benchmark, for ``codl bench --help``."""
    meanings = "; ".join(f"{name}: {MICROBENCHMARKS[name][1]}" for name in available())
    return f"problem size, per benchmark ({meanings})"


def listing() -> str:
    """One line per micro-benchmark: its name, what it times and what ``--size`` means."""
    width = max(map(len, MICROBENCHMARKS))
    return "\n".join(
        f"{name:<{width}}  {summary}; --size: {size}"
        for name, (summary, size) in sorted(MICROBENCHMARKS.items())
    )


#: The programs (``codl bench NAME [options]``): name -> summary. Each is the module
#: ``codl.bench.NAME`` with ``main(argv, *, results)``; ``benchmarks/NAME.py`` calls it.
PROGRAMS = {
    "comm_convergence": "compressed DDP training on Fashion-MNIST: accuracy against bytes sent",
    "comm_gpu_check": "codl.comm on CUDA tensors against the same calls on CPU tensors",
    "comm_validation": "the link model's projected step times against measured DDP steps",
    "comm_vs_torch_hooks": "codl's DDP hook against torch's hooks on an emulated slow link",
    "compression": "prune + k-means share + .codl files: LeNet-5 and LeNet-300-100",
    "compression_search": "per-layer compression-plan search against the best uniform plan",
    "distill_fashion": "knowledge distillation of a tiny CNN on Fashion-MNIST",
    "distill_patient": "patient and consistent distillation on Fashion-MNIST",
    "inference": "whole-model CPU inference: codl's frozen ternary models against torch, "
    "torch.compile, torch int8, ONNX Runtime and OpenVINO",
    "kfac_step_ddp": "distributed K-FAC's step against distributed SGD's, amortized over its "
    "update periods, on several processes at a chosen batch per rank",
    "large_batch": "large mini-batches on Fashion-MNIST: where K-FAC keeps its accuracy",
    "pool": "codl's thread pool on LeNet-5-size layers, 1 and 2 threads, quiet and contended",
    "robust_compression": "clean and PGD accuracy of compressed and adversarially tuned models",
    "scale": "projected step and scaling efficiency of SGD and distributed K-FAC, 2 to 100,000 "
    "nodes, K-FAC's bytes against KAISA's, and the projection on rate-limited processes",
    "sequence_kd": "sequence-level knowledge distillation (Kim and Rush 2016) on a toy task",
    "spectral_vs_l1": "spectral pruning against L1 channel pruning at the same kept widths",
    "time_to_accuracy": "time to accuracy on Fashion-MNIST: SGD, Adam (torch) and K-FAC (codl)",
}


def programs() -> list[str]:
    """The programs (``codl bench NAME [options]``), each with its own options."""
    return sorted(PROGRAMS)


def default_results_dir() -> Path:
    """Where a program writes when given no ``--out``: ``benchmarks/results`` under the
    current directory in a source checkout, else the current directory."""
    checkout = Path.cwd() / "benchmarks" / "results"
    return checkout if checkout.is_dir() else Path.cwd()


def run_program(name: str, argv: Sequence[str], *, results_dir: Path | None = None) -> int:
    """Runs program ``name`` with its command-line options ``argv``, writing where its ``--out``
    says or else into ``results_dir`` (default :func:`default_results_dir`); its exit status."""
    if name not in PROGRAMS:
        raise ValueError(f"unknown benchmark program {name!r}; available: {programs()}")
    module = importlib.import_module(f"codl.bench.{name}")
    status = module.main(list(argv), results_dir=results_dir or default_results_dir())
    return status if isinstance(status, int) else 0


def run(
    names: Iterable[str] | None = None,
    *,
    size: int | None = None,
    repeat: int = 7,
    threads: int = 2,
    progress: bool = True,
    model: str | None = None,
    dtype: str | None = None,
) -> list[Result]:
    """Runs the named benchmarks (all by default) and returns their results. ``size`` means
    what :data:`MICROBENCHMARKS` says for each benchmark (None: its default). ``model`` and
    ``dtype`` are the formats benchmark's (:func:`codl.bench.formats.run`; None: its default)
    and refused when formats is not among the benchmarks run."""
    if size is not None and (isinstance(size, bool) or not isinstance(size, int)):
        raise TypeError(f"size must be an int or None, got {type(size).__name__}")
    if size is not None and size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    registry = _registry()
    chosen = list(names) if names else sorted(registry)
    unknown = [n for n in chosen if n not in registry]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; available: {sorted(registry)}")
    formats_options = {
        key: value for key, value in (("model", model), ("dtype", dtype)) if value is not None
    }
    if formats_options and "formats" not in chosen:
        given = ", ".join(f"{key}={value!r}" for key, value in formats_options.items())
        raise ValueError(f"{given}: options of the formats benchmark, which is not among {chosen}")
    results: list[Result] = []
    for name in chosen:
        options = formats_options if name == "formats" else {}
        results += registry[name](
            size=size, repeat=repeat, threads=threads, progress=progress, **options
        )
    return results


def machine() -> dict[str, Any]:
    import codl

    return {
        "cpu": codl.info()["cpu"],
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "codl": codl.info(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def write_json(results: list[Result], path: str | Path) -> Path:
    """The machine and every result; a result whose ratio is refused says why in
    ``ratio_refused`` (null otherwise)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{**asdict(r), "ratio_refused": r.ratio_refused()} for r in results]
    payload = {"machine": machine(), "results": rows}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def format_ratio(result: Result) -> str:
    """``12.3x``, or ``n/a (REASON)`` when the ratio is refused (REASON: the first words of
    :meth:`Result.ratio_refused`)."""
    reason = result.ratio_refused()
    return f"n/a ({reason.split(':')[0]})" if reason else f"{result.ratio:.1f}x"


def format_table(results: list[Result]) -> str:
    """The results, one table per benchmark with its sides' names as column heads: medians
    with their interquartile ranges, the load average, the CPU wait and the ratio (or why
    it is not shown, with the full reason below the table)."""
    lines: list[str] = []
    groups: list[list[Result]] = []
    for r in results:
        if groups and _heads(groups[-1][0]) == _heads(r):
            groups[-1].append(r)
        else:
            groups.append([r])
    for group in groups:
        first = group[0]
        codl_head, baseline_head = f"{first.codl_label} ms", f"{first.baseline_label} ms"
        cw, bw = max(9, len(codl_head)), max(9, len(baseline_head))
        header = (
            f"{'benchmark':<10} {'case':<24} {'values':>10} {codl_head:>{cw}} {'IQR':>7} "
            f"{baseline_head:>{bw}} {'IQR':>7} {'load':>5} {'CPU wait':>8} {'ratio':>7}"
        )
        if lines:
            lines.append("")
        lines += [header, "-" * len(header)]
        for r in group:
            if r.skipped is not None:
                lines.append(f"{r.benchmark:<10} {r.case:<24} {r.numel:>10} skipped: {r.skipped}")
                continue
            load = "" if r.load_average is None else f"{r.load_average:.1f}"
            wait = "" if r.cpu_wait is None else f"{r.cpu_wait:.2f}"
            lines.append(
                f"{r.benchmark:<10} {r.case:<24} {r.numel:>10} {r.codl_ms:>{cw}.3f} "
                f"{r.codl_iqr_ms:>7.3f} {r.baseline_ms:>{bw}.3f} {r.baseline_iqr_ms:>7.3f} "
                f"{load:>5} {wait:>8} {format_ratio(r):>7}"
            )
    for r in results:
        reason = r.ratio_refused()
        if reason and r.skipped is None:
            lines.append(f"{r.benchmark}/{r.case}: no ratio: {reason}")
    for r in results:
        if r.notes:
            shown = ", ".join(f"{key} {value:g}" for key, value in r.notes.items())
            lines.append(f"{r.benchmark}/{r.case}: {shown}")
    if results:
        lines.append(f"dispatch {results[0].dispatch}, {results[0].threads} threads on both sides")
        lines.append(
            "IQR: interquartile range of the timed blocks; load: 1-minute load average; "
            "CPU wait: seconds the threads waited for a CPU per second timed"
        )
    # A benchmark may sum its rows up in a table of its own (``markdown_table(results)``).
    for name in dict.fromkeys(r.benchmark for r in results):
        if name not in MICROBENCHMARKS:
            continue
        summary = getattr(importlib.import_module(f"codl.bench.{name}"), "markdown_table", None)
        text = summary([r for r in results if r.benchmark == name]) if summary else ""
        if text:
            lines += ["", text]
    return "\n".join(lines)


def _heads(result: Result) -> tuple[str, str, str]:
    return result.benchmark, result.codl_label, result.baseline_label
