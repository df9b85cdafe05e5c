"""The report of a finished :func:`codl.apps.crowd.run_pipeline` run: the programme's Speed x
Memory table measured in that run, the student's errors, and plots, as Markdown and PNGs.

Every figure is recomputed from the run folder's artifacts: sizes are the files' sizes and the
parameter counts of the models loaded from them; errors come from running the saved models
(the pretrained teacher, ``teacher_adapted.codl``, ``student.codl``, ``student_new_scene.codl``)
on held-out frames regenerated from the run's seeds; times are the run's own records (they
cannot be recomputed without running again). Cells that come from the link model are marked
*projected*; the rest *measured*.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import nn

from codl.apps.crowd import pipeline
from codl.apps.crowd.data import count_errors
from codl.apps.crowd.student import CrowdStudent, load_student
from codl.apps.crowd.teacher import Normalized, load_teacher
from codl.formats import load_into
from codl.models import CSRNet

REPORT = "report.md"
#: The adapted teacher's target error is this many times the best held-out MAE any optimizer
#: reached; each optimizer's time to target is the first epoch at or below it.
TARGET_FACTOR = 1.25


class RunFolderError(ValueError):
    """A run folder without the artifacts of a finished run."""


@dataclass
class Cell:
    """One cell of the Speed x Memory table: a factor (speed: higher is better; memory: the
    fraction kept), what it compares, and whether it was measured or projected."""

    value: float | None
    what: str
    kind: str = "measured"
    #: The value is a lower bound (speed) of the factor.
    bound: bool = False

    def text(self, memory: bool = False) -> str:
        if self.value is None or not math.isfinite(self.value):
            return f"n/a ({self.what})"
        shown = f"1/{1 / self.value:,.0f}" if memory and self.value < 1 else f"{self.value:,.1f}x"
        return f"{'>= ' if self.bound else ''}{shown} ({self.kind}: {self.what})"


@dataclass
class Figures:
    """The report's figures (:func:`report_figures`)."""

    config: dict[str, Any]
    errors: dict[str, dict[str, float]] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    parameters: dict[str, int] = field(default_factory=dict)
    fps: dict[str, dict[str, float]] = field(default_factory=dict)
    time_to_target: dict[str, float | None] = field(default_factory=dict)
    target_mae: float = math.nan
    table: dict[str, dict[str, Cell]] = field(default_factory=dict)
    goals: list[tuple[str, bool, str]] = field(default_factory=list)
    scene: dict[str, float] = field(default_factory=dict)
    #: Per test frame: the true count and each model's.
    counts: dict[str, list[float]] = field(default_factory=dict)
    #: One test frame (the most crowded), its true map and the teacher's and student's.
    example: dict[str, torch.Tensor] = field(default_factory=dict)
    adaptation: dict[str, Any] = field(default_factory=dict)
    communication: dict[str, Any] = field(default_factory=dict)


def _read_json(folder: Path, name: str) -> Any:
    path = folder / name
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunFolderError(f"{path}: missing (is {folder} a finished crowd run?)") from None
    except json.JSONDecodeError as why:
        raise RunFolderError(f"{path}: not valid JSON ({why})") from None


def _config(meta: dict[str, Any]) -> pipeline.RunConfig:
    known = {f.name for f in fields(pipeline.RunConfig)}
    values: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items() if k in known
    }
    return pipeline.RunConfig(**values)


def _maps(model: nn.Module, frames: torch.Tensor, batch: int = 8) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(frames[i : i + batch]) for i in range(0, len(frames), batch)])


