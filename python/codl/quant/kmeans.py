"""Weight sharing by k-means: ``2^b`` shared values per layer and ``b``-bit indices.

S. Han, H. Mao and W. J. Dally, "Deep Compression: compressing deep neural networks with
pruning, trained quantization and Huffman coding", ICLR 2016 (arXiv:1510.00149), §3:

* §3.1: the ``n`` weights of a layer are partitioned into ``k = 2^b`` clusters ``C_1..C_k``
  minimising the within-cluster sum of squares ``Σ_i Σ_{w ∈ C_i} |w - c_i|²`` (their eq. 2),
  by Lloyd's algorithm in one dimension. Pruned weights (zeros of a mask) are left out: they
  are stored as positions, not as indices.
* §3.2: centroid initialisation. *Linear* (equally spaced between the smallest and the largest
  kept weight) is their recommendation, as it keeps a few centroids on the rare large weights
  that matter most; *density* (equal-count quantiles) and *random* (Forgy: k weights at random,
  the seeded choice) are the alternatives they compare.
* §3.3: fine-tuning the shared values. The gradient of a centroid is the sum of the gradients
  of the weights that share it, ``∂L/∂c_k = Σ_{i,j} ∂L/∂W_ij 1(I_ij = k)`` (their eq. 3).
  :class:`KMeansQuantizer` does this without changing the model's parameters: a gradient hook
  gives every member of a cluster the cluster's summed gradient, so any optimizer moves all
  members by the same amount (same value, same gradient, same optimizer state), and
  :meth:`KMeansQuantizer.step` writes the shared values back exactly after each step.

With ``reassign=True`` the quantizer trains the weights themselves instead (quantization-aware
training with a straight-through estimator, Bengio et al. 2013): it keeps a float shadow of every
weight, adds each optimizer step's change to it, and after every step moves each weight to the
nearest centroid of one warm-started Lloyd iteration on the shadows. Weights can then change
cluster, which adversarial fine-tuning needs (16 shared values per layer leave it 16 degrees of
freedom otherwise).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from torch import nn

from codl.training import checked_state_tensors, prunable_weights

__all__ = [
    "Init",
    "KMeansQuantizer",
    "check_bits",
    "kmeans_",
    "kmeans_dequantize",
    "kmeans_quantize",
]

Init = Literal["linear", "density", "random"]

#: Lloyd iterations at most; 1-D k-means on a layer converges in a few dozen.
MAX_ITERATIONS = 100


def check_bits(bits: object, name: str = "bits", low: int = 1, high: int = 8) -> int:
    """``bits`` as an int in [low, high]; TypeError or ValueError naming ``name`` otherwise."""
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"{name}: expected an int in {low}..{high}, received {type(bits).__name__}")
    if not low <= bits <= high:
        raise ValueError(f"{name}: expected an int in {low}..{high}, received {bits}")
    return bits


def _check_weight_and_mask(weight: object, mask: object) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight: expected a torch.Tensor, received {type(weight).__name__}")
    if not weight.is_floating_point():
        raise TypeError(f"weight: expected a floating-point tensor, received {weight.dtype}")
    if weight.numel() == 0:
        raise ValueError(f"weight: expected a non-empty tensor, received {tuple(weight.shape)}")
    if not bool(torch.isfinite(weight).all()):
        raise ValueError("weight: expected finite values, received NaN or Inf")
    if mask is None:
        return weight.detach(), torch.ones(weight.shape, dtype=torch.bool)
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask: expected a torch.Tensor or None, received {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask: expected dtype torch.bool (True = kept), received {mask.dtype}")
    if mask.shape != weight.shape:
        raise ValueError(
            f"mask: expected shape {tuple(weight.shape)} like weight, received {tuple(mask.shape)}"
        )
    return weight.detach(), mask.detach().cpu()


def _assign(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid of each value (centroids ascending; a tie goes low)."""
    boundaries = (centroids[:-1] + centroids[1:]) / 2
    return torch.searchsorted(boundaries, values, right=False)


