"""Per-layer sensitivity: the accuracy a model loses, and the bytes a layer takes in a ``.codl``
file, when only that layer is pruned and quantized.

For each weight and each candidate :class:`Setting` (a sparsity and a bit width, or ternary, or
neither), :func:`measure_sensitivity` encodes the weight exactly as :func:`codl.save` would
(:func:`codl.formats.encodings.encode`: the magnitude mask, the k-means codebook or TWN codes,
the packing and the DEFLATE streams), so its packed size is the real number of bytes the file
spends on that tensor and its dequantized values are exactly what :func:`codl.load` returns;
it then puts those values into a copy of the model and measures the accuracy on the validation
data. Only the part of the network downstream of the layer is re-run for each setting: the
model is traced once (``torch.fx``), the activations that do not depend on the layer are
computed once per layer and cached (:class:`_Downstream`), and every setting re-runs the rest
on them, which gives the same logits bit for bit (checked; untraceable models are evaluated
whole). This is the one-layer-at-a-time sensitivity analysis of Han et al. (Deep Compression's
"sensitivity of pruning each layer", NeurIPS 2015, Fig. 6) and of the accuracy-driven mixed
precision tuners (Intel Neural Compressor; HAWQ-V3, Yao et al., ICML 2021), with the drop
measured on data rather than estimated from curvature.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import fx, nn
from tqdm.auto import tqdm

from codl.data.checks import check_classifier_inputs
from codl.formats.codec import DEFAULT_LEVEL
from codl.formats.encodings import encode
from codl.formats.spec import CompressionSpec
from codl.training import EVALUATION_BATCH, evaluate, prunable_weights

__all__ = [
    "DEFAULT_BITS",
    "DEFAULT_SPARSITIES",
    "Bits",
    "SensitivityRow",
    "Setting",
    "candidate_settings",
    "measure_sensitivity",
    "packed_bytes",
    "searchable_weights",
]

Bits = int | Literal["ternary"] | None
Split = tuple[torch.Tensor, torch.Tensor]

DEFAULT_SPARSITIES: tuple[float, ...] = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95)
DEFAULT_BITS: tuple[Bits, ...] = ("ternary", 2, 3, 4, 5, 6, 8)


@dataclass(frozen=True)
class Setting:
    """How one weight is stored: ``prune`` (fraction of smallest magnitudes removed) and
    ``bits`` (k-means codebook width 1..8, ``"ternary"`` for TWN codes, ``None`` for the kept
    values stored exactly)."""

    prune: float = 0.0
    bits: Bits = None

    def spec(self) -> CompressionSpec | None:
        """The :class:`codl.formats.CompressionSpec` (``None``: lossless)."""
        if self.prune == 0.0 and self.bits is None:
            return None
        if self.bits == "ternary":
            return CompressionSpec(prune=self.prune, method="ternary")
        if self.bits is None:
            return CompressionSpec(prune=self.prune)
        return CompressionSpec(prune=self.prune, bits=self.bits, method="kmeans")

    def plan_entry(self) -> dict[str, Any] | None:
        """The JSON-ready plan value (``None``: stored losslessly)."""
        spec = self.spec()
        return None if spec is None else spec.to_dict()

    @property
    def precision(self) -> float:
        """Bits per stored value: 32 for exact float32 values, log2(3) for ternary codes."""
        if self.bits is None:
            return 32.0
        if self.bits == "ternary":
            return 1.585
        return float(self.bits)

    def label(self) -> str:
        bits = "float" if self.bits is None else str(self.bits)
        return f"prune {self.prune:g}, {bits}"


def candidate_settings(sparsities: Sequence[float], bits: Sequence[Bits]) -> list[Setting]:
    """Every pairing of a sparsity and a bit width (``None``, exact values, always included),
    lossless first; each is checked by building its spec, so a bad value fails here."""
    if not sparsities:
        raise ValueError("sparsities: expected at least one value, received none")
    for b in bits:
        if b is not None and b != "ternary" and (isinstance(b, bool) or not isinstance(b, int)):
            raise TypeError(f"bits: expected ints 1..8, 'ternary' or None, received {b!r}")
    settings = [Setting()]
    for prune in sorted(set(sparsities)):
        for width in [None, *(b for b in bits if b is not None)]:
            setting = Setting(float(prune), width)
            try:
                setting.spec()
            except (TypeError, ValueError) as error:
                raise type(error)(f"sparsities/bits: {error}") from None
            if setting not in settings:
                settings.append(setting)
    return settings


def packed_bytes(
    name: str, tensor: torch.Tensor, setting: Setting, level: int = DEFAULT_LEVEL
) -> int:
    """Bytes of ``tensor``'s streams in a ``.codl`` file when stored with ``setting`` (the
    header entry, ~200 bytes of JSON before DEFLATE, is not counted)."""
    encoded = encode(name, tensor, setting.spec(), level=level)
    return encoded.stored_bytes


@dataclass(frozen=True)
class SensitivityRow:
    """One layer under one setting: its packed bytes and the accuracy (percent) of the model
    with only this layer compressed; ``drop`` = baseline - accuracy, in points."""

    layer: str
    prune: float
    bits: Bits
    packed_bytes: int
    accuracy: float
    drop: float

    @property
    def setting(self) -> Setting:
        return Setting(self.prune, self.bits)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _evaluate(model: nn.Module, data: Split) -> float:
    return evaluate(model, *data)


_BATCH = EVALUATION_BATCH  # the batches of codl.training.evaluate: the same logits
_CACHE_LIMIT = 2 << 30  # bytes of cached activations per layer; above it, the whole model runs


def _batches(data: Split) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    images, labels = data
    for start in range(0, len(images), _BATCH):
        yield images[start : start + _BATCH], labels[start : start + _BATCH]


def _full_logits(model: nn.Module, data: Split) -> tuple[float, list[torch.Tensor]]:
    """Accuracy as :func:`codl.training.evaluate` computes it (same batches), with the logits."""
    correct, logits = 0, []
    for images, labels in _batches(data):
        out = model(images)
        correct += int((out.argmax(dim=1) == labels).sum())
        logits.append(out)
    return 100.0 * correct / max(1, len(data[0])), logits


class _Downstream:
    """The part of a traced model that depends on one weight, and the cached activations that
    feed it.

    The traced graph is split into the nodes that read the weight (``call_module`` or
    ``get_attr`` of its module or of the weight itself, under any name the tensor has) or depend
    on such a node (or on a value such a node wrote into in place), and the rest; the rest (the
    prefix) is run once per batch and its values that feed the dependent nodes (the frontier)
    are kept; :meth:`accuracy` runs only the dependent nodes
    (the suffix) on clones of them (clones: an in-place op downstream must not change the
    cache). The suffix shares the model's modules and parameters, so writing into the weight
    changes what it computes. :meth:`build` returns ``None`` when the model cannot be traced,
    the cache would be too large, or the suffix's logits differ from the model's by a single
    bit (with the weight as it is, and with it changed, on the first batch).
    """

    def __init__(self, suffix: fx.GraphModule, frontier: list[tuple[Any, ...]], data: Split):
        self.suffix = suffix
        self.frontier = frontier
        self.data = data

    def _logits(self, index: int) -> torch.Tensor:
        values = [v.clone() if isinstance(v, torch.Tensor) else v for v in self.frontier[index]]
        out: torch.Tensor = self.suffix(*values)
        return out

    def accuracy(self) -> float:
        correct = 0
        for index, (_, labels) in enumerate(_batches(self.data)):
            correct += int((self._logits(index).argmax(dim=1) == labels).sum())
        return 100.0 * correct / max(1, len(self.data[0]))

    @classmethod
    def build(
        cls,
        model: nn.Module,
        traced: fx.GraphModule | None,
        name: str,
        data: Split,
        logits: list[torch.Tensor],
    ) -> _Downstream | None:
        if traced is None:
            return None
        state = model.state_dict(keep_vars=True)
        storage = state[name].untyped_storage().data_ptr()
        aliases = {n for n, t in state.items() if t.untyped_storage().data_ptr() == storage}

        def reads_weight(node: fx.Node) -> bool:
            if node.op not in ("call_module", "get_attr"):
                return False
            target = str(node.target)
            return any(a == target or a.startswith(target + ".") for a in aliases)

        nodes = list(traced.graph.nodes)
        dependent: set[fx.Node] = set()
        written: set[fx.Node] = set()  # values an in-place op of a dependent node wrote into
        for node in nodes:  # topological order
            inputs = node.all_input_nodes
            if reads_weight(node) or any(n in dependent or n in written for n in inputs):
                dependent.add(node)
                if _in_place(traced, node) and node.args and isinstance(node.args[0], fx.Node):
                    written.add(node.args[0])  # its later readers depend on the weight too
        output = nodes[-1]
        if output.op != "output" or output not in dependent:
            return None
        frontier_nodes = [
            n for n in nodes if n not in dependent and any(user in dependent for user in n.users)
        ]
        prefix_graph, suffix_graph = fx.Graph(), fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        for node in nodes:
            if node not in dependent:
                env[node] = prefix_graph.node_copy(node, lambda n: env[n])
        prefix_graph.output(tuple(env[n] for n in frontier_nodes))
        env = {n: suffix_graph.placeholder(f"frontier_{i}") for i, n in enumerate(frontier_nodes)}
        for node in nodes:
            if node in dependent:
                env[node] = suffix_graph.node_copy(node, lambda n: env[n])
        try:
            prefix = fx.GraphModule(traced, prefix_graph)
            suffix = fx.GraphModule(traced, suffix_graph)
            frontier: list[tuple[Any, ...]] = []
            size = 0
            for images, _ in _batches(data):
                values = tuple(prefix(images))
                frontier.append(values)
                size += sum(v.nbytes for v in values if isinstance(v, torch.Tensor))
                if size * len(logits) > _CACHE_LIMIT * len(frontier):
                    return None  # the cache would be too large
            downstream = cls(suffix, frontier, data)
            if not all(torch.equal(downstream._logits(i), x) for i, x in enumerate(logits)):
                return None
            weight = state[name]
            original = weight.detach().clone()
            try:
                weight.data.neg_().add_(0.01)  # any change: the suffix must see it
                changed = model(data[0][:_BATCH])
                same = torch.equal(downstream._logits(0), changed)
            finally:
                weight.data.copy_(original)
            return downstream if same else None
        except Exception:  # a graph that does not run as traced: evaluate the whole model
            return None


def _in_place(traced: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node`` writes into its first argument (``x.add_(y)``, ``torch.relu_(x)``,
    ``x += y``, ``nn.ReLU(inplace=True)``); an op missed here fails :class:`_Downstream`'s check
    instead, and the whole model is run."""
    if node.op == "call_method":
        name = str(node.target)
        return name.endswith("_") and not name.startswith("_")
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        return (name.endswith("_") and not name.startswith("_")) or (
            getattr(node.target, "__module__", None) in ("operator", "_operator")
            and name.startswith("i")
            and name not in ("index", "is_", "is_not", "invert", "itemgetter")
        )
    if node.op == "call_module":
        return bool(getattr(traced.get_submodule(str(node.target)), "inplace", False))
    return False


