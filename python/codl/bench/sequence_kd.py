"""Sequence-level knowledge distillation (Kim and Rush 2016) on codl.distill's toy transduction
task: digit strings to spelled-out words, reversed in most references.

    python benchmarks/sequence_kd.py [--train-size 4000] [--teacher-epochs 20]
        [--student-epochs 10] [--seeds 0 1] [--noise 0.1] [--reverse-prob 0.7] [--progress]

A teacher Seq2Seq (bidirectional GRU encoder, GRU decoder with Luong attention, hidden 64) is
trained on the noisy references; a student with hidden 12 (1/20 of the parameters) is trained
four ways, same epochs, batch and seeds:

* ``references``: NLL on the references (the baseline);
* ``word_kd``: KDLoss(T=1, alpha=0.5) per token against the teacher's teacher-forced
  distributions on the references (Kim & Rush §3.1);
* ``seq_kd``: NLL on the teacher's beam-5 outputs for the training sources (§3.2,
  ``codl.distill.sequence_kd``);
* ``seq_kd_word_kd``: both (the paper's Seq-KD + Word-KD).

Test set: fresh sources, clean targets; an output is correct in either spelling order (the
task's two valid outputs). Reports exact match and token accuracy with greedy decoding and
exact match with beam 5, per seed and mean, to benchmarks/results/sequence_kd.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from codl.bench import default_results_dir
from codl.distill import KDLoss
from codl.distill.sequence import (
    DigitsToWords,
    Seq2Seq,
    beam_search,
    count_parameters,
    greedy_decode,
    sequence_accuracy,
    sequence_kd,
    train_seq2seq,
)

VARIANTS = ("references", "word_kd", "seq_kd", "seq_kd_word_kd")


def evaluate(model: Seq2Seq, sources: torch.Tensor, valid: Any, max_len: int) -> dict[str, float]:
    greedy = sequence_accuracy(greedy_decode(model, sources, max_len), valid)
    beam, _ = beam_search(model, sources, beam=5, max_len=max_len)
    return {
        "greedy_exact_match": greedy["exact_match"],
        "greedy_token_accuracy": greedy["token_accuracy"],
        "beam5_exact_match": sequence_accuracy(beam, valid)["exact_match"],
    }


def main(argv: Sequence[str] | None = None, *, results_dir: Path | None = None) -> None:
    out_dir = results_dir or default_results_dir()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-size", type=int, default=4000)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--teacher-epochs", type=int, default=20)
    parser.add_argument("--student-epochs", type=int, default=10)
    parser.add_argument("--teacher-hidden", type=int, default=64)
    parser.add_argument("--student-hidden", type=int, default=12)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--reverse-prob", type=float, default=0.7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--out", type=Path, default=out_dir / "sequence_kd.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    task = DigitsToWords(reverse_prob=args.reverse_prob, noise=args.noise)
    train = task.sample(args.train_size, seed=1)
    test = task.sample(args.test_size, seed=2)
    max_len = task.max_target_len
    vocab = (task.source_vocab_size, task.target_vocab_size)

    torch.manual_seed(0)
    teacher = Seq2Seq(*vocab, embed_dim=32, hidden_dim=args.teacher_hidden)
    teacher_started = time.perf_counter()
    train_seq2seq(
        teacher,
        train.sources,
        train.targets,
        args.teacher_epochs,
        seed=0,
        progress=args.progress,
    )
    teacher_seconds = time.perf_counter() - teacher_started
    teacher_scores = evaluate(teacher, test.sources, test.valid, max_len)
    print(f"teacher: {teacher_scores} ({teacher_seconds:.0f} s)", flush=True)

    kd_started = time.perf_counter()
    kd_targets = sequence_kd(teacher, train.sources, beam=5, max_len=max_len)
    kd_seconds = time.perf_counter() - kd_started
    reference_quality = sequence_accuracy(train.targets, train.valid)
    kd_quality = sequence_accuracy(kd_targets, train.valid)
    reversed_share = 100.0 * (kd_targets == train.valid[0]).all(1).float().mean().item()

    def make_student(seed: int) -> Seq2Seq:
        torch.manual_seed(seed)
        return Seq2Seq(*vocab, embed_dim=16, hidden_dim=args.student_hidden)

    results: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    for seed in args.seeds:
        for name in VARIANTS:
            targets = train.targets if name in ("references", "word_kd") else kd_targets
            word_kd = KDLoss(temperature=1.0, alpha=0.5) if "word_kd" in name else None
            student = make_student(seed)
            variant_started = time.perf_counter()
            train_seq2seq(
                student,
                train.sources,
                targets,
                args.student_epochs,
                seed=seed,
                teacher=teacher if word_kd is not None else None,
                word_kd=word_kd,
                progress=args.progress,
            )
            scores = evaluate(student, test.sources, test.valid, max_len)
            scores["seconds"] = time.perf_counter() - variant_started
            results[name].append(scores)
            print(f"{name:15s} seed {seed}: {scores}", flush=True)

    summary = {
        name: {
            "per_seed": runs,
            **{
                f"mean_{metric}": statistics.fmean(run[metric] for run in runs)
                for metric in ("greedy_exact_match", "greedy_token_accuracy", "beam5_exact_match")
            },
        }
        for name, runs in results.items()
    }
    teacher_parameters = count_parameters(teacher)
    student_parameters = count_parameters(make_student(0))
    result = {
        "benchmark": "sequence_kd",
        "command": (
            f"python benchmarks/sequence_kd.py --train-size {args.train_size} --test-size "
            f"{args.test_size} --teacher-epochs {args.teacher_epochs} --student-epochs "
            f"{args.student_epochs} --teacher-hidden {args.teacher_hidden} --student-hidden "
            f"{args.student_hidden} --seeds {' '.join(map(str, args.seeds))} --noise "
            f"{args.noise} --reverse-prob {args.reverse_prob} --threads {args.threads}"
        ),
        "task": {
            "name": "DigitsToWords",
            "digits": [task.min_digits, task.max_digits],
            "reverse_prob": args.reverse_prob,
            "noise": args.noise,
            "train_size": args.train_size,
            "test_size": args.test_size,
            "reference_exact_match_on_train": reference_quality["exact_match"],
            "seq_kd_targets_exact_match_on_train": kd_quality["exact_match"],
            "seq_kd_targets_reversed_percent": reversed_share,
            "seq_kd_seconds": kd_seconds,
        },
        "teacher": {
            "parameters": teacher_parameters,
            "hidden": args.teacher_hidden,
            "epochs": args.teacher_epochs,
            "seconds": teacher_seconds,
            **teacher_scores,
        },
        "student": {
            "parameters": student_parameters,
            "hidden": args.student_hidden,
            "epochs": args.student_epochs,
            "teacher_to_student_ratio": teacher_parameters / student_parameters,
        },
        "settings": {
            "optimizer": "Adam lr 3e-3, batch 64, grad clip 1.0",
            "word_kd": {"temperature": 1.0, "alpha": 0.5},
            "beam": 5,
            "length_penalty": 1.0,
            "seeds": args.seeds,
            "threads": args.threads,
        },
        "variants": summary,
        "machine": {"platform": platform.platform(), "torch": torch.__version__},
        "total_seconds": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(
        f"\nteacher {teacher_parameters:,} parameters, student {student_parameters:,} "
        f"(1/{teacher_parameters / student_parameters:.0f}); references exact "
        f"{reference_quality['exact_match']:.1f}%, seq-KD targets exact "
        f"{kd_quality['exact_match']:.1f}% ({reversed_share:.1f}% reversed)\n"
    )
    print("| model | greedy exact (%) | greedy token (%) | beam-5 exact (%) |")
    print("|---|---|---|---|")
    print(
        f"| teacher | {teacher_scores['greedy_exact_match']:.1f} | "
        f"{teacher_scores['greedy_token_accuracy']:.1f} | "
        f"{teacher_scores['beam5_exact_match']:.1f} |"
    )
    for name, entry in summary.items():
        print(
            f"| student {name} | {entry['mean_greedy_exact_match']:.1f} | "
            f"{entry['mean_greedy_token_accuracy']:.1f} | "
            f"{entry['mean_beam5_exact_match']:.1f} |"
        )
    print(f"\nwrote {args.out} ({result['total_seconds']:.0f} s)")
