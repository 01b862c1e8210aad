"""Train/eval transforms (SPEC 4), parameterised by the model's data config (timm-style)."""

from __future__ import annotations

from dataclasses import dataclass

from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DataConfig:
    """What a model expects of its input; travels with the model (see models.factory.data_config)."""

    image_size: int = 224
    resize_ratio: float = 256 / 224  # resize to 256 then crop 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    hflip: bool = True
    color_jitter: tuple[float, float, float, float] = (0.2, 0.2, 0.2, 0.1)

    @property
    def resize_size(self) -> int:
        return int(round(self.image_size * self.resize_ratio))


def train_transform(cfg: DataConfig) -> T.Compose:
    ops: list = [T.Resize(cfg.resize_size), T.RandomCrop(cfg.image_size)]
    if cfg.hflip:
        ops.append(T.RandomHorizontalFlip())
    if any(cfg.color_jitter):
        ops.append(T.ColorJitter(*cfg.color_jitter))
    ops += [T.ToTensor(), T.Normalize(cfg.mean, cfg.std)]
    return T.Compose(ops)


def eval_transform(cfg: DataConfig) -> T.Compose:
    return T.Compose([T.Resize(cfg.resize_size), T.CenterCrop(cfg.image_size), T.ToTensor(),
                      T.Normalize(cfg.mean, cfg.std)])


def make_transform(cfg: DataConfig, train: bool) -> T.Compose:
    return train_transform(cfg) if train else eval_transform(cfg)
