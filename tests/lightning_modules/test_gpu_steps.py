"""Real-size training steps per backend (benchmarks/gpu_steps.py). On CUDA (marked ``gpu``, skipped without it): each
backend's released architecture with random weights, saved and loaded through the backend's own loading code, trains
for a few steps at its real clip length under bf16 autocast; its parameters, peak memory and step time go to
benchmarks/results/gpu_steps.json. On every machine: the architectures the benchmark builds, counted on the meta device,
against the published sizes of the released checkpoints (hub file sizes, model cards, papers)."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import gpu_steps


@pytest.mark.parametrize("backend", sorted(gpu_steps.PUBLISHED))
def test_real_size_architecture_matches_published_sizes(backend: str) -> None:
    comparison = gpu_steps.published_comparison(backend)
    assert comparison, f"no published size to check {backend} against"
    for component, row in comparison.items():
        assert abs(row["relative_difference"]) <= row["tolerance"], (
            f"{backend} {component}: {row['parameters']:,} parameters against {row['published']:,} published "
            f"({row['source']})")


def test_every_real_backend_has_published_sizes() -> None:
    assert set(gpu_steps.PUBLISHED) == set(gpu_steps.BACKENDS) - {"toy"}
    assert set(gpu_steps.MODEL_CONFIGS) == set(gpu_steps.BACKENDS)


def test_results_merge_by_backend_and_device(tmp_path) -> None:
    out = tmp_path / "gpu_steps.json"
    gpu_steps.record([{"backend": "musicgen", "device": "cpu", "x": 1}, {"backend": "toy", "device": "cpu", "x": 1}],
                     out)
    gpu_steps.record([{"backend": "musicgen", "device": "cpu", "x": 2}], out)
    rows = json.loads(out.read_text())["rows"]
    assert [(row["backend"], row["x"]) for row in rows] == [("toy", 1), ("musicgen", 2)]
    out.write_text("not json")
    with pytest.raises(ValueError, match="not a gpu_steps results file"):
        gpu_steps.record([], out)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", gpu_steps.BACKENDS)
def test_real_size_training_step_on_cuda(backend: str) -> None:
    row = gpu_steps.run_backend(backend, "cuda", warmup=1, steps=3)
    gpu_steps.record([row])
    assert row["loss_finite"], row["losses"]
    assert row["weights_changed_fraction"] == 1.0, f"parameters that did not move: {row['unchanged_parameters']}"
    assert 0 < row["peak_memory_bytes"] < torch.cuda.get_device_properties(0).total_memory
    assert row["trainable_parameters"] > 0 and row["median_step_seconds"] > 0
