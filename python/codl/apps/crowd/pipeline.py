"""The co-design pipeline on crowd counting, end to end, into a run folder that
:mod:`codl.apps.crowd.report` turns into the programme's Speed x Memory table.

1. **Compute node.** The pretrained CSRNet teacher is adapted to the target camera's frames
   (backend and output layer on cached frontend features) with codl's K-FAC and, from the same
   pretrained weights and features, with SGD and Adam: their held-out error against time. The
   adapted teacher with the lowest final held-out error teaches the student.
2. **Learning algorithm.** A :class:`CrowdStudent` is distilled from the adapted teacher on
   unlabeled frames (:class:`codl.distill.DensityKDLoss`), then ternarized and fine-tuned.
3. **Downsizing.** The ternary student is written as a ``.codl`` file (2-bit weights) and runs
   from it on codl's whole-model inference path (:func:`load_student`).
4. **Parallelization.** The student's distillation step is profiled and its gradients encoded
   with a codl codec: bytes on the wire per step against float32's, and the alpha-beta link
   model's projected scaling of that step (projected, not measured).
5. **Speed.** Frames per second at the serving resolution (640 x 480 by default) of the float32
   teacher in torch, of the teacher in ONNX Runtime static int8 when it is installed, of the
   float student in torch and of the ``.codl`` student, in one process on the same threads.
6. **A new scene.** A new camera (background, lighting, perspective): the student's error
   there before and after re-distilling it from the teacher on unlabeled frames of that scene,
   and the minutes it took.

Everything is seeded by :class:`RunConfig`; the held-out sets are regenerated from it, so the
report recomputes every accuracy from the saved models.
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset
from tqdm import tqdm

import codl
from codl.apps.crowd.adapt import OPTIMIZERS, adapt_teacher, cache_features
from codl.apps.crowd.data import SyntheticCrowds
from codl.apps.crowd.public import UCFQNRF, ShanghaiTech
from codl.apps.crowd.scenes import Camera
from codl.apps.crowd.student import (
    CrowdStudent,
    distill_student,
    load_student,
    save_student,
    teacher_maps,
)
from codl.apps.crowd.teacher import Normalized, load_teacher
from codl.comm import SignEF, profile_step, project
from codl.comm.linkmodel import measure_throughput
from codl.distill import DensityKDLoss
from codl.formats import save

#: The most epochs an optimizer gets within K-FAC's time.
MAX_EPOCHS_IN_BUDGET = 50
#: Files of a run folder.
CONFIG = "config.json"
ADAPTATION = "adaptation.json"
DISTILLATION = "distillation.json"
SPEED = "speed.json"
COMMUNICATION = "communication.json"
SCENE_CHANGE = "scene_change.json"
TEACHER = "teacher_adapted.codl"
STUDENT = "student.codl"
STUDENT_FLOAT = "student_float.codl"
STUDENT_NEW_SCENE = "student_new_scene.codl"


@dataclass
class RunConfig:
    """Sizes and seeds of a run. The defaults are the full run (about 30 minutes on a 2-core
    CPU); :meth:`small` is the demo's and the tests'."""

    height: int = 120
    width: int = 160
    train_frames: int = 128
    val_frames: int = 48
    unlabeled_frames: int = 1024
    test_frames: int = 64
    adapt_epochs: int = 4
    optimizers: tuple[str, ...] = OPTIMIZERS
    student_epochs: int = 40
    ternary_epochs: int = 15
    scene_frames: int = 256
    scene_epochs: int = 10
    serve_height: int = 480
    serve_width: int = 640
    speed_seconds: float = 3.0
    link_bandwidth: float = 125e6  # bytes/s: 1 Gbit/s Ethernet between edge nodes
    link_latency: float = 50e-6
    projected_nodes: tuple[int, ...] = (1, 2, 4, 8, 16, 64, 256)
    seed: int = 0
    #: A public data set on disk for the target domain (see :meth:`data`), and which one.
    data_root: str | None = None
    dataset: str = "shanghaitech-a"

    @classmethod
    def small(cls) -> RunConfig:
        """A run of seconds: tiny frames, few of them, one epoch of each phase."""
        return cls(
            height=32,
            width=48,
            train_frames=6,
            val_frames=4,
            unlabeled_frames=8,
            test_frames=4,
            adapt_epochs=1,
            student_epochs=2,
            ternary_epochs=1,
            scene_frames=8,
            scene_epochs=1,
            serve_height=64,
            serve_width=96,
            speed_seconds=0.2,
            projected_nodes=(1, 2, 8),
        )

    @classmethod
    def demo(cls) -> RunConfig:
        """``codl demo``'s run, well under a minute: small frames, enough of them for the
        student to learn something."""
        return cls(
            height=64,
            width=96,
            train_frames=32,
            val_frames=8,
            unlabeled_frames=192,
            test_frames=16,
            adapt_epochs=2,
            optimizers=("kfac", "adam"),
            student_epochs=15,
            ternary_epochs=3,
            scene_frames=48,
            scene_epochs=4,
            serve_height=240,
            serve_width=320,
            speed_seconds=0.5,
            projected_nodes=(1, 2, 8, 64),
        )

    def camera(self) -> Camera:
        """The target scene's camera."""
        return Camera(height=self.height, width=self.width)

    def new_camera(self) -> Camera:
        """The scene after the change: another background, darker, seen from higher up (the
        horizon further above the frame, people smaller)."""
        return Camera(
            height=self.height,
            width=self.width,
            horizon=-1.0,
            person_height=0.22,
            background_seed=7,
            lighting=0.7,
            noise=0.03,
        )

    def data(self, split: str, camera: Camera | None = None) -> Frames:
        """The split's frames: ``train``, ``val``, ``unlabeled``, ``test``, ``scene`` (unlabeled
        frames of the new scene) or ``scene_test``; each from its own seed. With
        ``data_root``, the first four come from that public data set instead (:data:`DATASETS`;
        train, val and unlabeled from consecutive images of its training split, test from its
        test split), each image resized to the run's frame size; the new scene stays
        synthetic."""
        sizes = {
            "train": self.train_frames,
            "val": self.val_frames,
            "unlabeled": self.unlabeled_frames,
            "test": self.test_frames,
            "scene": self.scene_frames,
            "scene_test": self.test_frames,
        }
        if self.data_root is not None and not split.startswith("scene"):
            return self._public(split, sizes)
        offsets = {"train": 1, "val": 2, "unlabeled": 3, "test": 4, "scene": 5, "scene_test": 6}
        if camera is None:
            camera = self.new_camera() if split.startswith("scene") else self.camera()
        return SyntheticCrowds(sizes[split], camera, seed=self.seed * 10 + offsets[split])

    def _public(self, split: str, sizes: dict[str, int]) -> Frames:
        assert self.data_root is not None
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset: expected one of {sorted(DATASETS)}, got {self.dataset!r}")
        source_split = "test" if split == "test" else "train"
        images = DATASETS[self.dataset](self.data_root, source_split)
        first = {"train": 0, "val": self.train_frames, "unlabeled": 0, "test": 0}[split]
        if split == "unlabeled":  # the labels of these frames are never read
            first = self.train_frames + self.val_frames
        indices = list(range(first, min(first + sizes[split], len(images))))
        if not indices:
            raise ValueError(
                f"{self.data_root}: {len(images)} {source_split} images leave none for the "
                f"{split} frames (the run takes {sizes[split]} after the first {first})"
            )
        return Resized(images, indices, self.height, self.width)


