"""A loader that can feed a GPU: uint8 crops from the packed cache, colour jitter and normalisation applied to
whole batches as tensor operations on the training device.

The train transform of SPEC 4 (resize 256, random crop 224, horizontal flip, colour jitter 0.2/0.2/0.2/0.1,
normalise) splits into a cheap geometric part, done per image on uint8 pixels in the loader (with the packed
cache the resize is the identity and the crop a slice), and a costly photometric part, done here per batch:
each image still draws its own brightness, contrast, saturation and hue factors and its own order of the four
(as torchvision's ``ColorJitter`` does per call), so the augmentation distribution is the per-image one
(tests/test_batch_augment.py compares its statistics with the PIL path).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as F

from .folder import BinSplitDataset
from .transforms import DataConfig

_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


class UInt8Crops(Dataset):
    """A split's images as uint8 ``(3, S, S)`` tensors after the geometric part of the transform (resize to
    ``resize_size``, random or centre crop, random flip); the labels as they are. From the packed cache (images
    stored at ``resize_size``) the pixels equal the PIL path's; from image folders the tensor resize differs
    from PIL's by interpolation rounding."""

    def __init__(self, base: BinSplitDataset, cfg: DataConfig, train: bool) -> None:
        self.base, self.cfg, self.train = base, cfg, train
        self.targets = base.targets

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        load = getattr(self.base, "load_array", None)  # the packed cache hands out pixels without PIL
        pixels = load(index) if load is not None else np.asarray(self.base.load_image(index))
        # a PIL image's and a memory map's arrays are read-only, which torch.from_numpy warns about: copy them (a
        # small image; the crop below copies anyway)
        img = torch.from_numpy(np.array(pixels, copy=True)).permute(2, 0, 1)  # HWC -> CHW, uint8
        size, crop = self.cfg.resize_size, self.cfg.image_size
        if min(img.shape[1:]) != size:
            img = F.resize(img, [size], antialias=True)
        if self.train:
            h, w = img.shape[1:]
            top = int(torch.randint(0, h - crop + 1, (1,)))
            left = int(torch.randint(0, w - crop + 1, (1,)))
            img = img[:, top:top + crop, left:left + crop]
            if self.cfg.hflip and torch.rand(1) < 0.5:
                img = img.flip(-1)
        else:
            img = F.center_crop(img, [crop])
        return img.contiguous(), self.base.targets[index]


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)


class BatchAugment(nn.Module):
    """uint8 ``(B, 3, S, S)`` -> normalised float; with ``train``, colour jitter drawn per image: brightness,
    contrast and saturation factors uniform in ``[1 - j, 1 + j]``, hue shift in ``[-h, h]``, the four in a
    random order per image (at each of the four positions, each op runs on the images whose order puts it there)."""

    def __init__(self, cfg: DataConfig, train: bool) -> None:
        super().__init__()
        self.train_mode, self.jitter = train, cfg.color_jitter
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().div_(255)
        if self.train_mode and any(self.jitter):
            x = self._jitter(x)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def _jitter(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        bright, contrast, sat, hue = self.jitter
        uniform = lambda lo, hi: torch.empty(b, 1, 1, 1).uniform_(lo, hi)  # noqa: E731  (drawn on the CPU RNG)
        factors = [uniform(max(0.0, 1 - bright), 1 + bright), uniform(max(0.0, 1 - contrast), 1 + contrast),
                   uniform(max(0.0, 1 - sat), 1 + sat), uniform(-hue, hue)]  # lower ends clipped at 0, as torchvision
        order = torch.argsort(torch.rand(b, 4), dim=1)  # a random permutation of the 4 ops per image
        ops = (self._brightness, self._contrast, self._saturation, self._hue)
        enabled = (bright, contrast, sat, hue)
        for position in range(4):
            for op_index, op in enumerate(ops):
                if not enabled[op_index]:
                    continue
                rows = (order[:, position] == op_index).nonzero().flatten()
                if len(rows):  # each op runs once per image: on the images whose order puts it here
                    x[rows.to(x.device)] = op(x[rows.to(x.device)], factors[op_index][rows].to(x.device))
        return x

    @staticmethod
    def _brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        return (x * f).clamp_(0, 1)

    @staticmethod
    def _contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
        return (f * x + (1 - f) * mean).clamp_(0, 1)

    @staticmethod
    def _saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        return (f * x + (1 - f) * _gray(x)).clamp_(0, 1)

    @staticmethod
    def _hue(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """Shift each image's hue by its ``f`` (a fraction of a turn), as torchvision's ``adjust_hue`` does through
        HSV, but straight from the chroma: value and chroma stay, only the hue sector moves (fewer passes)."""
        r, g, b = x.unbind(1)
        value, low = x.amax(dim=1), x.amin(dim=1)
        chroma = value - low
        safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
        hue = torch.where(value == r, ((g - b) / safe) % 6,
                          torch.where(value == g, (b - r) / safe + 2, (r - g) / safe + 4))  # in sectors, [0, 6)
        hue = ((hue / 6 + f.view(-1, 1, 1)) % 1.0) * 6
        channels = [value - chroma * torch.clamp(torch.minimum(k, 4 - k), 0, 1)
                    for k in ((n + hue) % 6 for n in (5.0, 3.0, 1.0))]  # the standard HSV -> RGB, per channel
        return torch.stack(channels, dim=1)


class DeviceBatches:
    """A data loader whose batches are moved to ``device`` and augmented there (``BatchAugment``); has the
    loader's ``dataset``, ``batch_size`` and length, so training code uses it like any loader."""

    def __init__(self, loader: DataLoader, augment: BatchAugment, device: torch.device) -> None:
        self.loader, self.augment, self.device = loader, augment.to(device), device
        self.dataset, self.batch_size = loader.dataset, loader.batch_size

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.loader:
            yield self.augment(x.to(self.device, non_blocking=True)), y
