"""Model names, aliases, parameter counts, and failing fast (offline) when pretrained weights are missing."""

from __future__ import annotations

import time

import pytest
import torch

from multisource.models import MODELS, ModelError, create_model, data_config, resolve_model
from multisource.models.factory import count_parameters


@pytest.mark.parametrize("name, millions", [
    ("mobilevit-xxs", 1.27), ("mobilevit-xs", 2.32), ("resnet-50", 25.56), ("efficientnet-b1", 7.79),
])
def test_paper_models_have_the_published_parameter_counts(name, millions):
    model = create_model(name, 1000, pretrained=False)
    total = count_parameters(model)["total"]
    assert round(total / 1e6, 2) == millions
    assert round(total / 1e6, 1) == MODELS.get(name).published_params_m


@pytest.mark.parametrize("alias, canonical", [
    ("apple/mobilevit-xx-small", "mobilevit-xxs"), ("mobilevit-xx-small", "mobilevit-xxs"),
    ("mobilevit_xxs", "mobilevit-xxs"), ("Apple/MobileViT-XX-Small", "mobilevit-xxs"),
    ("apple/mobilevit-x-small", "mobilevit-xs"), ("resnet50", "resnet-50"), ("microsoft/resnet-50", "resnet-50"),
    ("google/efficientnet-b1", "efficientnet-b1"), ("efficientnet_b1", "efficientnet-b1"),
    ("test_resnet", "tiny-resnet"), ("test_vit", "tiny-vit"), ("tiny-resnet", "tiny-resnet"),
])
def test_aliases_resolve_to_one_canonical_name(alias, canonical):
    assert resolve_model(alias).name == canonical


def test_any_timm_name_or_hf_id_is_accepted():
    spec = resolve_model("resnet18")
    assert (spec.name, spec.backend, spec.source) == ("resnet18", "timm", "resnet18")
    spec = resolve_model("someorg/some-vit")
    assert (spec.name, spec.backend, spec.source) == ("someorg--some-vit", "hf", "someorg/some-vit")


def test_unknown_model_is_a_clear_error_listing_choices():
    with pytest.raises(ModelError) as info:
        resolve_model("mobilevit-xxxl")
    msg = str(info.value)
    assert msg.startswith("Unknown model 'mobilevit-xxxl'. Registered: efficientnet-b1, mobilevit-xs, "
                          "mobilevit-xxs, resnet-50, tiny-efficientnet, tiny-resnet, tiny-vit;")
    with pytest.raises(ModelError, match="Unknown model"):
        create_model("mobilevit-xxxl", 10)


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    """No Hugging Face cache anywhere, and the hub told to stay offline."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    return tmp_path / "hf"


@pytest.mark.parametrize("name", ["mobilevit-xxs", "resnet-50", "google/efficientnet-b1"])
def test_missing_pretrained_weights_fail_fast_naming_the_fix(name, empty_hf_cache):
    t0 = time.monotonic()
    with pytest.raises(ModelError) as info:
        create_model(name, 10, pretrained=True)
    assert time.monotonic() - t0 < 10  # no network retries
    msg = str(info.value)
    canonical = resolve_model(name).name
    assert f"No pretrained weights for {canonical} in the local cache" in msg
    assert "--no-pretrained" in msg and "--weights PATH" in msg


def test_hf_model_without_a_local_copy_fails_fast(empty_hf_cache):
    t0 = time.monotonic()
    with pytest.raises(ModelError, match="--no-pretrained"):
        create_model("someorg/not-cached-classifier", 10, pretrained=True)
    assert time.monotonic() - t0 < 10


def test_weights_file_must_exist(tmp_path):
    with pytest.raises(ModelError, match=f"Pretrained weights file {tmp_path / 'w.ckpt'} does not exist"):
        create_model("tiny-resnet", 10, pretrained=True, weights=tmp_path / "w.ckpt")


def test_tiny_model_pretrained_needs_its_upstream_weights():
    with pytest.raises(ModelError) as info:
        create_model("tiny-resnet", 10, pretrained=True)
    msg = str(info.value)
    assert "pretrain_upstream.py --model_name tiny-resnet" in msg and "--no-pretrained" in msg


def test_num_classes_must_be_positive():
    with pytest.raises(ModelError, match="num_classes must be >= 1, got 0"):
        create_model("tiny-resnet", 0)


@pytest.mark.parametrize("name", ["tiny-resnet", "tiny-vit", "tiny-efficientnet"])
def test_tiny_models_build_small_and_run_at_32px(name):
    model = create_model(name, 10, image_size=32).eval()
    assert 0.1e6 <= count_parameters(model)["total"] <= 0.5e6
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_data_config_travels_with_the_model():
    model = create_model("resnet-50", 10)
    cfg = data_config(model)
    assert cfg.image_size == 224 and cfg.resize_size == 256
    assert cfg.mean == pytest.approx((0.485, 0.456, 0.406)) and cfg.std == pytest.approx((0.229, 0.224, 0.225))
    tiny = data_config(create_model("tiny-resnet", 10), 32, hflip=False)
    assert tiny.image_size == 32 and tiny.hflip is False
    assert tiny.mean == tuple(model_cfg_mean("test_resnet"))


def model_cfg_mean(timm_name: str) -> tuple:
    import timm

    return tuple(timm.models.get_pretrained_cfg(timm_name).mean)
