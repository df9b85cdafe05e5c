"""Channel pruning that removes channels: smaller dense layers, consistent neighbours.

A *channel group* is a producer layer (``Conv2d`` or ``Linear``) whose output reaches exactly one
consumer layer (``Conv2d`` or ``Linear``) through channel-wise operations only: batch norms,
activations, pooling, dropout, and at most one flatten (``Conv2d → … → Flatten → Linear``, where
each channel owns ``spatial = consumer.in_features / producer.out_channels`` consecutive inputs
of the linear layer, the NCHW flatten order). Removing output channel ``c`` of the producer
removes row ``c`` of its weight and bias, entry ``c`` of every batch norm on the way, and input
channel ``c`` (or its ``spatial`` block of inputs) of the consumer. The pruned network computes
exactly what the original computes when the removed channels' activations are zeroed at the
consumer's input: that is what the tests check.

Groups are found on a ``torch.fx`` trace of the model, so any traceable model works
(``nn.Sequential`` models, :class:`codl.models.LeNet5`, :class:`codl.models.FashionCNN`);
producers whose output branches (residual additions, concatenations) are left alone.

The L1 criterion ranks the producer's output channels by the L1 norm of their filters (H. Li,
A. Kadav, I. Durdanovic, H. Samet and H. P. Graf, "Pruning filters for efficient ConvNets",
ICLR 2017, §3.1) and keeps the largest.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ChannelGroup",
    "Criterion",
    "channel_",
    "channel_scores",
    "find_channel_groups",
    "kept_width",
    "remove_channels_",
]

Criterion = Literal["l1", "l2"]

_LAYER_TYPES = (nn.Conv2d, nn.Linear)
_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)
#: Modules that act on each channel separately (or not at all) and keep the channel axis.
_CHANNELWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardtanh,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
)
_CHANNELWISE_FUNCTIONS = {
    torch.relu,
    torch.tanh,
    torch.sigmoid,
    F.relu,
    F.relu6,
    F.leaky_relu,
    F.gelu,
    F.silu,
    F.max_pool2d,
    F.avg_pool2d,
    F.adaptive_avg_pool2d,
    F.dropout,
}
_CHANNELWISE_METHODS = {"relu", "relu_", "tanh", "sigmoid", "contiguous"}


@dataclass
class ChannelGroup:
    """A producer layer, the batch norms after it and the one layer that consumes it.

    ``spatial`` is how many consumer inputs each channel owns: 1, or ``H*W`` after a flatten.
    """

    producer: str
    consumer: str
    norms: list[str] = field(default_factory=list)
    spatial: int = 1

    def channels(self, model: nn.Module) -> int:
        """The producer's current number of output channels."""
        return _out_channels(model.get_submodule(self.producer))


def _out_channels(layer: nn.Module) -> int:
    if isinstance(layer, nn.Conv2d):
        return layer.out_channels
    if isinstance(layer, nn.Linear):
        return layer.out_features
    raise TypeError(f"expected Conv2d or Linear, received {type(layer).__name__}")