def _initial_centroids(values: torch.Tensor, k: int, init: str, seed: int) -> torch.Tensor:
    if init == "linear":
        return torch.linspace(float(values.min()), float(values.max()), k, dtype=torch.float64)
    if init == "density":
        levels = (torch.arange(k, dtype=torch.float64) + 0.5) / k
        return torch.quantile(values, levels).sort().values
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randperm(values.numel(), generator=generator)[:k]
    return values[picks].sort().values


def _lloyd(values: torch.Tensor, k: int, init: str, seed: int) -> torch.Tensor:
    """Sorted centroids of 1-D k-means on ``values`` (float64), empty clusters dropped.

    In one dimension every cluster is a run of the sorted values, so after one sort each Lloyd
    iteration costs O(k log n): the cluster edges are binary searches of the midpoints between
    centroids, and the cluster sums are differences of a prefix sum.
    """
    ordered = values.sort().values
    distinct: torch.Tensor = torch.unique_consecutive(ordered)
    if distinct.numel() <= k:
        return distinct  # every value its own centroid: exact
    prefix = torch.cat([torch.zeros(1, dtype=torch.float64), ordered.cumsum(0)])
    centroids = _initial_centroids(values, k, init, seed)
    edges = None
    for _ in range(MAX_ITERATIONS):
        # A value on a midpoint goes to the lower centroid, as in _assign.
        cuts = torch.searchsorted(ordered, (centroids[:-1] + centroids[1:]) / 2, right=True)
        updated = torch.cat([torch.zeros(1, dtype=cuts.dtype), cuts, torch.tensor([len(ordered)])])
        if edges is not None and torch.equal(updated, edges):
            break
        edges = updated
        counts = (edges[1:] - edges[:-1]).double()
        sums = prefix[edges[1:]] - prefix[edges[:-1]]
        # An empty cluster keeps its centroid this round; it is dropped at the end if still empty.
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids).sort().values
    cuts = torch.searchsorted(ordered, (centroids[:-1] + centroids[1:]) / 2, right=True)
    edges = torch.cat([torch.zeros(1, dtype=cuts.dtype), cuts, torch.tensor([len(ordered)])])
    return centroids[edges[1:] > edges[:-1]]


#: Above this many kept values, Lloyd's algorithm runs on a histogram of them (below: on the
#: sorted values themselves, exactly).
HISTOGRAM_MIN_VALUES = 1 << 16
#: Histogram bins: the top 18 bits of a value's float32 pattern (sign, exponent, 9 mantissa
#: bits), so a bin is at most 2^-9 of its values' magnitude wide, and 2^18 of them.
_HISTOGRAM_SHIFT = 14
#: Lloyd iterations at most on a histogram: each costs O(k log bins), not O(n), so the
#: iterations run until the cluster edges stop moving (100 on the values often stops short of
#: that on heavy-tailed layers: the histogram's fixed point then has a smaller error).
HISTOGRAM_MAX_ITERATIONS = 300


