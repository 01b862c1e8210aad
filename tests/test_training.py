"""Source training (Lightning): files written, what they hold, resumability, optimiser and schedule, drift."""

from __future__ import annotations

import csv
import json
import math
import shutil
from types import SimpleNamespace

import pytest
import torch

from multisource.config import ConfigError
from multisource.data.folder import DataError
from multisource.data.loaders import open_dataset, split_loader
from multisource.models import create_model, data_config, load_checkpoint, read_checkpoint_meta
from multisource.training.loop import accuracy
from multisource.training.optim import param_groups, warmup_cosine
from multisource.options import RunOptions, TrainOptions
from multisource.training.fit import SourceTrainConfig
from multisource.training.source import is_complete, source_checkpoint_path, train_source

CPU = torch.device("cpu")
CLASSES = [str(d) for d in range(10)]


def _test_accuracy(ckpt, handle, bin_name: str, split: str = "test") -> float:
    model, _ = load_checkpoint(ckpt)
    dcfg = data_config(model, 32, hflip=False)
    return accuracy(model, split_loader(handle, bin_name, split, dcfg, batch_size=128), CPU)


@pytest.fixture(scope="module")
def cross_era(trained_sources) -> dict[str, list[float]]:
    """Test accuracy of the era_1 and era_5 source models on every era."""
    handle = open_dataset("drift_digits", trained_sources["data_root"])
    ckpts = trained_sources["checkpoint_dir"]
    return {src: [_test_accuracy(ckpts / f"{src}.ckpt", handle, b) for b in trained_sources["bins"]]
            for src in ("era_1", "era_5")}


def test_train_source_writes_checkpoint_and_metrics(trained_sources):
    ckpts = trained_sources["checkpoint_dir"]
    card = open_dataset("drift_digits", trained_sources["data_root"]).card
    assert ckpts == trained_sources["results_dir"] / "drift_digits" / "baselines" / "tiny-resnet"
    for b in trained_sources["bins"]:
        report = json.loads((ckpts / f"{b}.json").read_text())
        assert report["status"] == "complete" and report["bin"] == b and report["model"] == "tiny-resnet"
        assert report["checkpoint"] == str(ckpts / f"{b}.ckpt")
        assert report == json.loads(json.dumps(trained_sources["reports"][b]))  # what train_source returned
        assert 0.0 <= report["test_accuracy"] <= 1.0
        assert report["test_accuracy"] == report["test"]["accuracy"]
        assert 1 <= report["best_epoch"] <= report["config"]["max_epochs"]
        assert report["train_images"] == card["bins"][b]["splits"]["train"]["count"]
        assert report["val_images"] == card["bins"][b]["splits"]["val"]["count"]
        assert report["test"]["num_samples"] == card["bins"][b]["splits"]["test"]["count"]
        assert report["test"]["confusion_matrix"] and len(report["test"]["confusion_matrix"]) == 10
        assert set(report["environment"]) >= {"python", "git_commit", "packages", "device"}
        assert is_complete(ckpts / f"{b}.ckpt")


def test_checkpoint_stores_classes_model_config_and_metrics(trained_sources):
    ckpts = trained_sources["checkpoint_dir"]
    upstream = trained_sources["results_dir"] / "drift_digits" / "upstream" / "tiny-resnet.ckpt"
    meta = read_checkpoint_meta(ckpts / "era_2.ckpt")
    report = trained_sources["reports"]["era_2"]
    assert (meta["model_name"], meta["classes"], meta["dataset"], meta["bin"]) == (
        "tiny-resnet", CLASSES, "drift_digits", "era_2")
    cfg = meta["config"]
    assert cfg == report["config"]  # the resolved training config, as run
    assert (cfg["bin"], cfg["dataset"], cfg["seed"], cfg["image_size"], cfg["pretrained"]) == (
        "era_2", "drift_digits", 0, 32, True)
    assert cfg["learning_rate"] == 1e-3  # tiny-resnet's recommended rate, resolved
    assert cfg["head_lr_multiplier"] == 10.0 and cfg["precision"] == "32"
    assert cfg["pretrained_from"] == str(upstream)  # every source starts from the shared upstream weights
    assert meta["metrics"] == {"val_accuracy": report["val_accuracy"], "best_epoch": report["best_epoch"],
                               "test_accuracy": report["test_accuracy"]}
    assert read_checkpoint_meta(upstream)["bin"] == "upstream"


