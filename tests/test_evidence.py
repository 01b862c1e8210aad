"""Evidence a reviewer would accept: PEARL built from the source models, the reference rows and matched budgets,
what each method read, and GRASP's alignment scores re-derived from the record."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from multisource.measure.meter import Meter
from multisource.methods import get_method, run_method, source_pool, target_data
from multisource.methods.base import resolve_budget
from multisource.methods.grasp import GraspConfig
from multisource.methods.pearl import composed_weight, lora_target_modules, low_rank_factors, svd_initialise
from multisource.methods.source_finetune import SourceFinetuneConfig
from multisource.models import load_checkpoint
from multisource.models.factory import create_model

pytestmark = pytest.mark.xdist_group("trained_sources")


@pytest.fixture(scope="module")
def target(trained_sources):
    return target_data("drift_digits", "era_5", model=trained_sources["model"], data_root=trained_sources["data_root"],
                       batch_size=64, seed=3)


def _pool(trained_sources, target, bins, meter):
    ckpts = {b: trained_sources["checkpoint_dir"] / f"{b}.ckpt" for b in bins}
    return source_pool(ckpts, target, model=trained_sources["model"], residency=meter.models)


def test_low_rank_factors_are_the_truncated_svd():
    rng = np.random.default_rng(0)
    delta = torch.tensor(rng.normal(size=(12, 3, 3, 3)), dtype=torch.float32)
    a, b, residual = low_rank_factors(delta, rank=5, scaling=2.0)
    assert a.shape == (5, 3, 3, 3) and b.shape == (12, 5)
    approx = (b @ a.reshape(5, -1)) * 2.0
    u, s, vh = np.linalg.svd(delta.reshape(12, -1).numpy().astype(float), full_matrices=False)
    oracle = (u[:, :5] * s[:5]) @ vh[:5]  # Eckart-Young: the best rank-5 approximation
    np.testing.assert_allclose(approx.numpy(), oracle, atol=1e-5)
    assert residual == pytest.approx(float((s[5:] ** 2).sum()), rel=1e-6)
    a, b, residual = low_rank_factors(delta[:2, :1, :1, :1].reshape(2, 1), rank=4, scaling=1.0)  # rank > matrix rank
    assert a.shape == (4, 1) and b.shape == (2, 4) and residual == 0.0
    torch.testing.assert_close(b @ a, delta[:2, :1, :1, :1].reshape(2, 1))


def test_pearl_one_hot_full_rank_adapter_equals_the_source_layer():
    """With rank >= every layer's rank, base + 1 * adapter_k reproduces source k's Linear and Conv2d weights."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = create_model("tiny-resnet", 10, image_size=32)
    torch.manual_seed(1)
    source = create_model("tiny-resnet", 10, image_size=32)
    modules, skipped = lora_target_modules(base, include_head=True)
    layers = {n: m for n, m in base.named_modules() if n in modules}
    assert sorted(set(modules) - set(lora_target_modules(base)[0])) == ["fc"]  # the head only with include_head
    assert any(isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1) for m in layers.values())
    assert any(isinstance(m, nn.Linear) for m in layers.values()) and not skipped
    rank = max(min(m.weight.shape[0], m.weight[0].numel()) for m in layers.values())
    expected = {n: source.get_submodule(n).weight.detach().clone() for n in modules}
    peft_model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=modules),
                                adapter_name="base")
    peft_model.add_adapter("other", LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=modules))
    info = svd_initialise(peft_model, "other", source, rank, scaling=2.0)
    assert info["relative_error"] < 1e-5 and info["delta_norm"] > 0
    assert 0 < info["outside_adapters_share"] < 1  # biases and BatchNorm differ too and stay the base's
    for name in modules:
        torch.testing.assert_close(composed_weight(peft_model, name, {"base": 0.0, "other": 1.0}), expected[name],
                                   rtol=1e-4, atol=1e-5)
    low = get_peft_model(create_model("tiny-resnet", 10, image_size=32), LoraConfig(r=1, target_modules=modules),
                         adapter_name="src")
    assert svd_initialise(low, "src", source, 1, scaling=1.0)["relative_error"] > 0.1  # rank 1 cannot hold it


