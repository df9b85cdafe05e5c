"""Pruning: make models smaller on disk and in memory.

* :func:`magnitude_` / :func:`magnitude_mask`: unstructured magnitude pruning with the zeros
  written into the weights, kept during fine-tuning by a :class:`Pruner`, one shot or gradual
  (:class:`AGPSchedule`, Zhu & Gupta 2017).
* :func:`channel_`: structured pruning that removes output channels of Conv2d/Linear layers
  (smaller dense layers; batch norms and the consumer layer follow), ranked by filter norm.
* :func:`spectral_`: spectral pruning (Suzuki et al., IJCAI 2020): keeps the channels that best
  reconstruct the others on calibration data and folds the reconstruction into the next layer.
"""

from __future__ import annotations

from codl.prune.channel import ChannelGroup, channel_, channel_scores, find_channel_groups
from codl.prune.magnitude import Pruner, magnitude_, magnitude_mask
from codl.prune.schedule import AGPSchedule
from codl.prune.sparse import SparseLinear, to_sparse
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
    "Pruner",
    "SparseLinear",
    "SpectralLayer",
    "SpectralSelection",
    "channel_",
    "channel_scores",
    "degrees_of_freedom",
    "find_channel_groups",
    "magnitude_",
    "magnitude_mask",
    "reconstruction_error",
    "spectral_",
    "spectral_select",
    "to_sparse",
]
