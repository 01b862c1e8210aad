"""``create_model(name, num_classes, ...)``: one entry point; names resolve to specs and backends."""

from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, DataConfig
from ..registry import Registry
from .checkpoint import CheckpointError, head_prefixes, load_backbone, load_state_dict_strict, read_checkpoint
from .registry import MODELS, ModelSpec

log = logging.getLogger(__name__)
# timm, transformers and huggingface_hub are imported inside the functions that use them: timm alone takes
# seconds to import, and registered names resolve (and tiny models build) without the other two.


class ModelError(ValueError):
    """Unknown model, unavailable weights, or a model that cannot be built as asked."""


@contextmanager
def offline() -> Iterator[None]:
    """Never touch the network while building models (the hub client would retry for about a minute)."""
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def resolve_model(name: str) -> ModelSpec:
    """A registered name or alias; otherwise any timm model name or Hugging Face image-classification id."""
    if name in MODELS:
        return MODELS.get(name)
    import timm

    if "/" in name:
        canonical = re.sub(r"[^A-Za-z0-9._-]+", "--", name)
        return ModelSpec(canonical, "hf", name)
    if timm.is_model(name):
        return ModelSpec(name, "timm", name)
    raise ModelError(f"Unknown model '{name}'. Registered: {', '.join(MODELS.list())}; any timm model name "
                     "or Hugging Face image-classification id (org/name) also works.")


BACKENDS: Registry[Callable[..., nn.Module]] = Registry("model backend")


def _timm_cached_weights(model_name: str) -> str | None:
    """Path of the model's default pretrained weights in the local Hugging Face cache, if any."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(model_name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        path = try_to_load_from_cache(hub_id, filename)
        if isinstance(path, str):
            return path
    return None


def pretrained_file(spec: ModelSpec) -> str | None:
    """The local file of a timm model's default pretrained weights (None if not cached, or a Hugging Face model,
    whose weights the hub client finds in its cache by id)."""
    return _timm_cached_weights(spec.source) if spec.backend == "timm" else None


def missing_weights_message(spec: ModelSpec) -> str:
    return (f"No pretrained weights for {spec.name} in the local cache. Pass --weights PATH, download them with "
            f"'python baseline_training/download_weights.py --model_name {spec.name}', or use --no-pretrained.")


@BACKENDS.register("timm")
def _build_timm(spec: ModelSpec, num_classes: int, pretrained: bool, weights: str | None,
                image_size: int | None) -> nn.Module:
    import timm

    kwargs: dict = {"num_classes": num_classes}
    if spec.takes_img_size and image_size:
        kwargs["img_size"] = image_size
    if pretrained:
        file = weights or _timm_cached_weights(spec.source)
        if file is None:
            raise ModelError(missing_weights_message(spec))
        # Both builds from one seed: a backbone parameter still equal to its random init was not in the file. timm
        # loads non-strictly whenever the class count differs from the weights' (always, here), so a file of
        # another architecture would otherwise leave the model silently random.
        with offline(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            try:
                model = timm.create_model(spec.source, pretrained=True, pretrained_cfg_overlay={"file": str(file)},
                                          **kwargs)
            except Exception as exc:  # noqa: BLE001  whatever torch/timm/safetensors raise for a bad file: one line
                raise ModelError(unusable_weights_message(file, spec, exc)) from None
            torch.manual_seed(0)
            init = timm.create_model(spec.source, pretrained=False, **kwargs)
        random = still_random(model, init)
        if random:
            raise ModelError(unusable_weights_message(file, spec, RuntimeError(
                f"Missing key(s): {len(random)} backbone tensor(s) are not in the file, e.g. {random[:3]}")))
        return model
    return timm.create_model(spec.source, pretrained=False, **kwargs)


def still_random(model: nn.Module, init: nn.Module) -> list[str]:
    """Backbone parameters of ``model`` equal to those of ``init`` (the same architecture built from the same
    seed without weights): what loading pretrained weights did not reach."""
    heads = head_prefixes(model)
    init_params = dict(init.named_parameters())
    return [name for name, p in model.named_parameters()
            if not name.startswith(heads) and torch.equal(p, init_params[name])]


def unusable_weights_message(file: str | Path, spec: ModelSpec, exc: BaseException) -> str:
    """Why a weights file could not be loaded into ``spec``'s architecture, in one line with the fix. torch's own
    message for a pickled payload suggests ``weights_only=False``, which would run code from the file: not
    repeated."""
    text = str(exc)
    if "weights_only" in text or "Unsupported global" in text:
        why = "it holds pickled Python objects, which are never loaded (they could run code)"
    elif isinstance(exc, RuntimeError) and ("size mismatch" in text or "Missing key" in text or "Unexpected key" in text):
        detail = text.split(": ", 1)[1][:120] if text.startswith("Missing key(s): ") else ""
        why = f"its tensors do not fit {spec.source} (saved for another architecture?){'; ' + detail if detail else ''}"
    else:
        why = f"{type(exc).__name__}: {text.splitlines()[0][:120] if text else 'unreadable'}"
    return (f"Cannot load pretrained weights {file} into {spec.name}: {why}. Pass --weights with a state dict saved for "
            f"{spec.source} (.pth, .bin or .safetensors), download them with 'python baseline_training/"
            f"download_weights.py --model_name {spec.name}', or use --no-pretrained.")


class HFClassifier(nn.Module):
    """Wraps a transformers image classifier so ``forward(x)`` returns logits like a timm model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


