"""Canonical model names, the paper's spellings as aliases, and per-model defaults."""

from __future__ import annotations

from dataclasses import dataclass

from ..registry import Registry


@dataclass(frozen=True)
class ModelSpec:
    name: str  # canonical name, used in file names
    backend: str  # "timm" or "hf"
    source: str  # timm model name or Hugging Face id
    learning_rate: float = 1e-4  # recommended source-training learning rate (SPEC 4)
    pretrained: str = "imagenet"  # "imagenet" (local weights/cache), "upstream" (tiny models), "none"
    published_params_m: float | None = None  # with a 1000-class head
    takes_img_size: bool = False  # the architecture is built for a fixed input size (ViTs)
    tiny: bool = False


MODELS: Registry[ModelSpec] = Registry("model")


def _add(spec: ModelSpec, *aliases: str) -> None:
    MODELS.register(spec.name, spec, aliases=aliases)


_add(ModelSpec("mobilevit-xxs", "timm", "mobilevit_xxs", 3e-4, published_params_m=1.3),
     "mobilevit_xxs", "mobilevit-xx-small", "apple/mobilevit-xx-small")
_add(ModelSpec("mobilevit-xs", "timm", "mobilevit_xs", 3e-4, published_params_m=2.3),
     "mobilevit_xs", "mobilevit-x-small", "apple/mobilevit-x-small")
_add(ModelSpec("resnet-50", "timm", "resnet50", 1e-4, published_params_m=25.6),
     "resnet50", "resnet_50", "microsoft/resnet-50")
_add(ModelSpec("efficientnet-b1", "timm", "efficientnet_b1", 2e-4, published_params_m=7.8),
     "efficientnet_b1", "google/efficientnet-b1")
# Tiny real architectures for the demo and tests; "pretrained" means pretrained on the dataset's upstream pool.
_add(ModelSpec("tiny-resnet", "timm", "test_resnet", 1e-3, pretrained="upstream", tiny=True), "test_resnet")
_add(ModelSpec("tiny-vit", "timm", "test_vit", 1e-3, pretrained="upstream", takes_img_size=True, tiny=True),
     "test_vit")
_add(ModelSpec("tiny-efficientnet", "timm", "test_efficientnet", 1e-3, pretrained="upstream", tiny=True),
     "test_efficientnet")


def list_models() -> list[str]:
    return MODELS.list()
