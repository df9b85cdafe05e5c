"""Sequence-level KD pieces: the toy task, beam search (exact on a small enumerable model,
equal to greedy at beam=1), sequence_kd outputs, word-level KD and a training step."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from codl.distill import KDLoss
from codl.distill.sequence import (
    BOS,
    EOS,
    FIRST_TOKEN,
    PAD,
    DecoderState,
    DigitsToWords,
    Seq2Seq,
    beam_search,
    greedy_decode,
    sequence_accuracy,
    sequence_kd,
    train_seq2seq,
    word_kd_loss,
)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models on shared cores: one thread avoids scheduling stalls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_digits_to_words_references_and_valid_outputs() -> None:
    task = DigitsToWords(min_digits=2, max_digits=6, reverse_prob=1.0, noise=0.0)
    data = task.sample(50, seed=0)
    torch.testing.assert_close(data.targets, data.valid[0])
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    for row in range(50):
        digits = task.source_text(data.sources[row]).split()
        assert 2 <= len(digits) <= 6
        expected_reversed = " ".join(words[int(d)] for d in reversed(digits))
        expected_forward = " ".join(words[int(d)] for d in digits)
        assert task.target_text(data.valid[0][row]) == expected_reversed
        assert task.target_text(data.valid[1][row]) == expected_forward
    mixed = DigitsToWords(reverse_prob=0.7, noise=0.0).sample(2000, seed=1)
    reversed_share = (mixed.targets == mixed.valid[0]).all(1).float().mean().item()
    assert 0.65 < reversed_share < 0.75
    noisy = DigitsToWords(reverse_prob=1.0, noise=0.2).sample(2000, seed=2)
    content = noisy.valid[0] >= FIRST_TOKEN
    changed = (noisy.targets != noisy.valid[0])[content].float().mean().item()
    assert 0.15 < changed < 0.2  # 20% replaced, of which a tenth by the same word


class TableModel(nn.Module):
    """A decoder whose next-token logits depend on (step, previous token) only, by a table:
    small enough to enumerate every output sequence. The step is carried in the state."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table  # (max_len, vocab, vocab)

    def encode(self, sources: torch.Tensor) -> DecoderState:
        count = sources.shape[0]
        zeros = torch.zeros(count, 1)
        return DecoderState(zeros, zeros, zeros[:, None, :], torch.ones(count, 1, dtype=torch.bool))

    def decode_step(
        self, previous: torch.Tensor, state: DecoderState
    ) -> tuple[torch.Tensor, DecoderState]:
        step = int(state.hidden[0, 0])
        logits = self.table[step, previous]
        return logits, DecoderState(state.hidden + 1, *state[1:])


def _enumerated_best(table: torch.Tensor, max_len: int, length_penalty: float) -> list[int]:
    """Best sequence by brute force over all outputs: content tokens then EOS, at most max_len
    tokens, scored with the same log-probabilities and normalisation as beam_search."""
    vocab = table.shape[-1]
    content = list(range(FIRST_TOKEN, vocab))
    best, best_score = None, -math.inf
    for length in range(1, max_len + 1):
        for body in itertools.product(content, repeat=length - 1):
            sequence = [*body, EOS]
            previous, score = BOS, 0.0
            for step, token in enumerate(sequence):
                log_probs = torch.log_softmax(table[step, previous].double(), -1)
                if step == max_len - 1 and token != EOS:
                    score = -math.inf
                score += float(log_probs[token])
                previous = token
            normalised = score / length**length_penalty
            if normalised > best_score:
                best, best_score = sequence, normalised
    assert best is not None
    return best


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_search_finds_the_enumerated_best_sequence(length_penalty: float) -> None:
    max_len, vocab = 4, FIRST_TOKEN + 2
    greedy_was_wrong = 0
    for seed in range(6):
        table = torch.randn(max_len, vocab, vocab, generator=torch.Generator().manual_seed(seed))
        table = table * 2.0
        model = TableModel(table)
        sources = torch.full((2, 1), FIRST_TOKEN)
        # 15 possible outputs: a beam of 16 keeps them all, so the search is exact.
        found, _scores = beam_search(
            model,
            sources,
            beam=16,
            max_len=max_len,  # type: ignore[arg-type]
            length_penalty=length_penalty,
        )
        expected = _enumerated_best(table, max_len, length_penalty)
        for row in range(2):
            row_tokens = found[row].tolist()
            assert row_tokens[: len(expected)] == expected
            assert all(t == PAD for t in row_tokens[len(expected) :])
        greedy = greedy_decode(model, sources, max_len)  # type: ignore[arg-type]
        greedy_was_wrong += greedy[0, : len(expected)].tolist() != expected
    assert greedy_was_wrong > 0  # the tables include garden paths: the test can tell


