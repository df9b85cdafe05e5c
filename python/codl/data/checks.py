"""One check of what a classifier is given, shared by the functions that take ``(model, images,
labels)``: :func:`codl.robust.pgd` / :func:`codl.robust.fgsm` and
:func:`codl.search.compression_plan` / :func:`codl.search.measure_sensitivity`.

It says what was expected and what came, instead of letting torch fail deep inside the model
(``Input type (unsigned char) and bias type (float) should be the same``, ``expected 4D input``,
``Target 12 is out of bounds``): images must be floating point and shaped as the model reads
them (tried on one example), labels integer class indices ``(N,)`` in ``[0, classes)``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["check_classifier_inputs", "check_model_reads"]

_NORMALIZE_HINT = (
    "; uint8 pixels are not model input: codl.data.fashion_mnist(split, normalize=True) "
    "gives float32 (N, 1, 28, 28) images (or codl.data.normalize_images(images))"
)


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def check_model_reads(model: nn.Module, inputs: torch.Tensor, name: str = "inputs") -> object:
    """Run the first example of ``inputs`` through ``model`` (eval mode, no gradients, every
    module's mode restored after) and return its output; a model that cannot read it raises a
    ``ValueError`` naming the model, the dtype and shape given and torch's reason, with a hint
    for the usual mistakes (uint8 pixels, a missing channel dimension)."""
    modes = {module: module.training for module in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            return model(inputs[:1])
    except (RuntimeError, ValueError, TypeError, IndexError) as error:
        text = str(error).strip()
        reason = text.splitlines()[0] if text else type(error).__name__
        hint = ""
        if inputs.dtype == torch.uint8:
            hint = _NORMALIZE_HINT
        elif inputs.dim() == 3:
            hint = (
                f"; a channel dimension may be missing: {name}.unsqueeze(1) has shape "
                f"{(inputs.shape[0], 1, *inputs.shape[1:])}"
            )
        raise ValueError(
            f"{name}: {type(model).__name__} cannot read a batch of {_describe(inputs)} "
            f"({reason}); expected the input it was built for, e.g. (N, 1, 28, 28) float32 for "
            f"codl.models' Fashion-MNIST networks{hint}"
        ) from error
    finally:
        for module, training in modes.items():
            module.training = training


def check_classifier_inputs(
    model: object,
    images: object,
    labels: object,
    *,
    names: tuple[str, str] = ("images", "labels"),
    class_labels: bool = True,
) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Check ``model(images)`` against ``labels`` before any work; return the three, typed.

    ``images``: a non-empty floating-point tensor, batch first, that ``model`` accepts (one
    example is run through it in eval mode, without gradients, the modes restored after; a
    failure becomes a ``ValueError`` naming the shape given, with torch's reason). With
    ``class_labels``, ``labels`` are integer class indices of shape ``(N,)`` in
    ``[0, classes)`` (returned as int64), ``classes`` the width of the model's
    ``(1, classes)`` output; otherwise only a tensor with ``N`` rows. ``names`` are the
    arguments' names in the messages.

    Raises:
        TypeError: a model that is not an ``nn.Module``, images that are not a floating-point
            tensor, labels that are not an integer tensor.
        ValueError: an empty batch, labels of another length or shape, images the model cannot
            read, a model whose output is not ``(N, classes)`` logits, labels out of range.
    """
    images_name, labels_name = names
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, received {type(model).__name__}")
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        hint = (
            _NORMALIZE_HINT
            if isinstance(images, torch.Tensor) and images.dtype == torch.uint8
            else ""
        )
        raise TypeError(
            f"{images_name}: expected a floating-point tensor shaped as the model reads it, "
            f"received {_describe(images)}{hint}"
        )
    if images.dim() == 0 or images.shape[0] == 0:
        raise ValueError(
            f"{images_name}: expected a non-empty batch (batch first), received shape "
            f"{tuple(images.shape)}"
        )
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{labels_name}: expected a tensor, received {type(labels).__name__}")
    if labels.dim() == 0 or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{labels_name}: expected {images.shape[0]} labels, one per image of "
            f"{images_name}, received shape {tuple(labels.shape)}"
        )
    if class_labels:
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(
                f"{labels_name}: expected integer class indices (torch.int64), received "
                f"{labels.dtype}"
            )
        if labels.dim() != 1:
            raise ValueError(
                f"{labels_name}: expected class indices of shape ({images.shape[0]},), "
                f"received {tuple(labels.shape)}"
            )
    output = check_model_reads(model, images, images_name)
    if class_labels:
        if not isinstance(output, torch.Tensor) or output.dim() != 2:
            raise ValueError(
                f"model: expected (N, classes) logits from {type(model).__name__}, received "
                f"{_describe(output)} for one image"
            )
        classes = int(output.shape[1])
        bad = (labels < 0) | (labels >= classes)
        if bool(bad.any()):
            index = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"{labels_name}: expected class indices in [0, {classes}) (the model's "
                f"{classes} outputs), received {int(labels[index])} at index {index}"
            )
        labels = labels.to(torch.int64)  # what cross_entropy takes; no copy when it is int64
    return model, images, labels
