"""The merging baselines (task arithmetic, TIES, DARE, soups, recency-weighted FUSION): their math against PEFT
and numpy, the methods against those oracles on real tiny checkpoints that share a start, lazy tensor-by-tensor
reading, and what each method records."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from peft.utils import merge_utils

from multisource.config import ConfigError
from multisource.measure.meter import Meter
from multisource.methods import get_method, run_method, source_pool, target_data
from multisource.methods.fusion import FusionConfig
from multisource.methods.merge import (dare_drop, disjoint_mean, keep_above, magnitude_cutoff, model_magnitude_cutoff,
                                       running_mean_, task_vector_sum, tensor_mean, trim_by_magnitude,
                                       weighted_running_mean_)
from multisource.models.checkpoint import LazyCheckpoint, save_checkpoint
from multisource.models.factory import create_model

MODEL = "tiny-resnet"
BINS = ("era_1", "era_2", "era_3", "era_4")


def tensors(seed: int, k: int, shape=(6, 5)) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(k)]


# ---- math against PEFT and numpy --------------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 6), st.sampled_from([0.1, 0.2, 0.5, 0.9, 1.0]))
def test_streaming_ties_equals_peft_ties(seed, k, density):
    taus = tensors(seed, k)
    ours = disjoint_mean(lambda i: trim_by_magnitude(taus[i], density), k)
    torch.testing.assert_close(ours, merge_utils.ties(taus, torch.ones(k), density), rtol=1e-6, atol=1e-7)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 6))
def test_streaming_sum_equals_peft_task_arithmetic(seed, k):
    taus = tensors(seed, k)
    torch.testing.assert_close(task_vector_sum(lambda i: taus[i], k), merge_utils.task_arithmetic(taus, torch.ones(k)))


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 6))
def test_streaming_tensor_mean_equals_numpy_mean(seed, k):
    taus = tensors(seed, k)
    mean = np.mean(np.stack([t.double().numpy() for t in taus]), axis=0)
    np.testing.assert_allclose(tensor_mean(lambda i: taus[i], k).numpy(), mean, rtol=1e-5, atol=1e-6)
    assert tensor_mean(lambda i: taus[i], k).data_ptr() != taus[0].data_ptr()  # a new tensor, the first untouched


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.lists(st.integers(1, 300), min_size=1, max_size=6),
       st.sampled_from([0.01, 0.1, 0.2, 0.5, 0.9, 1.0]))
def test_model_magnitude_cutoff_equals_a_flattened_numpy_sort(seed, sizes, density):
    g = torch.Generator().manual_seed(seed)
    parts = [torch.randn(n, generator=g) * 10.0 ** float(torch.randint(-3, 3, (1,), generator=g)) for n in sizes]
    flat = np.abs(np.concatenate([t.numpy() for t in parts]))
    keep = max(1, int(density * flat.size))
    oracle = 0.0 if keep >= flat.size else float(np.sort(flat)[::-1][keep - 1])
    assert model_magnitude_cutoff(lambda: iter(parts), density) == oracle
    kept = sum(int((keep_above(t, oracle) != 0).sum()) for t in parts)
    assert kept == (flat.size if oracle == 0.0 else keep)  # no ties in random floats: exactly the share


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([0.05, 0.2, 0.5, 0.9]))
def test_a_per_tensor_cutoff_keeps_what_peft_keeps(seed, density):
    tau = tensors(seed, 1, (7, 9))[0]
    assert torch.equal(keep_above(tau, magnitude_cutoff(tau, density)), trim_by_magnitude(tau, density))


def test_ties_with_density_one_and_no_sign_conflict_is_the_mean():
    taus = [t.abs() + 0.1 for t in tensors(1, 4)]  # every entry positive in every vector: no conflict, none zero
    torch.testing.assert_close(disjoint_mean(lambda i: trim_by_magnitude(taus[i], 1.0), 4),
                               task_vector_sum(lambda i: taus[i], 4) / 4)


def test_trim_keeps_the_largest_magnitudes():
    tau = torch.tensor([0.5, -3.0, 0.1, 2.0, -0.2, 1.0, 0.0, -4.0, 0.3, 0.05])
    assert trim_by_magnitude(tau, 0.3).tolist() == [0.0, -3.0, 0.0, 2.0, 0.0, 0.0, 0.0, -4.0, 0.0, 0.0]


def test_dare_drop_is_seeded_unbiased_and_a_no_op_at_density_one():
    tau = torch.ones(200_000)
    state = torch.random.get_rng_state()
    a, b, c = dare_drop(tau, 0.3, 7), dare_drop(tau, 0.3, 7), dare_drop(tau, 0.3, 8)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global random state is untouched
    assert torch.equal(a, b) and not torch.equal(a, c)
    kept = (a != 0).float().mean().item()
    values = a.unique()
    assert abs(kept - 0.3) < 0.01 and len(values) == 2 and values[0] == 0 and values[1] == pytest.approx(1 / 0.3)
    assert abs(a.mean().item() - 1.0) < 0.02  # rescaled: the expected value is the task vector
    assert dare_drop(tau, 1.0, 7) is tau


def test_weighted_running_mean_equals_numpy_and_unit_weights_equal_running_mean():
    states = [{"w": t} for t in tensors(3, 4, (3, 3))]
    weights = [0.5 ** d for d in (3, 2, 1, 0)]
    acc = {"w": states[0]["w"].clone()}
    total = weights[0]
    for s, w in zip(states[1:], weights[1:]):
        total += w
        weighted_running_mean_(acc, s, w, total)
    expected = np.average(np.stack([s["w"].numpy() for s in states]), axis=0, weights=weights)
    np.testing.assert_allclose(acc["w"].numpy(), expected, rtol=1e-5, atol=1e-6)
    unit, plain = {"w": states[0]["w"].clone()}, {"w": states[0]["w"].clone()}
    for n, s in enumerate(states[1:], start=2):
        weighted_running_mean_(unit, s, 1.0, float(n))
        running_mean_(plain, s, n)
    assert torch.equal(unit["w"], plain["w"])


# ---- real tiny checkpoints that share a start --------------------------------------------------------------

@pytest.fixture(scope="module")
def shared_start_pool(digits_root, tmp_path_factory) -> dict:
    """A tiny-resnet 'pretrained start' and four sources = start + a different perturbation each (every
    parameter moved; the head too), saved as real checkpoints that name the start, as training does."""
    folder = tmp_path_factory.mktemp("merge_pool")
    classes = [str(d) for d in range(10)]
    torch.manual_seed(0)
    start = create_model(MODEL, 10, image_size=32)
    start_path = save_checkpoint(folder / "start.ckpt", start, model_name=MODEL, classes=classes,
                                 dataset="drift_digits", bin_name="upstream", config={"image_size": 32})
    base = {k: v.clone() for k, v in start.state_dict().items()}
    paths = {}
    for i, b in enumerate(BINS):
        g = torch.Generator().manual_seed(100 + i)
        model = create_model(MODEL, 10, image_size=32)
        with torch.no_grad():
            for name, v in model.state_dict().items():
                v.copy_(base[name] + 0.05 * torch.randn(v.shape, generator=g) if torch.is_floating_point(v)
                        else base[name] + i)
        paths[b] = save_checkpoint(folder / f"{b}.ckpt", model, model_name=MODEL, classes=classes,
                                   dataset="drift_digits", bin_name=b,
                                   config={"image_size": 32, "pretrained": True, "pretrained_from": str(start_path)})
    return {"paths": paths, "start": base, "start_path": start_path, "data_root": digits_root}


def run_merge(pool_info, method: str, bins=BINS, **config):
    target = target_data("drift_digits", "era_5", model=MODEL, data_root=pool_info["data_root"], batch_size=64, seed=1)
    meter = Meter("cpu")
    pool = source_pool({b: pool_info["paths"][b] for b in bins}, target, model=MODEL, residency=meter.models)
    result = run_method(method, pool, target, {"finetune_epochs": 0, **config}, meter)
    return result, meter, pool, target


def states(pool_info, bins=BINS) -> list[dict]:
    return [torch.load(pool_info["paths"][b], weights_only=True)["state_dict"] for b in bins]


def test_task_arithmetic_with_lambda_one_over_k_is_the_uniform_average(shared_start_pool):
    result, meter, pool, _ = run_merge(shared_start_pool, "task_arithmetic", lambdas=(0.25,))
    fusion, _, _, _ = run_merge(shared_start_pool, "fusion")
    srcs = states(shared_start_pool)
    for name, value in result.model.state_dict().items():
        if torch.is_floating_point(value):
            torch.testing.assert_close(value, torch.stack([s[name] for s in srcs]).mean(0), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(value, fusion.model.state_dict()[name], rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(value, srcs[0][name])  # integer buffers: the first source's
    rec = result.record
    assert rec["lambda"] == 0.25 and set(rec["lambda_val_accuracy"]) == {"0.25"} and rec["finetuned"] is False
    assert any(n.startswith("fc.") for n in rec["averaged_tensors"])  # the head: no shared start, averaged
    assert rec["start"] == str(shared_start_pool["start_path"])
    assert meter.models.max_resident == 2  # the merged model and the merged task vector, whatever K
    assert pool.loaded == ["era_1", *BINS]  # the first also built the architecture; each read once lazily


def test_lambda_is_chosen_on_val_and_recorded(shared_start_pool):
    result, _, _, target = run_merge(shared_start_pool, "task_arithmetic", lambdas=(0.0, 0.25, 1.0))
    scores = result.record["lambda_val_accuracy"]
    assert set(scores) == {"0", "0.25", "1"}
    assert scores[f"{result.record['lambda']:g}"] == max(scores.values())
    assert target.reads == {"target:val"}  # no target training, no test split


def test_ties_with_density_one_and_agreeing_signs_equals_task_arithmetic_of_the_mean(shared_start_pool, tmp_path):
    # sources whose moves from the start all have one sign: TIES's disjoint mean is then the plain mean
    start = shared_start_pool["start"]
    agreeing = {}
    for i, (b, path) in enumerate(shared_start_pool["paths"].items()):
        payload = torch.load(path, weights_only=True)
        for name, v in payload["state_dict"].items():
            if torch.is_floating_point(v):
                v.copy_(start[name] + (v - start[name]).abs() + 0.01)
        agreeing[b] = tmp_path / f"{b}.ckpt"
        torch.save(payload, agreeing[b])
    info = {**shared_start_pool, "paths": agreeing}
    ties, _, _, _ = run_merge(info, "ties", density=1.0, lambdas=(1.0,))
    ta, _, _, _ = run_merge(info, "task_arithmetic", lambdas=(0.25,))
    for name, value in ties.model.state_dict().items():
        torch.testing.assert_close(value, ta.model.state_dict()[name], rtol=1e-5, atol=1e-6)
    assert ties.record["trim"] == "per model" and ties.record["density"] == 1.0  # the default: the paper's rule


def numpy_ties(taus: list[dict[str, np.ndarray]], density: float, trim: str) -> dict[str, np.ndarray]:
    """TIES on task vectors flattened into one vector per source (the paper's and FusionBench's form): trim each
    to its top ``density`` share by magnitude over the whole model (or per tensor), elect signs by total mass,
    average the agreeing entries."""
    names = list(taus[0])
    sizes = [taus[0][n].size for n in names]
    flat = np.stack([np.concatenate([t[n].ravel() for n in names]) for t in taus]).astype(np.float64)
    if trim == "model":
        keep = max(1, int(density * flat.shape[1]))
        cut = np.sort(np.abs(flat), axis=1)[:, ::-1][:, keep - 1:keep]
        flat = np.where(np.abs(flat) >= cut, flat, 0.0)
    else:
        bounds = np.cumsum([0, *sizes])
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            part = flat[:, lo:hi]
            keep = int(density * (hi - lo))
            cut = np.sort(np.abs(part), axis=1)[:, ::-1][:, keep - 1:keep] if keep else np.full((len(part), 1), np.inf)
            flat[:, lo:hi] = np.where(np.abs(part) >= cut, part, 0.0)
    sign = np.where(flat.sum(0) >= 0, 1.0, -1.0)
    agree = np.sign(flat) == sign
    merged = np.where(agree, flat, 0.0).sum(0) / np.maximum(agree.sum(0), 1)
    out, at = {}, 0
    for n, size in zip(names, sizes):
        out[n] = merged[at:at + size].reshape(taus[0][n].shape)
        at += size
    return out


@pytest.mark.parametrize("trim", ["model", "tensor"])
def test_ties_trims_over_the_model_or_per_tensor_as_the_numpy_oracle(shared_start_pool, trim):
    result, _, _, _ = run_merge(shared_start_pool, "ties", density=0.2, lambdas=(1.0,), trim=trim)
    start = shared_start_pool["start"]
    vectors = [n for n in result.record["averaged_tensors"]]  # the head and buffers: averaged, not trimmed
    taus = [{n: (s[n] - start[n]).numpy() for n, v in s.items() if torch.is_floating_point(v)
             and n not in vectors} for s in states(shared_start_pool)]
    oracle = numpy_ties(taus, 0.2, trim)
    merged = result.model.state_dict()
    for n, tau in oracle.items():
        np.testing.assert_allclose(merged[n].numpy(), start[n].numpy() + tau, rtol=1e-5, atol=1e-6, err_msg=n)
    assert result.record["trim"] == f"per {trim}" and ("cutoffs" in result.record) == (trim == "model")


@pytest.mark.parametrize("merge, base", [("task_arithmetic", "task_arithmetic"), ("ties", "ties")])
def test_dare_with_no_drop_equals_its_base_merge(shared_start_pool, merge, base):
    lambdas = (0.3, 0.6)
    dare, _, _, _ = run_merge(shared_start_pool, "dare", drop_rate=0.0, merge=merge, density=0.5, lambdas=lambdas)
    extra = {"density": 0.5, "trim": "tensor"} if base == "ties" else {}  # DARE's TIES trims per tensor
    plain, _, _, _ = run_merge(shared_start_pool, base, lambdas=lambdas, **extra)
    for name, value in dare.model.state_dict().items():
        assert torch.equal(value, plain.model.state_dict()[name]), name
    dropped, _, _, _ = run_merge(shared_start_pool, "dare", drop_rate=0.5, lambdas=lambdas)
    again, _, _, _ = run_merge(shared_start_pool, "dare", drop_rate=0.5, lambdas=lambdas)
    w = "layer1.0.conv1.weight" if "layer1.0.conv1.weight" in again.model.state_dict() else \
        next(n for n, p in again.model.named_parameters() if p.dim() == 4)
    assert torch.equal(dropped.model.state_dict()[w], again.model.state_dict()[w])  # seeded
    assert not torch.equal(dropped.model.state_dict()[w], plain.model.state_dict()[w])


def test_greedy_soup_of_one_source_is_that_source(shared_start_pool):
    result, _, _, _ = run_merge(shared_start_pool, "soup", bins=("era_3",), mode="greedy")
    src = states(shared_start_pool, ("era_3",))[0]
    for name, value in result.model.state_dict().items():
        assert torch.equal(value, src[name])
    assert result.record["kept"] == ["era_3"] and result.record["steps"] == []


def test_greedy_soup_keeps_a_source_only_if_val_accuracy_does_not_drop(shared_start_pool):
    result, meter, pool, _ = run_merge(shared_start_pool, "soup", mode="greedy")
    rec = result.record
    scores = rec["source_val_accuracy"]
    assert rec["order"] == sorted(BINS, key=lambda b: (-scores[b], BINS.index(b)))
    best = scores[rec["order"][0]]
    for step in rec["steps"]:
        assert step["kept"] == (step["soup_val_accuracy"] >= best)
        best = max(best, step["soup_val_accuracy"]) if step["kept"] else best
    kept = states(shared_start_pool, rec["kept"])
    for name, value in result.model.state_dict().items():
        if torch.is_floating_point(value):
            torch.testing.assert_close(value, torch.stack([s[name] for s in kept]).mean(0), rtol=1e-5, atol=1e-6)
    assert meter.models.max_resident == 3  # the soup, its copy before the last addition, one source


def test_recency_weights_follow_the_distance_in_time_and_gamma_one_is_fusion(shared_start_pool):
    uniform, _, _, _ = run_merge(shared_start_pool, "fusion")
    flat, _, _, _ = run_merge(shared_start_pool, "fusion", source_weights="recency:1")
    for name, value in uniform.model.state_dict().items():
        assert torch.equal(value, flat.model.state_dict()[name])
    result, _, _, _ = run_merge(shared_start_pool, "fusion", source_weights="recency:0.5")
    distances = {"era_1": 4, "era_2": 3, "era_3": 2, "era_4": 1}  # from the target era_5
    weights = [0.5 ** distances[b] for b in BINS]
    assert result.record["weights"] == pytest.approx({b: w / sum(weights) for b, w in zip(BINS, weights)})
    srcs = states(shared_start_pool)
    name = next(n for n, v in result.model.state_dict().items() if v.dim() == 4)
    expected = np.average(np.stack([s[name].numpy() for s in srcs]), axis=0, weights=weights)
    np.testing.assert_allclose(result.model.state_dict()[name].numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("value", ["recency", "recency:0", "recency:-1", "recency:x", "newest"])
def test_bad_source_weights_are_named(value):
    with pytest.raises(ConfigError, match="source_weights.*'uniform' or 'recency:GAMMA'"):
        FusionConfig(source_weights=value)
    with pytest.raises(ConfigError, match="applies to mode 'params'"):
        FusionConfig(mode="logits", source_weights="recency:0.5")


def test_sources_without_a_shared_start_have_no_task_vectors(shared_start_pool, tmp_path):
    path = tmp_path / "era_1.ckpt"
    payload = torch.load(shared_start_pool["paths"]["era_1"], weights_only=True)
    payload["config"] = {"image_size": 32, "pretrained": False}
    torch.save(payload, path)
    info = {**shared_start_pool, "paths": {**shared_start_pool["paths"], "era_1": path}}
    with pytest.raises(Exception, match="not fine-tuned from one shared start"):
        run_merge(info, "ties")


def test_merging_configs_refuse_bad_values():
    for method, bad in (("ties", {"density": 1.5}), ("dare", {"drop_rate": 1.0}), ("dare", {"merge": "mean"}),
                        ("task_arithmetic", {"lambdas": ()}), ("soup", {"mode": "best"})):
        with pytest.raises(ConfigError):
            get_method(method).config_cls(**bad)


# ---- lazy reading -----------------------------------------------------------------------------------------

def _rss_file_kb() -> int:
    with open("/proc/self/status", encoding="utf-8") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssFile"))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc (Linux)")
def test_lazy_checkpoint_reads_exact_tensors_and_gives_their_pages_back(tmp_path):
    model = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(24)])  # 96 MiB of weights
    path = save_checkpoint(tmp_path / "big.ckpt", model, model_name=MODEL, classes=["a"])
    lazy = LazyCheckpoint(path)
    before = _rss_file_kb()
    for name, value in model.state_dict().items():
        assert torch.equal(lazy.read(name), value)
    grown_mib = (_rss_file_kb() - before) / 1024
    assert grown_mib < 16, grown_mib  # without giving pages back: about 96 MiB stay mapped and resident


def _mapping_resident_kib(path: Path) -> int:
    """This process's resident KiB of the mappings of the file ``path`` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            inside = line.endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="reads /proc/self/smaps (Linux)")