def _errors(predicted: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    mae, mse = count_errors(predicted, target)
    return {"mae": mae, "mse": mse}


def _time_to_target(runs: dict[str, Any]) -> tuple[float, dict[str, float | None]]:
    best = min(min(run["val_mae"], default=math.inf) for run in runs.values())
    target = TARGET_FACTOR * best
    times: dict[str, float | None] = {}
    for name, run in runs.items():
        reached = [s for s, mae in zip(run["seconds"], run["val_mae"]) if mae <= target]
        times[name] = reached[0] if reached else None
    return target, times


def _parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def report_figures(run_dir: str | os.PathLike[str]) -> Figures:
    """Every figure of the report of ``run_dir``, recomputed from its artifacts (module
    docstring). Raises :class:`RunFolderError` naming a missing or malformed file."""
    folder = Path(run_dir)
    meta = _read_json(folder, pipeline.CONFIG)
    config = _config(meta)
    adaptation = _read_json(folder, pipeline.ADAPTATION)
    speed = _read_json(folder, pipeline.SPEED)
    communication = _read_json(folder, pipeline.COMMUNICATION)
    scene_change = _read_json(folder, pipeline.SCENE_CHANGE)
    for name in (pipeline.TEACHER, pipeline.STUDENT, pipeline.STUDENT_NEW_SCENE):
        if not (folder / name).is_file():
            raise RunFolderError(f"{folder / name}: missing (is {folder} a finished crowd run?)")
    figures = Figures(meta)

    pretrained = Normalized(load_teacher()).eval()
    adapted_net = CSRNet()
    load_into(adapted_net, folder / pipeline.TEACHER)
    adapted = Normalized(adapted_net).eval()
    student = load_student(folder / pipeline.STUDENT)
    new_student = load_student(folder / pipeline.STUDENT_NEW_SCENE)
    float_student = CrowdStudent()
    load_into(float_student, folder / pipeline.STUDENT_FLOAT)

    frames, truth = pipeline.stack_frames(config.data("test"))
    teacher_maps = _maps(adapted, frames)
    student_maps = _maps(student, frames)
    pretrained_maps = _maps(pretrained, frames)
    figures.counts = {
        "truth": truth.flatten(1).sum(1).tolist(),
        "teacher_pretrained": pretrained_maps.flatten(1).sum(1).tolist(),
        "teacher_adapted": teacher_maps.flatten(1).sum(1).tolist(),
        "student": student_maps.flatten(1).sum(1).tolist(),
    }
    crowded = int(truth.flatten(1).sum(1).argmax())
    figures.example = {
        "frame": frames[crowded],
        "truth": truth[crowded, 0],
        "teacher": teacher_maps[crowded, 0],
        "student": student_maps[crowded, 0],
    }
    figures.adaptation, figures.communication = adaptation, communication
    figures.errors["teacher_pretrained"] = _errors(pretrained_maps, truth)
    figures.errors["teacher_adapted"] = _errors(teacher_maps, truth)
    figures.errors["student"] = _errors(student_maps, truth)
    figures.errors["student_vs_teacher"] = _errors(student_maps, teacher_maps)
    scene_frames, scene_truth = pipeline.stack_frames(config.data("scene_test"))
    figures.errors["scene_teacher"] = _errors(_maps(adapted, scene_frames), scene_truth)
    figures.errors["scene_student_before"] = _errors(_maps(student, scene_frames), scene_truth)
    figures.errors["scene_student_after"] = _errors(_maps(new_student, scene_frames), scene_truth)

    teacher_parameters = _parameters(adapted_net)
    figures.parameters = {"teacher": teacher_parameters, "student": _parameters(float_student)}
    figures.sizes = {
        "teacher_float32": 4 * teacher_parameters,
        "student_float32": 4 * figures.parameters["student"],
        "student_codl": (folder / pipeline.STUDENT).stat().st_size,
    }
    counters = speed["counters"]
    figures.fps = {k: v for k, v in counters.items() if "fps" in v}
    figures.target_mae, figures.time_to_target = _time_to_target(adaptation["runs"])
    figures.scene = _scene_figures(figures.errors, scene_change)
    _table(figures, communication)
    _goals(figures, scene_change)
    return figures


def _scene_figures(errors: dict[str, dict[str, float]], record: dict[str, Any]) -> dict[str, float]:
    old = errors["student"]["mae"]
    before = errors["scene_student_before"]["mae"]
    after = errors["scene_student_after"]["mae"]
    increase = before - old
    return {
        "old_scene_mae": old,
        "before_mae": before,
        "after_mae": after,
        "recovered_fraction": (before - after) / increase if increase > 0 else math.nan,
        "minutes": record["seconds"] / 60,
        "frames": record["frames"],
    }


def _fps(figures: Figures, name: str) -> float | None:
    entry = figures.fps.get(name)
    return None if entry is None else entry["fps"]


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _table(figures: Figures, communication: dict[str, Any]) -> None:
    times = figures.time_to_target
    kfac = times.get("kfac")
    runs = figures.adaptation["runs"]
    # Another optimizer that never reached the target ran for its last epoch's time without
    # reaching it: that time bounds its time to target from below.
    others = [
        (reached if reached is not None else runs[name]["seconds"][-1], reached is None, name)
        for name, reached in times.items()
        if name != "kfac" and runs[name]["seconds"]
    ]
    if kfac is None:
        compute = Cell(None, "K-FAC did not reach the target error")
    elif not others:
        compute = Cell(None, "no other optimizer ran")
    else:
        seconds, bound, name = min(others)
        what = f"time to MAE {figures.target_mae:.1f}, {name} / K-FAC"
        if bound:
            what += f"; {name} had not reached it after {seconds:.0f} s, so at least this"
        compute = Cell(seconds / kfac, what, bound=bound)
    rows = communication["projected"]
    best_row = max(rows, key=lambda r: r["nodes"] * r["codec_efficiency"])
    nodes = best_row["nodes"]
    parallel = Cell(
        nodes * best_row["codec_efficiency"],
        f"{nodes} nodes x {best_row['codec_efficiency']:.0%} efficiency, "
        f"{communication['codec']} gradients",
        "projected",
    )
    learning = Cell(
        _ratio(_fps(figures, "student_fp32_torch"), _fps(figures, "teacher_fp32_torch")),
        "float student / float teacher, frames/s in torch",
    )
    downsizing = Cell(
        _ratio(_fps(figures, "student_codl"), _fps(figures, "student_fp32_torch")),
        ".codl student in codl / float student in torch, frames/s",
    )
    sizes = figures.sizes
    memory_learning = Cell(
        figures.parameters["student"] / figures.parameters["teacher"],
        "student / teacher parameters",
    )
    memory_downsizing = Cell(
        sizes["student_codl"] / sizes["student_float32"], ".codl bytes / float32 student bytes"
    )
    speeds = [c.value for c in (compute, parallel, learning, downsizing)]
    total_speed = math.prod(v for v in speeds if v is not None)
    figures.table = {
        "compute node": {"speed": compute, "memory": Cell(None, "K-FAC adds factor memory")},
        "parallelization": {"speed": parallel, "memory": Cell(None, "not a memory layer")},
        "learning algorithm": {"speed": learning, "memory": memory_learning},
        "downsizing": {"speed": downsizing, "memory": memory_downsizing},
        "total": {
            "speed": Cell(
                total_speed,
                "product of the cells above",
                "projected" if parallel.value is not None else "measured",
                bound=compute.bound,
            ),
            "memory": Cell(
                sizes["student_codl"] / sizes["teacher_float32"],
                ".codl student / float32 CSRNet bytes",
            ),
        },
    }


def _goals(figures: Figures, scene_change: dict[str, Any]) -> None:
    sizes, fps, errors, scene = figures.sizes, figures.fps, figures.errors, figures.scene
    limit = sizes["teacher_float32"] / 1000
    student_fps = _fps(figures, "student_codl") or 0.0
    teacher_fps = _fps(figures, "teacher_fp32_torch")
    ort_fps = _fps(figures, "teacher_int8_onnxruntime")
    vs_teacher = _ratio(student_fps, teacher_fps) or 0.0
    goals = [
        (
            "memory: .codl student <= 1/1000 of float32 CSRNet",
            sizes["student_codl"] <= limit,
            f"{sizes['student_codl']:,} bytes against {limit:,.0f}",
        ),
        (
            "speed: >= 100x float32 CSRNet in torch",
            vs_teacher >= 100,
            f"{vs_teacher:,.0f}x",
        ),
        ("speed: >= 25 frames/s", student_fps >= 25, f"{student_fps:,.0f} frames/s"),
    ]
    if ort_fps is not None:
        vs_ort = student_fps / ort_fps
        goals.append(("speed: >= 30x CSRNet in ONNX Runtime int8", vs_ort >= 30, f"{vs_ort:,.0f}x"))
    ratio = errors["student"]["mae"] / max(errors["teacher_adapted"]["mae"], 1e-9)
    goals.append(("accuracy: student MAE <= 1.3x adapted teacher's", ratio <= 1.3, f"{ratio:.2f}x"))
    recovered = scene["recovered_fraction"]
    goals.append(
        (
            "adaptation: >= half the scene change's error recovered, <= 500 frames, <= 10 min",
            recovered >= 0.5 and scene["frames"] <= 500 and scene["minutes"] <= 10,
            f"{recovered:.0%} in {scene['minutes']:.1f} min on {scene['frames']} frames",
        )
    )
    del fps, scene_change
    figures.goals = goals


def _plot_adaptation(figures: Figures, path: Path) -> None:
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for name, run in figures.adaptation["runs"].items():
        seconds = [figures.adaptation["feature_seconds"], *run["seconds"]]
        ax.plot(seconds, [run["mae_before"], *run["val_mae"]], marker="o", label=name)
    ax.axhline(figures.target_mae, color="grey", linestyle="--", label="target")
    ax.set(xlabel="seconds (frontend features included)", ylabel="held-out count MAE")
    ax.set_title("Adapting the teacher's backend")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _plot_counts(figures: Figures, path: Path) -> None:
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    truth = figures.counts["truth"]
    for name in ("teacher_pretrained", "teacher_adapted", "student"):
        ax.scatter(truth, figures.counts[name], s=14, label=name.replace("_", " "))
    top = max(max(truth), 1.0)
    ax.plot([0, top], [0, top], color="grey", linewidth=1)
    ax.set(xlabel="true count", ylabel="predicted count", title="Held-out frames")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _plot_example(figures: Figures, path: Path) -> None:
    example = figures.example
    fig = Figure(figsize=(13, 3))
    axes = fig.subplots(1, 4)
    axes[0].imshow(example["frame"].permute(1, 2, 0).clamp(0, 1).numpy())
    axes[0].set_title("frame")
    for ax, name in zip(axes[1:], ("truth", "teacher", "student")):
        density = example[name]
        ax.imshow(density.numpy(), cmap="inferno")
        ax.set_title(f"{name}: {float(density.sum()):.0f}")
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _plot_scaling(figures: Figures, path: Path) -> None:
    rows = figures.communication["projected"]
    nodes = [r["nodes"] for r in rows]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(nodes, [r["float32_efficiency"] for r in rows], marker="o", label="float32 allreduce")
    ax.plot(
        nodes,
        [r["codec_efficiency"] for r in rows],
        marker="o",
        label=f"{figures.communication['codec']} (codl)",
    )
    ax.set_xscale("log", base=2)
    ax.set(xlabel="nodes", ylabel="weak-scaling efficiency", ylim=(0, 1.05))
    ax.set_title("Student distillation step, projected (alpha-beta link model)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _plot_scene(figures: Figures, path: Path) -> None:
    scene = figures.scene
    labels = ["old scene", "new scene, before", "new scene, after"]
    values = [scene["old_scene_mae"], scene["before_mae"], scene["after_mae"]]
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.bar(labels, values, color=["#4c72b0", "#c44e52", "#55a868"])
    ax.set(ylabel="student count MAE", title=f"Re-distilled in {scene['minutes']:.1f} min")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


PLOTS = {
    "adaptation.png": _plot_adaptation,
    "counts.png": _plot_counts,
    "example.png": _plot_example,
    "scaling.png": _plot_scaling,
    "scene_change.png": _plot_scene,
}


def _markdown(figures: Figures) -> str:
    meta = figures.config
    config = meta["config"]
    lines = [
        "# Crowd counting: the co-design pipeline's report",
        "",
        f"Run started {meta.get('started', '?')} on {meta.get('machine', '?')}, "
        f"{meta.get('threads', '?')} threads, torch {meta.get('torch', '?')}. Frames "
        f"{config['height']} x {config['width']} for training and accuracy, "
        f"{config['serve_height']} x {config['serve_width']} for speed. Every error below is "
        "recomputed from the saved models; times are the run's records.",
        "",
        f"Command: `{meta.get('command') or 'codl crowd RUN_DIR'}`, then `codl report RUN_DIR`.",
        "",
        "## Speed x Memory",
        "",
        "| component | speed | memory |",
        "|---|---|---|",
    ]
    for row, cells in figures.table.items():
        lines.append(f"| {row} | {cells['speed'].text()} | {cells['memory'].text(memory=True)} |")
    lines += ["", "## Goals", "", "| goal | met | figure |", "|---|---|---|"]
    lines += [
        f"| {goal} | {'yes' if met else 'no'} | {text} |" for goal, met, text in figures.goals
    ]
    lines += ["", "## Errors (count MAE / MSE on held-out frames)", "", "| model | MAE | MSE |"]
    lines.append("|---|---:|---:|")
    for name, value in figures.errors.items():
        lines.append(f"| {name.replace('_', ' ')} | {value['mae']:.2f} | {value['mse']:.2f} |")
    lines += ["", "## Frames per second", "", "| counter | frames/s | min | max |"]
    lines.append("|---|---:|---:|---:|")
    for name, value in figures.fps.items():
        lines.append(
            f"| {name.replace('_', ' ')} | {value['fps']:,.2f} | {value['min']:,.2f} | "
            f"{value['max']:,.2f} |"
        )
    lines += ["", "## Sizes", "", "| what | bytes |", "|---|---:|"]
    lines += [f"| {k.replace('_', ' ')} | {v:,} |" for k, v in figures.sizes.items()]
    lines += ["", "## Adapting the teacher", ""]
    lines.append(f"Target: MAE {figures.target_mae:.2f} ({TARGET_FACTOR}x the best reached).")
    lines += ["", "| optimizer | seconds to target | final MAE |", "|---|---:|---:|"]
    for name, run in figures.adaptation["runs"].items():
        reached = figures.time_to_target.get(name)
        shown = f"{reached:.0f}" if reached is not None else "not reached"
        lines.append(f"| {name} | {shown} | {run['val_mae'][-1]:.2f} |")
    communication = figures.communication
    link = communication["link"]
    lines += [
        "",
        "## Gradients on the wire (the student's distillation step, data parallel)",
        "",
        f"{communication['gradient_numel']:,} gradient values a step; bytes one rank sends a "
        f"step, float32 ring allreduce against codl's {communication['codec']} (two-phase "
        f"compressed allreduce), and the weak-scaling efficiency the alpha-beta link model "
        f"projects at {link['bandwidth'] * 8 / 1e9:g} Gbit/s and {link['latency'] * 1e6:g} us "
        "(projected, not measured):",
        "",
        "| nodes | float32 bytes | codec bytes | float32 efficiency | codec efficiency |",
        "|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['nodes']} | {r['float32_bytes']:,.0f} | {r['codec_bytes']:,.0f} | "
        f"{r['float32_efficiency']:.0%} | {r['codec_efficiency']:.0%} |"
        for r in communication["projected"]
    ]
    scene = figures.scene
    lines += [
        "",
        "## A new scene",
        "",
        f"The student's MAE went from {scene['old_scene_mae']:.2f} on its own scene to "
        f"{scene['before_mae']:.2f} on the new camera; re-distilled on {scene['frames']:.0f} "
        f"unlabeled frames of it in {scene['minutes']:.1f} minutes, {scene['after_mae']:.2f} "
        f"({scene['recovered_fraction']:.0%} of the increase recovered).",
        "",
    ]
    lines += [f"![{name}]({name})" for name in PLOTS]
    return "\n".join(lines) + "\n"


def write_report(run_dir: str | os.PathLike[str], figures: Figures | None = None) -> Path:
    """Write ``report.md`` and its PNG plots into ``run_dir`` (figures recomputed by
    :func:`report_figures` unless given) and return the Markdown's path."""
    folder = Path(run_dir)
    figures = report_figures(folder) if figures is None else figures
    for name, plot in PLOTS.items():
        plot(figures, folder / name)
    path = folder / REPORT
    path.write_text(_markdown(figures))
    return path