def _trace(model: nn.Module) -> fx.GraphModule | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fx.symbolic_trace(model)
    except Exception:  # data-dependent control flow and the like: no tracing
        return None


def _check_split(data: object, model: object) -> Split:
    """``val_data`` as ``(images, labels)`` that ``model`` can be evaluated on
    (:func:`codl.data.check_classifier_inputs`), or TypeError/ValueError saying what came."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(
            "val_data: expected an (images, labels) tuple of tensors, received "
            + (
                f"{type(data).__name__} of {len(data)}"
                if isinstance(data, (tuple, list))
                else type(data).__name__
            )
        )
    images, labels = data
    if (
        isinstance(images, torch.Tensor)
        and isinstance(labels, torch.Tensor)
        and (len(images) == 0 or len(images) != len(labels))
    ):
        raise ValueError(
            f"val_data: expected as many labels as images (at least one), received "
            f"{len(images)} images and {len(labels)} labels"
        )
    _, images, labels = check_classifier_inputs(
        model, images, labels, names=("val_data images", "val_data labels")
    )
    return images, labels


def searchable_weights(model: nn.Module, layers: Sequence[str] | None = None) -> list[str]:
    """State_dict names of the weights to search: every Linear/Conv weight
    (:func:`codl.training.prunable_weights`), or ``layers`` checked against the state_dict."""

    if layers is None:
        return list(prunable_weights(model))
    state = model.state_dict()
    unknown = [name for name in layers if name not in state]
    if unknown:
        raise ValueError(f"layers: {unknown} are not tensors of the model's state_dict")
    bad = [n for n in layers if not state[n].is_floating_point() or state[n].dim() < 1]
    if bad:
        raise ValueError(f"layers: {bad} are not floating-point tensors of 1+ dimensions")
    return list(layers)


@torch.no_grad()
def measure_sensitivity(
    model: nn.Module,
    val_data: Split,
    *,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    bits: Sequence[Bits] = DEFAULT_BITS,
    layers: Sequence[str] | None = None,
    level: int = DEFAULT_LEVEL,
    progress: bool = True,
    reuse_activations: bool = True,
) -> tuple[float, list[SensitivityRow]]:
    """The baseline accuracy on ``val_data`` and one :class:`SensitivityRow` per layer and
    setting (``model`` itself is never modified: a copy is).

    ``reuse_activations``: run only the part of the network downstream of each layer, on cached
    activations (:class:`_Downstream`; the same accuracies, bit for bit, in a fraction of the
    time for later layers); ``False`` evaluates the whole model for every setting."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, received {type(model).__name__}")
    data = _check_split(val_data, model)
    names = searchable_weights(model, layers)
    settings = candidate_settings(sparsities, bits)
    work = copy.deepcopy(model).eval()
    if reuse_activations:
        baseline, logits = _full_logits(work, data)
        traced = _trace(work)
    else:
        baseline, logits, traced = _evaluate(work, data), [], None
    state = work.state_dict()  # tensors sharing storage with the copy's parameters
    rows: list[SensitivityRow] = []
    total = len(names) * len(settings)
    with tqdm(total=total, desc="layer sensitivity", disable=not progress) as bar:
        for name in names:
            target = state[name]
            original = target.detach().clone()
            downstream = _Downstream.build(work, traced, name, data, logits)
            for setting in settings:
                encoded = encode(name, original, setting.spec(), level=level)
                size = encoded.stored_bytes
                if setting.spec() is None:
                    accuracy = baseline  # stored exactly: the model is unchanged
                else:
                    assert encoded.preview is not None
                    target.copy_(encoded.preview)
                    if downstream is None:
                        accuracy = _evaluate(work, data)
                    else:
                        accuracy = downstream.accuracy()
                    target.copy_(original)
                rows.append(
                    SensitivityRow(
                        name, setting.prune, setting.bits, size, accuracy, baseline - accuracy
                    )
                )
                bar.update(1)
            del downstream  # free the cache before the next layer's
    return baseline, rows
