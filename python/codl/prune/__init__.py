"""Pruning: make models smaller on disk and in memory.

* :func:`magnitude_` / :func:`magnitude_mask`: unstructured magnitude pruning with the zeros
  written into the weights, kept during fine-tuning by a :class:`Pruner`, one shot or gradual
  (:class:`AGPSchedule`, Zhu & Gupta 2017).
* :func:`channel_`: structured pruning that removes output channels of Conv2d/Linear layers
  (smaller dense layers; batch norms and the consumer layer follow), ranked by filter norm.
* :func:`spectral_`: spectral pruning (Suzuki et al., IJCAI 2020): keeps the channels that best
  reconstruct the others on calibration data and folds the reconstruction into the next layer.
* :func:`fine_tune`: a small training loop that keeps pruners and quantizers applied.
"""

from __future__ import annotations

from codl.prune.channel import ChannelGroup, channel_, channel_scores, find_channel_groups
from codl.prune.finetune import evaluate, fine_tune
from codl.prune.magnitude import Pruner, magnitude_, magnitude_mask, prunable_weights
from codl.prune.models import LeNet300100
from codl.prune.schedule import AGPSchedule
from codl.prune.spectral import (
    SpectralLayer,
    SpectralSelection,
    degrees_of_freedom,
    reconstruction_error,
    spectral_,
    spectral_select,
)

__all__ = [
    "AGPSchedule",
    "ChannelGroup",
    "LeNet300100",
    "Pruner",
    "SpectralLayer",
    "SpectralSelection",
    "channel_",
    "channel_scores",
    "degrees_of_freedom",
    "evaluate",
    "find_channel_groups",
    "fine_tune",
    "magnitude_",
    "magnitude_mask",
    "prunable_weights",
    "reconstruction_error",
    "spectral_",
    "spectral_select",
]
