"""Issue 14 item 10: the functions that take (model, images, labels) say what they expected.

``codl.data.fashion_mnist`` returns uint8 (N, 28, 28) pixels by default; given to PGD, the
search or the Distiller they used to fail deep inside torch (``Input type (unsigned char) and
bias type (float) should be the same``); now each names the argument, what came and the fix
(``normalize=True``), and ``fashion_mnist(..., normalize=True)`` gives what models read.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import codl
from codl.data import check_classifier_inputs, fashion_mnist, load_split, normalize_images
from codl.data.fashion_mnist import SUBSET_DIR
from codl.models import FashionCNN, LeNet5, TinyCNN


def test_normalize_gives_what_models_read_and_the_default_is_unchanged() -> None:
    pixels, labels = fashion_mnist("test", root=SUBSET_DIR)
    assert pixels.dtype == torch.uint8 and pixels.shape == (1000, 28, 28)  # existing callers
    images, same_labels = fashion_mnist("test", root=SUBSET_DIR, normalize=True)
    assert images.dtype == torch.float32 and images.shape == (1000, 1, 28, 28)
    assert torch.equal(same_labels, labels)
    # independent reference in float64: (p / 255 - mean) / std, mean/std of the training pixels
    expected = (pixels.numpy().astype(np.float64) / 255.0 - 0.2860) / 0.3530
    np.testing.assert_allclose(images[:, 0].numpy(), expected, rtol=0, atol=2e-6)
    # one normalisation in codl: load_split (benchmarks, robust) gives the same tensor bit for bit
    split_images, _, _ = load_split("test", "subset")
    assert torch.equal(split_images, images)
    assert torch.equal(normalize_images(pixels), images)
    with pytest.raises(TypeError, match="normalize: expected True or False"):
        fashion_mnist("test", root=SUBSET_DIR, normalize="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"expected a torch\.uint8 tensor of pixels, received"):
        normalize_images(images)


def _pixels() -> tuple[torch.Tensor, torch.Tensor]:
    pixels, labels = fashion_mnist("test", root=SUBSET_DIR)
    return pixels[:8], labels[:8]


def test_pgd_says_uint8_pixels_are_not_model_input() -> None:
    pixels, labels = _pixels()
    model = FashionCNN()
    with pytest.raises(
        TypeError,
        match=r"x: expected a floating-point tensor.*torch\.uint8.*"
        r"normalize=True",
    ):
        codl.robust.pgd(model, pixels, labels, eps=0.1)
    with pytest.raises(
        ValueError,
        match=r"x: FashionCNN cannot read a batch of torch\.float32 "
        r"tensor of shape \(8, 28, 28\).*unsqueeze\(1\)",
    ):
        codl.robust.pgd(model, pixels.float(), labels, eps=0.1)
    images = normalize_images(pixels)
    with pytest.raises(ValueError, match=r"y: expected class indices in \[0, 10\).*12 at index 3"):
        codl.robust.pgd(model, images, torch.tensor([0, 1, 2, 12, 4, 5, 6, 7]), eps=0.1)
    with pytest.raises(TypeError, match="y: expected integer class indices"):
        codl.robust.pgd(model, images, labels.float(), eps=0.1)
    # int32 labels (other loaders give them) work: same attack as with int64
    gen = [torch.Generator().manual_seed(1) for _ in range(2)]
    a = codl.robust.pgd(model, images, labels, eps=0.1, steps=2, generator=gen[0])
    b = codl.robust.pgd(model, images, labels.int(), eps=0.1, steps=2, generator=gen[1])
    assert torch.equal(a, b)


def test_check_restores_modes_and_names_the_arguments() -> None:
    model = LeNet5().train()
    model.features[1].eval()  # a mixed state must come back as it was
    modes = [m.training for m in model.modules()]
    images = normalize_images(_pixels()[0])
    _, _, labels = check_classifier_inputs(model, images, torch.arange(8, dtype=torch.int16))
    assert labels.dtype == torch.int64 and labels.tolist() == list(range(8))
    assert [m.training for m in model.modules()] == modes
    with pytest.raises(ValueError, match=r"val_data labels: expected 8 labels, one per image"):
        check_classifier_inputs(
            model,
            images,
            torch.zeros(3, dtype=torch.int64),
            names=("val_data images", "val_data labels"),
        )
    with pytest.raises(ValueError, match=r"cannot read.*\(8, 1, 14, 14\)"):
        check_classifier_inputs(model, images[..., :14, :14], torch.zeros(8, dtype=torch.int64))
    assert [m.training for m in model.modules()] == modes  # restored after a failure too
    with pytest.raises(TypeError, match=r"model: expected a torch\.nn\.Module"):
        check_classifier_inputs("net", images, torch.zeros(8, dtype=torch.int64))


def test_compression_plan_says_what_it_expected() -> None:
    pixels, labels = _pixels()
    model = TinyCNN()
    with pytest.raises(
        TypeError,
        match=r"val_data images: expected a floating-point tensor.*"
        r"uint8.*normalize=True",
    ):
        codl.search.compression_plan(model, (pixels, labels), progress=False)
    with pytest.raises(ValueError, match=r"val_data images: TinyCNN cannot read.*\(8, 28, 28\)"):
        codl.search.compression_plan(model, (pixels.float(), labels), progress=False)
    with pytest.raises(
        TypeError,
        match=r"val_data: expected an \(images, labels\) tuple.*"
        r"Tensor",
    ):
        codl.search.compression_plan(model, normalize_images(pixels), progress=False)


def test_distiller_checks_the_first_batch() -> None:
    pixels, labels = _pixels()
    distiller = codl.distill.Distiller(FashionCNN(), TinyCNN())
    with pytest.raises(
        ValueError,
        match=r"inputs \(student\): TinyCNN cannot read a batch of "
        r"torch\.uint8.*normalize=True",
    ):
        distiller.train_step((pixels, labels))
    # the teacher is checked too: a teacher built for another input size
    other = codl.distill.Distiller(torch.nn.Linear(10, 10), TinyCNN())
    with pytest.raises(ValueError, match=r"inputs \(teacher\): Linear cannot read"):
        other.train_step((normalize_images(pixels), labels))
    values = distiller.train_step((normalize_images(pixels), labels))
    assert np.isfinite(values["loss"])


def test_robust_accuracy_and_adversarial_finetune_check_too() -> None:
    pixels, labels = _pixels()
    model = TinyCNN()
    with pytest.raises(TypeError, match=r"images: expected a floating-point.*normalize=True"):
        codl.robust.robust_accuracy(model, pixels, labels, None, progress=False)
    with pytest.raises(TypeError, match=r"data images: expected a floating-point.*uint8"):
        codl.robust.adversarial_finetune(
            model, (pixels, labels), codl.robust.PGD(0.1), 0.1, progress=False
        )
    images = normalize_images(pixels)
    expected = 100.0 * float((model.eval()(images).argmax(1) == labels).float().mean())
    assert codl.robust.robust_accuracy(model, images, labels, None, progress=False) == (
        pytest.approx(expected)
    )
