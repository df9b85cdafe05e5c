import itertools
import json
import time

import pytest
import torch
import torch.nn.functional as F

from codl import TernaryConfig, quantize_
from codl._ops import using_threads
from codl.bench import PROGRAMS
from codl.bench import pool as bench_pool
from codl.models import LeNet5


def float_lenet(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The same network as :func:`codl.bench.pool.lenet`, on torch's float ops with the
    dequantized weights (the same seeded draws in the same order)."""
    generator = torch.Generator().manual_seed(seed)
    convs = []
    for o, i, k in bench_pool.CONVS:
        weight = bench_pool._ternary((o, i * k * k), generator)
        convs.append((weight.dequantize().reshape(o, i, k, k), torch.randn(o, generator=generator)))
    linears = []
    for shape in bench_pool.LINEARS:
        weight = bench_pool._ternary(shape, generator)
        linears.append((weight.dequantize(), torch.randn(shape[0], generator=generator)))
    for index, (w, b) in enumerate(convs):
        x = F.max_pool2d(F.relu(F.conv2d(x, w, b, padding=2 if index == 0 else 0)), 2)
    x = x.flatten(1)
    for index, (w, b) in enumerate(linears):
        x = F.linear(x, w, b)
        if index < len(linears) - 1:
            x = F.relu(x)
    return x


@pytest.mark.parametrize("batch", [1, 5])
def test_lenet_matches_float_model_and_is_the_same_on_every_thread_count(batch):
    x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    model = bench_pool.lenet()
    saved = torch.get_num_threads()
    try:
        outputs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outputs.append(model(x))
    finally:
        torch.set_num_threads(saved)
    assert outputs[0].shape == (batch, 10)
    assert torch.equal(outputs[0], outputs[1])
    expected = float_lenet(x)
    # int8 activations at each of five layers: a few percent of the logits' range.
    assert (outputs[0] - expected).abs().max() <= 0.05 * expected.abs().max()


def test_layers_run_lenets_im2col_shapes_with_the_same_floats_on_1_and_2_threads():
    run = bench_pool.layers(2)
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(2)
        two = run()
    finally:
        torch.set_num_threads(saved)
    assert [tuple(y.shape) for y in one] == [(1568, 6), (200, 16), (2, 120), (2, 84), (2, 10)]
    assert all(torch.equal(a, b) for a, b in zip(one, two, strict=True))


def test_fused_lenet_is_the_same_on_1_and_2_threads_and_close_to_the_ternary_model():
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    chain = bench_pool.fused_lenet()
    outputs = []
    for threads in (1, 2):
        with using_threads(threads):
            outputs.append(chain(x))
    assert outputs[0].shape == (3, 10)
    assert torch.equal(outputs[0], outputs[1])
    # The same seeded model, ternarized but not frozen: float activations, the same codes.
    torch.manual_seed(0)
    expected = quantize_(LeNet5(), TernaryConfig()).eval()(x).detach()
    # Static int8 activations at five layers: a few percent of the logits' range.
    assert (outputs[0] - expected).abs().max() <= 0.08 * expected.abs().max()


def test_gap_sleeps_before_each_call_and_is_recorded(tmp_path):
    calls = []
    times = bench_pool.time_calls(lambda: calls.append(time.perf_counter()), 0.0, 5, gap_s=0.01)
    assert len(times) == 5 and len(calls) == 7  # two warm-up calls
    assert all(b - a >= 0.01 for a, b in itertools.pairwise(calls[1:]))
    out = tmp_path / "pool.json"
    options = ["--work", "fused", "--batches", "1", "--threads", "2", "--seconds", "0.01"]
    bench_pool.main([*options, "--gap-ms", "1", "--contenders", "0", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [(r["work"], r["threads"], r["gap_ms"]) for r in rows] == [("fused", 2, 1.0)]


def test_main_writes_rows_for_each_work_batch_thread_and_load(tmp_path):
    out = tmp_path / "pool.json"
    options = ["--work", "layers", "--batches", "1", "--threads", "1", "2", "--seconds", "0.02"]
    bench_pool.main([*options, "--torch-threads", "1", "--contenders", "1", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [(r["work"], r["batch"], r["threads"], r["contenders"]) for r in rows] == [
        ("layers", 1, 1, 0),
        ("layers", 1, 2, 0),
        ("layers", 1, 1, 1),
        ("layers", 1, 2, 1),
    ]
    assert all(r["calls"] >= 10 and r["p90_ms"] >= r["median_ms"] > 0 for r in rows)
    assert rows[2]["contender"] == "spin" and rows[0]["contender"] == ""
    assert all(r["torch_threads"] == 1 for r in rows)
    assert "pool" in PROGRAMS


def test_bad_options_are_refused():
    with pytest.raises(SystemExit):
        bench_pool.main(["--contenders", "-1"])
    with pytest.raises(SystemExit):
        bench_pool.main(["--threads", "0"])
    with pytest.raises(SystemExit):
        bench_pool.main(["--torch-threads", "0"])
    with pytest.raises(SystemExit):
        bench_pool.main(["--gap-ms", "-1"])
    with pytest.raises(ValueError, match="expected one of"), bench_pool.contending(1, "sleep"):
        pass
