"""Each method end to end on tiny sources: records, resident models, gradients, and transfer oracles."""

from __future__ import annotations

import pytest
import torch

from multisource.measure.meter import Meter
from multisource.methods import run_method, source_pool, target_data
from multisource.methods.grasp import GraspConfig, transfer_step
from multisource.methods.pearl import ComposedAdapters
from multisource.models import load_checkpoint

pytestmark = pytest.mark.xdist_group("trained_sources")  # one worker builds the shared sources

FAST = {
    "ensemble": {},
    "fusion": {"finetune_epochs": 1, "learning_rate": 1e-3},
    "grasp": {"initial_epochs": 1, "finetune_epochs": 1, "learning_rate": 1e-3},
    "pearl": {"adapter_epochs": 1, "composition_epochs": 1, "learning_rate": 1e-3, "adapter_dim": 4},
    "source_finetune": {"finetune_epochs": 1, "learning_rate": 1e-3},
    "target_only": {"finetune_epochs": 1},
    "task_arithmetic": {"finetune_epochs": 1, "learning_rate": 1e-3, "lambdas": (0.3, 0.6)},
    "ties": {"finetune_epochs": 1, "learning_rate": 1e-3, "lambdas": (0.5, 1.0)},
    "dare": {"finetune_epochs": 1, "learning_rate": 1e-3, "lambdas": (0.5,), "merge": "ties", "density": 0.5},
    "soup": {"finetune_epochs": 1, "learning_rate": 1e-3},
}


def test_every_registered_method_has_a_contract_row():
    from multisource.methods import list_methods

    assert sorted(FAST) == list_methods()  # a new method gets its row here (and in test_runner.FAST_FLAGS)


@pytest.fixture(scope="module")
def target(trained_sources):
    return target_data("drift_digits", "era_5", model=trained_sources["model"], data_root=trained_sources["data_root"],
                       batch_size=64, seed=3)


def _ckpts(trained_sources, bins):
    return {b: trained_sources["checkpoint_dir"] / f"{b}.ckpt" for b in bins}


def _run(method, trained_sources, target, bins, **overrides):
    meter = Meter("cpu")
    pool = source_pool(_ckpts(trained_sources, bins), target, model=trained_sources["model"], residency=meter.models)
    result = run_method(method, pool, target, {**FAST[method], **overrides}, meter)
    return result, meter, pool


@pytest.mark.parametrize("k", [2, 4])
def test_models_resident_per_method(trained_sources, target, k):
    bins = ["era_1", "era_2", "era_3", "era_4"][:k]
    # PEARL: the base (with its K adapters) and one source at a time while the adapters are initialised.
    # Merges: the merged model + its task vector (sources mapped, one tensor at a time), then + its weights
    # before fine-tuning; the greedy soup: the soup, its copy before the last addition and one source.
    expected = {"ensemble": k, "grasp": 2, "pearl": 2, "source_finetune": 1, "target_only": 1, "task_arithmetic": 2,
                "ties": 2, "dare": 2, "soup": 3}
    loads = {"ensemble": k, "grasp": k, "pearl": k, "source_finetune": 1, "target_only": 0, "task_arithmetic": k + 1,
             "ties": k + 1, "dare": k + 1, "soup": 2 * k}
    for method, want in expected.items():
        result, meter, pool = _run(method, trained_sources, target, bins)
        assert meter.models.max_resident == want, method
        assert pool.loads == loads[method], method
        out = result.model(next(iter(target.val))[0])
        assert out.shape[1] == 10 and torch.isfinite(out).all()
        pool.release_all()
    _, meter, _ = _run("fusion", trained_sources, target, bins, finetune_epochs=0)
    assert meter.models.max_resident == 2  # streaming average: the accumulator and one source
    _, meter, _ = _run("fusion", trained_sources, target, bins, mode="logits", finetune_epochs=0)
    assert meter.models.max_resident == k


