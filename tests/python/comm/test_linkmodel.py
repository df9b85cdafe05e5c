"""The alpha-beta link model against hand-computed values, the link presets, profile_step, the
link emulator's accounting and ``codl bench comm``."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from dist_helpers import TopKCodec
from torch import nn

from codl.comm import FP16, PowerSGD
from codl.comm.accounting import ring_allreduce_bytes, two_phase_bytes
from codl.comm.linkmodel import (
    ETHERNET_10G,
    INFINIBAND_100G,
    PRESETS,
    TOFU_D,
    CodecThroughput,
    Collective,
    EmulatedLink,
    Phase,
    StepProfile,
    break_even_bandwidth,
    bucket_layout,
    codec_time,
    collective_terms,
    collective_time,
    comm_time,
    measure_powersgd_throughput,
    profile_step,
    project,
    projection_table,
    with_measured_overhead,
)

PROFILE = StepProfile(forward_s=0.01, backward_s=0.02, bucket_numels=(1000,))
SPEED = CodecThroughput(encode=2e9, decode=4e9)


def test_ring_allreduce_time_by_hand() -> None:
    # 2 (P - 1) alpha + 2 (P - 1) / P * 4 n / B with P = 4, n = 1000, B = 1e9, alpha = 1 us.
    assert comm_time(None, 1000, 4, 1e9, 1e-6) == pytest.approx(6e-6 + 6000 / 1e9, rel=1e-12)
    assert comm_time(None, 1000, 1, 1e9, 1e-6) == 0.0


def test_two_phase_time_by_hand() -> None:
    # c = 250 values, 500 bytes of FP16: all-to-all 3 * (500 + 1 flag) + all-gather 3 * 500.
    expected = 6e-6 + (3 * 501 + 3 * 500) / 1e9
    assert comm_time(FP16(), 1000, 4, 1e9, 1e-6) == pytest.approx(expected, rel=1e-12)


def test_allgather_time_by_hand() -> None:
    # k = 10 of 1000 values, 80-byte payloads, 8-byte lengths: 3 * 88 bytes, 2 gathers.
    expected = 6e-6 + 3 * 88 / 1e9
    assert comm_time(TopKCodec(0.01), 1000, 4, 1e9, 1e-6) == pytest.approx(expected, rel=1e-12)


def test_codec_time_by_hand() -> None:
    # Two-phase, P = 4, c = 250: encode 5 c values, decode 2 P c values, 4 bytes each.
    expected = 4 * 1250 / 2e9 + 4 * 2000 / 4e9
    assert codec_time(FP16(), 1000, 4, SPEED) == pytest.approx(expected, rel=1e-12)
    # All-gather: encode n, decode P payloads of n.
    expected = 4 * 1000 / 2e9 + 4 * 4000 / 4e9
    assert codec_time(TopKCodec(0.01), 1000, 4, SPEED) == pytest.approx(expected, rel=1e-12)
    assert codec_time(None, 1000, 4, SPEED) == 0.0


def test_project_serial_and_overlapped() -> None:
    comm = 6e-6 + 6000 / 1e9
    serial = project(PROFILE, None, 4, 1e9, 1e-6, overlap=False)
    assert serial.step_s == pytest.approx(0.03 + comm, rel=1e-12)
    assert serial.efficiency == pytest.approx(0.03 / (0.03 + comm), rel=1e-12)
    assert serial.ratio == 1.0
    overlapped = project(PROFILE, None, 4, 1e9, 1e-6, overlap=True)
    assert overlapped.step_s == pytest.approx(0.03, rel=1e-12)  # comm hides behind backward
    slow = project(PROFILE, None, 4, 1e5, 1e-6, overlap=True)  # comm 60 ms > backward 20 ms
    assert slow.step_s == pytest.approx(0.01 + 6e-6 + 6000 / 1e5, rel=1e-12)
    fp16 = project(PROFILE, FP16(), 4, 1e9, 1e-6, overlap=False, throughput=SPEED)
    codec_s = 4 * 1250 / 2e9 + 4 * 2000 / 4e9
    assert fp16.codec_s == pytest.approx(codec_s, rel=1e-12)
    assert fp16.step_s == pytest.approx(0.03 + 6e-6 + 3003 / 1e9 + codec_s, rel=1e-12)
    assert fp16.ratio == pytest.approx(3003 / 6000, rel=1e-12)


def test_measured_overhead_is_what_the_model_leaves_out() -> None:
    # FP16 on 4 nodes: compute 30 ms, codec 4e-6 s (test above); a 35 ms unthrottled step leaves
    # 5 ms - 4e-6 s of overhead, which the projection on any link then adds once.
    codec_s = 4 * 1250 / 2e9 + 4 * 2000 / 4e9
    for overlap in (False, True):
        calibrated = with_measured_overhead(
            PROFILE, 0.035, FP16(), 4, overlap=overlap, throughput=SPEED
        )
        assert calibrated.overhead_s == pytest.approx(0.005 - codec_s, rel=1e-9)
        assert calibrated.bucket_numels == PROFILE.bucket_numels
        bare = project(PROFILE, FP16(), 4, 1e5, 1e-3, overlap=overlap, throughput=SPEED)
        slow = project(calibrated, FP16(), 4, 1e5, 1e-3, overlap=overlap, throughput=SPEED)
        assert slow.step_s == pytest.approx(bare.step_s + 0.005 - codec_s, rel=1e-12)
        assert slow.efficiency == pytest.approx(0.03 / slow.step_s, rel=1e-12)
    # A step faster than the model's compute leaves no negative overhead.
    assert with_measured_overhead(PROFILE, 0.01, None, 4).overhead_s == 0.0
    with pytest.raises(ValueError, match="measured_step_s"):
        with_measured_overhead(PROFILE, math.nan, None, 4)


def test_efficiency_falls_with_nodes_and_compression_helps_on_slow_links() -> None:
    profile = StepProfile(0.01, 0.02, (3_000_000,))
    slow = [
        project(profile, None, p, ETHERNET_10G.bandwidth, ETHERNET_10G.latency)
        for p in (2, 64, 100_000)
    ]
    assert slow[0].efficiency > slow[1].efficiency > slow[2].efficiency
    speed = CodecThroughput(8e9, 8e9)
    fp16 = project(
        profile, FP16(), 64, ETHERNET_10G.bandwidth, 25e-6, overlap=False, throughput=speed
    )
    dense = project(profile, None, 64, ETHERNET_10G.bandwidth, 25e-6, overlap=False)
    assert fp16.step_s < dense.step_s


def test_break_even_bandwidth_by_hand() -> None:
    # Saved bytes per step 6000 - 3003; codec time as above: B* = saved / codec time.
    codec_s = 4 * 1250 / 2e9 + 4 * 2000 / 4e9
    assert break_even_bandwidth(PROFILE, FP16(), 4, 1e-6, SPEED) == pytest.approx(
        2997 / codec_s, rel=1e-12
    )
    # At the break-even bandwidth the serial steps are equal.
    bandwidth = break_even_bandwidth(PROFILE, FP16(), 4, 1e-6, SPEED)
    ours = project(PROFILE, FP16(), 4, bandwidth, 1e-6, overlap=False, throughput=SPEED)
    theirs = project(PROFILE, None, 4, bandwidth, 1e-6, overlap=False)
    assert ours.step_s == pytest.approx(theirs.step_s, rel=1e-9)
    # Top-k at 90% density sends more than float32: it never pays.
    assert break_even_bandwidth(PROFILE, TopKCodec(0.9), 4, 1e-6, SPEED) == 0.0
    assert math.isinf(
        break_even_bandwidth(PROFILE, FP16(), 4, 1e-6, CodecThroughput(math.inf, math.inf))
    )


def test_powersgd_projection_by_hand() -> None:
    # The test MLP on 2 ranks: three allreduces (2 alpha each) of 74 + 148 + 168 values, 4 bytes
    # a value; local work on the 1280 + 640 compressed values at 1e9 bytes/s.
    profile = StepProfile(0.01, 0.02, (1994,), ((64, 20), (64,), (10, 64), (10,)))
    speed = CodecThroughput(1e9, math.inf)
    codec = PowerSGD(rank=2)
    result = project(profile, codec, 2, 1e9, 1e-6, overlap=False, throughput=speed)
    assert result.bytes_sent == 1560
    assert result.comm_s == pytest.approx(6e-6 + 1560 / 1e9, rel=1e-12)
    assert result.codec_s == pytest.approx(4 * 1920 / 1e9, rel=1e-12)
    # Break-even: (7976 - 1560) / (6 - 2 us of extra latency + codec time).
    expected = (7976 - 1560) / (4e-6 + 4 * 1920 / 1e9)
    assert break_even_bandwidth(profile, codec, 2, 1e-6, speed) == pytest.approx(expected)
    measured = measure_powersgd_throughput(codec, profile.parameter_shapes, repeat=1)
    assert 0 < measured.encode < math.inf
    with pytest.raises(ValueError, match="parameter_shapes"):
        project(StepProfile(0.01, 0.02, (1994,)), codec, 2, 1e9, 1e-6, throughput=speed)


def test_presets_cite_their_figures() -> None:
    assert ETHERNET_10G.bandwidth == 1.25e9 and 10e-6 <= ETHERNET_10G.latency <= 50e-6
    assert INFINIBAND_100G.bandwidth == 12.5e9 and 1e-6 <= INFINIBAND_100G.latency <= 5e-6
    assert TOFU_D.bandwidth == 6.8e9 and 0.5e-6 <= TOFU_D.latency <= 1e-6
    assert "Ajima" in TOFU_D.source
    assert set(PRESETS) == {"10GbE", "100Gb/s IB", "Tofu-D"}


def test_profile_step_and_bucket_layout() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 10))
    batch = (torch.randn(8, 20), torch.randint(0, 10, (8,)))
    profile = profile_step(model, batch, F.cross_entropy, repeat=2)
    assert profile.forward_s > 0 and profile.backward_s > 0
    assert profile.bucket_numels == (1994,)
    assert profile.parameter_shapes == ((64, 20), (64,), (10, 64), (10,))
    assert all(p.grad is None for p in model.parameters())
    # 4 KiB buckets (1024 values), parameters in reverse: 10 + 640, then 64, then 1280.
    assert bucket_layout(model, 4 / 1024) == (714, 1280)


def test_emulated_link_accounts_its_sleeps() -> None:
    link = EmulatedLink(bandwidth=1e9, latency=1e-6)
    link.wait(3, 3000)
    assert link.slept_s == pytest.approx(3e-6 + 3e-6, rel=1e-12)


def test_projection_table_rows() -> None:
    rows = projection_table(
        PROFILE, [("fp16", FP16(), SPEED), ("float32", None, None)], [TOFU_D], [2, 8]
    )
    assert [(r["codec"], r["nodes"]) for r in rows] == [
        ("fp16", 2),
        ("float32", 2),
        ("fp16", 8),
        ("float32", 8),
    ]
    assert math.isnan(float(rows[1]["break_even_GBps"]))


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="bandwidth"):
        project(PROFILE, None, 4, -1.0, 1e-6)
    with pytest.raises(ValueError, match="latency"):
        project(PROFILE, None, 4, 1e9, -1e-6)
    with pytest.raises(ValueError, match="nodes"):
        project(PROFILE, None, 0, 1e9, 1e-6)
    with pytest.raises(ValueError, match="throughput"):
        project(PROFILE, FP16(), 4, 1e9, 1e-6)
    with pytest.raises(TypeError, match="codec"):
        project(PROFILE, "fp16", 4, 1e9, 1e-6)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bandwidth"):
        EmulatedLink(0.0)


def test_bench_comm_rows_agree_with_project() -> None:
    from codl.bench import comm

    results = comm.run(size=4096, repeat=1, threads=1, progress=False)
    assert {r.case.split()[0] for r in results} >= {"fp16", "bf16", "powersgd-r2"}
    for r in results:
        assert r.ratio == pytest.approx(r.baseline_ms / r.codl_ms, rel=0.02, abs=0.01)
        assert 0 < r.notes["efficiency"] <= 1
    # FP16: 0.50 plus the flags and the padding of P chunks (ratio 0.54 at 100,000 nodes).
    numel = results[0].numel  # the CNN's gradient, one 25 MiB bucket
    for r in results:
        if r.case.startswith("fp16"):
            nodes = int(r.case.split("P=")[1])
            exact = two_phase_bytes(FP16(), numel, nodes) / ring_allreduce_bytes(numel, nodes)
            assert r.notes["bytes_ratio"] == round(exact, 4)
            assert 0.5 <= exact < (0.5001 if nodes == 2 else 0.55)


# --------------------------------------------------------------------------------------------
# collectives and phases (K-FAC's traffic in the projection)
# --------------------------------------------------------------------------------------------


def test_collective_terms_by_hand() -> None:
    # Ring allreduce of 1000 bytes over 4: 2 (P - 1) = 6 messages, 2 * 3 / 4 * 1000 bytes.
    assert collective_terms(Collective("allreduce", 4, 1000), 1e9, 1e-6) == (6, 1500.0)
    # All-to-all and all-gather of 100-byte chunks over 4: 3 messages of 100 bytes each.
    assert collective_terms(Collective("all_to_all", 4, 100), 1e9, 1e-6) == (3, 300.0)
    assert collective_terms(Collective("all_gather", 4, 100), 1e9, 1e-6) == (3, 300.0)
    # Broadcast over 4: tree = 2 steps of the whole buffer; scatter + all-gather =
    # (2 + 3) messages and 2 * 3 / 4 of the buffer. 100 bytes: the tree (2.2e-6 s < 5.15e-6 s).
    assert collective_terms(Collective("broadcast", 4, 100), 1e9, 1e-6) == (2, 200.0)
    # 1e8 bytes: tree 0.2 s + 2 us, scatter + all-gather 0.15 s + 5 us.
    assert collective_terms(Collective("broadcast", 4, 1e8), 1e9, 1e-6) == (5, 1.5e8)
    # Alone in its group: nothing moves.
    assert collective_terms(Collective("broadcast", 1, 1e8), 1e9, 1e-6) == (0, 0.0)
    assert collective_time(Collective("all_gather", 4, 100), 1e9, 1e-6) == pytest.approx(
        3e-6 + 300 / 1e9, rel=1e-12
    )


def test_project_adds_amortized_phases_by_hand() -> None:
    phase = Phase(
        "kfac",
        every=4,
        compute_s=0.004,
        lanes=((Collective("allreduce", 4, 1000),), (Collective("broadcast", 2, 500),)),
    )
    # Lanes in parallel: max(6 us + 1500 B / 1e9, 1 us + 500 B / 1e9); every 4th step.
    once = 0.004 + max(6e-6 + 1500 / 1e9, 1e-6 + 500 / 1e9)
    assert phase.time(1e9, 1e-6) == pytest.approx(once, rel=1e-12)
    base = project(PROFILE, None, 4, 1e9, 1e-6, overlap=False)
    result = project(PROFILE, None, 4, 1e9, 1e-6, overlap=False, phases=[phase])
    assert result.phases_s == pytest.approx(once / 4, rel=1e-12)
    assert result.step_s == pytest.approx(base.step_s + once / 4, rel=1e-12)
    assert result.efficiency == pytest.approx(0.03 / result.step_s, rel=1e-12)
    ref = project(PROFILE, None, 4, 1e9, 1e-6, overlap=False, phases=[phase], reference_s=0.05)
    assert ref.efficiency == pytest.approx(0.05 / result.step_s, rel=1e-12)
    # The overhead measured with phases leaves out their compute (the link is instantaneous).
    calibrated = with_measured_overhead(PROFILE, 0.04, None, 4, overlap=False, phases=[phase])
    assert calibrated.overhead_s == pytest.approx(0.04 - 0.03 - 0.004 / 4, rel=1e-9)


def test_emulated_link_sleeps_what_a_collective_costs() -> None:
    link = EmulatedLink(1e9, 1e-6)
    link.wait_collective("all_to_all", 4, 1000)
    assert link.slept_s == pytest.approx(3e-6 + 3000 / 1e9, rel=1e-12)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Collective("reduce", 4, 10), "op: expected one of"),
        (lambda: Collective("broadcast", 0, 10), "group_size: expected an integer >= 1"),
        (lambda: Collective("broadcast", 2, -1), "nbytes: expected a finite number >= 0"),
        (lambda: Phase("p", every=0), "every: expected an integer >= 1"),
        (lambda: Phase("p", every=1, compute_s=-1.0), "compute_s: expected a finite number"),
        (
            lambda: collective_time(Collective("broadcast", 2, 10), -1e9, 1e-6),
            "bandwidth: expected a finite number > 0",
        ),
        (
            lambda: project(PROFILE, None, 0, 1e9, 1e-6, phases=[Phase("p", 1)]),
            "nodes: expected an integer >= 1",
        ),
        (
            lambda: project(PROFILE, None, 2, 1e9, 1e-6, reference_s=0.0),
            "reference_s: expected a finite number > 0",
        ),
    ],
)
def test_collectives_and_phases_refuse_bad_input(make: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()
