"""Knowledge distillation on Fashion-MNIST: a tiny CNN student with and without a FashionCNN
teacher (codl.distill), float and ternary, labeled and mostly unlabeled.

    python benchmarks/distill_fashion.py [--train-size 10000] [--teacher-epochs 6]
        [--student-epochs 8] [--seeds 0 1 2] [--hint-seeds 0 1] [--threads 1]
        [--data full|subset] [--progress]

The teacher is codl.models.FashionCNN trained here (seed 0, Adam 1e-3) on the first
``--train-size`` images of a fixed permutation of the full training set (a subset keeps the
run to minutes on two shared cores); accuracies are on the full 10,000-image test set. The
student is a two-conv CNN with about 1/90 of the teacher's parameters. Variants, each with the
same epochs, batch size, optimizer and seeds:

* ``labels``: cross-entropy on the labels only (the baseline);
* ``kd``: KDLoss(T=--temperature, alpha=--alpha) (Hinton et al. 2015; 4 and 0.9 by default) on
  precomputed teacher logits;
* ``kd_hint``: KDLoss plus a FitNets hint (Romero et al. 2015) from the student's second
  pooling output to the teacher's through a 1x1 conv adapter (teacher run live);
* ``ternary_labels``, ``ternary_kd``: the same student after codl.quantize_(student,
  codl.TernaryConfig()) (every conv/linear ternary, trained through the quantizer);
* ``labeled10``: cross-entropy on the labeled 10% alone (as many optimizer steps as the others);
* ``kd_unlabeled``: KDLoss on the whole training subset with 90% of the labels hidden
  (label -100: soft term only for those examples).

Writes benchmarks/results/distill_fashion.json (per-seed accuracies, means, parameter counts,
settings) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import codl
from codl.bench import default_results_dir
from codl.distill import IGNORE_INDEX, Distiller, HintLoss, KDLoss
from codl.models import FashionCNN, SmallCNN, TinyCNN

BATCH_SIZE = 128
LEARNING_RATE = 1e-3


STUDENTS: dict[str, Callable[[], nn.Module]] = {"tiny": TinyCNN, "small": SmallCNN}


def parameters_of(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def adam(parameters: Any) -> torch.optim.Optimizer:
    return torch.optim.Adam(parameters, lr=LEARNING_RATE)


def loader(*tensors: torch.Tensor, seed: int, shuffle: bool = True) -> DataLoader[Any]:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        TensorDataset(*tensors), batch_size=BATCH_SIZE, shuffle=shuffle, generator=generator
    )


@torch.no_grad()
def logits_of(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    model.eval()
    return torch.cat([model(images[i : i + 1000]) for i in range(0, len(images), 1000)])


def command_line(script: str, args: argparse.Namespace, skip: tuple[str, ...]) -> str:
    """The command that reproduces a run: ``python benchmarks/<script>`` with every option of
    ``args`` but ``skip`` and unset ones."""
    return f"python benchmarks/{script} " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items()
        if k not in skip and v is not None
    )


def main(argv: Sequence[str] | None = None, *, results_dir: Path | None = None) -> None:
    out_dir = results_dir or default_results_dir()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-size", type=int, default=10000)
    parser.add_argument("--teacher-epochs", type=int, default=6)
    parser.add_argument(
        "--teacher-train-size",
        type=int,
        default=None,
        help="train the teacher on this many images of the same permutation (>= --train-size; "
        "default: the student's training set)",
    )
    parser.add_argument("--student-epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", choices=["full", "subset"], default="full")
    parser.add_argument("--labeled-fraction", type=float, default=0.1)
    parser.add_argument("--hint-weight", type=float, default=0.5)
    parser.add_argument(
        "--temperature",
        type=float,
        default=4.0,
        help="KD temperature (Hinton's 4 by default; small students do better near 1)",
    )
    parser.add_argument("--alpha", type=float, default=0.9, help="weight of the soft term")
    parser.add_argument("--variants", nargs="+", default=None)
    parser.add_argument(
        "--hint-seeds",
        type=int,
        nargs="+",
        default=None,
        help="seeds for kd_hint (it runs the teacher at every step); default: --seeds",
    )
    parser.add_argument(
        "--student",
        choices=sorted(STUDENTS),
        default="tiny",
        help="tiny: 9,098 parameters (1/94); small: 80,602 (1/10.6)",
    )
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--out", type=Path, default=out_dir / "distill_fashion.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    train_images, train_labels, source = codl.data.load_split("train", args.data)
    test_images, test_labels, _ = codl.data.load_split("test", args.data)
    order = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(1234))
    teacher_size = args.teacher_train_size or args.train_size
    if teacher_size < args.train_size:
        parser.error("--teacher-train-size must be >= --train-size")
    teacher_images = train_images[order[:teacher_size]]
    teacher_labels = train_labels[order[:teacher_size]]
    keep = order[: args.train_size]
    train_images, train_labels = train_images[keep], train_labels[keep]
    test_loader = loader(test_images, test_labels, seed=0, shuffle=False)

    torch.manual_seed(0)
    teacher = FashionCNN()
    teacher_trainer = Distiller(None, teacher, losses=[nn.CrossEntropyLoss()], optimizer=adam)
    teacher_started = time.perf_counter()
    teacher_trainer.fit(
        loader(teacher_images, teacher_labels, seed=0), args.teacher_epochs, progress=args.progress
    )
    teacher_seconds = time.perf_counter() - teacher_started
    teacher_accuracy = teacher_trainer.evaluate(test_loader)
    teacher_logits = logits_of(teacher, train_images)
    print(f"teacher FashionCNN: {teacher_accuracy:.2f}% ({teacher_seconds:.0f} s)", flush=True)

    labeled_count = round(args.labeled_fraction * len(train_images))
    hidden_labels = train_labels.clone()
    hidden_labels[labeled_count:] = IGNORE_INDEX  # the order is already a random permutation
    steps_per_epoch = -(-len(train_images) // BATCH_SIZE)
    labeled10_epochs = -(-args.student_epochs * steps_per_epoch // -(-labeled_count // BATCH_SIZE))

    def run(
        make_student: Callable[[], nn.Module],
        build: Callable[[nn.Module], Distiller],
        data: DataLoader[Any],
        epochs: int,
        seed: int,
    ) -> float:
        torch.manual_seed(seed)
        student = make_student()
        distiller = build(student)
        distiller.fit(data, epochs, progress=args.progress)
        distiller.close()
        return distiller.evaluate(test_loader)

    make_base_student = STUDENTS[args.student]

    def ternary_student() -> nn.Module:
        return codl.quantize_(make_base_student(), codl.TernaryConfig())

    full = (train_images, train_labels)
    with_logits = (train_images, train_labels, teacher_logits)
    variants: dict[str, tuple[Callable[[], nn.Module], Callable[[nn.Module], Distiller], Any, int]]
    variants = {
        "labels": (
            make_base_student,
            lambda s: Distiller(None, s, losses=[nn.CrossEntropyLoss()], optimizer=adam),
            full,
            args.student_epochs,
        ),
        "kd": (
            make_base_student,
            lambda s: Distiller(
                teacher, s, losses=[KDLoss(args.temperature, args.alpha)], optimizer=adam
            ),
            with_logits,
            args.student_epochs,
        ),
        "kd_hint": (
            make_base_student,
            lambda s: Distiller(
                teacher,
                s,
                losses=[
                    KDLoss(args.temperature, args.alpha),
                    HintLoss("5", "5", adapter="conv1x1"),
                ],
                weights=[1.0, args.hint_weight],
                optimizer=adam,
            ),
            full,
            args.student_epochs,
        ),
        "ternary_labels": (
            ternary_student,
            lambda s: Distiller(None, s, losses=[nn.CrossEntropyLoss()], optimizer=adam),
            full,
            args.student_epochs,
        ),
        "ternary_kd": (
            ternary_student,
            lambda s: Distiller(
                teacher, s, losses=[KDLoss(args.temperature, args.alpha)], optimizer=adam
            ),
            with_logits,
            args.student_epochs,
        ),
        "labeled10": (
            make_base_student,
            lambda s: Distiller(None, s, losses=[nn.CrossEntropyLoss()], optimizer=adam),
            (train_images[:labeled_count], train_labels[:labeled_count]),
            labeled10_epochs,
        ),
        "kd_unlabeled": (
            make_base_student,
            lambda s: Distiller(
                teacher, s, losses=[KDLoss(args.temperature, args.alpha)], optimizer=adam
            ),
            (train_images, hidden_labels, teacher_logits),
            args.student_epochs,
        ),
    }
    chosen = args.variants or list(variants)
    accuracies: dict[str, list[float]] = {name: [] for name in chosen}
    seconds: dict[str, float] = {}
    for name in chosen:
        make_student, build, tensors, epochs = variants[name]
        variant_started = time.perf_counter()
        seeds = args.hint_seeds if name == "kd_hint" and args.hint_seeds else args.seeds
        for seed in seeds:
            accuracy = run(make_student, build, loader(*tensors, seed=seed), epochs, seed)
            accuracies[name].append(accuracy)
            print(f"{name:15s} seed {seed}: {accuracy:.2f}%", flush=True)
        seconds[name] = time.perf_counter() - variant_started

    student_parameters = parameters_of(make_base_student())
    teacher_parameters = parameters_of(teacher)
    summary: dict[str, dict[str, Any]] = {
        name: {
            "accuracy_per_seed": values,
            "mean": statistics.fmean(values),
            "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
            "seconds": seconds[name],
        }
        for name, values in accuracies.items()
    }
    result = {
        "benchmark": "distill_fashion",
        "command": command_line("distill_fashion.py", args, ("progress", "out")),
        "data": source,
        "train_images": len(train_images),
        "test_images": len(test_images),
        "labeled_images_in_semi_supervised_runs": labeled_count,
        "labeled10_epochs": labeled10_epochs,
        "teacher": {
            "model": "codl.models.FashionCNN",
            "parameters": teacher_parameters,
            "epochs": args.teacher_epochs,
            "train_images": teacher_size,
            "accuracy": teacher_accuracy,
            "seconds": teacher_seconds,
        },
        "student": {
            "model": {
                "tiny": "tiny CNN (conv 1-8-16, fc 784-10)",
                "small": "small CNN (conv 1-16-32, fc 1568-48-10)",
            }[args.student],
            "parameters": student_parameters,
            "teacher_to_student_ratio": teacher_parameters / student_parameters,
            "epochs": args.student_epochs,
        },
        "settings": {
            "batch_size": BATCH_SIZE,
            "optimizer": f"Adam lr {LEARNING_RATE}",
            "kd": {"temperature": 4.0, "alpha": 0.9},
            "hint": {
                "student_module": "5",
                "teacher_module": "5",
                "adapter": "conv1x1",
                "weight": args.hint_weight,
            },
            "seeds": args.seeds,
            "threads": args.threads,
        },
        "variants": summary,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch": torch.__version__,
        },
        "total_seconds": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\nteacher FashionCNN ({teacher_parameters:,} parameters): {teacher_accuracy:.2f}%")
    print(
        f"student {args.student} CNN: {student_parameters:,} parameters "
        f"(1/{teacher_parameters / student_parameters:.0f} of the teacher)\n"
    )
    print("| variant | accuracy per seed (%) | mean (%) |")
    print("|---|---|---|")
    for name, entry in summary.items():
        per_seed = ", ".join(f"{v:.2f}" for v in entry["accuracy_per_seed"])
        print(f"| {name} | {per_seed} | {entry['mean']:.2f} |")
    print(f"\nwrote {args.out} ({result['total_seconds']:.0f} s)")