#: The public data sets a run can take its frames from (``RunConfig.data_root``).
DATASETS: dict[str, Callable[[str, str], ShanghaiTech | UCFQNRF]] = {
    "shanghaitech-a": lambda root, split: ShanghaiTech(root, "A", split),
    "shanghaitech-b": lambda root, split: ShanghaiTech(root, "B", split),
    "ucf-qnrf": lambda root, split: UCFQNRF(root, split, max_side=1024),
}


class Resized(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Items ``indices`` of ``images`` resized to ``height`` x ``width`` (bilinear), their
    density maps resized to 1/8 of that and rescaled to keep each map's count."""

    def __init__(
        self,
        images: Dataset[tuple[torch.Tensor, torch.Tensor]],
        indices: list[int],
        height: int,
        width: int,
    ) -> None:
        self.images, self.indices, self.height, self.width = images, indices, height, width

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, density = self.images[self.indices[index]]
        frame = F.interpolate(
            image[None], (self.height, self.width), mode="bilinear", align_corners=False
        )[0].clamp(0, 1)
        resized = F.interpolate(
            density[None, None], (self.height // 8, self.width // 8), mode="area"
        )[0, 0]
        total = float(resized.sum())
        if total > 0:
            resized = resized * (float(density.sum()) / total)
        return frame, resized


Frames = SyntheticCrowds | Resized


def stack_frames(data: Frames) -> tuple[torch.Tensor, torch.Tensor]:
    """All frames of ``data`` and their density maps (N x 1 x h x w), stacked."""
    items = [data[i] for i in range(len(data))]
    return torch.stack([f for f, _ in items]), torch.stack([d for _, d in items]).unsqueeze(1)


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


def frames_per_second(
    model: Callable[[torch.Tensor], torch.Tensor], frame: torch.Tensor, seconds: float
) -> dict[str, float]:
    """Frames per second of ``model`` on one frame at a time: the median of blocks of calls,
    each at least a tenth of ``seconds`` long (after one untimed call), and the spread
    (min and max of the blocks)."""
    with torch.no_grad():
        start = time.perf_counter()
        model(frame)
        once = max(time.perf_counter() - start, 1e-6)
        per_block = max(1, int(seconds / 10 / once))
        rates: list[float] = []
        deadline = time.perf_counter() + seconds
        while len(rates) < 3 or (time.perf_counter() < deadline and len(rates) < 10):
            start = time.perf_counter()
            for _ in range(per_block):
                model(frame)
            rates.append(per_block / (time.perf_counter() - start))
    return {"fps": statistics.median(rates), "min": min(rates), "max": max(rates)}


#: A baseline counter for the speed table: built from the float teacher (taking frames in
#: [0, 1]) and an example frame, or the reason it cannot run. The CLI passes ONNX Runtime's
#: static int8 this way (it lives in :mod:`codl.bench`, above this layer).
Baseline = Callable[[nn.Module, torch.Tensor], "Callable[[torch.Tensor], torch.Tensor] | str"]


@dataclass
class RunResult:
    """Where :func:`run_pipeline` wrote, and what it took."""

    run_dir: Path
    seconds: dict[str, float] = field(default_factory=dict)


def run_pipeline(
    run_dir: str | os.PathLike[str],
    config: RunConfig | None = None,
    *,
    baselines: Mapping[str, Baseline] | None = None,
    command: str | None = None,
    progress: bool = True,
) -> RunResult:
    """Run the whole pipeline (module docstring) into ``run_dir`` (created; files replaced).
    ``baselines``: more counters for the speed table, by name (see :data:`Baseline`);
    ``command``: how the run was started, for the report. Needs the
    ``csrnet`` package (:func:`load_teacher` says how to install it)."""
    config = config or RunConfig()
    folder = Path(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    result = RunResult(folder)
    threads = torch.get_num_threads()
    torch.manual_seed(config.seed)
    meta = {
        "config": asdict(config),
        "threads": threads,
        "machine": f"{platform.machine()} {codl.info().get('cpu', platform.processor())}",
        "codl": codl.info().get("version", ""),
        "torch": torch.__version__,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": command,
    }
    _write_json(folder / CONFIG, meta)
    steps = tqdm(total=6, desc="crowd pipeline", disable=not progress)
    clock = time.perf_counter()

    def done(name: str) -> None:
        nonlocal clock
        result.seconds[name] = time.perf_counter() - clock
        clock = time.perf_counter()
        steps.set_postfix_str(name)
        steps.update(1)

    # 1. Compute node: the teacher adapted by each optimizer from the same features.
    pretrained = load_teacher()
    cached = cache_features(pretrained, config.data("train"), config.data("val"))
    adaptations = {}
    adapted: nn.Module | None = None
    best = math.inf
    # K-FAC first, for its epochs; then each other optimizer for as many epochs as fit in the
    # time K-FAC took (its epochs are cheaper), so time to target compares equal budgets.
    budget: float | None = None
    for name in sorted(config.optimizers, key=lambda name: name != "kfac"):
        teacher = load_teacher()
        record = adapt_teacher(
            teacher,
            cached,
            optimizer=name,
            epochs=config.adapt_epochs if budget is None else MAX_EPOCHS_IN_BUDGET,
            seed=config.seed,
            max_seconds=budget,
            progress=progress,
        )
        if name == "kfac" and record.seconds:
            budget = record.seconds[-1]
        adaptations[name] = asdict(record)
        final = record.val_mae[-1] if record.val_mae else record.mae_before
        if adapted is None or final < best:  # the student learns from the best teacher
            adapted, best = teacher, final
    assert adapted is not None
    _write_json(folder / ADAPTATION, {"feature_seconds": cached.seconds, "runs": adaptations})
    save(adapted, folder / TEACHER)
    done("adaptation")

    # 2. Learning algorithm: distill the student from the adapted teacher on unlabeled frames.
    teacher_on_frames = Normalized(adapted).eval()
    frames, _ = stack_frames(config.data("unlabeled"))
    start = time.perf_counter()
    maps = teacher_maps(teacher_on_frames, frames)
    maps_seconds = time.perf_counter() - start
    float_student = CrowdStudent()
    student, distillation = distill_student(
        frames,
        maps,
        student=float_student,
        epochs=config.student_epochs,
        ternary_epochs=config.ternary_epochs,
        seed=config.seed,
    )
    _write_json(
        folder / DISTILLATION,
        {"teacher_maps_seconds": maps_seconds, "frames": len(frames), **asdict(distillation)},
    )
    done("distillation")

    # 3. Downsizing: the ternary student as a .codl file, and the float one for comparison.
    save_student(student, folder / STUDENT, calibration=frames[:32])
    save(float_student, folder / STUDENT_FLOAT)
    done("compression")

    # 4. Parallelization: the distillation step's gradients, encoded, and the projection.
    _write_json(folder / COMMUNICATION, _communication(config, frames[:8], maps[:8]))
    done("communication")

    # 5. Speed at the serving resolution, every counter on the same threads.
    _write_json(folder / SPEED, _speed(config, adapted, float_student, folder, baselines or {}))
    done("speed")

    # 6. A new scene: re-distill on its unlabeled frames.
    _write_json(folder / SCENE_CHANGE, _scene_change(config, teacher_on_frames, student, folder))
    done("scene change")
    steps.close()
    meta["seconds"] = result.seconds
    _write_json(folder / CONFIG, meta)
    return result


def _communication(config: RunConfig, frames: torch.Tensor, maps: torch.Tensor) -> dict[str, Any]:
    student = CrowdStudent()
    loss = DensityKDLoss()
    step = profile_step(student, (frames, maps), loss, repeat=3)
    codec = SignEF()
    numel = step.gradient_numel
    throughput = measure_throughput(codec, numel)
    rows = []
    for nodes in config.projected_nodes:
        dense = project(step, None, nodes, config.link_bandwidth, config.link_latency)
        compressed = project(
            step, codec, nodes, config.link_bandwidth, config.link_latency, throughput=throughput
        )
        rows.append(
            {
                "nodes": nodes,
                "float32_bytes": dense.ring_bytes,
                "codec_bytes": compressed.bytes_sent,
                "float32_step_s": dense.step_s,
                "codec_step_s": compressed.step_s,
                "float32_efficiency": dense.efficiency,
                "codec_efficiency": compressed.efficiency,
            }
        )
    return {
        "codec": type(codec).__name__,
        "gradient_numel": numel,
        "forward_s": step.forward_s,
        "backward_s": step.backward_s,
        "link": {"bandwidth": config.link_bandwidth, "latency": config.link_latency},
        "projected": rows,
    }


def _speed(
    config: RunConfig,
    teacher: nn.Module,
    float_student: nn.Module,
    folder: Path,
    baselines: Mapping[str, Baseline],
) -> dict[str, Any]:
    frame = torch.rand(
        1, 3, config.serve_height, config.serve_width, generator=torch.Generator().manual_seed(0)
    )
    served = load_student(folder / STUDENT)
    fused = codl.nn.fuse(served, frame)
    counters: dict[str, Callable[[torch.Tensor], torch.Tensor] | str] = {
        "teacher_fp32_torch": Normalized(teacher).eval(),
        "student_fp32_torch": float_student.eval(),
        "student_codl": fused,
    }
    for name, build in baselines.items():
        counters[name] = build(Normalized(teacher).eval(), frame)
    measured: dict[str, Any] = {}
    for name, counter in counters.items():
        if isinstance(counter, str):
            measured[name] = {"skipped": counter}
            continue
        # The teacher takes seconds a frame: a few frames are its whole measurement.
        measured[name] = frames_per_second(counter, frame, config.speed_seconds)
    return {
        "resolution": [config.serve_height, config.serve_width],
        "threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()),
        "counters": measured,
    }


def _scene_change(
    config: RunConfig, teacher: nn.Module, student: nn.Module, folder: Path
) -> dict[str, Any]:
    frames, _ = stack_frames(config.data("scene"))
    start = time.perf_counter()
    maps = teacher_maps(teacher, frames)
    maps_seconds = time.perf_counter() - start
    redistilled, record = distill_student(
        frames,
        maps,
        student=copy.deepcopy(student),
        epochs=0,
        ternary_epochs=config.scene_epochs,
        seed=config.seed + 1,
    )
    seconds = time.perf_counter() - start
    save_student(redistilled, folder / STUDENT_NEW_SCENE, calibration=frames[:32])
    return {
        "frames": len(frames),
        "seconds": seconds,
        "teacher_maps_seconds": maps_seconds,
        "loss": record.ternary_loss,
        "camera": asdict(config.new_camera()),
    }
