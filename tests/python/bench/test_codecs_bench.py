"""``codl bench codecs`` at sizes that are not whole blocks: the torch baselines encode the
partial last block as the codecs do, against an independent float64 reference."""

from __future__ import annotations

import pytest
import torch

from codl import bench
from codl.bench import codecs
from codl.comm import Int8, SignEF

SIZE = 1000  # one whole 512-value block and a partial one of 488


def _per_block(v: torch.Tensor, block: int, reduce: str) -> torch.Tensor:
    """Per block of ``v`` (the last one partial), mean |v| or max |v|, in float64."""
    out = []
    for start in range(0, v.numel(), block):
        chunk = v[start : start + block].double().abs()
        out.append(chunk.mean() if reduce == "mean" else chunk.max())
    return torch.stack(out)


def test_sign_baseline_scales_a_partial_block_over_its_own_length() -> None:
    x = torch.randn(SIZE, generator=torch.Generator().manual_seed(1))
    error = torch.zeros(SIZE)
    payload = codecs.torch_sign_encode(x, error)
    scales = payload[:8].view(torch.float32).double()
    assert torch.allclose(scales, _per_block(x, 512, "mean"), rtol=1e-6)
    # Its signs and scales decode to what codl's own payload decodes to, and the residual is
    # what the decoded value missed.
    decoded = codecs.torch_sign_decode(payload, SIZE, torch.empty(SIZE))
    theirs = SignEF(block=512).decode(SignEF(block=512).encode(x), SIZE)
    assert torch.allclose(decoded, theirs, rtol=1e-5)
    assert torch.allclose(error, x - decoded, atol=1e-6)


def test_int8_baseline_round_trips_within_one_step_of_each_block() -> None:
    x = torch.randn(SIZE, generator=torch.Generator().manual_seed(2))
    payload = codecs.torch_int8_encode(x, torch.zeros(SIZE))
    assert payload.numel() == 4 * 2 + SIZE
    steps = _per_block(x, 512, "max") / 127
    decoded = codecs.torch_int8_decode(payload, SIZE, torch.empty(SIZE)).double()
    assert ((decoded[:512] - x[:512].double()).abs() <= steps[0] / 2 + 1e-7).all()
    assert ((decoded[512:] - x[512:].double()).abs() <= steps[1] / 2 + 1e-7).all()
    # codl's payload of the same values decodes the same way in the baseline's decoder.
    codl_payload = Int8(block=512).encode(x)
    assert torch.equal(
        codecs.torch_int8_decode(codl_payload, SIZE, torch.empty(SIZE)),
        Int8(block=512).decode(codl_payload, SIZE),
    )


@pytest.mark.parametrize("numel", [1000, 1001, 3])
def test_every_case_agrees_at_sizes_that_are_not_whole_blocks(numel: int) -> None:
    for case in codecs.cases(numel):
        assert case.same_result(case.codl(), case.baseline()), case.name


def test_codecs_benchmark_runs_at_a_size_not_a_multiple_of_512() -> None:
    results = bench.run(["codecs"], size=SIZE, repeat=1, threads=1, progress=False)
    assert len(results) == 10 and all(r.numel == SIZE for r in results)
    for r in results:  # GB/s of float32 input, rounded to 0.01
        rate = 4 * SIZE / 1e9 / (r.codl_ms / 1e3)
        assert r.notes["codl_GBps"] == pytest.approx(rate, abs=0.0051)
