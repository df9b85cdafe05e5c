"""Sequence-level knowledge distillation (Kim and Rush, "Sequence-Level Knowledge
Distillation", EMNLP 2016) on a small attention encoder-decoder.

* Word-level KD (Kim & Rush §3.1, L_WORD-KD): at every target position the student matches the
  teacher's next-token distribution given the reference prefix,
  ``-Σ_j Σ_k q(t_j = k | s, t_<j) log p(t_j = k | s, t_<j)``, mixed with the reference NLL by alpha;
  here :class:`codl.distill.KDLoss` on ``(N, L, C)`` logits with a padding mask (at T = 1 it
  differs from L_WORD-KD by the teacher's entropy, a constant for the student).
* Sequence-level KD (§3.2, L_SEQ-KD): replace the sum over all sequences
  ``-Σ_t q(t | s) log p(t | s)`` by its mode, approximated with the teacher's beam search
  output ŷ, and train the student with the ordinary NLL on ŷ: :func:`sequence_kd` produces ŷ.
  The paper's argument is that ŷ is a simpler target than the references: it keeps the
  teacher's mode and drops the references' multimodality and noise.

The toy task (:class:`DigitsToWords`) is built to have exactly that property (see its docstring):
digit strings to spelled-out words, reversed in most references and in reading order in the
rest, with some token noise. Models: :class:`Seq2Seq`, a bidirectional GRU encoder and a GRU
decoder with Luong et al. (2015) "general" attention and input feeding. Decoding:
:func:`greedy_decode` and batched :func:`beam_search` with length normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from codl.distill.distiller import NonFiniteLossError
from codl.distill.losses import IGNORE_INDEX, KDLoss

PAD = 0
BOS = 1
EOS = 2
#: First id of a content token (source digits and target words both start here).
FIRST_TOKEN = 3

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass
class TransductionData:
    """A generated data set: ``sources`` (N, S) digit ids padded with PAD; ``targets`` (N, L)
    the references used for training (word ids, EOS, then PAD); ``valid`` the clean outputs
    that count as correct (each (N, L)): here the reversed and the reading-order spelling."""

    sources: torch.Tensor
    targets: torch.Tensor
    valid: tuple[torch.Tensor, ...]

    def __len__(self) -> int:
        return int(self.sources.shape[0])


class DigitsToWords:
    """Digit strings to English words: ``"4 0 7"`` → ``"seven zero four"`` (reversed) with
    probability ``reverse_prob``, else ``"four zero seven"``; then each word of the reference is
    replaced by a random word with probability ``noise``.

    Why this design: reversing needs attention (the decoder must read the source right to left),
    and the references are a two-mode distribution with noise, the situation where Kim & Rush
    (2016, §3.2 and §6) argue that the teacher's beam output, which keeps the dominant mode and
    drops the noise, is an easier target for a small student than the references themselves.
    Both clean spellings count as correct at test time, so a model is not penalised for the
    mode it picks, only for mixing them or for wrong words.

    Source ids: digit d is ``FIRST_TOKEN + d``; target ids: word d is ``FIRST_TOKEN + d``.
    """

    source_vocab_size = FIRST_TOKEN + 10
    target_vocab_size = FIRST_TOKEN + 10

    def __init__(
        self,
        min_digits: int = 3,
        max_digits: int = 10,
        reverse_prob: float = 0.7,
        noise: float = 0.05,
    ) -> None:
        if not 1 <= min_digits <= max_digits:
            raise ValueError(
                f"need 1 <= min_digits <= max_digits, got min_digits={min_digits}, "
                f"max_digits={max_digits}"
            )
        if not 0.0 <= reverse_prob <= 1.0:
            raise ValueError(f"reverse_prob must be in [0, 1], got {reverse_prob}")
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"noise must be in [0, 1], got {noise}")
        self.min_digits = min_digits
        self.max_digits = max_digits
        self.reverse_prob = reverse_prob
        self.noise = noise

    @property
    def max_target_len(self) -> int:
        """Longest target including EOS: the ``max_len`` to decode with."""
        return self.max_digits + 1

    def sample(self, count: int, seed: int) -> TransductionData:
        generator = torch.Generator().manual_seed(seed)
        lengths = torch.randint(self.min_digits, self.max_digits + 1, (count,), generator=generator)
        digits = torch.randint(0, 10, (count, self.max_digits), generator=generator)
        positions = torch.arange(self.max_digits)
        inside = positions[None, :] < lengths[:, None]
        sources = torch.where(inside, digits + FIRST_TOKEN, torch.full_like(digits, PAD))
        width = self.max_digits + 1
        forward = torch.full((count, width), PAD, dtype=torch.long)
        forward[:, : self.max_digits] = sources
        forward[torch.arange(count), lengths] = EOS
        # Reversed: position j reads source position length-1-j.
        source_index = (lengths[:, None] - 1 - positions[None, :]).clamp(min=0)
        reversed_words = torch.gather(sources, 1, source_index)
        backward = torch.full((count, width), PAD, dtype=torch.long)
        backward[:, : self.max_digits] = torch.where(
            inside, reversed_words, torch.full_like(reversed_words, PAD)
        )
        backward[torch.arange(count), lengths] = EOS
        choose_reverse = torch.rand(count, generator=generator) < self.reverse_prob
        targets = torch.where(choose_reverse[:, None], backward, forward)
        corrupt = (torch.rand(count, width, generator=generator) < self.noise) & (
            targets >= FIRST_TOKEN
        )
        random_words = torch.randint(0, 10, (count, width), generator=generator) + FIRST_TOKEN
        targets = torch.where(corrupt, random_words, targets)
        return TransductionData(sources=sources, targets=targets, valid=(backward, forward))

    @staticmethod
    def source_text(row: torch.Tensor) -> str:
        return " ".join(str(int(t) - FIRST_TOKEN) for t in row if int(t) >= FIRST_TOKEN)

    @staticmethod
    def target_text(row: torch.Tensor) -> str:
        words = []
        for token in row.tolist():
            if token == EOS:
                break
            words.append(WORDS[token - FIRST_TOKEN] if token >= FIRST_TOKEN else f"<{token}>")
        return " ".join(words)


class DecoderState(NamedTuple):
    """Decoder state for one row per hypothesis: GRU hidden, the last attentional vector
    (input feeding), the projected encoder outputs and the source mask."""

    hidden: torch.Tensor
    feed: torch.Tensor
    memory: torch.Tensor
    source_mask: torch.Tensor

    def select(self, index: torch.Tensor) -> DecoderState:
        return DecoderState(*(part.index_select(0, index) for part in self))


class Seq2Seq(nn.Module):
    """Attention encoder-decoder: bidirectional GRU encoder; GRU decoder with Luong et al.
    (2015) "general" attention ``score(h_t, h̄_s) = h_tᵀ W_a h̄_s`` (their eq. 8), attentional
    vector ``h̃_t = tanh(W_c [c_t; h_t])`` (eq. 5) and input feeding (§3.3).

    Sources are (N, S) token ids padded with PAD at the end; decoding APIs take the same.
    """

    def __init__(
        self, source_vocab_size: int, target_vocab_size: int, embed_dim: int, hidden_dim: int
    ) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.target_vocab_size = target_vocab_size
        self.source_embedding = nn.Embedding(source_vocab_size, embed_dim, padding_idx=PAD)
        self.encoder = nn.GRU(embed_dim, hidden_dim, batch_first=True, bidirectional=True)
        self.memory_projection = nn.Linear(2 * hidden_dim, hidden_dim)
        self.bridge = nn.Linear(2 * hidden_dim, hidden_dim)
        self.target_embedding = nn.Embedding(target_vocab_size, embed_dim, padding_idx=PAD)
        self.decoder = nn.GRUCell(embed_dim + hidden_dim, hidden_dim)
        self.attention = nn.Linear(hidden_dim, hidden_dim, bias=False)
        self.combine = nn.Linear(2 * hidden_dim, hidden_dim)
        self.output = nn.Linear(hidden_dim, target_vocab_size)

    def encode(self, sources: torch.Tensor) -> DecoderState:
        source_mask = sources != PAD
        lengths = source_mask.sum(1)
        if bool((lengths == 0).any()):
            raise ValueError("every source must have at least one token before padding")
        packed = nn.utils.rnn.pack_padded_sequence(
            self.source_embedding(sources), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        outputs, final = self.encoder(packed)
        outputs, _ = nn.utils.rnn.pad_packed_sequence(
            outputs, batch_first=True, total_length=sources.shape[1]
        )
        memory = self.memory_projection(outputs)
        hidden = torch.tanh(self.bridge(torch.cat([final[0], final[1]], dim=-1)))
        feed = hidden.new_zeros(hidden.shape)
        return DecoderState(hidden, feed, memory, source_mask)

    def decode_step(
        self, previous: torch.Tensor, state: DecoderState
    ) -> tuple[torch.Tensor, DecoderState]:
        """Logits (B, V) of the next token given the previous token ids (B,)."""
        step_input = torch.cat([self.target_embedding(previous), state.feed], dim=-1)
        hidden = self.decoder(step_input, state.hidden)
        scores = torch.bmm(state.memory, self.attention(hidden).unsqueeze(-1)).squeeze(-1)
        scores = scores.masked_fill(~state.source_mask, float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        context = torch.bmm(weights.unsqueeze(1), state.memory).squeeze(1)
        attentional = torch.tanh(self.combine(torch.cat([context, hidden], dim=-1)))
        logits = self.output(attentional)
        return logits, DecoderState(hidden, attentional, state.memory, state.source_mask)

    def forward(self, sources: torch.Tensor, decoder_inputs: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (N, L, V) for decoder inputs (N, L) (BOS, then the target)."""
        state = self.encode(sources)
        steps = []
        for position in range(decoder_inputs.shape[1]):
            logits, state = self.decode_step(decoder_inputs[:, position], state)
            steps.append(logits)
        return torch.stack(steps, dim=1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def decoder_inputs_for(targets: torch.Tensor) -> torch.Tensor:
    """BOS followed by the targets shifted right by one (teacher forcing)."""
    shifted = targets.roll(1, dims=1)
    shifted[:, 0] = BOS
    return shifted


def _check_decode_args(sources: torch.Tensor, max_len: int, beam: int = 1) -> None:
    if not isinstance(sources, torch.Tensor) or sources.dim() != 2:
        shape = tuple(sources.shape) if isinstance(sources, torch.Tensor) else type(sources)
        raise ValueError(f"sources must be a (N, S) tensor of token ids, got {shape}")
    if sources.is_floating_point():
        raise TypeError(f"sources must hold integer token ids, got {sources.dtype}")
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"max_len must be an int >= 1, got {max_len!r}")
    if isinstance(beam, bool) or not isinstance(beam, int) or beam < 1:
        raise ValueError(f"beam must be an int >= 1, got {beam!r}")