def _histogram(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(counts, means) of the non-empty bins of ``values`` (float32), bins in ascending order
    of value: one pass over the values (two bincounts), no sort."""
    bits = values.float().view(torch.int32)
    # Order-preserving integer key: negative floats' magnitude bits reversed.
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    key = (ordered >> _HISTOGRAM_SHIFT) + (1 << (31 - _HISTOGRAM_SHIFT))
    size = 1 << (32 - _HISTOGRAM_SHIFT)
    counts = torch.bincount(key, minlength=size)
    sums = torch.bincount(key, weights=values.double(), minlength=size)
    used = counts > 0
    counts, sums = counts[used].double(), sums[used]
    return counts, sums / counts


def _lloyd_histogram(values: torch.Tensor, k: int, init: str, seed: int) -> torch.Tensor:
    """Sorted centroids of 1-D k-means on ``values``, each Lloyd iteration on a histogram.

    A bin's values move together: Lloyd's algorithm runs on the bins' means weighted by their
    counts (the cluster sums and counts are then exactly those of the values, as long as no
    cluster edge falls inside a bin: bins are at most 2^-9 of their magnitude wide, far finer
    than 256 centroids). One pass builds the histogram; each iteration is O(k log bins), so a
    47 MB embedding is clustered in a fraction of a second where sorting it took seconds. The
    indices are then assigned against the final centroids value by value (exactly nearest).
    """
    counts, means = _histogram(values)
    if means.numel() <= k:  # so few bins that the values may be exact centroids: sort them
        return _lloyd(values, k, init, seed)
    prefix_counts = torch.cat([torch.zeros(1, dtype=torch.float64), counts.cumsum(0)])
    prefix_sums = torch.cat([torch.zeros(1, dtype=torch.float64), (counts * means).cumsum(0)])
    if init == "density":
        levels = (torch.arange(k, dtype=torch.float64) + 0.5) / k * prefix_counts[-1]
        picks = torch.searchsorted(prefix_counts[1:], levels).clamp(max=means.numel() - 1)
        centroids = means[picks].sort().values
    else:
        centroids = _initial_centroids(values, k, init, seed)
    edges = None
    bins = means.numel()
    for _ in range(HISTOGRAM_MAX_ITERATIONS):
        cuts = torch.searchsorted(means, (centroids[:-1] + centroids[1:]) / 2, right=True)
        updated = torch.cat([torch.zeros(1, dtype=cuts.dtype), cuts, torch.tensor([bins])])
        if edges is not None and torch.equal(updated, edges):
            break
        edges = updated
        sizes = prefix_counts[edges[1:]] - prefix_counts[edges[:-1]]
        sums = prefix_sums[edges[1:]] - prefix_sums[edges[:-1]]
        centroids = torch.where(sizes > 0, sums / sizes.clamp(min=1), centroids).sort().values
    cuts = torch.searchsorted(means, (centroids[:-1] + centroids[1:]) / 2, right=True)
    edges = torch.cat([torch.zeros(1, dtype=cuts.dtype), cuts, torch.tensor([bins])])
    return centroids[edges[1:] > edges[:-1]]


def kmeans_quantize(
    weight: torch.Tensor,
    bits: int,
    mask: torch.Tensor | None = None,
    seed: int = 0,
    *,
    init: Init = "linear",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster the kept entries of ``weight`` into at most ``2^bits`` shared values.

    Args:
        weight: any floating-point tensor.
        bits: 1..8; the codebook holds at most ``2^bits`` centroids (fewer when the kept
            entries hold fewer distinct values or a cluster ends empty).
        mask: bool tensor of ``weight``'s shape, ``True`` = kept (e.g. from
            :func:`codl.prune.magnitude_mask`); only kept entries are clustered.
        seed: seeds the ``"random"`` initialisation (the others are deterministic).
        init: ``"linear"`` (Deep Compression's recommendation), ``"density"`` or ``"random"``.

    Returns:
        ``(codebook, indices)``: float32 centroids in ascending order, and int64 indices of
        ``weight``'s shape. Each kept entry's index is its nearest centroid in the float32
        codebook; entries outside the mask hold index 0 (meaningless: decode with the mask,
        :func:`kmeans_dequantize`).
    """
    tensor, keep = _check_weight_and_mask(weight, mask)
    levels = 1 << check_bits(bits)
    if init not in ("linear", "density", "random"):
        raise ValueError(f"init: expected 'linear', 'density' or 'random', received {init!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int, received {type(seed).__name__}")
    dense = bool(keep.all())
    flat = tensor.cpu().reshape(-1)
    values = (flat if dense else flat[keep.reshape(-1)]).double()
    if values.numel() == 0:
        return torch.zeros(1, dtype=torch.float32), torch.zeros(tensor.shape, dtype=torch.int64)
    if values.numel() > HISTOGRAM_MIN_VALUES:
        codebook = _lloyd_histogram(values, levels, init, seed).float()
    else:
        codebook = _lloyd(values, levels, init, seed).float()
    # Assign against the float32 codebook that will be stored, so the index is the nearest of
    # the values a decoder sees (rounding the centroids could move a boundary by an ulp).
    codebook = torch.unique(codebook)
    nearest = _assign(values, codebook.double())
    if dense:
        return codebook, nearest.reshape(tensor.shape)
    indices = torch.zeros(tensor.shape, dtype=torch.int64)
    indices[keep] = nearest
    return codebook, indices


def kmeans_dequantize(
    codebook: torch.Tensor, indices: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``codebook[indices]`` as float32, zero outside ``mask``."""
    if not isinstance(codebook, torch.Tensor) or codebook.dim() != 1 or codebook.numel() == 0:
        raise ValueError("codebook: expected a non-empty 1-D tensor")
    if not isinstance(indices, torch.Tensor) or indices.dtype != torch.int64:
        raise TypeError("indices: expected an int64 tensor")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= codebook.numel()):
        raise ValueError(f"indices: expected values in [0, {codebook.numel()}), found others")
    values = codebook.float()[indices]
    if mask is not None:
        if mask.shape != indices.shape or mask.dtype != torch.bool:
            raise ValueError(f"mask: expected a bool tensor of shape {tuple(indices.shape)}")
        values = torch.where(mask, values, torch.zeros((), dtype=torch.float32))
    return values


class KMeansQuantizer:
    """Shared weights of some layers, kept shared while the model trains (Deep Compression §3.3).

    After construction every chosen weight holds only its codebook values (zeros stay zeros).
    Call :meth:`step` after every ``optimizer.step()`` (or :meth:`attach`) during fine-tuning.
    ``codebooks[name]`` is the current codebook (the centroid values after fine-tuning),
    ``indices[name]`` and ``masks[name]`` what the format stores. ``reassign=True``: the
    straight-through mode of the module docstring (weights may change cluster; ``shadows[name]``
    holds the float weights it trains).
    """

    def __init__(
        self,
        weights: Mapping[str, nn.Parameter],
        bits: int | Mapping[str, int],
        *,
        masks: Mapping[str, torch.Tensor] | None = None,
        seed: int = 0,
        init: Init = "linear",
        reassign: bool = False,
    ) -> None:
        if not isinstance(reassign, bool):
            raise TypeError(f"reassign: expected a bool, received {type(reassign).__name__}")
        if not weights:
            raise ValueError("weights: expected at least one weight to quantize, received none")
        self.weights = dict(weights)
        self.bits: dict[str, int] = {}
        for name in self.weights:
            chosen: object = bits.get(name) if isinstance(bits, Mapping) else bits
            if chosen is None:
                raise ValueError(f"bits: expected a width for {name!r}, received none")
            self.bits[name] = check_bits(chosen, f"bits[{name!r}]")
        self.masks: dict[str, torch.Tensor] = {}
        self.codebooks: dict[str, torch.Tensor] = {}
        self.indices: dict[str, torch.Tensor] = {}
        for name, weight in self.weights.items():
            given = None if masks is None else masks.get(name)
            # Zeros are pruned weights unless a mask says otherwise: they stay exact zeros.
            mask = given if given is not None else weight.detach() != 0
            codebook, indices = kmeans_quantize(weight, self.bits[name], mask, seed, init=init)
            self.masks[name] = mask
            self.codebooks[name] = codebook
            self.indices[name] = indices
        self.reassign = reassign
        self.shadows: dict[str, torch.Tensor] = {}
        if reassign:
            # The straight-through mode: plain per-weight gradients, float shadows.
            self._hooks = []
            for name, weight in self.weights.items():
                self.shadows[name] = weight.detach().double() * self.masks[name]
        else:
            self._hooks = [
                weight.register_hook(self._gradient_hook(name))  # type: ignore[no-untyped-call]
                for name, weight in self.weights.items()
            ]
        self._written: dict[str, torch.Tensor] = {}
        self.apply_codebooks()

    def _gradient_hook(self, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
        def hook(grad: torch.Tensor) -> torch.Tensor:
            mask = self.masks[name]
            indices = self.indices[name]
            kept = indices[mask]
            # Deep Compression eq. 3: each centroid's gradient is the sum over its members.
            sums = torch.zeros(self.codebooks[name].numel(), dtype=torch.float64)
            sums.index_add_(0, kept, grad.detach()[mask].double())
            shared = torch.zeros_like(grad)
            shared[mask] = sums[kept].to(grad.dtype)
            return shared

        return hook

    @torch.no_grad()
    def apply_codebooks(self) -> None:
        """Write ``codebook[index]`` into every kept entry and zero the others."""
        for name, weight in self.weights.items():
            values = kmeans_dequantize(self.codebooks[name], self.indices[name], self.masks[name])
            weight.copy_(values.to(weight.dtype))
            if self.reassign:
                self._written[name] = weight.detach().clone()

    @torch.no_grad()
    def step(self) -> None:
        """Read the centroids back from the updated weights (all members moved alike: their
        mean is that common value) and write them out again, exactly shared. With
        ``reassign=True``: add the step's change to the shadows, run one Lloyd iteration on
        them from the current codebook, and write each weight's nearest centroid."""
        if self.reassign:
            self._reassign_step()
            return
        for name, weight in self.weights.items():
            mask = self.masks[name]
            kept = self.indices[name][mask]
            codebook = self.codebooks[name]
            counts = torch.bincount(kept, minlength=codebook.numel())
            sums = torch.zeros(codebook.numel(), dtype=torch.float64)
            sums.index_add_(0, kept, weight.detach()[mask].double())
            updated = torch.where(counts > 0, sums / counts.clamp(min=1), codebook.double())
            self.codebooks[name] = updated.float()
        self.apply_codebooks()

    def _reassign_step(self) -> None:
        for name, weight in self.weights.items():
            mask = self.masks[name]
            shadow = self.shadows[name]
            shadow[mask] += (weight.detach() - self._written[name])[mask].double()
            values = shadow[mask]
            codebook = self.codebooks[name].double()
            indices = _assign(values, codebook)
            counts = torch.bincount(indices, minlength=codebook.numel())
            sums = torch.zeros_like(codebook).index_add_(0, indices, values)
            # An empty cluster keeps its centroid, as in the Lloyd iterations of kmeans_quantize.
            codebook = torch.where(counts > 0, sums / counts.clamp(min=1), codebook)
            # Nearest in the float32 codebook that is stored, as kmeans_quantize assigns.
            stored = torch.unique(codebook.float())
            full = torch.zeros_like(self.indices[name])
            full[mask] = _assign(values, stored.double()).to(full.dtype)
            self.codebooks[name] = stored
            self.indices[name] = full
        self.apply_codebooks()

    def attach(self, optimizer: torch.optim.Optimizer) -> Any:
        """Run :meth:`step` after every ``optimizer.step()``; returns the hook's handle."""

        def after_step(*_: object) -> None:
            self.step()

        return optimizer.register_step_post_hook(after_step)

    def state_dict(self) -> dict[str, Any]:
        """What resuming fine-tuning needs: per weight its bits, mask, codebook, indices and
        (``reassign=True``) float shadow and last written values, cloned. Plain Python values
        and tensors only, so ``torch.load(..., weights_only=True)`` reads it."""

        def cloned(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {name: tensor.clone() for name, tensor in tensors.items()}

        return {
            "bits": dict(self.bits),
            "reassign": self.reassign,
            "masks": cloned(self.masks),
            "codebooks": cloned(self.codebooks),
            "indices": cloned(self.indices),
            "shadows": cloned(self.shadows),
            "written": cloned(self._written),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict`: a quantizer made for the same weights with the same
        bits and ``reassign`` continues exactly where the saved one stopped. The weights are
        not written: load the model's (and the optimizer's) state as well. ``ValueError``
        names what does not match."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(
                f"state_dict: expected a mapping from KMeansQuantizer.state_dict(), received "
                f"{type(state_dict).__name__}"
            )
        expected_keys = {"bits", "reassign", "masks", "codebooks", "indices", "shadows", "written"}
        if set(state_dict) != expected_keys:
            raise ValueError(
                f"state_dict: expected the keys {sorted(expected_keys)}, received "
                f"{sorted(state_dict)}"
            )
        for key, mine in (("bits", self.bits), ("reassign", self.reassign)):
            if state_dict[key] != mine:
                raise ValueError(
                    f"state_dict[{key!r}]: expected {mine!r} (this quantizer's), received "
                    f"{state_dict[key]!r}"
                )
        stateful = self.weights if self.reassign else {}

        def checked(
            key: str,
            weights: Mapping[str, torch.Tensor],
            spec: Callable[[torch.Tensor], tuple[torch.Size, torch.dtype]] | None,
        ) -> dict[str, torch.Tensor]:
            return checked_state_tensors(state_dict[key], weights, key, spec)

        masks = checked("masks", self.weights, lambda w: (w.shape, torch.bool))
        indices = checked("indices", self.weights, lambda w: (w.shape, torch.int64))
        codebooks = checked("codebooks", self.weights, None)
        shadows = checked("shadows", stateful, lambda w: (w.shape, torch.float64))
        written = checked("written", stateful, lambda w: (w.shape, w.dtype))
        for name, codebook in codebooks.items():
            size = 2 ** self.bits[name]
            if codebook.dim() != 1 or codebook.dtype != torch.float32 or codebook.numel() > size:
                raise ValueError(
                    f"state_dict['codebooks'][{name!r}]: expected float32 of at most {size} "
                    f"values, received {codebook.dtype} of shape {tuple(codebook.shape)}"
                )
            top = int(indices[name][masks[name]].max()) if bool(masks[name].any()) else -1
            if top >= codebook.numel():
                raise ValueError(
                    f"state_dict['indices'][{name!r}]: expected indices below the codebook's "
                    f"{codebook.numel()} values, received {top}"
                )
        self.masks, self.indices, self.codebooks = masks, indices, codebooks
        self.shadows, self._written = shadows, written

    def remove(self) -> None:
        """Drop the gradient hooks; the weights keep their shared values."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []


def kmeans_(
    model: nn.Module,
    bits: int | Mapping[str, int],
    *,
    include: Callable[[str, nn.Module], bool] | None = None,
    masks: Mapping[str, torch.Tensor] | None = None,
    seed: int = 0,
    init: Init = "linear",
    reassign: bool = False,
) -> KMeansQuantizer:
    """k-means weight sharing on every Linear/Conv weight of ``model`` (in place).

    ``bits``: one width for all, or ``{"<module>.weight": bits}`` (Deep Compression used 8 bits
    for convolutions, 5 for fully connected layers). Zeros (pruned weights) stay zero unless
    ``masks`` says otherwise. Returns the :class:`KMeansQuantizer` that keeps the sharing
    during fine-tuning (:func:`codl.training.fine_tune` with ``callbacks=[quantizer]``);
    ``reassign=True`` trains the weights through a straight-through estimator instead of the
    centroids alone (module docstring).
    """
    weights = prunable_weights(model, include)
    if isinstance(bits, Mapping):
        unknown = set(bits) - set(weights)
        if unknown:
            raise ValueError(
                f"bits: {sorted(unknown)} are not quantizable weights; "
                f"expected names among {sorted(weights)}"
            )
        weights = {name: weight for name, weight in weights.items() if name in bits}
    return KMeansQuantizer(weights, bits, masks=masks, seed=seed, init=init, reassign=reassign)
