"""codl.quant k-means weight sharing (Deep Compression §3): codebooks against an independent
Lloyd iteration in float64, nearest-centroid indices, masks, fine-tuning that keeps weights
shared and zeros zero, the summed centroid gradient (their eq. 3), and bad input."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from codl.prune import magnitude_, magnitude_mask
from codl.quant import KMeansQuantizer, kmeans_, kmeans_dequantize, kmeans_quantize
from codl.training import fine_tune


def _reference_lloyd(values: torch.Tensor, k: int, iterations: int = 100) -> torch.Tensor:
    """Plain Lloyd with linear initialisation, distances computed densely (n x k)."""
    centroids = torch.linspace(float(values.min()), float(values.max()), k, dtype=torch.float64)
    for _ in range(iterations):
        assignment = (values[:, None] - centroids[None, :]).abs().argmin(dim=1)
        updated = centroids.clone()
        for j in range(k):
            members = values[assignment == j]
            if members.numel():
                updated[j] = members.mean()
        if torch.equal(updated, centroids):
            break
        centroids = updated
    assignment = (values[:, None] - centroids[None, :]).abs().argmin(dim=1)
    used = torch.bincount(assignment, minlength=k) > 0
    return centroids[used].sort().values


@pytest.mark.parametrize("bits", [1, 2, 3, 5])
def test_codebook_matches_a_dense_lloyd_and_indices_are_nearest(bits: int) -> None:
    weight = torch.randn(40, 30, generator=torch.Generator().manual_seed(bits))
    codebook, indices = kmeans_quantize(weight, bits)
    assert codebook.dtype == torch.float32 and codebook.dim() == 1
    assert codebook.numel() <= 2**bits
    assert torch.equal(codebook, codebook.sort().values)
    assert indices.dtype == torch.int64 and indices.shape == weight.shape
    expected = _reference_lloyd(weight.double().reshape(-1), 2**bits)
    torch.testing.assert_close(codebook.double(), expected, rtol=1e-6, atol=1e-6)
    distances = (weight.double().reshape(-1, 1) - codebook.double()[None, :]).abs()
    chosen = distances.gather(1, indices.reshape(-1, 1)).squeeze(1)
    assert bool((chosen <= distances.min(dim=1).values + 1e-12).all())
    decoded = kmeans_dequantize(codebook, indices)
    assert torch.equal(decoded, codebook[indices])


def test_only_kept_entries_are_clustered() -> None:
    generator = torch.Generator().manual_seed(11)
    weight = torch.randn(50, 20, generator=generator)
    mask = magnitude_mask(weight, 0.6)
    poisoned = torch.where(mask, weight, torch.full_like(weight, 1000.0))
    codebook, indices = kmeans_quantize(poisoned, 4, mask)
    reference, _ = kmeans_quantize(weight[mask], 4)
    torch.testing.assert_close(codebook, reference)
    assert bool((indices[~mask] == 0).all())
    decoded = kmeans_dequantize(codebook, indices, mask)
    assert bool((decoded[~mask] == 0).all())
    assert float((decoded - weight)[mask].abs().max()) < float(weight[mask].abs().max()) / 8


def test_few_distinct_values_are_exact() -> None:
    weight = torch.tensor([[0.5, -0.25, 0.5], [1.0, -0.25, 1.0]])
    codebook, indices = kmeans_quantize(weight, 3)
    assert codebook.tolist() == [-0.25, 0.5, 1.0]
    assert torch.equal(kmeans_dequantize(codebook, indices), weight)


@pytest.mark.parametrize("init", ["linear", "density", "random"])
def test_every_init_gives_a_lloyd_fixed_point(init: str) -> None:
    weight = torch.randn(2000, generator=torch.Generator().manual_seed(12))
    codebook, indices = kmeans_quantize(weight, 4, init=init, seed=3)  # type: ignore[arg-type]
    for j in range(codebook.numel()):
        members = weight[indices == j].double()
        assert members.numel() > 0
        assert float(codebook[j]) == pytest.approx(float(members.mean()), abs=1e-6)


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 3))


def test_fine_tuning_keeps_weights_shared_and_zeros_zero() -> None:
    model = _mlp()
    magnitude_(model, 0.5).remove()
    quantizer = kmeans_(model, 3)
    zeros = {name: (w == 0).clone() for name, w in quantizer.weights.items()}
    indices = {name: i.clone() for name, i in quantizer.indices.items()}
    codebooks = {name: c.clone() for name, c in quantizer.codebooks.items()}
    images = torch.randn(256, 12, generator=torch.Generator().manual_seed(13))
    labels = torch.randint(0, 3, (256,), generator=torch.Generator().manual_seed(14))
    fine_tune(model, images, labels, epochs=2, batch_size=32, lr=1e-2, callbacks=[quantizer])
    for name, weight in quantizer.weights.items():
        assert torch.equal(weight == 0, zeros[name])
        nonzero = weight.detach()[weight != 0]
        assert torch.unique(nonzero).numel() <= 8
        assert torch.equal(quantizer.indices[name], indices[name])
        mask = quantizer.masks[name]
        expected = kmeans_dequantize(quantizer.codebooks[name], indices[name], mask)
        assert torch.equal(weight.detach(), expected)
        assert not torch.equal(quantizer.codebooks[name], codebooks[name])  # centroids trained


def test_centroid_update_is_the_summed_gradient() -> None:
    """With SGD, c_k ← c_k - lr Σ_{i in cluster k} ∂L/∂W_i (Deep Compression eq. 3)."""
    model = _mlp()
    quantizer = kmeans_(model, 2)
    plain = _mlp()
    plain.load_state_dict(model.state_dict())  # the shared weights, without hooks
    inputs = torch.randn(16, 12, generator=torch.Generator().manual_seed(15))
    plain(inputs).square().sum().backward()
    lr = 1e-3
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model(inputs).square().sum().backward()
    optimizer.step()
    before = {name: c.clone() for name, c in quantizer.codebooks.items()}
    quantizer.step()
    for index, name in ((0, "0.weight"), (2, "2.weight")):
        grad = plain[index].weight.grad
        assert grad is not None
        idx = quantizer.indices[name]
        mask = quantizer.masks[name]
        for k in range(before[name].numel()):
            member = mask & (idx == k)
            expected = float(before[name][k]) - lr * float(grad[member].double().sum())
            assert float(quantizer.codebooks[name][k]) == pytest.approx(
                expected, rel=1e-5, abs=1e-6
            )


def test_reassign_step_is_one_lloyd_iteration_on_the_shadow_weights() -> None:
    """Straight-through mode with SGD: shadow = initial weight - lr·∂L/∂W (the gradient at the
    shared weights), then one Lloyd iteration from the old codebook, written as each weight's
    nearest centroid; checked against a dense argmin |s - c| computed here."""
    model = _mlp()
    original = {name: w.detach().double().clone() for name, w in model.named_parameters()}
    magnitude_(model, 0.3).remove()
    pruned = {name: w.detach().double().clone() for name, w in model.named_parameters()}
    quantizer = kmeans_(model, 2, reassign=True)
    plain = _mlp()
    plain.load_state_dict(model.state_dict())  # the shared weights the gradient is taken at
    inputs = torch.randn(16, 12, generator=torch.Generator().manual_seed(16))
    plain(inputs).square().sum().backward()
    lr = 0.05
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model(inputs).square().sum().backward()
    optimizer.step()
    before = {name: c.double().clone() for name, c in quantizer.codebooks.items()}
    quantizer.step()
    moved = 0
    for index, name in ((0, "0.weight"), (2, "2.weight")):
        grad = plain[index].weight.grad
        assert grad is not None
        mask = quantizer.masks[name]
        assert torch.equal(mask, pruned[name] != 0)
        assert not torch.equal(original[name], pruned[name])  # the mask is not trivial
        shadow = (pruned[name] - lr * grad.double())[mask]
        old = before[name]
        nearest = (shadow[:, None] - old[None, :]).abs().argmin(dim=1)
        centroids = torch.stack(
            [shadow[nearest == k].mean() if (nearest == k).any() else old[k] for k in range(4)]
        )
        expected_codebook = torch.unique(centroids.float())
        assert torch.equal(quantizer.codebooks[name], expected_codebook)
        final = (shadow[:, None] - expected_codebook.double()[None, :]).abs().argmin(dim=1)
        weight = model[index].weight.detach()
        assert torch.equal(weight[mask], expected_codebook[final])
        assert torch.all(weight[~mask] == 0)
        # Weights may leave their first cluster (what centroid-only fine-tuning cannot do).
        first = (pruned[name][mask][:, None] - old[None, :]).abs().argmin(dim=1)
        moved += int((first != final).sum())
    assert moved > 0


def test_reassign_fine_tuning_keeps_at_most_2_to_the_bits_values() -> None:
    model = _mlp()
    magnitude_(model, 0.5).remove()
    quantizer = kmeans_(model, 3, reassign=True)
    zeros = {name: (w == 0).clone() for name, w in quantizer.weights.items()}
    images = torch.randn(256, 12, generator=torch.Generator().manual_seed(13))
    labels = torch.randint(0, 3, (256,), generator=torch.Generator().manual_seed(14))
    fine_tune(model, images, labels, epochs=2, batch_size=32, lr=1e-2, callbacks=[quantizer])
    for name, weight in quantizer.weights.items():
        assert torch.equal(weight == 0, zeros[name])
        assert quantizer.codebooks[name].numel() <= 8
        mask = quantizer.masks[name]
        expected = kmeans_dequantize(quantizer.codebooks[name], quantizer.indices[name], mask)
        assert torch.equal(weight.detach(), expected)
    with pytest.raises(TypeError, match="reassign"):
        kmeans_(_mlp(), 3, reassign="yes")  # type: ignore[arg-type]


def test_per_layer_bits() -> None:
    model = _mlp()
    quantizer = kmeans_(model, {"0.weight": 2})
    assert list(quantizer.weights) == ["0.weight"]
    assert quantizer.codebooks["0.weight"].numel() <= 4
    assert torch.unique(model[2].weight.detach()).numel() > 16  # untouched


@pytest.mark.parametrize("bits", [0, 9, -1])
def test_bits_out_of_range(bits: int) -> None:
    with pytest.raises(ValueError, match="bits"):
        kmeans_quantize(torch.randn(8), bits)


def test_bad_input() -> None:
    with pytest.raises(TypeError, match="bits"):
        kmeans_quantize(torch.randn(8), 2.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bits"):
        kmeans_quantize(torch.randn(8), True)
    with pytest.raises(TypeError, match="weight"):
        kmeans_quantize(torch.arange(8), 2)
    with pytest.raises(ValueError, match="weight"):
        kmeans_quantize(torch.tensor([1.0, float("inf")]), 2)
    with pytest.raises(TypeError, match="mask"):
        kmeans_quantize(torch.randn(8), 2, torch.ones(8))
    with pytest.raises(ValueError, match="mask"):
        kmeans_quantize(torch.randn(8), 2, torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="init"):
        kmeans_quantize(torch.randn(8), 2, init="kmeans++")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="indices"):
        kmeans_dequantize(torch.zeros(2), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="bits"):
        kmeans_(_mlp(), {"9.weight": 3})


def _quantized_run(
    seed: int, reassign: bool
) -> tuple[nn.Module, torch.optim.Optimizer, KMeansQuantizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 3))
    magnitude_(model, 0.3).remove()  # pruned zeros (masks unlike "all kept"); no hooks left
    quantizer = kmeans_(model, 3, reassign=reassign)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    quantizer.attach(optimizer)
    return model, optimizer, quantizer


def _train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, steps: range) -> None:
    for step in steps:
        generator = torch.Generator().manual_seed(500 + step)
        x, y = (
            torch.randn(8, 12, generator=generator),
            torch.randint(0, 3, (8,), generator=generator),
        )
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


@pytest.mark.slow
@pytest.mark.parametrize("reassign", [False, True])
def test_kmeans_fine_tuning_resumes_bit_for_bit_from_saved_state(reassign: bool) -> None:
    total, cut = 10, 4
    model, optimizer, quantizer = _quantized_run(0, reassign)
    _train_steps(model, optimizer, range(total))
    uninterrupted = {k: v.clone() for k, v in model.state_dict().items()}
    final_codebooks = {k: v.clone() for k, v in quantizer.codebooks.items()}

    model, optimizer, quantizer = _quantized_run(0, reassign)
    _train_steps(model, optimizer, range(cut))
    buffer = io.BytesIO()
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "quantizer": quantizer.state_dict(),
        },
        buffer,
    )
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    model, optimizer, quantizer = _quantized_run(5, reassign)  # fresh, another initialisation
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    quantizer.load_state_dict(saved["quantizer"])
    _train_steps(model, optimizer, range(cut, total))
    for key, value in uninterrupted.items():
        assert torch.equal(model.state_dict()[key].view(torch.int32), value.view(torch.int32)), key
    for name, codebook in final_codebooks.items():
        assert torch.equal(quantizer.codebooks[name], codebook), name
    # Without the quantizer's state the fresh one clusters other weights: the run differs.
    model, optimizer, quantizer = _quantized_run(5, reassign)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    _train_steps(model, optimizer, range(cut, total))
    assert any(not torch.equal(model.state_dict()[k], v) for k, v in uninterrupted.items())


def test_kmeans_load_state_dict_rejects_a_state_of_other_settings() -> None:
    _, _, quantizer = _quantized_run(0, reassign=False)
    state = quantizer.state_dict()
    with pytest.raises(ValueError, match=r"state_dict\['reassign'\]: expected True"):
        _quantized_run(0, reassign=True)[2].load_state_dict(state)
    with pytest.raises(ValueError, match=r"state_dict\['bits'\]"):
        kmeans_(_mlp(), 4).load_state_dict(state)
    broken = dict(state, indices={k: v + 100 for k, v in state["indices"].items()})
    with pytest.raises(ValueError, match="expected indices below the codebook"):
        quantizer.load_state_dict(broken)
    with pytest.raises(ValueError, match="expected the keys"):
        quantizer.load_state_dict({"bits": state["bits"]})


def _sse(values: torch.Tensor, codebook: torch.Tensor) -> float:
    """Within-cluster sum of squares of ``values`` against their nearest centroids."""
    boundaries = (codebook[:-1] + codebook[1:]) / 2
    nearest = codebook[torch.searchsorted(boundaries, values)]
    return float(((values - nearest) ** 2).sum())


@pytest.mark.parametrize("init", ["linear", "density", "random"])
@pytest.mark.parametrize("bits", [4, 8])
def test_large_layers_cluster_on_a_histogram_as_well_as_exact_lloyd(bits: int, init: str) -> None:
    """Above HISTOGRAM_MIN_VALUES the Lloyd iterations run on a histogram of the values (one
    pass, no sort, 2^-9-wide bins): its centroids' within-cluster error is at most 0.5% above
    the exact sorted-values Lloyd's (the former implementation, kept for small layers; on these
    heavy-tailed layers it is often lower, the histogram's iterations being cheap enough to run
    to convergence), every index is the nearest centroid, and each centroid lies among its
    members (it is their mean to within a bin's width, once the edges have stopped moving)."""
    from codl.quant import kmeans as km

    generator = torch.Generator().manual_seed(bits)
    # Trained-weight-like: a normal bulk, a heavy tail, and an exact zero run.
    weight = torch.randn(300, 1000, generator=generator) * 0.03
    weight[:, :20] *= 20
    weight[0, :500] = 0.0
    assert weight.numel() > km.HISTOGRAM_MIN_VALUES
    codebook, indices = kmeans_quantize(weight, bits, init=init, seed=1)  # type: ignore[arg-type]
    values = weight.reshape(-1).double()
    exact = km._lloyd(values, 1 << bits, init, 1).float().double()
    assert codebook.numel() <= 1 << bits and torch.equal(codebook, codebook.sort().values)
    assert _sse(values, codebook.double()) <= 1.005 * _sse(values, exact)
    distances = (values[:, None] - codebook.double()[None, :]).abs()
    chosen = distances.gather(1, indices.reshape(-1, 1)).squeeze(1)
    assert bool((chosen <= distances.min(dim=1).values).all())
    for j in range(codebook.numel()):
        members = values[indices.reshape(-1) == j]
        if members.numel():
            assert float(members.min()) <= float(codebook[j]) <= float(members.max())


def test_a_masked_large_layer_clusters_only_its_kept_values() -> None:
    generator = torch.Generator().manual_seed(5)
    weight = torch.randn(400, 400, generator=generator)
    mask = magnitude_mask(weight, 0.5)
    poisoned = torch.where(mask, weight, torch.full_like(weight, 1000.0))
    codebook, indices = kmeans_quantize(poisoned, 5, mask)
    reference, _ = kmeans_quantize(weight[mask], 5)
    assert torch.equal(codebook, reference)
    assert bool((indices[~mask] == 0).all()) and float(codebook.abs().max()) < 10
