"""Training benchmarks of the K-FAC issue: time to accuracy and large mini-batches.

Every run trains :class:`codl.models.FashionCNN` on Fashion-MNIST with one optimizer and
records test accuracy against training wall-clock (evaluation excluded) and epochs. The
optimizers compared are torch's SGD with momentum and Adam, and codl's K-FAC, all with the
same learning-rate schedule (:func:`codl.optim.warmup_polynomial_decay` in the spirit of Osawa
et al. 2018: linear warm-up, then polynomial decay).

``benchmarks/time_to_accuracy.py`` and ``benchmarks/large_batch.py`` run these and write JSON
and PNG plots; ``codl demo`` runs a short one on the shipped subset. With ``distributed=True``
:func:`train` is one rank of a data-parallel run (DDP, and distributed K-FAC for ``"kfac"``):
``codl bench large_batch --procs`` starts the ranks.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from codl.models import FashionCNN
from codl.training import evaluate

OPTIMIZERS = ("sgd", "adam", "kfac")
SCHEDULES = ("decay", "constant")


@dataclass
class Point:
    epoch: float
    seconds: float  # training wall-clock so far, evaluation excluded
    test_accuracy: float
    train_loss: float
    step: int = 0  # optimizer steps so far


@dataclass
class Run:
    optimizer: str
    learning_rate: float
    seed: int
    batch_size: int
    points: list[Point] = field(default_factory=list)
    diverged: bool = False
    processes: int = 1  # ranks that shared each batch (``batch_size`` is the global batch)

    def best_accuracy(self) -> float:
        return max((p.test_accuracy for p in self.points), default=0.0)

    def final_accuracy(self) -> float:
        return self.points[-1].test_accuracy if self.points else 0.0

    def steps(self) -> int:
        """Optimizer steps taken (to the last evaluation, which every run ends with)."""
        return self.points[-1].step if self.points else 0

    def time_to(self, accuracy: float) -> float | None:
        """Seconds of training until the test accuracy first reached ``accuracy``."""
        return next((p.seconds for p in self.points if p.test_accuracy >= accuracy), None)

    def epochs_to(self, accuracy: float) -> float | None:
        return next((p.epoch for p in self.points if p.test_accuracy >= accuracy), None)

    def steps_to(self, accuracy: float) -> int | None:
        """Optimizer steps until the test accuracy first reached ``accuracy``."""
        return next((p.step for p in self.points if p.test_accuracy >= accuracy), None)


def make_optimizer(
    name: str, model: nn.Module, learning_rate: float, options: dict[str, Any] | None = None
) -> torch.optim.Optimizer:
    options = dict(options or {})
    if name == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=learning_rate, momentum=options.pop("momentum", 0.9), **options
        )
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=learning_rate, **options)
    if name == "kfac":
        from codl.optim import KFAC

        return KFAC(model, lr=learning_rate, **options)
    raise ValueError(f"optimizer: expected one of {OPTIMIZERS}, received {name!r}")


def train(
    optimizer_name: str,
    learning_rate: float,
    train_data: tuple[torch.Tensor, torch.Tensor],
    test_data: tuple[torch.Tensor, torch.Tensor],
    *,
    batch_size: int = 128,
    epochs: float = 3.0,
    seed: int = 0,
    evaluations_per_epoch: int = 4,
    warmup_epochs: float = 0.0,
    time_budget: float | None = None,
    stop_at_accuracy: float | None = None,
    optimizer_options: dict[str, Any] | None = None,
    model_factory: Callable[[], nn.Module] = FashionCNN,
    progress: bool = True,
    schedule: str = "decay",
    distributed: bool = False,
) -> Run:
    """Train one model; evaluate ``evaluations_per_epoch`` times an epoch on the test split.

    ``schedule="decay"``: linear warm-up over ``warmup_epochs``, then polynomial decay to 0 at
    the end of ``epochs``; ``"constant"``: the same warm-up, then ``learning_rate`` throughout.

    ``distributed=True``: this process is one rank of the default ``torch.distributed`` group,
    every rank calling with the same arguments. ``batch_size`` is then the global batch: each
    rank takes its share of it (``tensor_split`` in rank order, so the ranks' shares together
    are the single-process batch) and the model is wrapped in ``DistributedDataParallel``
    (K-FAC then runs distributed, :mod:`codl.optim.distributed`). Each rank scores its share of
    the test split and the counts are gathered; the loss is the ranks' mean and a step's
    seconds the slowest rank's, so every rank takes the same decisions (divergence, stops) and
    returns the same :class:`Run`.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule: expected one of {SCHEDULES}, received {schedule!r}")
    from codl.optim import warmup_polynomial_decay

    images, labels = train_data
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if batch_size < world_size:
        raise ValueError(f"batch_size {batch_size} is smaller than the {world_size} ranks")
    torch.manual_seed(seed)
    net = model_factory()
    model = nn.parallel.DistributedDataParallel(net) if distributed else net
    optimizer = make_optimizer(optimizer_name, model, learning_rate, optimizer_options)
    steps_per_epoch = math.ceil(len(images) / batch_size)
    total_steps = max(1, round(epochs * steps_per_epoch))
    # "constant": the same warm-up, then a decay of power 0 (the factor stays 1).
    lr_schedule = warmup_polynomial_decay(
        optimizer,
        warmup_steps=round(warmup_epochs * steps_per_epoch),
        total_steps=total_steps,
        decay_power=2.0 if schedule == "decay" else 0.0,
    )
    evaluate_every = max(1, steps_per_epoch // evaluations_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    run = Run(optimizer_name, learning_rate, seed, batch_size, processes=world_size)
    seconds = 0.0
    order = torch.randperm(len(images), generator=generator)
    running_loss = 0.0
    model.train()
    description = f"{optimizer_name} lr={learning_rate:g} {schedule} seed={seed} batch={batch_size}"
    for step in tqdm(range(total_steps), desc=description, disable=not progress, leave=False):
        position = (step % steps_per_epoch) * batch_size
        if step > 0 and step % steps_per_epoch == 0:
            order = torch.randperm(len(images), generator=generator)
        batch = order[position : position + batch_size]
        if distributed:
            batch = batch.tensor_split(world_size)[rank]
        start = time.perf_counter()
        loss = F.cross_entropy(model(images[batch]), labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        lr_schedule.step()
        elapsed = time.perf_counter() - start
        value = float(loss.detach())
        if distributed:
            every = _gather(value, elapsed)  # the same bits on every rank
            value, elapsed = float(every[:, 0].mean()), float(every[:, 1].max())
        seconds += elapsed
        if not math.isfinite(value):
            run.diverged = True
            break
        running_loss = value if step == 0 else 0.9 * running_loss + 0.1 * value
        if (step + 1) % evaluate_every == 0 or step + 1 == total_steps:
            accuracy = _test_accuracy(net, test_data, distributed)
            run.points.append(
                Point((step + 1) / steps_per_epoch, seconds, accuracy, running_loss, step + 1)
            )
            if stop_at_accuracy is not None and accuracy >= stop_at_accuracy:
                break
        if time_budget is not None and seconds >= time_budget:
            break
    return run


def _gather(*values: float) -> torch.Tensor:
    """Every rank's ``values`` as rows of one (world size, len(values)) float64 tensor."""
    mine = torch.tensor(values, dtype=torch.float64)
    every = mine.new_empty(dist.get_world_size() * len(values))  # gloo: a flat output
    # all_gather_single where torch has it, else its older name.
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(every, mine)
    return every.view(-1, len(values))


def _test_accuracy(
    model: nn.Module, test_data: tuple[torch.Tensor, torch.Tensor], distributed: bool
) -> float:
    """Test accuracy in percent; with ``distributed``, each rank scores its share of the split
    (the bare model: no DDP collective in evaluation) and the correct counts are gathered."""
    images, labels = test_data
    if not distributed:
        return evaluate(model, images, labels, batch_size=2000)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    mine, my_labels = images.tensor_split(world_size)[rank], labels.tensor_split(world_size)[rank]
    correct = round(evaluate(model, mine, my_labels, batch_size=2000) * len(mine) / 100.0)
    return 100.0 * float(_gather(correct)[:, 0].sum()) / max(1, len(images))


def save_runs(runs: Sequence[Run], path: str | Path, **extra: Any) -> Path:
    from codl.bench import machine

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine(), **extra, "runs": [asdict(r) for r in runs]}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def plot_accuracy(runs: Sequence[Run], path: str | Path, title: str, target: float | None) -> Path:
    """Test accuracy against wall-clock (left) and against epochs (right), one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"sgd": "tab:blue", "adam": "tab:orange", "kfac": "tab:green"}
    labels = {"sgd": "SGD+momentum (torch)", "adam": "Adam (torch)", "kfac": "K-FAC (codl)"}
    figure, (by_time, by_epoch) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    shown: set[str] = set()
    for run in runs:
        label = None if run.optimizer in shown else labels.get(run.optimizer, run.optimizer)
        shown.add(run.optimizer)
        style = {"color": colours.get(run.optimizer), "alpha": 0.8, "linewidth": 1.2}
        by_time.plot(
            [p.seconds for p in run.points],
            [p.test_accuracy for p in run.points],
            label=label,
            **style,
        )
        by_epoch.plot([p.epoch for p in run.points], [p.test_accuracy for p in run.points], **style)
    for axis, xlabel in ((by_time, "training wall-clock (s)"), (by_epoch, "epochs")):
        axis.set_xlabel(xlabel)
        axis.grid(alpha=0.3)
        if target is not None:
            axis.axhline(target, color="grey", linestyle="--", linewidth=0.8)
    accuracies = [p.test_accuracy for run in runs for p in run.points]
    if accuracies:
        by_time.set_ylim(max(min(accuracies), 80.0), max(accuracies) + 0.5)
    by_time.set_ylabel("test accuracy (%)")
    by_time.legend(loc="lower right")
    figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
