"""KDLoss and HintLoss against hand-written float64 formulas, gradcheck and Hinton's
high-temperature limit."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from torch import nn

import codl
from codl.distill import HintLoss, KDLoss


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models on shared cores: one thread avoids scheduling stalls (10x faster here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def reference_kd(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: list[int | None],
    temperature: float,
    alpha: float,
) -> float:
    """Hinton et al. (2015) per example, written out with math on Python floats, batch mean."""
    total = 0.0
    for row in range(student.shape[0]):
        s = [float(v) / temperature for v in student[row]]
        t = [float(v) / temperature for v in teacher[row]]
        s_norm = math.log(sum(math.exp(v) for v in s))
        t_norm = math.log(sum(math.exp(v) for v in t))
        kl = sum(math.exp(tv - t_norm) * ((tv - t_norm) - (sv - s_norm)) for sv, tv in zip(s, t))
        loss = alpha * temperature**2 * kl
        label = labels[row]
        if label is not None:
            logits = [float(v) for v in student[row]]
            norm = math.log(sum(math.exp(v) for v in logits))
            loss += (1 - alpha) * (norm - logits[label])
        total += loss
    return total / student.shape[0]


@pytest.mark.parametrize("temperature,alpha", [(1.0, 0.5), (4.0, 0.9), (7.5, 0.0), (2.0, 1.0)])
def test_kd_loss_matches_hand_written_formula(temperature: float, alpha: float) -> None:
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(6, 5, generator=generator, dtype=torch.float64) * 3
    teacher = torch.randn(6, 5, generator=generator, dtype=torch.float64) * 3
    labels = torch.tensor([0, 4, 2, 2, 1, 3])
    value = KDLoss(temperature, alpha)(student, teacher, labels)
    expected = reference_kd(student, teacher, labels.tolist(), temperature, alpha)
    assert value.item() == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_kd_loss_matches_torch_functional_pieces() -> None:
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(8, 10, generator=generator)
    teacher = torch.randn(8, 10, generator=generator)
    labels = torch.randint(0, 10, (8,), generator=generator)
    temperature, alpha = 3.0, 0.7
    soft = nn.functional.kl_div(
        nn.functional.log_softmax(student / temperature, -1),
        nn.functional.log_softmax(teacher / temperature, -1),
        reduction="batchmean",
        log_target=True,
    )
    hard = nn.functional.cross_entropy(student, labels)
    expected = alpha * temperature**2 * soft + (1 - alpha) * hard
    torch.testing.assert_close(KDLoss(temperature, alpha)(student, teacher, labels), expected)


def test_hidden_labels_use_the_soft_term_only() -> None:
    generator = torch.Generator().manual_seed(2)
    student = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    teacher = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    labels = torch.tensor([1, -100, 3, -100, 0])
    loss = KDLoss(2.0, 0.6)
    expected = reference_kd(student, teacher, [1, None, 3, None, 0], 2.0, 0.6)
    assert loss(student, teacher, labels).item() == pytest.approx(expected, rel=1e-12)
    unlabeled = reference_kd(student, teacher, [None] * 5, 2.0, 0.6)
    assert loss(student, teacher, None).item() == pytest.approx(unlabeled, rel=1e-12)
    all_hidden = torch.full((5,), -100)
    assert loss(student, teacher, all_hidden).item() == pytest.approx(unlabeled, rel=1e-12)


def test_sequence_logits_with_padding_mask_average_over_real_tokens() -> None:
    generator = torch.Generator().manual_seed(3)
    student = torch.randn(3, 4, 6, generator=generator, dtype=torch.float64)
    teacher = torch.randn(3, 4, 6, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 6, (3, 4), generator=generator)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    loss = KDLoss(2.0, 0.5)(student, teacher, labels, mask)
    flat_student = student[mask]
    flat_teacher = teacher[mask]
    expected = reference_kd(flat_student, flat_teacher, labels[mask].tolist(), 2.0, 0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    # Garbage in padded positions changes nothing.
    student_garbage = student.clone()
    student_garbage[~mask] = 1e3
    assert KDLoss(2.0, 0.5)(student_garbage, teacher, labels, mask).item() == pytest.approx(
        expected, rel=1e-12
    )


def test_kd_loss_gradcheck() -> None:
    generator = torch.Generator().manual_seed(4)
    student = torch.randn(4, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(4, 5, generator=generator, dtype=torch.float64)
    labels = torch.tensor([0, -100, 4, 2])
    loss = KDLoss(3.0, 0.8)
    assert torch.autograd.gradcheck(lambda s: loss(s, teacher, labels), (student,))
    sequence_student = torch.randn(
        2, 3, 4, generator=generator, dtype=torch.float64, requires_grad=True
    )
    sequence_teacher = torch.randn(2, 3, 4, generator=generator, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    sequence_labels = torch.tensor([[1, 2, -100], [3, 0, 1]])
    assert torch.autograd.gradcheck(
        lambda s: loss(s, sequence_teacher, sequence_labels, mask), (sequence_student,)
    )


def test_teacher_gets_no_gradient() -> None:
    student = torch.randn(3, 4, requires_grad=True)
    teacher = torch.randn(3, 4, requires_grad=True)
    KDLoss()(student, teacher, torch.tensor([0, 1, 2])).backward()
    assert student.grad is not None and teacher.grad is None


def test_high_temperature_gradient_matches_logit_difference() -> None:
    """Hinton et al. §2.1: for T large and zero-mean logits, the gradient of the T²-scaled soft
    term with respect to a student logit approaches (s - t) / C per example (here / N for the
    batch mean): distillation becomes logit matching."""
    generator = torch.Generator().manual_seed(5)
    batch, classes = 4, 6
    student = torch.randn(batch, classes, generator=generator, dtype=torch.float64)
    teacher = torch.randn(batch, classes, generator=generator, dtype=torch.float64)
    student = (student - student.mean(-1, keepdim=True)).requires_grad_()
    teacher = teacher - teacher.mean(-1, keepdim=True)
    KDLoss(temperature=1e6, alpha=1.0)(student, teacher).backward()
    expected = (student.detach() - teacher) / (batch * classes)
    assert student.grad is not None
    # The next term of the expansion is O(|z| / T) relative: 1e-6 here.
    torch.testing.assert_close(student.grad, expected, rtol=1e-4, atol=1e-9)
    # At T = 1 it is far from that limit: the test is not vacuous.
    student.grad = None
    KDLoss(temperature=1.0, alpha=1.0)(student, teacher).backward()
    assert not torch.allclose(student.grad, expected, rtol=1e-1)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("inf")])
def test_bad_temperature(temperature: float) -> None:
    with pytest.raises(ValueError, match="temperature"):
        KDLoss(temperature=temperature)


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_bad_alpha(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        KDLoss(alpha=alpha)


def test_bad_shapes_and_labels() -> None:
    loss = KDLoss()
    with pytest.raises(ValueError, match=r"student \(4, 10\) and teacher \(4, 9\)"):
        loss(torch.zeros(4, 10), torch.zeros(4, 9))
    with pytest.raises(ValueError, match="labels must have shape"):
        loss(torch.zeros(4, 10), torch.zeros(4, 10), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\)"):
        loss(torch.zeros(2, 10), torch.zeros(2, 10), torch.tensor([3, 10]))
    with pytest.raises(ValueError, match="mask must have shape"):
        loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), None, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="integer"):
        loss(torch.zeros(2, 10), torch.zeros(2, 10), torch.zeros(2))


def _student_teacher() -> tuple[nn.Sequential, nn.Sequential]:
    torch.manual_seed(0)
    student = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)
    )
    teacher = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(128, 3)
    )
    return student, teacher


def test_hint_loss_conv1x1_matches_manual_computation() -> None:
    student, teacher = _student_teacher()
    inputs = torch.randn(2, 1, 4, 4)
    with HintLoss("1", "1", adapter="conv1x1").attach(student, teacher) as hint:
        student(inputs)
        with torch.no_grad():
            teacher(inputs)
        value = hint()
        assert isinstance(hint.adapter, nn.Conv2d)
        assert (hint.adapter.in_channels, hint.adapter.out_channels) == (4, 8)
        student_features = torch.relu(student[0](inputs))
        teacher_features = torch.relu(teacher[0](inputs))
        expected = ((hint.adapter(student_features) - teacher_features) ** 2).mean()
        torch.testing.assert_close(value, expected)
        value.backward()
        assert hint.adapter.weight.grad is not None
        assert student[0].weight.grad is not None and teacher[0].weight.grad is None
    assert not hint.attached
    student(inputs)  # hooks are gone: nothing is recorded
    with pytest.raises(RuntimeError, match="no features"):
        hint()


def test_hint_loss_linear_and_identity() -> None:
    student, teacher = _student_teacher()
    inputs = torch.randn(3, 1, 4, 4)
    hint = HintLoss("2", "2", adapter="linear").attach(student, teacher)
    student(inputs)
    teacher(inputs)
    value = hint()
    assert isinstance(hint.adapter, nn.Linear)
    expected = ((hint.adapter(student[:3](inputs)) - teacher[:3](inputs)) ** 2).mean()
    torch.testing.assert_close(value, expected)
    hint.remove()
    same = HintLoss("3", "3", adapter=None, loss="l1").attach(student, teacher)
    student(inputs)
    teacher(inputs)
    torch.testing.assert_close(same(), (student(inputs) - teacher(inputs)).abs().mean())
    same.remove()


def test_hint_adapter_state_restores_into_fresh_loss() -> None:
    student, teacher = _student_teacher()
    hint = HintLoss("1", "1").attach(student, teacher)
    inputs = torch.randn(2, 1, 4, 4)
    student(inputs)
    teacher(inputs)
    hint()
    fresh = HintLoss("1", "1")
    fresh.load_state_dict(hint.state_dict())
    assert fresh.adapter is not None and hint.adapter is not None
    torch.testing.assert_close(fresh.adapter.weight, hint.adapter.weight)
    hint.remove()


def test_hint_loss_bad_inputs() -> None:
    student, teacher = _student_teacher()
    with pytest.raises(ValueError, match=r"student_module 'features.3' is not a module"):
        HintLoss("features.3", "1").attach(student, teacher)
    with pytest.raises(ValueError, match=r"teacher_module 'layer2' is not a module"):
        HintLoss("1", "layer2").attach(student, teacher)
    with pytest.raises(ValueError, match="adapter must be"):
        HintLoss("1", "1", adapter="conv3x3")  # type: ignore[arg-type]
    hint = HintLoss("1", "1", adapter=None).attach(student, teacher)
    inputs = torch.randn(2, 1, 4, 4)
    student(inputs)
    teacher(inputs)
    with pytest.raises(ValueError, match="hint shapes do not match"):
        hint()
    hint.remove()
    conv_on_flat = HintLoss("2", "2", adapter="conv1x1").attach(student, teacher)
    student(inputs)
    teacher(inputs)
    with pytest.raises(ValueError, match=r"needs \(N, C, H, W\) features"):
        conv_on_flat()
    conv_on_flat.remove()


def test_kd_loss_takes_integer_labels_of_any_width() -> None:
    # issue 14: int32 labels reached cross_entropy and failed there ("expected target dtype to
    # be Long or Byte, but got Int"); any integer dtype now gives the int64 result
    torch.manual_seed(0)
    student, teacher = torch.randn(6, 10), torch.randn(6, 10)
    labels = torch.tensor([0, 3, 9, 2, -100, 5])
    kd = KDLoss(temperature=2.0, alpha=0.5)
    expected = kd(student, teacher, labels)
    for dtype in (torch.int32, torch.int16):
        assert torch.equal(kd(student, teacher, labels.to(dtype)), expected)
    with pytest.raises(TypeError, match=r"labels must be an integer tensor, got torch\.float32"):
        kd(student, teacher, labels.float())


def test_hint_paths_of_the_readme_fit_the_shipped_models() -> None:
    # README: HintLoss("4", "4") between TinyCNN (student) and FashionCNN (teacher): both
    # second conv + ReLU outputs, 16 and 64 channels at 14x14, joined by a 1x1 adapter
    from codl.models import FashionCNN, TinyCNN

    student, teacher = TinyCNN(), FashionCNN()
    hint = HintLoss("4", "4", adapter="conv1x1").attach(student, teacher)
    x = torch.randn(3, 1, 28, 28)
    student(x), teacher(x)
    value = hint()
    adapter = hint.adapter
    assert isinstance(adapter, nn.Conv2d) and (adapter.in_channels, adapter.out_channels) == (
        16,
        64,
    )
    mapped = adapter(nn.Sequential(*list(student)[:5])(x))
    assert torch.allclose(value, ((mapped - nn.Sequential(*list(teacher)[:5])(x)) ** 2).mean())
    with pytest.raises(ValueError, match=r"student_module 'features.3' is not a module"):
        HintLoss("features.3", "features.6").attach(student, teacher)


# --- DensityKDLoss ------------------------------------------------------------------------------


def _density_loss_by_hand(student, target, count_weight):
    per_map = []
    for s, t in zip(student, target):
        squared = sum(float(v) ** 2 for v in (s - t).flatten())
        per_map.append(squared + count_weight * abs(float(s.sum()) - float(t.sum())))
    return sum(per_map) / len(per_map)


def test_density_kd_loss_is_pixel_squared_error_plus_count_term():
    generator = torch.Generator().manual_seed(0)
    student = torch.rand(3, 1, 4, 5, generator=generator)
    teacher = torch.rand(3, 1, 4, 5, generator=generator)
    loss = codl.distill.DensityKDLoss(count_weight=0.5)(student, teacher)
    assert loss.item() == pytest.approx(_density_loss_by_hand(student, teacher, 0.5), rel=1e-5)


def test_density_kd_loss_mixes_the_labels_by_alpha_and_never_grads_the_teacher():
    generator = torch.Generator().manual_seed(1)
    student = torch.rand(2, 1, 3, 3, generator=generator, requires_grad=True)
    teacher = torch.rand(2, 1, 3, 3, generator=generator, requires_grad=True)
    labels = torch.rand(2, 1, 3, 3, generator=generator)
    loss = codl.distill.DensityKDLoss(count_weight=0.2, alpha=0.25)(student, teacher, labels)
    expected = 0.25 * _density_loss_by_hand(student.detach(), teacher.detach(), 0.2) + 0.75 * (
        _density_loss_by_hand(student.detach(), labels, 0.2)
    )
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert teacher.grad is None and student.grad is not None


def test_density_kd_loss_rejects_bad_settings_and_shapes():
    with pytest.raises(ValueError, match="count_weight"):
        codl.distill.DensityKDLoss(count_weight=-1)
    with pytest.raises(ValueError, match="alpha"):
        codl.distill.DensityKDLoss(alpha=1.5)
    with pytest.raises(ValueError, match="differ in shape"):
        codl.distill.DensityKDLoss()(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 3))
    with pytest.raises(ValueError, match="labels"):
        codl.distill.DensityKDLoss(alpha=0.5)(
            torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 3, 3)
        )


def test_distiller_trains_a_counting_student_on_the_teachers_maps():
    torch.manual_seed(0)
    teacher = torch.nn.Conv2d(3, 1, 3, padding=1)
    student = torch.nn.Conv2d(3, 1, 3, padding=1)
    frames = torch.rand(16, 3, 8, 8)
    distiller = codl.distill.Distiller(
        teacher,
        student,
        losses=[codl.distill.DensityKDLoss()],
        optimizer=lambda p: torch.optim.Adam(p, lr=0.05),
    )
    loss = codl.distill.DensityKDLoss()
    with torch.no_grad():
        before = loss(student(frames), teacher(frames)).item()
    distiller.fit([frames[:8], frames[8:]], epochs=60, progress=False)
    with torch.no_grad():
        after = loss(student(frames), teacher(frames)).item()
    assert after < 0.05 * before