@BACKENDS.register("hf")
def _build_hf(spec: ModelSpec, num_classes: int, pretrained: bool, weights: str | None,
              image_size: int | None) -> nn.Module:
    from transformers import AutoConfig, AutoModelForImageClassification

    source = weights or spec.source
    with offline():
        try:
            if pretrained:
                model = AutoModelForImageClassification.from_pretrained(
                    source, num_labels=num_classes, ignore_mismatched_sizes=True, local_files_only=True)
            else:
                config = AutoConfig.from_pretrained(source, num_labels=num_classes, local_files_only=True)
                model = AutoModelForImageClassification.from_config(config)
        except OSError as exc:
            if weights:  # the user's own path was unusable: say so, not "not in the cache"
                raise ModelError(f"Cannot load {weights} as a Hugging Face image classifier ({type(exc).__name__}); "
                                 "pass --weights with the folder of a model saved with save_pretrained (config.json "
                                 "and weights), or use --no-pretrained.") from None
            raise ModelError(f"{missing_weights_message(spec)} ({type(exc).__name__})") from exc
    return HFClassifier(model)


def create_model(name: str, num_classes: int, *, pretrained: bool = False, weights: str | Path | None = None,
                 image_size: int | None = None) -> nn.Module:
    """Build model ``name`` with a ``num_classes`` head.

    ``pretrained`` loads ImageNet weights from ``weights`` or the local cache (never the network) and
    fails with instructions when there are none. Tiny models' "pretrained" weights are upstream
    checkpoints, resolved by the training layer and passed here as ``weights``.
    """
    spec = resolve_model(name)
    if num_classes < 1:
        raise ModelError(f"num_classes must be >= 1, got {num_classes}.")
    if weights is not None and not Path(weights).exists():
        raise ModelError(f"Pretrained weights file {weights} does not exist; pass an existing path to --weights.")
    if spec.pretrained == "upstream" and pretrained:
        if weights is None:
            raise ModelError(f"{spec.name} is pretrained on a dataset's upstream pool; run "
                             f"'python baseline_training/pretrain_upstream.py --model_name {spec.name}' "
                             "or use --no-pretrained.")
        model = BACKENDS.get(spec.backend)(spec, num_classes, False, None, image_size)
        load_backbone(model, weights)
        return model
    return BACKENDS.get(spec.backend)(spec, num_classes, pretrained, str(weights) if weights else None, image_size)


def data_config(model: nn.Module, image_size: int | None = None, *, hflip: bool = True) -> DataConfig:
    """Input size and normalisation that travel with the model (timm's pretrained config when present)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = tuple(cfg.get("mean", IMAGENET_MEAN))
    std = tuple(cfg.get("std", IMAGENET_STD))
    size = image_size or (cfg.get("input_size", (3, 224, 224))[-1])
    return replace(DataConfig(), image_size=int(size), mean=mean, std=std, hflip=hflip)


def count_parameters(model: nn.Module) -> dict[str, int]:
    return {"total": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def data_config_for(name: str, image_size: int | None = None, *, hflip: bool = True) -> DataConfig:
    """Like ``data_config`` but from the model's registered pretrained config, without building it."""
    spec = resolve_model(name)
    cfg: dict = {}
    if spec.backend == "timm":
        import timm

        pcfg = timm.models.get_pretrained_cfg(spec.source)
        cfg = pcfg.to_dict() if pcfg is not None else {}
    mean = tuple(cfg.get("mean", IMAGENET_MEAN))
    std = tuple(cfg.get("std", IMAGENET_STD))
    size = image_size or (cfg.get("input_size", (3, 224, 224))[-1])
    return replace(DataConfig(), image_size=int(size), mean=mean, std=std, hflip=hflip)


def download_pretrained(name: str) -> str:
    """Fetch the model's default pretrained weights into the local Hugging Face cache (uses the network;
    the only function here that does, and only when a user asks for it)."""
    spec = resolve_model(name)
    if spec.pretrained == "upstream":
        raise ModelError(f"{spec.name} is pretrained locally on a dataset's upstream pool; run "
                         "python baseline_training/pretrain_upstream.py instead.")
    if spec.backend == "hf":
        from huggingface_hub import snapshot_download

        return snapshot_download(spec.source)
    import timm
    from huggingface_hub import hf_hub_download

    cfg = timm.models.get_pretrained_cfg(spec.source)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        raise ModelError(f"timm has no Hugging Face hub weights registered for {spec.source}; pass --weights PATH.")
    for filename in ("model.safetensors", "pytorch_model.bin"):
        try:
            return hf_hub_download(hub_id, filename)
        except Exception as exc:  # try the next file name; report the last error
            last = exc
    raise ModelError(f"Could not download weights for {spec.name} from {hub_id}: {last}")


def load_checkpoint(path: str | Path, *, expected_model: str | None = None,
                    expected_classes: Sequence[str] | None = None, image_size: int | None = None,
                    device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the checkpoint's architecture and load its weights strictly. ``expected_model`` is a canonical
    name (resolved once by the caller's plan); checkpoints written by this project hold canonical names."""
    payload = read_checkpoint(path)
    name = payload["model_name"]
    if expected_model is not None and expected_model != name:
        raise CheckpointError(f"Checkpoint {path} holds model '{name}', but '{expected_model}' was asked for; "
                              "use the checkpoint of the right model (--model / --checkpoint_dir).")
    classes = list(payload["classes"])
    if expected_classes is not None and list(expected_classes) != classes:
        raise CheckpointError(
            f"Checkpoint {path} was trained for {len(classes)} classes {classes[:5]}..., but the data has "
            f"{len(expected_classes)} classes {list(expected_classes)[:5]}...; re-train it on this dataset.")
    size = image_size or payload.get("config", {}).get("image_size")
    model = create_model(name, num_classes=len(classes), pretrained=False, image_size=size)
    load_state_dict_strict(model, payload["state_dict"], source=str(path))
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return model.to(device), meta
