"""Knowledge distillation (``codl.distill``).

* :class:`KDLoss`: soft targets at temperature T (Hinton, Vinyals and Dean 2015, eq. 2 and
  the T² factor of §2), with unlabeled examples (soft term only) and sequence logits.
* :class:`DensityKDLoss`: density maps of counting nets (pixel-wise squared error plus a count
  term).
* :class:`HintLoss`: FitNets hints (Romero et al. 2015, eq. 3) through forward hooks on
  modules named by path, with a learned adapter.
* :class:`Distiller`: the training loop (teacher frozen under ``torch.no_grad``, progress bars,
  evaluation, checkpoints, NaN/Inf detection), also from a plain dict config.
* Sequence-level KD (Kim and Rush 2016): :func:`sequence_kd` (the teacher's beam outputs as
  targets), :func:`word_kd_loss`, :func:`beam_search`, :func:`greedy_decode`, the attention
  encoder-decoder :class:`Seq2Seq` and the toy task :class:`DigitsToWords` in
  :mod:`codl.distill.sequence`.

>>> kd = codl.distill.KDLoss(temperature=4.0, alpha=0.9)  # doctest: +SKIP
>>> distiller = codl.distill.Distiller(teacher, student, losses=[kd])  # doctest: +SKIP
>>> history = distiller.fit(train_loader, epochs=5, val_loader=test_loader)  # doctest: +SKIP
"""

from __future__ import annotations

from codl.distill.distiller import Distiller, NonFiniteLossError
from codl.distill.losses import IGNORE_INDEX, DensityKDLoss, HintLoss, KDLoss
from codl.distill.sequence import (
    DigitsToWords,
    Seq2Seq,
    beam_search,
    greedy_decode,
    sequence_accuracy,
    sequence_kd,
    train_seq2seq,
    word_kd_loss,
)

__all__ = [
    "IGNORE_INDEX",
    "DensityKDLoss",
    "DigitsToWords",
    "Distiller",
    "HintLoss",
    "KDLoss",
    "NonFiniteLossError",
    "Seq2Seq",
    "beam_search",
    "greedy_decode",
    "sequence_accuracy",
    "sequence_kd",
    "train_seq2seq",
    "word_kd_loss",
]
