"""Distillation losses: soft targets (:class:`KDLoss`) and intermediate hints (:class:`HintLoss`).

* :class:`KDLoss`: Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network"
  (NIPS deep learning workshop 2014, arXiv:1503.02531, 2015), eq. 2 (softmax at temperature
  T) and §2: the soft term is multiplied by T² "since the magnitudes of the gradients produced
  by the soft targets scale as 1/T²".
* :class:`HintLoss`: Romero et al., "FitNets: Hints for Thin Deep Nets" (ICLR 2015), eq. 3:
  ½‖u_h(x) - r(v_g(x))‖², a regressor r (the *adapter*) maps the student's guided layer to the
  teacher's hint layer. Features are captured with forward hooks, so the models' code is left
  alone (torchdistill's approach).
* :class:`DensityKDLoss`: density-map distillation for counting nets: the pixel-wise squared
  error to the teacher's map (the loss of MCNN and CSRNet, with the teacher's map as the
  target) plus a term on the difference of the counts, as counting students are distilled
  (Liu et al., "Efficient Crowd Counting via Structured Knowledge Transfer", ACM MM 2020).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

#: Label value of an example (or token) whose label is hidden: the soft term only applies to it.
#: The same value as ``torch.nn.CrossEntropyLoss``'s default ``ignore_index``.
IGNORE_INDEX = -100

AdapterKind = Literal["conv1x1", "linear"]


def _check_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


class KDLoss(nn.Module):
    """Hinton et al. (2015) distillation loss, per example::

        alpha · T² · KL(softmax(t/T) ‖ softmax(s/T)) + (1 - alpha) · CE(s, y)

    where ``s`` are the student's logits, ``t`` the teacher's (eq. 2 of the paper at
    temperature T; the T² factor is the paper's §2 remark that keeps the soft gradients on the
    scale of the hard ones when T changes). The hard term uses T = 1.

    Unlabeled data: ``labels=None`` (the whole batch) or a label equal to ``ignore_index``
    (-100, per example or per token) drops the hard term for that example; its loss is
    ``alpha · T² · KL`` alone, so an example's soft term weighs the same whether or not its label
    is visible. Padding (``mask`` False) removes a position from both terms and from the count.

    Reduction is "batchmean" over the positions that count: the per-position losses are summed
    and divided by their number (N for ``(N, C)`` logits; the number of unmasked tokens for
    ``(N, L, C)``). Note the pitfall this avoids: ``torch.nn.functional.kl_div(...,
    reduction="mean")`` averages over all N·C *elements*, which is C times smaller than the KL
    divergence per example, and its ``"batchmean"`` divides by the first dimension only, so for
    sequence logits it would count sequences, not tokens, and count padding.

    The teacher's logits are detached: no gradient ever reaches the teacher.

    Args:
        temperature: T > 0 (paper's range: 1 to 20; default 4, the common choice for small
            models).
        alpha: weight alpha in [0, 1] of the soft term (default 0.9).
        ignore_index: label value of a hidden label (default -100).
    """

    def __init__(
        self, temperature: float = 4.0, alpha: float = 0.9, ignore_index: int = IGNORE_INDEX
    ) -> None:
        super().__init__()
        temperature = _check_number("temperature", temperature)
        alpha = _check_number("alpha", alpha)
        if not temperature > 0.0 or temperature == float("inf"):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.temperature = temperature
        self.alpha = alpha
        self.ignore_index = int(ignore_index)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}"

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        labels: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The loss, a scalar.

        Args:
            student_logits: ``(N, C)`` or ``(N, L, C)`` (sequence models).
            teacher_logits: the same shape as ``student_logits``.
            labels: ``(N,)`` or ``(N, L)`` int64 class indices, ``ignore_index`` for a hidden
                label; ``None`` for an unlabeled batch.
            mask: ``(N,)`` or ``(N, L)`` bool, True where a position counts (False: padding);
                ``None``: every position counts.

        Raises:
            ValueError: shapes that differ or do not fit, a label out of range.
            TypeError: non-floating logits or non-integer labels.
        """
        if not isinstance(student_logits, torch.Tensor) or not isinstance(
            teacher_logits, torch.Tensor
        ):
            raise TypeError(
                "student_logits and teacher_logits must be tensors, got "
                f"{type(student_logits).__name__} and {type(teacher_logits).__name__}"
            )
        if not student_logits.is_floating_point() or not teacher_logits.is_floating_point():
            raise TypeError(
                "student_logits and teacher_logits must be floating point, got "
                f"{student_logits.dtype} and {teacher_logits.dtype}"
            )
        if student_logits.shape != teacher_logits.shape:
            raise ValueError(
                "student_logits and teacher_logits must have the same shape, got student "
                f"{tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)}"
            )
        if student_logits.dim() not in (2, 3):
            raise ValueError(
                f"logits must be (N, C) or (N, L, C), got shape {tuple(student_logits.shape)}"
            )
        positions = student_logits.shape[:-1]
        num_classes = student_logits.shape[-1]
        if mask is None:
            counted = torch.ones(positions, dtype=torch.bool, device=student_logits.device)
        else:
            if mask.shape != positions:
                raise ValueError(
                    f"mask must have shape {tuple(positions)} (the logits without the class "
                    f"dimension), got {tuple(mask.shape)}"
                )
            counted = mask.to(torch.bool)
        if labels is not None:
            if labels.shape != positions:
                raise ValueError(
                    f"labels must have shape {tuple(positions)} (the logits without the class "
                    f"dimension), got {tuple(labels.shape)}"
                )
            if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
                raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
            labels = labels.to(torch.int64)  # cross_entropy takes int64 (or uint8) only
            labeled = counted & (labels != self.ignore_index)
            bad = labeled & ((labels < 0) | (labels >= num_classes))
            if bool(bad.any()):
                raise ValueError(
                    f"labels must be in [0, {num_classes}) or {self.ignore_index} (hidden), got "
                    f"{sorted(set(labels[bad].tolist()))}"
                )
        else:
            labeled = torch.zeros_like(counted)

        temperature = self.temperature
        teacher_log_probs = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
        student_log_probs = F.log_softmax(student_logits / temperature, dim=-1)
        # KL(p_t || p_s) = sum_k p_t (log p_t - log p_s), per position; finite where p_t = 0
        # because log_softmax never returns -inf for finite logits.
        soft = (teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum(-1)
        per_position = self.alpha * temperature**2 * soft
        if self.alpha < 1.0 and labels is not None:
            safe_labels = torch.where(labeled, labels, torch.zeros_like(labels))
            hard = F.cross_entropy(
                student_logits.reshape(-1, num_classes), safe_labels.reshape(-1), reduction="none"
            ).reshape(positions)
            per_position = per_position + (1.0 - self.alpha) * torch.where(
                labeled, hard, torch.zeros_like(hard)
            )
        count = counted.sum()
        total = torch.where(counted, per_position, torch.zeros_like(per_position)).sum()
        return total / count.clamp(min=1).to(total.dtype)


class HintLoss(nn.Module):
    """FitNets hint loss (Romero et al. 2015, eq. 3): ``mean((r(student_features) -
    teacher_features)²)`` between two intermediate outputs picked by module path.

    ``attach(student, teacher)`` registers forward hooks on ``student.get_submodule(
    student_module)`` and ``teacher.get_submodule(teacher_module)``; each forward of the two
    models records those modules' outputs and ``loss()`` (or calling the module with no
    argument) compares them. The models' code is not changed; ``remove()`` (or leaving the
    ``with`` block) takes the hooks off again.

    The adapter r (the paper's regressor; the paper uses a convolution, and a 1x1 one where the
    spatial sizes already agree) maps the student's features to the teacher's shape:
    ``"conv1x1"`` (``(N, C_s, H, W)`` to ``(N, C_t, H, W)``), ``"linear"`` (flattened features)
    or ``None`` (shapes must already agree). It is created at the first forward from the
    observed shapes, or at once when ``student_channels`` and ``teacher_channels`` are given.
    Its parameters must be trained with the student's: :class:`codl.distill.Distiller` adds
    them to its optimizer; in a manual loop, run one forward first and then build the optimizer
    over ``list(student.parameters()) + list(hint.parameters())``.

    Args:
        student_module: path of the guided layer in the student (``"features.3"``).
        teacher_module: path of the hint layer in the teacher (``"layer2"``).
        adapter: ``"conv1x1"``, ``"linear"`` or ``None``.
        loss: ``"mse"`` (the paper's squared error, mean over elements) or ``"l1"``.
        student_channels, teacher_channels: build the adapter now (channels for conv1x1,
            flattened sizes for linear).
    """

    def __init__(
        self,
        student_module: str,
        teacher_module: str,
        adapter: AdapterKind | None = "conv1x1",
        loss: Literal["mse", "l1"] = "mse",
        student_channels: int | None = None,
        teacher_channels: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(student_module, str) or not isinstance(teacher_module, str):
            raise TypeError(
                "student_module and teacher_module must be module paths (str), got "
                f"{type(student_module).__name__} and {type(teacher_module).__name__}"
            )
        if adapter not in ("conv1x1", "linear", None):
            raise ValueError(f"adapter must be 'conv1x1', 'linear' or None, got {adapter!r}")
        if loss not in ("mse", "l1"):
            raise ValueError(f"loss must be 'mse' or 'l1', got {loss!r}")
        self.student_module = student_module
        self.teacher_module = teacher_module
        self.adapter_kind = adapter
        self.loss_kind = loss
        self.adapter: nn.Module | None = None
        if (student_channels is None) != (teacher_channels is None):
            raise ValueError(
                "give both student_channels and teacher_channels or neither, got "
                f"{student_channels} and {teacher_channels}"
            )
        if student_channels is not None and teacher_channels is not None:
            if adapter is None:
                raise ValueError("student_channels/teacher_channels need an adapter, got None")
            self.adapter = self._make_adapter(student_channels, teacher_channels)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._student_features: torch.Tensor | None = None
        self._teacher_features: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return (
            f"student_module={self.student_module!r}, teacher_module={self.teacher_module!r}, "
            f"adapter={self.adapter_kind!r}, loss={self.loss_kind!r}"
        )

    def _make_adapter(self, in_size: int, out_size: int) -> nn.Module:
        if self.adapter_kind == "conv1x1":
            return nn.Conv2d(in_size, out_size, kernel_size=1)
        return nn.Linear(in_size, out_size)

    @staticmethod
    def _resolve(model: nn.Module, path: str, role: str) -> nn.Module:
        try:
            return model.get_submodule(path)
        except AttributeError:
            names = [name for name, _ in model.named_modules() if name]
            shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
            raise ValueError(
                f"{role}_module {path!r} is not a module of the {role} "
                f"({type(model).__name__}); its modules are: {shown}"
            ) from None

    def attach(self, student: nn.Module, teacher: nn.Module) -> HintLoss:
        """Hook the two modules (replacing earlier hooks of this loss); returns ``self``.

        Raises:
            ValueError: a path that names no module.
        """
        student_target = self._resolve(student, self.student_module, "student")
        teacher_target = self._resolve(teacher, self.teacher_module, "teacher")
        self.remove()
        self._handles = [
            student_target.register_forward_hook(self._record_student),
            teacher_target.register_forward_hook(self._record_teacher),
        ]
        return self

    def _record_student(self, module: nn.Module, inputs: Any, output: Any) -> None:
        self._student_features = self._as_tensor(output, "student")

    def _record_teacher(self, module: nn.Module, inputs: Any, output: Any) -> None:
        # The teacher is frozen: keep no graph through it.
        self._teacher_features = self._as_tensor(output, "teacher").detach()

    def _as_tensor(self, output: Any, role: str) -> torch.Tensor:
        if isinstance(output, torch.Tensor):
            return output
        path = self.student_module if role == "student" else self.teacher_module
        raise TypeError(
            f"{role}_module {path!r} must output a tensor for a hint, got {type(output).__name__}"
        )

    def remove(self) -> None:
        """Take the hooks off and forget recorded features (safe to call twice)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._student_features = None
        self._teacher_features = None

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def __enter__(self) -> HintLoss:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _build_adapter_for(self, student: torch.Tensor, teacher: torch.Tensor) -> None:
        if self.adapter_kind == "conv1x1":
            if student.dim() != 4 or teacher.dim() != 4:
                raise ValueError(
                    "adapter='conv1x1' needs (N, C, H, W) features, got student "
                    f"{tuple(student.shape)} and teacher {tuple(teacher.shape)}; use "
                    "adapter='linear' for other shapes"
                )
            in_size, out_size = student.shape[1], teacher.shape[1]
        else:
            in_size, out_size = student[0].numel(), teacher[0].numel()
        self.adapter = self._make_adapter(in_size, out_size).to(
            device=student.device, dtype=student.dtype
        )

    def forward(self) -> torch.Tensor:
        """The hint loss for the last forward of both models.

        Raises:
            RuntimeError: not attached, or a model has not run since the last loss.
            ValueError: features whose shapes the adapter cannot reconcile.
        """
        student, teacher = self._student_features, self._teacher_features
        if student is None or teacher is None:
            raise RuntimeError(
                "HintLoss has no features: attach(student, teacher) and run both models "
                "forward before computing the loss"
            )
        if student.shape[0] != teacher.shape[0]:
            raise ValueError(
                f"hint features have different batch sizes: student {tuple(student.shape)}, "
                f"teacher {tuple(teacher.shape)}"
            )
        if self.adapter_kind is not None and self.adapter is None:
            self._build_adapter_for(student, teacher)
        mapped = self._adapt(student)
        target = teacher.reshape(teacher.shape[0], -1) if self.adapter_kind == "linear" else teacher
        if mapped.shape != target.shape:
            raise ValueError(
                f"hint shapes do not match: student {self.student_module!r} "
                f"{tuple(student.shape)} maps to {tuple(mapped.shape)} through adapter "
                f"{self.adapter_kind!r}, teacher {self.teacher_module!r} is "
                f"{tuple(teacher.shape)}"
            )
        # Features are consumed: a stale pair never gets compared twice.
        self._student_features = None
        self._teacher_features = None
        if self.loss_kind == "mse":
            return F.mse_loss(mapped, target)
        return F.l1_loss(mapped, target)

    def _adapt(self, student: torch.Tensor) -> torch.Tensor:
        if self.adapter is None:
            return student
        if self.adapter_kind == "linear":
            return self.adapter(student.reshape(student.shape[0], -1))  # type: ignore[no-any-return]
        return self.adapter(student)  # type: ignore[no-any-return]

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # A checkpoint of a lazily built adapter restores into a fresh HintLoss: build the
        # adapter from the saved weight's shape first.
        weight = state_dict.get(prefix + "adapter.weight")
        if self.adapter is None and self.adapter_kind is not None and weight is not None:
            self.adapter = self._make_adapter(int(weight.shape[1]), int(weight.shape[0])).to(
                dtype=weight.dtype
            )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class DensityKDLoss(nn.Module):
    """Density-map distillation, per map::

        sum over pixels (s - t)^2 + count_weight * |sum(s) - sum(t)|

    averaged over the batch, where ``s`` is the student's density map and ``t`` the teacher's
    (N x 1 x h x w, the same shape; no gradient reaches the teacher). The pixel term is
    CSRNet's training loss with the teacher's map as the target; the count term keeps the
    student's total right where the pixel term alone spreads a small error over many pixels.

    With ``labels`` (ground-truth density maps of the same shape, or ``None`` for unlabeled
    frames), ``alpha`` weighs the teacher against the truth: ``alpha * loss(s, t) + (1 - alpha)
    * loss(s, labels)``.

    Args:
        count_weight: weight of the count term (>= 0; default 0.1).
        alpha: weight in [0, 1] of the teacher's term when labels are given (default 1: the
            labels are ignored).
    """

    def __init__(self, count_weight: float = 0.1, alpha: float = 1.0) -> None:
        super().__init__()
        self.count_weight = _check_number("count_weight", count_weight)
        self.alpha = _check_number("alpha", alpha)
        if self.count_weight < 0:
            raise ValueError(f"count_weight must be >= 0, got {count_weight}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")

    def _to(self, student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        difference = (student - target).flatten(1)
        return (difference.pow(2).sum(1) + self.count_weight * difference.sum(1).abs()).mean()

    def forward(
        self,
        student_maps: torch.Tensor,
        teacher_maps: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if student_maps.shape != teacher_maps.shape:
            raise ValueError(
                f"student maps {tuple(student_maps.shape)} and teacher maps "
                f"{tuple(teacher_maps.shape)} differ in shape"
            )
        loss = self._to(student_maps, teacher_maps.detach())
        if labels is None or self.alpha == 1.0:
            return loss
        if labels.shape != student_maps.shape:
            raise ValueError(
                f"labels {tuple(labels.shape)} must be density maps of the student's shape "
                f"{tuple(student_maps.shape)}"
            )
        return self.alpha * loss + (1.0 - self.alpha) * self._to(student_maps, labels)

    def extra_repr(self) -> str:
        return f"count_weight={self.count_weight}, alpha={self.alpha}"