def test_stored_metrics_are_those_of_the_stored_weights(trained_sources):
    """The checkpoint holds the best-validation weights, and its test accuracy is theirs."""
    handle = open_dataset("drift_digits", trained_sources["data_root"])
    ckpt = trained_sources["checkpoint_dir"] / "era_3.ckpt"
    meta = read_checkpoint_meta(ckpt)
    assert _test_accuracy(ckpt, handle, "era_3") == pytest.approx(meta["metrics"]["test_accuracy"], abs=1e-6)
    assert _test_accuracy(ckpt, handle, "era_3", "val") == pytest.approx(meta["metrics"]["val_accuracy"], abs=1e-6)


def test_training_logs_are_written(trained_sources):
    log_dir = trained_sources["checkpoint_dir"] / "logs" / "era_1"
    rows = list(csv.DictReader(open(log_dir / "csv" / "metrics.csv")))
    val = [r for r in rows if r.get("val_acc")]
    assert len(val) == trained_sources["reports"]["era_1"]["config"]["max_epochs"]  # one validation per epoch
    assert max(float(r["val_acc"]) for r in val) == pytest.approx(trained_sources["reports"]["era_1"]["val_accuracy"])
    assert list((log_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_drift_is_real_and_gradual(trained_sources, cross_era):
    """era_1's model is good on era_1, worse on each later era, worst on era_5, above chance throughout;
    era_5's model mirrors it."""
    own = [trained_sources["reports"][b]["test_accuracy"] for b in trained_sources["bins"]]
    early, late = cross_era["era_1"], cross_era["era_5"]
    print(f"own-era test accuracy {own}\nera_1 model on eras 1-5 {early}\nera_5 model on eras 1-5 {late}")
    assert early[0] == pytest.approx(own[0]) and late[4] == pytest.approx(own[4])
    assert min(own) >= 0.6, own  # every source model learned its own era
    assert early[0] > early[4] + 0.2, early
    assert early[4] == min(early[1:]), early  # the most distant era is the hardest
    assert all(b <= a + 0.05 for a, b in zip(early, early[1:])), early  # never better further away
    assert early[1] > early[4] + 0.1 and early[2] > early[4], early  # gradual: nearer eras are easier
    assert late[4] > late[0] + 0.2, late
    assert min(early + late) > 0.12, (early, late)  # still the same task: above chance (0.1)


def test_is_complete_rejects_damaged_or_unfinished_results(trained_sources, tmp_path):
    src = trained_sources["checkpoint_dir"]
    ckpt, js = tmp_path / "era_1.ckpt", tmp_path / "era_1.json"
    shutil.copy(src / "era_1.ckpt", ckpt)
    shutil.copy(src / "era_1.json", js)
    assert is_complete(ckpt)
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])  # truncated
    assert not is_complete(ckpt)
    ckpt.write_bytes(b"\x00" * 1000)  # corrupt
    assert not is_complete(ckpt)
    ckpt.write_bytes(data)
    assert is_complete(ckpt)
    js.write_text('{"status": "complete"')  # half-written JSON
    assert not is_complete(ckpt)
    js.write_text(json.dumps({"status": "running"}))
    assert not is_complete(ckpt)
    js.unlink()
    assert not is_complete(ckpt)
    assert not is_complete(tmp_path / "era_2.ckpt")


def test_checkpoint_path_is_deterministic_and_canonical(tmp_path):
    opts = RunOptions(results_dir=str(tmp_path))
    cfg = SourceTrainConfig(bin="era_2", model_name="test_resnet")
    assert source_checkpoint_path(cfg, opts) == tmp_path / "drift_digits" / "baselines" / "tiny-resnet" / "era_2.ckpt"
    opts = RunOptions(results_dir=str(tmp_path), checkpoint_dir=str(tmp_path / "mine"))
    assert source_checkpoint_path(cfg, opts) == tmp_path / "mine" / "era_2.ckpt"


