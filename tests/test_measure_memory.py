"""Memory tracking: per-phase RSS peaks that reset between phases, resident-model bookkeeping, CUDA peaks."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from multisource.measure import memory as memory_mod
from multisource.measure.memory import (RSS_HWM, RSS_SAMPLED, MemoryTracker, ModelResidency, module_bytes,
                                        optimizer_state_bytes)

MB = 1024 * 1024
ALLOC = 200 * MB


def _allocate_and_free(seconds: float = 0.0) -> None:
    """Touch ~200 MB (torch.ones writes every page) and free it before returning."""
    block = torch.ones(ALLOC // 4, dtype=torch.float32)
    time.sleep(seconds)
    assert float(block[-1]) == 1.0
    del block


def _check_peak_resets(tracker: MemoryTracker) -> None:
    with tracker.phase("alloc"):
        _allocate_and_free(seconds=0.05)
    with tracker.phase("idle"):
        sum(range(1000))
    alloc, idle = tracker.to_dict()["by_phase"]["alloc"], tracker.to_dict()["by_phase"]["idle"]
    assert alloc["peak_rss_bytes"] - alloc["rss_start_bytes"] >= 0.95 * ALLOC
    assert alloc["peak_rss_delta_bytes"] >= 0.95 * ALLOC
    assert alloc["rss_end_bytes"] < alloc["peak_rss_bytes"] - 0.5 * ALLOC  # freed inside the phase
    # the second phase's peak is its own, not the process's lifetime high-water mark
    assert idle["peak_rss_bytes"] < alloc["peak_rss_bytes"] - 0.5 * ALLOC
    assert idle["peak_rss_delta_bytes"] < 0.25 * ALLOC


@pytest.mark.skipif(not memory_mod._hwm_available(), reason="no /proc/self/clear_refs on this system")
def test_rss_peak_per_phase_with_high_water_mark():
    tracker = MemoryTracker("cpu")
    assert tracker.rss_method == RSS_HWM
    _check_peak_resets(tracker)
    out = tracker.to_dict()
    assert out["peak_bytes"] == out["peak_rss_bytes"] == out["by_phase"]["alloc"]["peak_rss_bytes"]
    assert out["peak_cuda_bytes"] is None and out["peak_nvml_used_bytes"] is None
    assert "cuda_peak_allocated_bytes" not in out["by_phase"]["alloc"]


def test_rss_peak_per_phase_with_sampling(monkeypatch):
    monkeypatch.setattr(memory_mod, "_hwm_available", lambda: False)
    tracker = MemoryTracker("cpu")
    assert tracker.rss_method == RSS_SAMPLED
    _check_peak_resets(tracker)
    assert tracker.to_dict()["by_phase"]["idle"]["rss_method"] == RSS_SAMPLED


def test_repeated_phase_keeps_maxima_and_errors_still_record():
    tracker = MemoryTracker("cpu")
    tracker.models.hold("a", nn.Linear(10, 20))
    with tracker.phase("finetune"):
        _allocate_and_free()
    tracker.models.release("a")
    with pytest.raises(ZeroDivisionError):
        with tracker.phase("finetune"):
            1 / 0
    rec = tracker.to_dict()["by_phase"]["finetune"]
    assert rec["occurrences"] == 2
    assert rec["peak_rss_delta_bytes"] >= 0.95 * ALLOC  # the first occurrence's peak survives the merge
    assert rec["models_resident"] == 1 and rec["model_bytes"] == 880
    with pytest.raises(RuntimeError, match="do not nest"):
        with tracker.phase("outer"), tracker.phase("inner"):
            pass


def test_module_and_optimizer_bytes():
    assert module_bytes(nn.Linear(10, 20)) == (10 * 20 + 20) * 4
    bn = nn.BatchNorm1d(4)  # weight, bias, running mean/var (float32) + num_batches_tracked (int64)
    assert module_bytes(bn) == 4 * 4 * 4 + 8
    tied = nn.Sequential(nn.Linear(8, 8, bias=False), nn.Linear(8, 8, bias=False))
    tied[1].weight = tied[0].weight
    assert module_bytes(tied) == 8 * 8 * 4
    model = nn.Linear(10, 20)
    opt = torch.optim.AdamW(model.parameters())
    assert optimizer_state_bytes(opt) == 0  # state appears at the first step
    model(torch.randn(3, 10)).sum().backward()
    opt.step()
    nbytes = optimizer_state_bytes(opt)
    assert 2 * 880 <= nbytes <= 2 * 880 + 2 * 8  # two moments per parameter (+ scalar step counters)


def test_model_residency_counts_models_at_once():
    res = ModelResidency()
    lin = nn.Linear(10, 20)
    assert res.hold("source-0", lin) == 880
    res.hold("source-1", nn.Linear(10, 20))
    res.release("source-0")
    res.hold("target", nn.Linear(20, 20))
    assert res.current == 2 and res.max_resident == 2
    assert res.current_bytes == 880 + (400 + 20) * 4
    assert res.max_bytes == 880 + 1680
    res.release("source-1")
    res.release("target")
    assert res.current == 0 and res.current_bytes == 0 and res.max_resident == 2
    res.hold("source-0", lin)  # a released key can be held again
    with pytest.raises(ValueError, match="already held"):
        res.hold("source-0", lin)
    with pytest.raises(KeyError, match="not held"):
        res.release("missing")
    assert res.add_optimizer_bytes(1000) == 1000 and res.add_optimizer_bytes(10) == 10
    assert res.max_optimizer_bytes == 1000


def test_phase_window_of_resident_models():
    tracker = MemoryTracker("cpu")
    with tracker.phase("merge"):
        for k in range(3):
            tracker.models.hold(f"source-{k}", nn.Linear(10, 20))
        for k in range(3):
            tracker.models.release(f"source-{k}")
        tracker.models.hold("merged", nn.Linear(10, 20))
    with tracker.phase("eval"):
        pass
    out = tracker.to_dict()
    merge, ev = out["by_phase"]["merge"], out["by_phase"]["eval"]
    assert (merge["max_models_resident"], merge["max_model_bytes"]) == (3, 3 * 880)
    assert (merge["models_resident"], merge["model_bytes"]) == (1, 880)
    assert (ev["max_models_resident"], ev["models_resident"]) == (1, 1)
    assert out["max_models_resident"] == 3 and out["resident_model_bytes"] == 3 * 880


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_peak_per_phase():
    tracker = MemoryTracker("cuda")
    with tracker.phase("alloc"):
        block = torch.ones(ALLOC // 4, device="cuda")
        del block
    with tracker.phase("idle"):
        torch.ones(1, device="cuda")
    out = tracker.to_dict()
    alloc, idle = out["by_phase"]["alloc"], out["by_phase"]["idle"]
    assert alloc["cuda_peak_allocated_bytes"] >= ALLOC
    assert idle["cuda_peak_allocated_bytes"] < ALLOC // 10
    assert out["peak_bytes"] == out["peak_cuda_bytes"] == alloc["cuda_peak_allocated_bytes"]
    assert alloc["nvml_used_bytes"] is None or alloc["nvml_used_bytes"] >= ALLOC


def test_cuda_branch_with_a_fake_allocator(monkeypatch):
    """The CUDA bookkeeping (reset per phase, peaks, NVML, which peak is headline) without a GPU."""
    calls: list[str] = []
    peaks = iter([300 * MB, 5 * MB])
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append("sync"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: calls.append("reset"))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: next(peaks))
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: 512 * MB)
    monkeypatch.setattr(memory_mod._Nvml, "used_bytes", lambda self: 1000 * MB)
    tracker = MemoryTracker("cuda:0")
    with tracker.phase("alloc"):
        calls.append("body")
    with tracker.phase("idle"):
        pass
    assert calls[:4] == ["sync", "reset", "body", "sync"]
    out = tracker.to_dict()
    alloc, idle = out["by_phase"]["alloc"], out["by_phase"]["idle"]
    assert (alloc["cuda_peak_allocated_bytes"], idle["cuda_peak_allocated_bytes"]) == (300 * MB, 5 * MB)
    assert alloc["cuda_peak_reserved_bytes"] == 512 * MB and alloc["nvml_used_bytes"] == 1000 * MB
    assert out["peak_bytes"] == out["peak_cuda_bytes"] == 300 * MB
    assert out["peak_nvml_used_bytes"] == 1000 * MB and out["device"] == "cuda:0"
    assert out["peak_rss_bytes"] > 0