def _is_flatten(node: torch.fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    if node.op == "call_module":
        module = modules[str(node.target)]
        return isinstance(module, nn.Flatten) and (module.start_dim, module.end_dim) == (1, -1)
    if (node.op == "call_function" and node.target is torch.flatten) or (
        node.op == "call_method" and node.target == "flatten"
    ):
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        return bool(start == 1 and end == -1)
    return False


def _is_channelwise(node: torch.fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[str(node.target)], _CHANNELWISE_MODULES)
    if node.op == "call_function":
        return node.target in _CHANNELWISE_FUNCTIONS
    if node.op == "call_method":
        return node.target in _CHANNELWISE_METHODS
    return False


def _trace(model: nn.Module) -> torch.fx.GraphModule:
    try:
        return torch.fx.symbolic_trace(model)
    except Exception as error:  # fx raises many types; name the cause, keep it chained
        raise TypeError(
            f"model: expected a model torch.fx can trace (or an nn.Sequential), "
            f"tracing {type(model).__name__} failed: {error}"
        ) from error


def find_channel_groups(model: nn.Module) -> list[ChannelGroup]:
    """The prunable channel groups of ``model``, in forward order (see the module doc)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, received {type(model).__name__}")
    traced = _trace(model)
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in traced.graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    groups = []
    for node in traced.graph.nodes:
        if node.op != "call_module" or not isinstance(modules[str(node.target)], _LAYER_TYPES):
            continue
        producer = modules[str(node.target)]
        if calls[str(node.target)] != 1 or (
            isinstance(producer, nn.Conv2d) and producer.groups != 1
        ):
            continue
        norms: list[str] = []
        flattened = False
        current = node
        consumer_name = None
        while True:
            users = list(current.users)
            if len(users) != 1:
                break
            (user,) = users
            if user.args[:1] != (current,):  # the channel tensor must be the first argument
                break
            if user.op == "call_module" and isinstance(modules[str(user.target)], _LAYER_TYPES):
                consumer_name = str(user.target)
                break
            if user.op == "call_module" and isinstance(modules[str(user.target)], _NORM_TYPES):
                if flattened or calls[str(user.target)] != 1:
                    break
                norms.append(str(user.target))
            elif _is_flatten(user, modules):
                if flattened or isinstance(producer, nn.Linear):
                    break
                flattened = True
            elif not _is_channelwise(user, modules):
                break
            current = user
        if consumer_name is None or calls[consumer_name] != 1:
            continue
        consumer = modules[consumer_name]
        channels = _out_channels(producer)
        if isinstance(consumer, nn.Conv2d):
            if flattened or consumer.groups != 1 or isinstance(producer, nn.Linear):
                continue
            spatial = 1
        else:
            assert isinstance(consumer, nn.Linear)
            if isinstance(producer, nn.Conv2d) and not flattened:
                continue  # a Linear on a 4-D tensor mixes the width axis, not channels
            if consumer.in_features % channels != 0:
                continue
            spatial = consumer.in_features // channels
        groups.append(ChannelGroup(str(node.target), consumer_name, norms, spatial))
    return groups


def channel_scores(
    model: nn.Module, group: ChannelGroup, criterion: Criterion = "l1"
) -> torch.Tensor:
    """Importance of each output channel of ``group``'s producer: the L1 (or L2) norm of its
    filter (Li et al. 2017)."""
    if criterion not in ("l1", "l2"):
        raise ValueError(f"criterion: expected 'l1' or 'l2', received {criterion!r}")
    weight = model.get_submodule(group.producer).weight
    assert isinstance(weight, torch.Tensor)
    rows = weight.detach().reshape(weight.shape[0], -1).double()
    return rows.abs().sum(dim=1) if criterion == "l1" else rows.norm(dim=1)


def _consumer_columns(weight: torch.Tensor, channels: int, spatial: int) -> torch.Tensor:
    """The consumer weight as (out, channels, rest) whatever its layer type."""
    if weight.dim() == 2:  # Linear: in_features = channels * spatial, channel-major
        return weight.reshape(weight.shape[0], channels, spatial)
    return weight.reshape(weight.shape[0], channels, -1)  # Conv2d: (out, in, kh*kw)


@torch.no_grad()
def remove_channels_(
    model: nn.Module,
    group: ChannelGroup,
    keep: torch.Tensor,
    fold: torch.Tensor | None = None,
) -> None:
    """Keep only output channels ``keep`` (sorted indices) of ``group``'s producer, in place.

    Without ``fold`` the consumer keeps its weights for those channels. With ``fold``, a
    (channels, len(keep)) matrix ``A`` that reconstructs all channels' activations from the kept
    ones (``φ_F ≈ A φ_J``), the consumer's weight becomes ``W A`` per spatial position (spectral
    pruning's Â_J folded into the next layer).
    """
    producer = model.get_submodule(group.producer)
    consumer = model.get_submodule(group.consumer)
    channels = _out_channels(producer)
    keep = keep.to(torch.long)
    width = keep.numel()
    if width < 1 or width > channels:
        raise ValueError(f"keep: expected 1..{channels} channel indices, received {width}")
    if torch.unique(keep).numel() != width or int(keep.min()) < 0 or int(keep.max()) >= channels:
        raise ValueError(f"keep: expected distinct indices in [0, {channels}), received {keep}")

    assert isinstance(producer, _LAYER_TYPES)
    producer.weight = nn.Parameter(producer.weight[keep].clone())
    if producer.bias is not None:
        producer.bias = nn.Parameter(producer.bias[keep].clone())
    if isinstance(producer, nn.Conv2d):
        producer.out_channels = width
    else:
        producer.out_features = width

    for name in group.norms:
        norm = model.get_submodule(name)
        assert isinstance(norm, _NORM_TYPES)
        if norm.weight is not None:
            norm.weight = nn.Parameter(norm.weight[keep].clone())
        if norm.bias is not None:
            norm.bias = nn.Parameter(norm.bias[keep].clone())
        if norm.running_mean is not None:
            norm.running_mean = norm.running_mean[keep].clone()
        if norm.running_var is not None:
            norm.running_var = norm.running_var[keep].clone()
        norm.num_features = width

    assert isinstance(consumer, _LAYER_TYPES)
    weight = consumer.weight
    columns = _consumer_columns(weight, channels, group.spatial)
    if fold is None:
        kept = columns[:, keep]
    else:
        if fold.shape != (channels, width):
            raise ValueError(
                f"fold: expected shape ({channels}, {width}), received {tuple(fold.shape)}"
            )
        kept = torch.einsum("ocs,ck->oks", columns.double(), fold.double()).to(weight.dtype)
    if isinstance(consumer, nn.Conv2d):
        consumer.weight = nn.Parameter(kept.reshape(weight.shape[0], width, *weight.shape[2:]))
        consumer.in_channels = width
    else:
        consumer.weight = nn.Parameter(kept.reshape(weight.shape[0], width * group.spatial))
        consumer.in_features = width * group.spatial


def _check_ratio(ratio: object) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise TypeError(f"ratio: expected a float in [0, 1), received {type(ratio).__name__}")
    value = float(ratio)
    if not math.isfinite(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"ratio: expected a float in [0, 1), received {ratio!r}")
    return value


def kept_width(channels: int, ratio: float) -> int:
    """Channels left after removing the fraction ``ratio`` (rounded; at least one)."""
    return max(1, channels - round(ratio * channels))


def resolve_widths(
    model: nn.Module,
    groups: list[ChannelGroup],
    ratio: float | None,
    widths: Mapping[str, int] | None,
) -> dict[str, int]:
    """Kept width per producer from ``ratio`` (all groups) or ``widths`` (named producers)."""
    if (ratio is None) == (widths is None):
        raise ValueError("expected exactly one of ratio and widths")
    known = {group.producer: group.channels(model) for group in groups}
    if widths is None:
        assert ratio is not None
        fraction = _check_ratio(ratio)
        return {name: kept_width(channels, fraction) for name, channels in known.items()}
    if not isinstance(widths, Mapping):
        raise TypeError(f"widths: expected a mapping, received {type(widths).__name__}")
    resolved = {}
    for name, width in widths.items():
        if name not in known:
            raise ValueError(
                f"widths: {name!r} is not a prunable producer; expected one of {sorted(known)}"
            )
        if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= known[name]:
            raise ValueError(
                f"widths[{name!r}]: expected an int in [1, {known[name]}], received {width!r}"
            )
        resolved[name] = width
    return resolved


def _output_shape(model: nn.Module, example_input: torch.Tensor) -> torch.Size:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        shape = model(example_input).shape
    model.train(was_training)
    return torch.Size(shape)


def channel_(
    model: nn.Module,
    ratio: float | None = None,
    criterion: Criterion = "l1",
    example_input: torch.Tensor | None = None,
    *,
    widths: Mapping[str, int] | None = None,
) -> dict[str, list[int]]:
    """Remove output channels of every prunable Conv2d/Linear layer of ``model``, in place.

    Args:
        model: a model ``torch.fx`` can trace; its layers are replaced by smaller dense ones
            (the consumer, batch norms in between, and flatten-to-linear inputs follow).
        ratio: the fraction of each producer's channels removed, in [0, 1) (rounded, at least
            one channel kept). The last layer, consumed by nothing, is never pruned.
        criterion: ``"l1"`` (Li et al. 2017) or ``"l2"``: the filter norm that ranks channels.
        example_input: if given, the model runs on it before and after pruning and the output
            shape must not change (a check that the surgery kept the model consistent).
        widths: instead of ``ratio``, the number of channels to keep per producer name (the
            others untouched); what a comparison "at the same kept widths" needs.

    Returns:
        The kept output-channel indices of each pruned producer (ascending, original numbering).
    """
    groups = find_channel_groups(model)
    targets = resolve_widths(model, groups, ratio, widths)
    before = _output_shape(model, example_input) if example_input is not None else None
    kept: dict[str, list[int]] = {}
    for group in groups:
        if group.producer not in targets:
            continue
        width = targets[group.producer]
        scores = channel_scores(model, group, criterion)
        # Stable descending order: equal scores keep the lower index, deterministically.
        order = torch.argsort(-scores, stable=True)[:width]
        keep = order.sort().values
        remove_channels_(model, group, keep)
        kept[group.producer] = keep.tolist()
    if example_input is not None:
        after = _output_shape(model, example_input)
        if after != before:
            raise RuntimeError(f"channel pruning changed the output shape {before} to {after}")
    return kept