def test_source_training_is_planned_once_dataset_opened_and_bins_checked(digits_root, tmp_path):
    from multisource.training.all_bins import plan_sources

    opts = TrainOptions(data_root=str(digits_root), results_dir=str(tmp_path))
    cfg = SourceTrainConfig(dataset="drift_digits")
    every = plan_sources(cfg, opts)
    assert every.bins == tuple(every.handle.bins) == ("era_1", "era_2", "era_3", "era_4", "era_5")
    assert every.handle.root == digits_root.resolve() and every.config is cfg
    assert plan_sources(cfg, opts, ["era_3", "era_1"]).bins == ("era_3", "era_1")  # as asked
    assert plan_sources(cfg, opts, []).bins == ()  # the upstream pretraining trains no bin
    with pytest.raises(DataError, match=r"Unknown bin\(s\) \['era_9'\] for dataset drift_digits"):
        plan_sources(cfg, opts, ["era_1", "era_9"])
    assert not any(tmp_path.iterdir())  # planning writes nothing


def test_train_source_errors_before_training(digits_root, tmp_path):
    opts = TrainOptions(data_root=str(digits_root), results_dir=str(tmp_path), progress=False)
    with pytest.raises(ConfigError, match=r"No bin given; pass one of \['era_1', "):
        train_source(SourceTrainConfig(bin=""), opts)
    with pytest.raises(DataError, match=r"Unknown bin\(s\) \['era_6'\]"):
        train_source(SourceTrainConfig(bin="era_6"), opts)
    assert not list(tmp_path.rglob("*.ckpt"))


def test_param_groups_give_the_head_ten_times_the_backbone_lr():
    model = create_model("tiny-resnet", 10)
    groups = param_groups(model, 1e-3, 0.01, 10.0)
    assert [g["lr"] for g in groups] == [1e-3, pytest.approx(1e-2)]
    assert [g["weight_decay"] for g in groups] == [0.01, 0.01]
    assert {id(p) for p in groups[1]["params"]} == {id(model.fc.weight), id(model.fc.bias)}
    all_ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(all_ids) == sorted(id(p) for p in model.parameters()) and len(set(all_ids)) == len(all_ids)
    model.fc.requires_grad_(False)
    assert len(param_groups(model, 1e-3, 0.01, 10.0)) == 1  # frozen parameters are left out


def test_lightning_module_optimiser_and_schedule():
    from multisource.training.module import ClassifierModule

    module = ClassifierModule(create_model("tiny-resnet", 10), learning_rate=2e-3, weight_decay=0.05,
                              head_lr_multiplier=10.0, warmup_epochs=2.0)
    module.trainer = SimpleNamespace(estimated_stepping_batches=100, max_epochs=10)
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]
    assert isinstance(opt, torch.optim.AdamW) and conf["lr_scheduler"]["interval"] == "step"
    assert [g["initial_lr"] for g in opt.param_groups] == [2e-3, pytest.approx(2e-2)]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.05]
    lrs, ratios = [], []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        ratios.append(opt.param_groups[1]["lr"] / opt.param_groups[0]["lr"])
        opt.step()
        sched["scheduler"].step()
    # 2 of 10 epochs of 10 steps each warm up (20 steps), then cosine to zero at step 100
    assert lrs[0] == pytest.approx(2e-3 / 21)
    assert lrs[19] == pytest.approx(2e-3 * 20 / 21)
    assert lrs[20] == pytest.approx(2e-3)
    assert lrs[60] == pytest.approx(1e-3)
    assert ratios == pytest.approx([10.0] * 100)  # the head stays at 10x through warm-up and decay
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_warmup_cosine_oracle_values():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = warmup_cosine(opt, total_steps=10, warmup_steps=2)
    lrs = []
    for _ in range(11):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [1 / 3, 2 / 3, 1.0, 0.9619397662556434, 0.8535533905932737, 0.6913417161825449, 0.5,
                0.3086582838174551, 0.14644660940672624, 0.03806023374435663, 0.0]
    assert lrs == pytest.approx(expected, abs=1e-12)


def test_warmup_cosine_edge_cases():
    def first_lrs(total, warmup, n):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = warmup_cosine(opt, total, warmup)
        out = []
        for _ in range(n):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    assert first_lrs(4, 0, 5) == pytest.approx([1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5,
                                                0.5 * (1 + math.cos(3 * math.pi / 4)), 0.0])
    assert first_lrs(3, 10, 4) == pytest.approx([1 / 3, 2 / 3, 1.0, 0.0])  # warm-up clamped below the total
    assert first_lrs(0, 0, 3) == pytest.approx([1.0, 0.0, 0.0])  # zero steps: treated as one