def test_a_merge_gives_back_each_checkpoints_whole_mapping(shared_start_pool, monkeypatch):
    """Reading a tensor also maps the pages around it (the kernel's fault-around), which the per-tensor release
    leaves: about 500 KiB of each tiny-resnet checkpoint here, 600 KiB of a resnet18's, adding up over K open
    checkpoints. A merge gives back each whole mapping once done with it."""
    from multisource.methods import base

    opened = []  # kept open past the merge, so that their mappings can be inspected after it
    real_open = base.SourcePool.open_lazy

    def keep(pool, name):
        opened.append(real_open(pool, name))
        return opened[-1]

    monkeypatch.setattr(base.SourcePool, "open_lazy", keep)
    target = target_data("drift_digits", "era_5", model=MODEL, data_root=shared_start_pool["data_root"])
    pool = source_pool(shared_start_pool["paths"], target, model=MODEL)
    run_method("ties", pool, target, {"lambdas": (1.0,), "finetune_epochs": 0})
    assert len(opened) == len(shared_start_pool["paths"])
    for ckpt in opened:
        assert _mapping_resident_kib(ckpt.path) <= 64, ckpt.path
    ckpt = opened[0]
    for name in ckpt.keys():
        ckpt.read(name)
    ckpt.release_pages()
    assert _mapping_resident_kib(ckpt.path) <= 64


