"""Checkpoints: exact round trip, metadata, strict loading with clear errors, backbone-only loading."""

from __future__ import annotations

import pytest
import torch

from multisource.models import CheckpointError, create_model, load_checkpoint, read_checkpoint_meta, save_checkpoint
from multisource.models.checkpoint import head_prefixes, load_backbone, load_state_dict_strict

CLASSES = [str(d) for d in range(10)]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("tiny-resnet", 10, image_size=32)
    with torch.no_grad():  # make the BatchNorm buffers non-default so they are checked too
        model.train()(torch.randn(8, 3, 32, 32))
    model.eval()
    path = tmp_path_factory.mktemp("ckpt") / "sub" / "era_1.ckpt"
    save_checkpoint(path, model, model_name="tiny-resnet", classes=CLASSES, dataset="drift_digits",
                    bin_name="era_1", config={"image_size": 32, "max_epochs": 2}, metrics={"test_accuracy": 0.5})
    return model, path


def test_round_trip_is_exact(saved):
    model, path = saved
    loaded, meta = load_checkpoint(path)
    own, back = model.state_dict(), loaded.state_dict()
    assert list(own) == list(back)
    for key in own:
        assert torch.equal(own[key], back[key]), key
    assert any(k.endswith("running_mean") for k in own)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded.eval()(x))
    assert not list(path.parent.glob(".*.tmp"))  # atomic write left no temp file


def test_metadata_is_stored_beside_the_weights(saved):
    _, path = saved
    meta = read_checkpoint_meta(path)
    assert meta["format"] == "multisource-checkpoint" and meta["version"] == 1
    assert (meta["model_name"], meta["classes"], meta["num_classes"]) == ("tiny-resnet", CLASSES, 10)
    assert (meta["dataset"], meta["bin"]) == ("drift_digits", "era_1")
    assert meta["config"] == {"image_size": 32, "max_epochs": 2}
    assert meta["metrics"] == {"test_accuracy": 0.5}
    assert "state_dict" not in meta
    # plain torch can read it without Lightning or this package's classes
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw["state_dict"]) == set(saved[0].state_dict())


def test_expected_model_and_classes_are_checked(saved):
    _, path = saved
    # the caller hands down the canonical name its plan resolved (an alias was resolved there, once)
    loaded, _ = load_checkpoint(path, expected_model="tiny-resnet", expected_classes=CLASSES)
    assert loaded.fc.out_features == 10
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, expected_model="tiny-vit")
    assert str(info.value).startswith(f"Checkpoint {path} holds model 'tiny-resnet', but 'tiny-vit' was asked for")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, expected_classes=["F", "M"])
    assert "was trained for 10 classes" in str(info.value) and "the data has 2 classes" in str(info.value)


def test_strict_loading_refuses_another_class_count(saved):
    model, _ = saved
    other = create_model("tiny-resnet", 5, image_size=32)
    with pytest.raises(CheckpointError) as info:
        load_state_dict_strict(other, model.state_dict(), source="ckpt X")
    msg = str(info.value)
    assert msg.startswith("ckpt X does not fit this model: shape mismatch in ['fc.bias', 'fc.weight']")
    assert "another architecture or class count" in msg


def test_strict_loading_refuses_another_architecture(saved):
    model, _ = saved
    other = create_model("tiny-efficientnet", 10, image_size=32)
    with pytest.raises(CheckpointError) as info:
        load_state_dict_strict(other, model.state_dict())
    msg = str(info.value)
    assert "missing keys" in msg and "unexpected keys" in msg


def test_state_dict_with_a_missing_head_is_refused(saved):
    model, _ = saved
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    with pytest.raises(CheckpointError, match=r"missing keys \['fc.bias', 'fc.weight'\]"):
        load_state_dict_strict(create_model("tiny-resnet", 10), state)


def test_load_checkpoint_refuses_weights_that_do_not_fit_its_header(saved, tmp_path):
    """A checkpoint whose weights do not match its own model name or class list is refused, not patched."""
    model, _ = saved
    wrong_arch = tmp_path / "wrong_arch.ckpt"
    save_checkpoint(wrong_arch, create_model("tiny-efficientnet", 10), model_name="tiny-resnet", classes=CLASSES)
    with pytest.raises(CheckpointError, match=f"{wrong_arch} does not fit this model: .*missing keys"):
        load_checkpoint(wrong_arch)
    wrong_count = tmp_path / "wrong_count.ckpt"
    save_checkpoint(wrong_count, model, model_name="tiny-resnet", classes=CLASSES[:5],
                    config={"image_size": 32})
    with pytest.raises(CheckpointError, match=r"shape mismatch in \['fc.bias', 'fc.weight'\] \(e.g. \(10,\) vs \(5,\)\)"):
        load_checkpoint(wrong_count)


def test_non_checkpoint_files_fail_clearly(tmp_path):
    missing = tmp_path / "era_9.ckpt"
    with pytest.raises(CheckpointError, match=f"Checkpoint {missing} does not exist. Train it first"):
        load_checkpoint(missing)
    text = tmp_path / "notes.ckpt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match=f"Cannot read checkpoint {text}: not a readable PyTorch checkpoint .*delete it and re-train"):
        load_checkpoint(text)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match=f"{foreign} is not a multisource checkpoint"):
        read_checkpoint_meta(foreign)
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(CheckpointError, match="is not a multisource checkpoint"):
        load_checkpoint(tensor)


def test_truncated_checkpoint_fails_clearly(saved, tmp_path):
    _, path = saved
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match=f"Cannot read checkpoint {cut}"):
        load_checkpoint(cut)


def test_load_backbone_reinitialises_only_a_mismatching_head(saved):
    model, path = saved
    torch.manual_seed(1)
    five = create_model("tiny-resnet", 5, image_size=32)
    head_before = {k: v.clone() for k, v in five.state_dict().items() if k.startswith("fc.")}
    load_backbone(five, path)
    source = model.state_dict()
    for key, value in five.state_dict().items():
        if key.startswith("fc."):
            assert torch.equal(value, head_before[key]), key  # new head kept its own initialisation
        else:
            assert torch.equal(value, source[key]), key
    ten = create_model("tiny-resnet", 10, image_size=32)
    load_backbone(ten, path)  # same class count: the head is loaded too
    assert all(torch.equal(v, source[k]) for k, v in ten.state_dict().items())


def test_load_backbone_refuses_another_architecture(saved):
    _, path = saved
    with pytest.raises(CheckpointError, match="do not fit backbone tensor .* another architecture"):
        load_backbone(create_model("tiny-efficientnet", 10, image_size=32), path)


def test_create_model_from_upstream_weights(saved):
    model, path = saved
    fresh = create_model("tiny-resnet", 3, pretrained=True, weights=path, image_size=32)
    assert fresh.fc.out_features == 3
    assert torch.equal(fresh.conv1[0].weight, model.conv1[0].weight)


def test_head_prefixes_follow_the_model():
    assert head_prefixes(create_model("tiny-resnet", 10)) == ("fc.",)
    assert head_prefixes(create_model("tiny-efficientnet", 10)) == ("classifier.",)
    assert head_prefixes(create_model("tiny-vit", 10, image_size=32)) == ("head.",)