@pytest.mark.parametrize("adapt_head", [False, True])
def test_pearl_full_rank_one_hot_composed_model_is_that_source(trained_sources, target, adapt_head):
    """The oracle: at full rank with all composition weight on source k and the composed rest, PEARL's model gives
    source k's own predictions (BatchNorm statistics, biases and head included); keeping the base's rest does
    not."""
    bins = ["era_1", "era_3", "era_4"]
    source_model = {b: load_checkpoint(trained_sources["checkpoint_dir"] / f"{b}.ckpt")[0].eval() for b in bins}
    layers = [m for m in source_model["era_1"].modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    rank = max(min(m.weight.shape[0], m.weight[0].numel()) for m in layers)
    x = torch.cat([images for images, _ in target.test])[:96]
    for rest in ("composed", "base"):
        meter = Meter("cpu")
        result = run_method("pearl", _pool(trained_sources, target, bins, meter), target,
                            {"adapter_dim": rank, "composition_epochs": 0, "outside_adapters": rest,
                             "adapt_head": adapt_head, "source_order": "chronological"}, meter)
        model = result.model.eval()
        assert result.record["outside_adapters"] == rest
        head = "the classifier head's bias" if adapt_head else "the classifier head"
        assert head in result.record["outside_adapter_kinds"]
        assert "BatchNorm running statistics" in result.record["outside_adapter_kinds"]
        assert result.record["kept_from_base"] == ([] if rest == "composed" else
                                                   result.record["outside_adapter_kinds"])
        for k, b in enumerate(bins):
            model.fixed_weights = torch.nn.functional.one_hot(torch.tensor(k), len(bins)).float()
            with torch.no_grad():
                mine, theirs = model(x), source_model[b](x)
            if rest == "composed":
                assert torch.equal(mine.argmax(1), theirs.argmax(1)), b
                torch.testing.assert_close(mine, theirs, rtol=1e-3, atol=1e-3)
            elif k > 0:  # the base's BatchNorm statistics and head under source k's weights: another model
                assert not torch.allclose(mine, theirs, atol=1e-2), b
        shares = [result.record["approximation"][b]["outside_adapters_share"] for b in bins[1:]]
        assert all(0 < v < 1 for v in shares)  # buffers counted: the running statistics differ between sources


def test_pearl_refines_each_adapter_inside_the_composed_model_it_is_scored_in(trained_sources, target):
    """With the composed rest, adapter k is trained with source k's biases, BatchNorm and head: the val accuracy
    its refinement selected is the composed model's with all weight on k, on that source's val split."""
    from multisource.training.loop import accuracy

    # its own target: this run reads source data, which the module's shared target must not record
    target = target_data("drift_digits", "era_5", model=trained_sources["model"],
                         data_root=trained_sources["data_root"], batch_size=64, seed=3)
    bins = ["era_1", "era_3"]
    meter = Meter("cpu")
    result = run_method("pearl", _pool(trained_sources, target, bins, meter), target,
                        {"adapter_dim": 4, "adapter_data": "source", "adapter_epochs": 1, "composition_epochs": 0,
                         "source_order": "chronological"}, meter)
    model = result.model.eval()
    for k, b in enumerate(bins):
        model.fixed_weights = torch.nn.functional.one_hot(torch.tensor(k), len(bins)).float()
        got = accuracy(model, target.bin_loader(b, "val"), target.device)
        assert got == pytest.approx(result.record["adapter_val_accuracy"][b], abs=1e-6), b
    assert result.record["outside_adapter_bytes_held"] == len(bins) * result.record["outside_adapter_bytes_per_source"]
    assert model.weight_logits.requires_grad  # handed back to the composition


def test_pearl_reads_every_source_and_records_its_approximation(trained_sources, target):
    meter = Meter("cpu")
    bins = ["era_1", "era_2", "era_3"]
    pool = _pool(trained_sources, target, bins, meter)
    pool.checkpoints = {b: pool.checkpoints[b] for b in ["era_3", "era_1", "era_2"]}  # nearest-first for era_5
    result = run_method("pearl", pool, target, {"adapter_dim": 4, "composition_epochs": 1}, meter)
    record = result.record
    assert pool.loaded == ["era_3", "era_1", "era_2"] and record["base"] == "era_3"
    assert set(record["approximation"]) == set(bins) and record["approximation"]["era_3"]["relative_error"] == 0
    assert all(0 < record["approximation"][b]["relative_error"] < 1 for b in ("era_1", "era_2"))
    assert meter.models.max_resident == 2 and target.reads >= {"target:train", "target:val"}
    assert not any(r.startswith("source:") for r in target.reads)  # adapter_data none: no source data read
    assert meter.report()["budget"]["target_epochs"] == 1


def test_source_finetune_picks_and_best_val_loads_one_at_a_time(trained_sources, target):
    bins = ["era_1", "era_2", "era_3", "era_4"]
    meter = Meter("cpu")
    pool = _pool(trained_sources, target, ["era_4", "era_3", "era_2", "era_1"], meter)  # nearest-first for era_5
    result = run_method("source_finetune", pool, target, {"finetune_epochs": 1}, meter)
    assert result.record["source"] == "era_4" and pool.loaded == ["era_4"]
    meter = Meter("cpu")
    pool = _pool(trained_sources, target, bins, meter)
    result = run_method("source_finetune", pool, target, {"pick": "best-val", "finetune_epochs": 1}, meter)
    scores = result.record["source_val_accuracy"]
    assert list(scores) == bins and result.record["source"] == max(bins, key=lambda b: (scores[b], -bins.index(b)))
    for b in bins:  # each score is that source's own target-val accuracy
        model, _ = load_checkpoint(pool.checkpoints[b])
        logits = torch.cat([model.eval()(x) for x, _ in target.val])
        labels = torch.cat([y for _, y in target.val])
        assert scores[b] == pytest.approx(float((logits.argmax(1) == labels).float().mean()), abs=1e-6)
    assert meter.models.max_resident == 1 and pool.loaded == bins + [result.record["source"]]
    assert get_method("source_finetune").order_of(SourceFinetuneConfig(pick="nearest")) == "nearest-first"


def test_target_only_starts_from_the_shared_start_and_reads_no_source(trained_sources, target):
    meter = Meter("cpu")
    pool = _pool(trained_sources, target, ["era_1", "era_2"], meter)
    result = run_method("target_only", pool, target, {"finetune_epochs": 1}, meter)
    upstream = trained_sources["results_dir"] / "drift_digits" / "upstream" / f"{trained_sources['model']}.ckpt"
    assert pool.loads == 0 and pool.loaded == [] and result.record["start"] == str(upstream)
    assert result.record["learning_rate"] == 1e-3  # the tiny model's source-training rate (a new head)
    assert meter.report()["budget"] == {"target_epochs": 1, "target_train_images": len(target.train.dataset)}


@pytest.mark.parametrize("method", ["fusion", "source_finetune", "target_only"])
def test_matched_budget_equals_grasp_target_epochs(method):
    spec = get_method(method)
    cfg = spec.config_cls(finetune_epochs="matched")
    for k in (2, 4, 6):
        assert resolve_budget(spec, cfg, k).finetune_epochs == 3 + 3 * (k - 1)  # GRASP's defaults
    grasp = GraspConfig(initial_epochs=2, finetune_epochs=1)
    assert resolve_budget(spec, cfg, 4, grasp).finetune_epochs == 5
    assert resolve_budget(spec, spec.config_cls(finetune_epochs=7), 4, grasp).finetune_epochs == 7


def test_grasp_alignment_scores_rederived_from_the_recorded_indices(trained_sources, target):
    meter = Meter("cpu")
    pool = _pool(trained_sources, target, ["era_3", "era_4"], meter)
    result = run_method("grasp", pool, target, {"initial_epochs": 0, "finetune_epochs": 0,
                                                "num_alignment_batches": 2}, meter)
    step = result.record["steps"][0]
    indices = step["alignment_indices"]
    assert len(indices) == 2 and all(len(b) == 64 for b in indices)
    # Independently: the unchanged first source (0 initial epochs) and the second, on those train examples with
    # eval transforms, train-mode forward, summed cross-entropy gradients, cosine per parameter tensor.
    batches = target.batches_at(indices)
    grads = []
    for b in ("era_3", "era_4"):
        model, _ = load_checkpoint(pool.checkpoints[b])
        model.train()
        for x, y in batches:
            nn.functional.cross_entropy(model(x), y).backward()
        grads.append({n: p.grad.detach().flatten().double() for n, p in model.named_parameters()})
    for name, score in step["alignment"].items():
        g0, g1 = grads[0][name], grads[1][name]
        expected = float(g0 @ g1 / (g0.norm() * g1.norm()))
        assert score == pytest.approx(expected, abs=1e-5), name  # float32 gradient sums
    again = run_method("grasp", _pool(trained_sources, target, ["era_3", "era_4"], Meter("cpu")), target,
                       {"initial_epochs": 0, "finetune_epochs": 0, "num_alignment_batches": 2})
    assert again.record["steps"][0]["alignment_indices"] == indices
    assert again.record["steps"][0]["alignment"] == step["alignment"]



def test_reading_the_target_test_split_fails_the_experiment_and_reads_are_what_was_iterated(target):
    import copy
    from types import SimpleNamespace

    from multisource.experiment.runner import TestSplitRead, information_used

    target.reads.clear()
    len(target.test), target.test.dataset  # size and attributes are not reads
    assert target.reads == set() and copy.copy(target.test).loader is target.test.loader
    next(iter(target.train))
    pool = SimpleNamespace(loaded=["era_1", "era_1"], checkpoints={"era_1": "a.ckpt"}, start_loaded=None)
    used = information_used(pool, target)
    assert used["target_data"] == ["train"] and used["source_models"] == ["era_1"] and used["source_data"] == []
    next(iter(target.test))
    with pytest.raises(TestSplitRead, match="test split"):
        information_used(pool, target)
    target.reads.clear()
