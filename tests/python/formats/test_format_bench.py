"""``codl bench formats`` runs small, both sides agree (run_cases checks), notes are filled."""

from __future__ import annotations

from codl import bench
from codl.bench.formats import MODEL_PLANS, PLANS, minilm_state_dict


def test_formats_benchmark_runs_small_and_reports_rates() -> None:
    results = bench.run(["formats"], size=48, repeat=1, threads=1, progress=False)
    model = [
        f"MiniLM-L6 {label} {op}"
        for label in MODEL_PLANS
        for op in ("load (vs torch.load)", "save (vs torch.save)")
    ]
    # The lossless model case also runs against safetensors and ZipNN (optional: their rows
    # say "skipped: not installed" where the package is missing).
    baselines = [
        f"MiniLM-L6 lossless {op} (vs {name})"
        for name in ("safetensors", "ZipNN")
        for op in ("load", "save")
    ]
    assert sorted(r.case for r in results) == sorted(list(PLANS) + model + baselines)
    model_numel = sum(t.numel() for t in minilm_state_dict(48).values())
    for r in results:
        if r.skipped is not None:
            assert r.case in baselines and "not installed" in r.skipped
            continue
        assert r.codl_ms > 0 and r.baseline_ms > 0
        assert r.notes["codl_file_bytes"] > 0 and r.notes["baseline_file_bytes"] > 0
        if r.case in model or r.case in baselines:
            assert r.numel == model_numel
            assert r.notes["codl_MB_per_s_float32"] > 0
        else:
            assert r.numel == 48 * 48
            assert r.notes["codl_MB_per_s_float32_out_per_core"] > 0


def test_minilm_state_dict_has_the_models_shapes() -> None:
    """At the default size: all-MiniLM-L6-v2's 22,713,216 float32 values (its config: hidden
    384, intermediate 1536, 6 layers, vocabulary 30522, 512 positions, a pooler)."""
    state = minilm_state_dict()
    assert len(state) == 5 + 6 * 16 + 2
    assert state["embeddings.word_embeddings.weight"].shape == (30522, 384)
    assert state["encoder.layer.5.intermediate.dense.weight"].shape == (1536, 384)
    assert sum(t.numel() for t in state.values()) == 22_713_216
