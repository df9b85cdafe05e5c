"""A training helper for knowledge distillation: :class:`Distiller`.

The teacher runs in eval mode under ``torch.no_grad``; features for hints are taken with
forward hooks (torchdistill's approach: hooks and configuration, not model rewrites), so the
teacher and the student can be any ``nn.Module``, codl's ternary (``codl.quantize_``) and pruned
models included.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from codl.data.checks import check_model_reads
from codl.distill.losses import DensityKDLoss, HintLoss, KDLoss

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
OptimizerArg = torch.optim.Optimizer | OptimizerFactory | None
Batch = Sequence[torch.Tensor] | torch.Tensor

CHECKPOINT_NAME = "distiller.pt"


class NonFiniteLossError(FloatingPointError):
    """A training loss became NaN or infinite; the message names the epoch and the step."""


def _default_optimizer(parameters: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.Adam(parameters, lr=1e-3)


def _split_batch(
    batch: Batch,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(inputs, labels or None, precomputed teacher logits or None)."""
    if isinstance(batch, torch.Tensor):
        return batch, None, None
    if len(batch) == 1:
        return batch[0], None, None
    if len(batch) == 2:
        return batch[0], batch[1], None
    return batch[0], batch[1], batch[2]


class Distiller:
    """Train ``student`` to imitate ``teacher`` with a weighted sum of losses.

    Each loss in ``losses`` is called according to its kind:

    * :class:`KDLoss`: ``loss(student_logits, teacher_logits, labels)`` (labels ``None`` for an
      unlabeled batch; -100 hides one example's label); :class:`DensityKDLoss` likewise, with
      density maps for logits;
    * :class:`HintLoss`: ``loss()`` on the features its hooks recorded (the hooks are attached
      here, so a wrong module path fails now, before training);
    * anything else (``nn.CrossEntropyLoss()``, a function): ``loss(student_logits, labels)``,
      skipped for batches without labels.

    Batches are ``inputs``, ``(inputs, labels)`` or ``(inputs, labels, teacher_logits)``: the
    third form carries the teacher's logits computed once beforehand (valid when the inputs are
    not augmented), and the teacher is then not run for that batch unless a :class:`HintLoss`
    needs its features.

    The total is ``sum(weight_i * loss_i)``. A NaN or infinite total raises
    :class:`NonFiniteLossError` naming the epoch, the step and each term, before any parameter
    is updated. Parameters that a loss creates lazily (a hint's adapter) are added to the
    optimizer as a new parameter group at their first step.

    Args:
        teacher: any module; may be ``None`` when no loss needs it (a labels-only baseline
            with the same loop).
        student: the module to train.
        losses: default ``[KDLoss()]``.
        weights: one float per loss, default all 1.
        optimizer: an optimizer over the student's parameters, or a function
            ``parameters -> optimizer`` (default Adam, lr 1e-3).
        grad_clip: clip the gradient norm to this value (default: no clipping).
    """

    def __init__(
        self,
        teacher: nn.Module | None,
        student: nn.Module,
        losses: Sequence[Any] | None = None,
        weights: Sequence[float] | None = None,
        optimizer: OptimizerArg = None,
        grad_clip: float | None = None,
    ) -> None:
        if not isinstance(student, nn.Module):
            raise TypeError(f"student must be a torch.nn.Module, got {type(student).__name__}")
        if teacher is not None and not isinstance(teacher, nn.Module):
            raise TypeError(
                f"teacher must be a torch.nn.Module or None, got {type(teacher).__name__}"
            )
        self.losses: list[Any] = list(losses) if losses is not None else [KDLoss()]
        if not self.losses:
            raise ValueError("losses must name at least one loss, got an empty list")
        for index, loss in enumerate(self.losses):
            if not callable(loss):
                raise TypeError(f"losses[{index}] must be callable, got {type(loss).__name__}")
        self.weights = [1.0] * len(self.losses) if weights is None else [float(w) for w in weights]
        if len(self.weights) != len(self.losses):
            raise ValueError(
                f"weights must have one entry per loss ({len(self.losses)}), got "
                f"{len(self.weights)}"
            )
        needs_teacher = [
            type(loss).__name__
            for loss in self.losses
            if isinstance(loss, (KDLoss, DensityKDLoss, HintLoss))
        ]
        if teacher is None and needs_teacher:
            raise ValueError(f"teacher is None but losses {needs_teacher} need a teacher")
        if grad_clip is not None and not grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {grad_clip}")
        self.teacher = teacher
        self.student = student
        self.grad_clip = grad_clip
        for loss in self.losses:
            if isinstance(loss, HintLoss):
                assert teacher is not None
                loss.attach(student, teacher)
        if isinstance(optimizer, torch.optim.Optimizer):
            self.optimizer = optimizer
        else:
            factory = optimizer if optimizer is not None else _default_optimizer
            self.optimizer = factory(student.parameters())
        self.names = self._loss_names()
        self.history: list[dict[str, Any]] = []
        self.epochs_done = 0
        self.global_step = 0
        self._inputs_checked = False

    @classmethod
    def from_config(
        cls, teacher: nn.Module | None, student: nn.Module, config: Mapping[str, Any]
    ) -> Distiller:
        """Build from a plain dict (torchdistill's idea: the recipe is data), e.g.::

            {"losses": [{"type": "kd", "temperature": 4.0, "alpha": 0.9},
                        {"type": "hint", "student_module": "3", "teacher_module": "5"}],
             "weights": [1.0, 0.5],
             "optimizer": {"type": "Adam", "lr": 1e-3},
             "grad_clip": None}

        Loss types: ``"kd"`` (:class:`KDLoss`), ``"hint"`` (:class:`HintLoss`), ``"ce"``
        (``nn.CrossEntropyLoss``); the other keys are the constructor's keyword arguments.
        The optimizer type is a class name of ``torch.optim``.
        """
        known = {"kd": KDLoss, "hint": HintLoss, "ce": nn.CrossEntropyLoss}
        losses = []
        for index, spec in enumerate(config.get("losses", [{"type": "kd"}])):
            kwargs = dict(spec)
            kind = kwargs.pop("type", None)
            if kind not in known:
                raise ValueError(
                    f"config losses[{index}]['type'] must be one of {sorted(known)}, got {kind!r}"
                )
            losses.append(known[kind](**kwargs))
        optimizer_spec = dict(config.get("optimizer", {"type": "Adam", "lr": 1e-3}))
        optimizer_name = optimizer_spec.pop("type", "Adam")
        optimizer_class = getattr(torch.optim, str(optimizer_name), None)
        if not (
            isinstance(optimizer_class, type) and issubclass(optimizer_class, torch.optim.Optimizer)
        ):
            raise ValueError(
                f"config optimizer type must name a torch.optim optimizer, got {optimizer_name!r}"
            )

        def factory(parameters: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
            return optimizer_class(parameters, **optimizer_spec)

        return cls(
            teacher,
            student,
            losses=losses,
            weights=config.get("weights"),
            optimizer=factory,
            grad_clip=config.get("grad_clip"),
        )

    def _loss_names(self) -> list[str]:
        names: list[str] = []
        for index, loss in enumerate(self.losses):
            base = (
                type(loss).__name__
                if isinstance(loss, nn.Module)
                else getattr(loss, "__name__", type(loss).__name__)
            )
            names.append(base if base not in names else f"{base}_{index}")
        return names

    def _loss_modules(self) -> list[nn.Module]:
        return [loss for loss in self.losses if isinstance(loss, nn.Module)]

    def _add_new_parameters_to_optimizer(self) -> None:
        known = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        new = [
            p
            for module in self._loss_modules()
            for p in module.parameters()
            if p.requires_grad and id(p) not in known
        ]
        if new:
            self.optimizer.add_param_group({"params": new})

    def _device(self) -> torch.device:
        for parameter in self.student.parameters():
            return parameter.device
        return torch.device("cpu")

    def compute_loss(
        self,
        inputs: torch.Tensor,
        labels: torch.Tensor | None,
        teacher_logits: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted total and each term for one batch (student in its current mode).
        ``teacher_logits``: precomputed teacher outputs for ``inputs`` (the teacher then runs
        only if a hint needs its features)."""
        needs_features = any(isinstance(loss, HintLoss) for loss in self.losses)
        if self.teacher is not None and (teacher_logits is None or needs_features):
            self.teacher.eval()
            with torch.no_grad():
                live = self.teacher(inputs)
            teacher_logits = live if teacher_logits is None else teacher_logits
        student_logits = self.student(inputs)
        terms: dict[str, torch.Tensor] = {}
        total = student_logits.new_zeros(())
        for name, loss, weight in zip(self.names, self.losses, self.weights):
            if isinstance(loss, (KDLoss, DensityKDLoss)):
                assert teacher_logits is not None
                if teacher_logits.shape != student_logits.shape:
                    raise ValueError(
                        "teacher and student outputs must have the same shape for "
                        f"{type(loss).__name__}, got "
                        f"teacher {tuple(teacher_logits.shape)} and student "
                        f"{tuple(student_logits.shape)}"
                    )
                value = loss(student_logits, teacher_logits, labels)
            elif isinstance(loss, HintLoss):
                value = loss()
            else:
                if labels is None:
                    continue
                value = loss(student_logits, labels)
            terms[name] = value
            total = total + weight * value
        return total, terms

    def train_step(self, batch: Batch, epoch: int = 0, step: int = 0) -> dict[str, float]:
        """One optimizer step on ``batch`` (``(inputs, labels)`` or inputs alone)."""
        inputs, labels, teacher_logits = _split_batch(batch)
        if not isinstance(inputs, torch.Tensor):
            raise TypeError(
                "batch: expected inputs, (inputs, labels) or (inputs, labels, teacher_logits) "
                f"of tensors, received inputs of type {type(inputs).__name__}"
            )
        device = self._device()
        inputs = inputs.to(device)
        if not self._inputs_checked:
            # Once, on the first batch: a model that cannot read the inputs (uint8 pixels, a
            # missing channel dimension) fails here with a message, not deep inside torch.
            check_model_reads(self.student, inputs, "inputs (student)")
            if self.teacher is not None:
                check_model_reads(self.teacher, inputs, "inputs (teacher)")
            self._inputs_checked = True
        labels = labels.to(device) if labels is not None else None
        teacher_logits = teacher_logits.to(device) if teacher_logits is not None else None
        self.student.train()
        total, terms = self.compute_loss(inputs, labels, teacher_logits)
        if not torch.isfinite(total):
            parts = ", ".join(f"{name}={value.item():.6g}" for name, value in terms.items())
            raise NonFiniteLossError(
                f"distillation loss is {total.item()} at epoch {epoch}, step {step} (global "
                f"step {self.global_step}); terms: {parts}. Lower the learning rate, check "
                "the inputs for NaN/Inf, or set grad_clip"
            )
        self._add_new_parameters_to_optimizer()
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()  # type: ignore[no-untyped-call]
        if self.grad_clip is not None:
            parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
            nn.utils.clip_grad_norm_(parameters, self.grad_clip)
        self.optimizer.step()
        self.global_step += 1
        return {"loss": total.item(), **{name: value.item() for name, value in terms.items()}}

    @torch.no_grad()
    def evaluate(self, loader: Iterable[Batch], model: nn.Module | None = None) -> float:
        """Top-1 accuracy (%) of ``model`` (default: the student) on labeled batches."""
        model = self.student if model is None else model
        was_training = model.training
        model.eval()
        correct = 0
        seen = 0
        device = self._device()
        for batch in loader:
            inputs, labels, _ = _split_batch(batch)
            if labels is None:
                raise ValueError("evaluate needs (inputs, labels) batches, got inputs alone")
            predictions = model(inputs.to(device)).argmax(-1)
            correct += int((predictions == labels.to(device)).sum())
            seen += labels.numel()
        model.train(was_training)
        return 100.0 * correct / max(seen, 1)

    def state_dict(self) -> dict[str, Any]:
        """Student, loss modules (adapters), optimizer, epoch and history: tensors and plain
        Python values only, so ``torch.load(..., weights_only=True)`` reads it back."""
        return {
            "epoch": self.epochs_done,
            "global_step": self.global_step,
            "student": self.student.state_dict(),
            "losses": {
                str(i): m.state_dict()
                for i, m in enumerate(self.losses)
                if isinstance(m, nn.Module)
            },
            "optimizer": self.optimizer.state_dict(),
            "history": self.history,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.student.load_state_dict(state["student"])
        for key, loss_state in state["losses"].items():
            self.losses[int(key)].load_state_dict(loss_state)
        # Adapters restored above must be in the optimizer, in the same group order as when
        # the checkpoint was written, before its state is loaded.
        self._add_new_parameters_to_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        self.epochs_done = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.history = list(state["history"])

    def save_checkpoint(self, path: str | Path) -> None:
        torch.save(self.state_dict(), Path(path))

    def load_checkpoint(self, path: str | Path) -> None:
        self.load_state_dict(torch.load(Path(path), map_location=self._device(), weights_only=True))

    def fit(
        self,
        train_loader: Iterable[Batch],
        epochs: int,
        val_loader: Iterable[Batch] | None = None,
        checkpoint_dir: str | Path | None = None,
        resume: bool = True,
        progress: bool = True,
    ) -> list[dict[str, Any]]:
        """Train for ``epochs`` epochs in total; return the history, one dict per epoch
        (``epoch``, ``loss`` and each term's mean, ``val_accuracy`` when ``val_loader`` is
        given, ``seconds``).

        With ``checkpoint_dir``, a checkpoint is written after every epoch and, when
        ``resume`` is true and one exists, training continues from it (epochs already done
        count towards ``epochs``).
        """
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
        checkpoint = None
        if checkpoint_dir is not None:
            Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
            checkpoint = Path(checkpoint_dir) / CHECKPOINT_NAME
            if resume and checkpoint.exists():
                self.load_checkpoint(checkpoint)
        for epoch in range(self.epochs_done, epochs):
            started = time.perf_counter()
            sums: dict[str, float] = {}
            steps = 0
            batches = tqdm(
                train_loader,
                desc=f"distill epoch {epoch + 1}/{epochs}",
                disable=not progress,
                leave=False,
            )
            for step, batch in enumerate(batches):
                values = self.train_step(batch, epoch=epoch, step=step)
                for name, value in values.items():
                    sums[name] = sums.get(name, 0.0) + value
                steps += 1
                if progress:
                    batches.set_postfix(loss=f"{values['loss']:.4f}")
            record: dict[str, Any] = {"epoch": epoch + 1}
            record.update({name: total / max(steps, 1) for name, total in sums.items()})
            if val_loader is not None:
                record["val_accuracy"] = self.evaluate(val_loader)
            record["seconds"] = time.perf_counter() - started
            self.history.append(record)
            self.epochs_done = epoch + 1
            if checkpoint is not None:
                self.save_checkpoint(checkpoint)
        return self.history

    def close(self) -> None:
        """Take the hint hooks off the models."""
        for loss in self.losses:
            if isinstance(loss, HintLoss):
                loss.remove()