def test_fusion_params_equals_mean_of_sources(trained_sources, target):
    bins = ["era_1", "era_2", "era_3"]
    result, _, _ = _run("fusion", trained_sources, target, bins, finetune_epochs=0)
    states = [load_checkpoint(p)[0].state_dict() for p in _ckpts(trained_sources, bins).values()]
    for key, value in result.model.state_dict().items():
        if torch.is_floating_point(value):
            torch.testing.assert_close(value, torch.stack([s[key] for s in states]).mean(0), rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(value, states[0][key])


@pytest.mark.parametrize("threshold,expect_all", [(-1.0, True), (1.0, False)])  # a cosine never exceeds 1
def test_grasp_transfer_threshold_and_record(trained_sources, target, threshold, expect_all):
    current, _ = load_checkpoint(trained_sources["checkpoint_dir"] / "era_1.ckpt")
    source, _ = load_checkpoint(trained_sources["checkpoint_dir"] / "era_2.ckpt")
    before = {k: v.clone() for k, v in current.state_dict().items()}
    batches = [next(iter(target.train))]
    info = transfer_step(current, source, batches, GraspConfig(alignment_threshold=threshold), torch.device("cpu"))
    params = [n for n, _ in current.named_parameters()]
    changed = [k for k, v in current.state_dict().items() if not torch.equal(v, before[k])]
    assert set(info["alignment"]) == set(params)
    assert all(-1.0 - 1e-6 <= s <= 1.0 + 1e-6 for s in info["alignment"].values())
    assert info["transferred"] == (params if expect_all else [])
    # The record matches exactly the tensors that changed (parameters differ between the two sources).
    assert sorted(changed) == sorted(info["transferred"])
    assert info["transferred_elements"] == sum(before[n].numel() for n in info["transferred"])
    if expect_all:
        for n in params:
            assert torch.equal(current.state_dict()[n], source.state_dict()[n])


def test_grasp_default_threshold_transfers_exactly_the_aligned_tensors(trained_sources, target):
    current, _ = load_checkpoint(trained_sources["checkpoint_dir"] / "era_3.ckpt")
    source, _ = load_checkpoint(trained_sources["checkpoint_dir"] / "era_4.ckpt")
    info = transfer_step(current, source, [next(iter(target.train))], GraspConfig(), torch.device("cpu"))
    aligned = [n for n, s in info["alignment"].items() if s > 0.3]
    assert info["transferred"] == aligned and info["num_transferred"] == len(aligned) > 0
    # a threshold inside the scores' range splits the tensors: exactly those above it are copied
    middle = float(torch.tensor(list(info["alignment"].values())).median())
    fresh, _ = load_checkpoint(trained_sources["checkpoint_dir"] / "era_3.ckpt")
    split = transfer_step(fresh, source, [next(iter(target.train))], GraspConfig(alignment_threshold=middle),
                          torch.device("cpu"))
    above = [n for n, s in split["alignment"].items() if s > middle]
    assert split["transferred"] == above and 0 < len(above) < split["num_tensors"]


def test_grasp_records_one_step_per_further_source(trained_sources, target):
    result, meter, _ = _run("grasp", trained_sources, target, ["era_1", "era_2", "era_3"])
    steps = result.record["steps"]
    assert [s["source"] for s in steps] == ["era_2", "era_3"]
    for s in steps:
        assert set(s) >= {"alignment", "transferred", "transferred_elements", "val_accuracy",
                          "val_accuracy_after_transfer"}
        assert 0.0 <= s["val_accuracy"] <= 1.0
    report = meter.report()
    assert report["flops"]["by_phase"]["align"] > 0 and report["flops"]["by_phase"]["finetune"] > 0
    assert set(report["time"]["by_phase"]) >= {"load", "align", "finetune"}


def test_pearl_gradients_reach_adapters_and_weights(trained_sources, target):
    result, _, _ = _run("pearl", trained_sources, target, ["era_1", "era_3"], adapter_epochs=2, adapter_init="zero",
                        adapter_data="source", composition_epochs=2, composition_lr=0.1)
    model: ComposedAdapters = result.model
    lora_b = {n: p for n, p in model.peft_model.named_parameters() if "lora_B" in n}
    for adapter in model.adapter_names:  # LoRA B starts at zero: non-zero means the adapter was trained
        assert any(p.abs().sum() > 0 for n, p in lora_b.items() if f".{adapter}." in n), adapter
    w = model.weights().detach()
    assert w.sum().item() == pytest.approx(1.0, abs=1e-6) and (w > 0).all()
    assert not torch.allclose(w, torch.full_like(w, 0.5))  # moved away from the uniform start
    assert set(result.record["composition_weights"]) == {"era_1", "era_3"}
    assert all(v > 0 for v in result.record["adapter_params"].values())


def test_pearl_one_hot_weights_equal_single_adapter(trained_sources, target):
    # with the base's tensors outside the adapters, the composition is PEFT's own adapter arithmetic
    result, _, _ = _run("pearl", trained_sources, target, ["era_1", "era_2"], outside_adapters="base")
    model: ComposedAdapters = result.model.eval()
    x = next(iter(target.val))[0][:8]
    for k, adapter in enumerate(model.adapter_names):
        model.fixed_weights = torch.nn.functional.one_hot(torch.tensor(k), 2).float()
        composed = model(x)
        model.peft_model.base_model.set_adapter(adapter)
        with torch.no_grad():
            single = model.peft_model(x)
        model.peft_model.base_model.set_adapter(model.adapter_names)
        # The hook scales the active adapter by 1; the single-adapter model has no hook effect for others.
        torch.testing.assert_close(composed, single, rtol=1e-5, atol=1e-5)
    model.fixed_weights = torch.zeros(2)
    with model.peft_model.disable_adapter(), torch.no_grad():
        base = model.peft_model(x)
    torch.testing.assert_close(model(x), base, rtol=1e-5, atol=1e-5)  # zero weights = the frozen base


@pytest.mark.parametrize("vals, selection, guard, final_steps, selected, undone", [
    # val accuracy of the initial model and after each step's fine-tuning (scripted), what each rule keeps
    ([0.5, 0.9, 0.6], "last", False, [0, 1, 2], None, []),
    ([0.5, 0.9, 0.6], "best-val", False, [0, 1], 1, []),
    ([0.5, 0.9, 0.6], "last", True, [0, 1], None, [2]),
    ([0.8, 0.7, 0.9], "last", True, [0, 2], None, [1]),  # step 1 undone: step 2 starts from the initial model
    ([0.8, 0.7, 0.9], "best-val", False, [0, 1, 2], 2, []),
    ([0.8, 0.8, 0.8], "best-val", False, [0, 1, 2], 2, []),  # ties: the later step
])
def test_grasp_step_selection_and_guard_on_a_hand_built_sequence(trained_sources, target, monkeypatch, vals,
                                                                 selection, guard, final_steps, selected, undone):
    """Fine-tuning replaced by a scripted one: step s adds 10**s to the head's bias and reports vals[s]; with an
    alignment threshold of 1 nothing transfers, so the returned bias says exactly which steps' changes it holds."""
    from multisource.methods import grasp as grasp_module
    from multisource.training.loop import FitResult

    calls = []

    def scripted(model, target, cfg, meter, **kw):
        step = len(calls)
        calls.append(step)
        with torch.no_grad():
            model.fc.bias += 10.0 ** step
        return FitResult(best_val_accuracy=vals[step], best_epoch=1, history=[])

    monkeypatch.setattr(grasp_module, "finetune_on_target", scripted)
    bins = ["era_1", "era_2", "era_3"]
    original = load_checkpoint(_ckpts(trained_sources, bins)["era_1"])[0].fc.bias.detach().clone()
    result, meter, _ = _run("grasp", trained_sources, target, bins, alignment_threshold=1.0,
                            step_selection=selection, guard=guard)
    added = result.model.fc.bias.detach() - original
    torch.testing.assert_close(added, torch.full_like(added, sum(10.0 ** s for s in final_steps)))
    record = result.record
    assert [s["step"] for s in record["steps"]] == [1, 2] and all(s["num_transferred"] == 0 for s in record["steps"])
    if guard:
        assert [s["step"] for s in record["steps"] if s["undone"]] == undone
        assert [s["val_accuracy_before"] for s in record["steps"]][0] == vals[0]
    else:
        assert all("undone" not in s for s in record["steps"])
    if selection == "best-val" or guard:  # the step whose model is returned
        kept = selected if selection == "best-val" else final_steps[-1]
        assert record["selected_step"] == kept and record["selected_val_accuracy"] == vals[kept]
    # the paper's rule holds two models; a kept copy of the best so far is a third, recorded
    assert meter.models.max_resident == (3 if selection == "best-val" or guard else 2)