def _next_log_probs(logits: torch.Tensor, step: int, max_len: int) -> torch.Tensor:
    log_probs = F.log_softmax(logits.float(), dim=-1)
    # PAD and BOS are never generated; the last position allowed is EOS, so every output ends
    # with EOS within max_len tokens.
    log_probs[:, PAD] = float("-inf")
    log_probs[:, BOS] = float("-inf")
    if step == max_len - 1:
        eos = log_probs[:, EOS].clone()
        log_probs.fill_(float("-inf"))
        log_probs[:, EOS] = eos
    return log_probs


@torch.no_grad()
def greedy_decode(model: Seq2Seq, sources: torch.Tensor, max_len: int) -> torch.Tensor:
    """Greedy decoding: (N, max_len) token ids, each row ending with EOS, then PAD."""
    _check_decode_args(sources, max_len)
    was_training = model.training
    model.eval()
    state = model.encode(sources)
    count = sources.shape[0]
    previous = torch.full((count,), BOS, dtype=torch.long, device=sources.device)
    finished = torch.zeros(count, dtype=torch.bool, device=sources.device)
    output = torch.full((count, max_len), PAD, dtype=torch.long, device=sources.device)
    for step in range(max_len):
        logits, state = model.decode_step(previous, state)
        chosen = _next_log_probs(logits, step, max_len).argmax(-1)
        chosen = torch.where(finished, torch.full_like(chosen, PAD), chosen)
        output[:, step] = chosen
        finished = finished | (chosen == EOS)
        previous = chosen
        if bool(finished.all()):
            break
    model.train(was_training)
    return output