def _random_model(seed: int) -> Seq2Seq:
    torch.manual_seed(seed)
    return Seq2Seq(DigitsToWords.source_vocab_size, DigitsToWords.target_vocab_size, 8, 16)


def test_beam_one_equals_greedy() -> None:
    data = DigitsToWords().sample(40, seed=3)
    model = _random_model(0)
    for max_len in (3, 11):
        greedy = greedy_decode(model, data.sources, max_len)
        beam_one, _ = beam_search(model, data.sources, beam=1, max_len=max_len)
        torch.testing.assert_close(beam_one, greedy, rtol=0, atol=0)


def _assert_valid_outputs(outputs: torch.Tensor, max_len: int) -> None:
    assert outputs.shape[1] == max_len
    for row in outputs.tolist():
        assert row.count(EOS) == 1
        end = row.index(EOS)
        assert all(token >= FIRST_TOKEN for token in row[:end])
        assert all(token == PAD for token in row[end + 1 :])


def test_sequence_kd_outputs_are_valid_and_independent_of_batching() -> None:
    data = DigitsToWords().sample(23, seed=4)
    model = _random_model(1)
    # An untrained model rarely stops by itself: the forced EOS keeps outputs valid.
    outputs = sequence_kd(model, data.sources, beam=3, max_len=6, batch_size=7)
    _assert_valid_outputs(outputs, 6)
    whole, _ = beam_search(model, data.sources, beam=3, max_len=6)
    torch.testing.assert_close(outputs, whole, rtol=0, atol=0)


def test_word_kd_loss_is_kd_loss_over_real_tokens() -> None:
    generator = torch.Generator().manual_seed(5)
    targets = torch.tensor([[4, 5, EOS, PAD], [6, EOS, PAD, PAD]])
    student = torch.randn(2, 4, 13, generator=generator)
    teacher = torch.randn(2, 4, 13, generator=generator)
    loss = KDLoss(temperature=1.0, alpha=0.5)
    real = targets != PAD
    expected = loss(student[real], teacher[real], targets[real])
    torch.testing.assert_close(word_kd_loss(student, teacher, targets, loss), expected)


def test_training_reduces_loss_and_metrics_are_right() -> None:
    task = DigitsToWords(min_digits=2, max_digits=4, reverse_prob=1.0, noise=0.0)
    data = task.sample(128, seed=6)
    model = _random_model(2)
    history = train_seq2seq(model, data.sources, data.targets, epochs=8, batch_size=32, lr=1e-2)
    assert history[-1] < 0.8 * history[0]
    teacher = _random_model(3)
    kd_history = train_seq2seq(
        _random_model(4),
        data.sources,
        data.targets,
        epochs=2,
        batch_size=32,
        lr=1e-2,
        teacher=teacher,
        word_kd=KDLoss(1.0, 0.5),
    )
    assert all(math.isfinite(value) for value in kd_history)
    perfect = sequence_accuracy(data.valid[1], data.valid)
    assert perfect == {"exact_match": 100.0, "token_accuracy": 100.0}
    half = data.valid[0].clone()
    half[:64, 0] = FIRST_TOKEN + (half[:64, 0] - FIRST_TOKEN + 1) % 10  # a wrong first word
    scores = sequence_accuracy(half, (data.valid[0],))
    assert scores["exact_match"] == pytest.approx(50.0)


def test_bad_decoding_inputs() -> None:
    model = _random_model(0)
    sources = DigitsToWords().sample(2, seed=0).sources
    with pytest.raises(ValueError, match="beam must be an int >= 1, got 0"):
        beam_search(model, sources, beam=0, max_len=5)
    with pytest.raises(ValueError, match="max_len must be an int >= 1, got 0"):
        sequence_kd(model, sources, max_len=0)
    with pytest.raises(TypeError, match="integer token ids"):
        greedy_decode(model, sources.float(), 5)
    with pytest.raises(ValueError, match=r"\(N, S\)"):
        greedy_decode(model, sources[0], 5)
    with pytest.raises(ValueError, match="word_kd needs a teacher"):
        train_seq2seq(model, sources, sources, epochs=1, word_kd=KDLoss())