@pytest.mark.parametrize("name", ["tiny-resnet", "tiny-vit", "tiny-efficientnet"])
def test_models_hold_no_reference_cycle_so_release_needs_no_garbage_collection(name):
    """SourcePool.release frees a model by dropping references (no gc.collect, ~0.8 s each); that is only right
    while the architectures, with gradients, hold no reference cycle."""
    import gc
    import weakref

    model = create_model(name, 10, image_size=32)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    ref = weakref.ref(model)
    gc.disable()
    try:
        del model
        assert ref() is None
    finally:
        gc.enable()


def test_pool_release_frees_the_model_without_a_collection(shared_start_pool):
    import gc
    import weakref

    target = target_data("drift_digits", "era_5", model=MODEL, data_root=shared_start_pool["data_root"])
    pool = source_pool(shared_start_pool["paths"], target, model=MODEL)
    model = pool.load("era_1")
    ref = weakref.ref(model)
    gc.disable()
    try:
        del model
        pool.release("source:era_1")
        assert ref() is None
    finally:
        gc.enable()


def test_a_held_models_tensors_read_like_a_mapped_checkpoints(tmp_path):
    """The paper models' ImageNet start is a held module: the merges read it through StateTensors, with the
    interface and values of a LazyCheckpoint of the same weights."""
    from multisource.models.checkpoint import StateTensors

    model = create_model(MODEL, 10, image_size=32)
    held, mapped = StateTensors(model.state_dict()), LazyCheckpoint(save_checkpoint(tmp_path / "m.ckpt", model,
                                                                                    model_name=MODEL, classes=["a"]))
    assert held.keys() == mapped.keys() and "fc.weight" in held
    for name in held.keys():
        assert held.shape(name) == mapped.shape(name) and torch.equal(held.read(name), mapped.read(name))


