"""Distiller: training reduces the loss, the teacher stays frozen, lazy adapters are trained,
checkpoints resume exactly, NaN/Inf are reported, bad setups fail before training."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import codl
from codl.distill import Distiller, HintLoss, KDLoss, NonFiniteLossError


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models on shared cores: one thread avoids scheduling stalls (10x faster here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _models() -> tuple[nn.Sequential, nn.Sequential]:
    torch.manual_seed(0)
    teacher = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Flatten(),
        nn.Linear(8 * 36, 4),
    )
    student = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(72, 4)
    )
    return teacher, student


def _batches(count: int = 4, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(16, 1, 6, 6, generator=generator),
            torch.randint(0, 4, (16,), generator=generator),
        )
        for _ in range(count)
    ]


def test_training_reduces_the_loss_and_keeps_the_teacher_frozen() -> None:
    teacher, student = _models()
    teacher.train()  # the Distiller must switch it to eval (dropout off)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    distiller = Distiller(
        teacher,
        student,
        losses=[KDLoss(4.0, 0.9), HintLoss("1", "1")],
        weights=[1.0, 0.5],
        optimizer=lambda p: torch.optim.Adam(p, lr=1e-2),
    )
    batches = _batches()
    with torch.no_grad():
        before, _ = distiller.compute_loss(*batches[0])
    history = distiller.fit(batches, epochs=5, progress=False)
    with torch.no_grad():
        after, terms = distiller.compute_loss(*batches[0])
    assert after.item() < 0.8 * before.item()
    assert [record["epoch"] for record in history] == [1, 2, 3, 4, 5]
    assert history[-1]["loss"] < history[0]["loss"]
    assert set(terms) == {"KDLoss", "HintLoss"}
    assert not teacher.training
    for key, value in teacher.state_dict().items():
        torch.testing.assert_close(value, teacher_before[key], rtol=0, atol=0)
    assert all(p.grad is None for p in teacher.parameters())
    # The lazily built adapter was added to the optimizer and trained.
    adapter = distiller.losses[1].adapter
    assert adapter is not None
    optimized = {id(p) for group in distiller.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in optimized for p in adapter.parameters())
    assert len(distiller.optimizer.state) == len(optimized)
    distiller.close()
    assert not distiller.losses[1].attached


def test_validation_accuracy_matches_an_independent_count() -> None:
    teacher, student = _models()
    batches = _batches()
    distiller = Distiller(teacher, student, losses=[KDLoss()])
    history = distiller.fit(batches[:2], epochs=1, val_loader=batches[2:], progress=False)
    student.eval()
    with torch.no_grad():
        correct = sum(int((student(x).argmax(1) == y).sum()) for x, y in batches[2:])
    assert history[0]["val_accuracy"] == pytest.approx(100.0 * correct / 32)


def test_checkpoint_resume_reproduces_an_uninterrupted_run(tmp_path: Path) -> None:
    batches = _batches()

    def make() -> Distiller:
        teacher, student = _models()
        return Distiller(teacher, student, losses=[KDLoss(), HintLoss("1", "1")])

    straight = make()
    straight.fit(batches, epochs=3, progress=False)
    first = make()
    first.fit(batches, epochs=1, checkpoint_dir=tmp_path, progress=False)
    assert (tmp_path / "distiller.pt").exists()
    torch.load(tmp_path / "distiller.pt", weights_only=True)  # state dicts and plain values only
    resumed = make()  # fresh models and a fresh HintLoss with no adapter yet
    history = resumed.fit(batches, epochs=3, checkpoint_dir=tmp_path, progress=False)
    assert [record["epoch"] for record in history] == [1, 2, 3]
    for key, value in straight.student.state_dict().items():
        torch.testing.assert_close(resumed.student.state_dict()[key], value)
    straight_adapter = straight.losses[1].adapter
    resumed_adapter = resumed.losses[1].adapter
    assert straight_adapter is not None and resumed_adapter is not None
    torch.testing.assert_close(resumed_adapter.weight, straight_adapter.weight)


def test_non_finite_loss_is_reported_with_its_step_and_nothing_is_updated() -> None:
    teacher, student = _models()
    distiller = Distiller(teacher, student, losses=[KDLoss()])
    batches = _batches(3)
    bad_inputs = batches[1][0].clone()
    bad_inputs[0, 0, 0, 0] = float("nan")
    batches[1] = (bad_inputs, batches[1][1])
    with pytest.raises(NonFiniteLossError, match=r"epoch 0, step 1 .*KDLoss=nan"):
        distiller.fit(batches, epochs=1, progress=False)
    snapshot = {k: v.clone() for k, v in student.state_dict().items()}
    with pytest.raises(NonFiniteLossError):
        distiller.train_step(batches[1])
    for key, value in student.state_dict().items():
        torch.testing.assert_close(value, snapshot[key], rtol=0, atol=0)


def test_ternary_student_and_ternary_teacher() -> None:
    teacher, student = _models()
    teacher = codl.quantize_(teacher, codl.TernaryConfig())
    student = codl.quantize_(student, codl.TernaryConfig())
    distiller = Distiller(teacher, student, losses=[KDLoss()])
    batches = _batches(2)
    before = [p.clone() for p in student.parameters()]
    record = distiller.train_step(batches[0])
    assert torch.isfinite(torch.tensor(record["loss"]))
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))


def test_from_config_matches_explicit_construction() -> None:
    config = {
        "losses": [
            {"type": "kd", "temperature": 2.0, "alpha": 0.5},
            {"type": "hint", "student_module": "1", "teacher_module": "1"},
        ],
        "weights": [1.0, 0.25],
        "optimizer": {"type": "SGD", "lr": 0.1},
    }
    teacher, student = _models()
    from_config = Distiller.from_config(teacher, student, config)
    assert isinstance(from_config.optimizer, torch.optim.SGD)
    assert from_config.weights == [1.0, 0.25]
    kd = from_config.losses[0]
    assert isinstance(kd, KDLoss) and (kd.temperature, kd.alpha) == (2.0, 0.5)
    teacher2, student2 = _models()
    explicit = Distiller(
        teacher2,
        student2,
        losses=[KDLoss(2.0, 0.5), HintLoss("1", "1")],
        weights=[1.0, 0.25],
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
    )
    batch = _batches(1)[0]
    torch.manual_seed(1)
    a = from_config.train_step(batch)
    torch.manual_seed(1)
    b = explicit.train_step(batch)
    assert a == pytest.approx(b)
    with pytest.raises(ValueError, match="type"):
        Distiller.from_config(teacher, student, {"losses": [{"type": "nope"}]})


def test_bad_setups_fail_before_training() -> None:
    teacher, student = _models()
    with pytest.raises(ValueError, match=r"student_module 'features\.9'"):
        Distiller(teacher, student, losses=[HintLoss("features.9", "1")])
    with pytest.raises(ValueError, match="need a teacher"):
        Distiller(None, student, losses=[KDLoss()])
    with pytest.raises(ValueError, match="one entry per loss"):
        Distiller(teacher, student, losses=[KDLoss()], weights=[1.0, 2.0])
    wide = nn.Sequential(nn.Flatten(), nn.Linear(36, 7))
    distiller = Distiller(teacher, wide, losses=[KDLoss()])
    with pytest.raises(ValueError, match=r"teacher \(16, 4\) and student \(16, 7\)"):
        distiller.train_step(_batches(1)[0])
    with pytest.raises(TypeError, match="student must be"):
        Distiller(teacher, "model")  # type: ignore[arg-type]


def test_labels_only_baseline_uses_the_same_loop() -> None:
    _, student = _models()
    distiller = Distiller(None, student, losses=[nn.CrossEntropyLoss()])
    batch = _batches(1)[0]
    expected = nn.functional.cross_entropy(student(batch[0]), batch[1]).item()
    assert distiller.train_step(batch)["loss"] == pytest.approx(expected, rel=1e-6)


def test_precomputed_teacher_logits_give_the_same_step() -> None:
    batch = _batches(1)[0]
    teacher, student = _models()
    live = Distiller(teacher, student, losses=[KDLoss()])
    teacher.eval()
    with torch.no_grad():
        logits = teacher(batch[0])
    teacher_b, student_b = _models()
    cached = Distiller(teacher_b, student_b, losses=[KDLoss()])
    assert live.train_step(batch) == pytest.approx(cached.train_step((*batch, logits)))
    for a, b in zip(student.parameters(), student_b.parameters()):
        torch.testing.assert_close(a, b)


def test_quick_kd_runs_on_the_shipped_subset() -> None:
    from codl.data import load_split
    from codl.distill.quick import quick_kd

    images, labels, _ = load_split("train", "subset")
    test_images, test_labels, _ = load_split("test", "subset")
    train, test = (images[:128], labels[:128]), (test_images[:200], test_labels[:200])
    with pytest.raises(ValueError, match="labeled_fraction"):
        quick_kd(train, test, labeled_fraction=1.5)
    result = quick_kd(train, test, teacher_epochs=1, student_epochs=1, labeled_fraction=0.25)
    # FashionCNN: 832 + 51,264 + 803,072 + 2,570; the student: 80 + 1,168 + 7,850.
    assert (result.teacher_parameters, result.student_parameters) == (857_738, 9_098)
    for accuracy in (result.teacher_accuracy, result.labels_only_accuracy, result.kd_accuracy):
        assert 0.0 <= accuracy <= 100.0 and accuracy * 2 % 1 == 0  # multiples of 1/200
