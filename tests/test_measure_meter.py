"""The experiment-level meter and the phase timer, on a fake CPU experiment (load / finetune / eval)."""

from __future__ import annotations

import json
import time

import pytest
import torch
from torch import nn

from multisource.measure.meter import Meter
from multisource.measure.timing import PhaseTimer


def _tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def test_phase_timer_accumulates_and_total_covers_gaps():
    timer = PhaseTimer("cpu")
    with timer.phase("a"):
        time.sleep(0.03)
    time.sleep(0.03)  # between phases: in the total, not in any phase
    with timer.phase("a"):
        time.sleep(0.02)
    with timer.phase("b"):
        pass
    total = timer.stop()
    out = timer.to_dict()
    assert out["by_phase"]["a"] >= 0.05 and out["by_phase"]["b"] < 0.02
    assert out["phase_counts"] == {"a": 2, "b": 1}
    assert out["phases_sum_s"] == pytest.approx(out["by_phase"]["a"] + out["by_phase"]["b"])
    assert out["total_s"] == total >= out["phases_sum_s"] + 0.03
    assert timer.to_dict()["total_s"] == total  # frozen after stop()
    assert not out["device_synchronized"]
    with pytest.raises(RuntimeError, match="do not nest"):
        with timer.phase("outer"), timer.phase("inner"):
            pass


def test_fake_experiment_report():
    meter = Meter("cpu")
    image_size, n_train, n_eval = 16, 8, 4
    with meter.phase("load"):
        model = _tiny()
        meter.models.hold("source-0", model)
        meter.models.hold("source-1", _tiny())
    macs = meter.count_forward_macs(model, image_size)
    assert macs == 4 * 16 * 16 * 3 * 9 + 4 * 3
    with meter.phase("merge"):
        meter.models.release("source-1")
        meter.flops.add("merge", sum(p.numel() for p in model.parameters()))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):  # two fine-tunes of the same phase name
        with meter.phase("finetune"):
            x, y = torch.randn(n_train, 3, image_size, image_size), torch.randint(0, 3, (n_train,))
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            meter.flops.add_training("finetune", macs, n_train)
    meter.models.add_optimizer_bytes(opt)
    with meter.phase("eval"), torch.no_grad():
        model(torch.randn(n_eval, 3, image_size, image_size))
        meter.flops.add_forward("eval", macs, n_eval)

    report = meter.report()
    assert set(report) == {"time", "memory", "flops", "budget"}
    json.dumps(report)  # plain JSON types only
    time_d, mem, fl = report["time"], report["memory"], report["flops"]
    assert set(time_d["by_phase"]) == set(mem["by_phase"]) == {"load", "merge", "finetune", "eval"}
    assert time_d["total_s"] >= time_d["phases_sum_s"] > 0
    assert mem["device"] == "cpu" and mem["peak_cuda_bytes"] is None
    assert mem["peak_bytes"] == mem["peak_rss_bytes"] > 0
    assert mem["max_models_resident"] == 2
    assert mem["resident_model_bytes"] == 2 * sum(p.numel() * 4 for p in model.parameters())
    assert mem["optimizer_state_bytes"] == sum(p.numel() * 4 for p in model.parameters())  # SGD momentum
    assert mem["by_phase"]["finetune"]["occurrences"] == 2
    assert mem["by_phase"]["eval"]["models_resident"] == 1
    for key, value in mem.items():  # units in the key names
        assert not isinstance(value, int) or key.endswith("_bytes") or key == "max_models_resident", key
    for key, value in mem["by_phase"]["finetune"].items():
        assert not isinstance(value, int) or key.endswith("_bytes") or "models" in key or key == "occurrences"
    assert [k for k, v in time_d.items() if isinstance(v, float)] == ["total_s", "phases_sum_s"]
    assert fl["forward_per_image"] == macs and fl["unit"] == "MACs"
    assert fl["by_phase"] == {"merge": 4 * 27 + 4 + 12 + 3, "finetune": 3 * macs * 2 * n_train,
                              "eval": macs * n_eval}
    assert fl["total"] == sum(fl["by_phase"].values())


def test_meter_phases_do_not_nest():
    meter = Meter("cpu")
    with pytest.raises(RuntimeError, match="inside phase 'outer'"):
        with meter.phase("outer"), meter.phase("inner"):
            pass
    with meter.phase("after"):  # the failed nesting left nothing open
        pass
    assert "after" in meter.report()["time"]["by_phase"]