def test_recorded_val_accuracy_before_finetuning_is_that_of_the_weights_handed_on(shared_start_pool):
    """With BatchNorm recalibration per lambda, the kept weights carry the statistics they were scored with."""
    from multisource.training.loop import accuracy

    result, _, _, target = run_merge(shared_start_pool, "task_arithmetic", lambdas=(0.25, 0.5), recalibrate_bn=True,
                                     finetune_epochs=1, learning_rate=1e-3)
    before = create_model(MODEL, 10, image_size=32)
    before.load_state_dict(result.stages["before_finetune"])
    assert all(v.device.type == "cpu" for v in result.stages["before_finetune"].values())
    assert accuracy(before, target.val, torch.device("cpu")) == result.record["val_accuracy_before_finetune"]


def test_pages_are_given_back_only_for_tensors_inside_the_mapping():
    from multisource.models.checkpoint import _give_back_pages

    ordinary = torch.ones(1_000_000)
    _give_back_pages(ordinary, (0, 0))  # not inside the (empty) mapped range: left alone, never zeroed
    assert float(ordinary.sum()) == 1_000_000


def test_target_training_can_take_its_augmentation_per_batch_on_the_device(shared_start_pool):
    """--batch_augment: the target's train batches come as uint8 crops and are jittered and normalised per batch;
    a method trains on them like on any loader (the same images per epoch, the read noted), through the runner."""
    from multisource.data.batch_augment import DeviceBatches
    from multisource.options import ExperimentOptions

    target = target_data("drift_digits", "era_5", model=MODEL, data_root=shared_start_pool["data_root"],
                         batch_size=64, seed=1, batch_augment=True)
    assert isinstance(target.train.loader, DeviceBatches)
    x, _ = next(iter(target.train))
    assert x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32) and -3 < float(x.mean()) < 3
    meter = Meter("cpu")
    pool = source_pool(shared_start_pool["paths"], target, model=MODEL, residency=meter.models)
    result = run_method("fusion", pool, target, {"finetune_epochs": 1, "learning_rate": 1e-3}, meter)
    assert meter.report()["budget"]["target_train_images"] == target.train_size()
    assert "target:train" in target.reads and torch.isfinite(result.model(x)).all()

    from multisource.experiment.config import ExperimentConfig
    from multisource.experiment.runner import run_experiment

    folder = shared_start_pool["paths"]["era_1"].parent
    report = run_experiment(ExperimentConfig(method="fusion", target="era_5", sources=BINS,
                                             method_config={"finetune_epochs": 1, "learning_rate": 1e-3}),
                            ExperimentOptions(batch_augment=True, checkpoint_dir=str(folder), save_model=False,
                                              device="cpu", data_root=str(shared_start_pool["data_root"]),
                                              results_dir=str(folder / "results")))
    assert report.extra["options"]["batch_augment"] is True and report.budget.target_epochs == 1