@torch.no_grad()
def beam_search(
    model: Seq2Seq,
    sources: torch.Tensor,
    beam: int = 5,
    max_len: int = 32,
    length_penalty: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched beam search: the best hypothesis per source, (N, max_len) ids ending with EOS
    then PAD, and its score.

    A hypothesis' score is its log-probability divided by ``length ** length_penalty`` (length
    counts EOS; ``length_penalty=0`` ranks by log-probability alone; fairseq's ``lenpen``
    convention, a simpler form of Wu et al. 2016's GNMT penalty). During the search beams are
    ranked by log-probability; hypotheses that have produced EOS stay in the beam at no cost
    (they continue with PAD), and the final choice among the ``beam`` survivors uses the
    normalised score. With ``beam=1`` this is greedy decoding.
    """
    _check_decode_args(sources, max_len, beam)
    was_training = model.training
    model.eval()
    device = sources.device
    count = sources.shape[0]
    rows = count * beam
    state = model.encode(sources).select(torch.arange(count, device=device).repeat_interleave(beam))
    scores = torch.full((count, beam), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: keep one so the top-k are distinct
    tokens = torch.full((rows, max_len), PAD, dtype=torch.long, device=device)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    lengths = torch.zeros(rows, device=device)
    previous = torch.full((rows,), BOS, dtype=torch.long, device=device)
    base = (torch.arange(count, device=device) * beam)[:, None]
    for step in range(max_len):
        logits, state = model.decode_step(previous, state)
        log_probs = _next_log_probs(logits, step, max_len)
        vocab = log_probs.shape[-1]
        finished_row = torch.full((vocab,), float("-inf"), device=device)
        finished_row[PAD] = 0.0
        log_probs = torch.where(finished[:, None], finished_row[None, :], log_probs)
        candidates = (scores.reshape(rows, 1) + log_probs).reshape(count, beam * vocab)
        scores, flat = candidates.topk(beam, dim=-1)
        origin = (base + flat // vocab).reshape(rows)
        chosen = (flat % vocab).reshape(rows)
        state = state.select(origin)
        tokens = tokens.index_select(0, origin)
        tokens[:, step] = chosen
        was_finished = finished.index_select(0, origin)
        lengths = lengths.index_select(0, origin) + (~was_finished).float()
        finished = was_finished | (chosen == EOS)
        previous = chosen
        if bool(finished.all()):
            break
    normalised = scores / lengths.reshape(count, beam).clamp(min=1.0) ** length_penalty
    best = normalised.argmax(-1)
    pick = base.squeeze(1) + best
    model.train(was_training)
    return tokens.index_select(0, pick), normalised.gather(1, best[:, None]).squeeze(1)


def sequence_kd(
    teacher: Seq2Seq,
    inputs: torch.Tensor,
    beam: int = 5,
    max_len: int = 32,
    length_penalty: float = 1.0,
    batch_size: int = 512,
    progress: bool = False,
) -> torch.Tensor:
    """Kim & Rush (2016) §3.2: the teacher's beam-search outputs ŷ for ``inputs`` (N, S), as
    training targets (N, max_len): word ids, EOS, then PAD. Train the student on them with the
    usual NLL (L_SEQ-KD with q(t | s) approximated by 1{t = ŷ})."""
    _check_decode_args(inputs, max_len, beam)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    outputs = []
    starts = range(0, inputs.shape[0], batch_size)
    for start in tqdm(starts, desc="sequence_kd beam search", disable=not progress, leave=False):
        best, _ = beam_search(
            teacher, inputs[start : start + batch_size], beam, max_len, length_penalty
        )
        outputs.append(best)
    return torch.cat(outputs) if outputs else inputs.new_zeros((0, max_len))


def word_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    loss: KDLoss,
) -> torch.Tensor:
    """Word-level KD (Kim & Rush §3.1) for teacher-forced logits (N, L, V) on ``targets``
    (N, L): :class:`KDLoss` per token, padding masked out (PAD positions count for nothing)."""
    mask = targets != PAD
    labels = torch.where(mask, targets, torch.full_like(targets, IGNORE_INDEX))
    value: torch.Tensor = loss(student_logits, teacher_logits, labels, mask)
    return value


def train_seq2seq(
    model: Seq2Seq,
    sources: torch.Tensor,
    targets: torch.Tensor,
    epochs: int,
    batch_size: int = 64,
    lr: float = 3e-3,
    teacher: Seq2Seq | None = None,
    word_kd: KDLoss | None = None,
    seed: int = 0,
    grad_clip: float = 1.0,
    progress: bool = False,
) -> list[float]:
    """Train ``model`` on (sources, targets) with Adam; returns the mean loss of each epoch.

    Without ``word_kd``: token NLL on ``targets`` (references, or :func:`sequence_kd` outputs
    for sequence-level KD). With ``word_kd`` (and ``teacher``): :func:`word_kd_loss` against
    the teacher's teacher-forced logits on the same targets (word-level KD; on sequence-KD
    targets it is Kim & Rush's "Seq-KD + Word-KD").

    Raises:
        NonFiniteLossError: a NaN/Inf loss, naming the epoch and step.
    """
    if word_kd is not None and teacher is None:
        raise ValueError("word_kd needs a teacher, got teacher=None")
    if sources.shape[0] != targets.shape[0]:
        raise ValueError(
            f"sources and targets must have the same number of rows, got {sources.shape[0]} "
            f"and {targets.shape[0]}"
        )
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    if teacher is not None:
        teacher.eval()
    history = []
    model.train()
    for epoch in tqdm(range(epochs), desc="seq2seq", disable=not progress, leave=False):
        order = torch.randperm(sources.shape[0], generator=generator)
        total = 0.0
        steps = 0
        for step, start in enumerate(range(0, len(order), batch_size)):
            index = order[start : start + batch_size]
            batch_targets = targets[index]
            # Trim to the longest target in the batch: padding costs time, not accuracy.
            width = int((batch_targets != PAD).sum(1).max())
            batch_targets = batch_targets[:, :width]
            batch_sources = sources[index]
            decoder_inputs = decoder_inputs_for(batch_targets)
            logits = model(batch_sources, decoder_inputs)
            if word_kd is not None and teacher is not None:
                with torch.no_grad():
                    teacher_logits = teacher(batch_sources, decoder_inputs)
                loss = word_kd_loss(logits, teacher_logits, batch_targets, word_kd)
            else:
                loss = F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]),
                    batch_targets.reshape(-1),
                    ignore_index=PAD,
                )
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"seq2seq training loss is {loss.item()} at epoch {epoch}, step {step}"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            total += loss.item()
            steps += 1
        history.append(total / max(steps, 1))
    return history


def sequence_accuracy(
    predictions: torch.Tensor, valid: tuple[torch.Tensor, ...]
) -> dict[str, float]:
    """Exact match (%) against any valid output, and token accuracy (%): per example, the
    best over the valid outputs of the fraction of the reference's tokens (EOS included)
    predicted at their position."""
    width = max(predictions.shape[1], *(v.shape[1] for v in valid))

    def pad(tensor: torch.Tensor) -> torch.Tensor:
        return F.pad(tensor, (0, width - tensor.shape[1]), value=PAD)

    predictions = pad(predictions)
    exact = torch.zeros(predictions.shape[0], dtype=torch.bool)
    token = torch.zeros(predictions.shape[0])
    for reference in valid:
        reference = pad(reference)
        exact |= (predictions == reference).all(1)
        counted = reference != PAD
        hits = ((predictions == reference) & counted).sum(1).float()
        token = torch.maximum(token, hits / counted.sum(1).clamp(min=1).float())
    return {
        "exact_match": 100.0 * exact.float().mean().item(),
        "token_accuracy": 100.0 * token.mean().item(),
    }
