"""The batched augmentation (multisource.data.batch_augment) against the per-image PIL transforms: the same
pixels without jitter, the same distribution with it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from multisource.data.batch_augment import BatchAugment, DeviceBatches, UInt8Crops
from multisource.data.loaders import make_loader
from multisource.data.transforms import DataConfig, make_transform

CFG = DataConfig(image_size=32, resize_ratio=40 / 32)  # resize 40 (the stored size here), crop 32


class Images:
    """A stand-in split: smooth, saturated 40 x 48 images (short side 40, so the resize is the identity)."""

    def __init__(self, n: int = 12, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:40, 0:48] / 48.0
        self.arrays = []
        for _ in range(n):
            base = rng.uniform(0.2, 0.8, 3)
            tilt = rng.uniform(-0.4, 0.4, (2, 3))
            img = base + yy[..., None] * tilt[0] + xx[..., None] * tilt[1]
            self.arrays.append((np.clip(img, 0, 1) * 255).astype(np.uint8))
        self.targets = list(range(n))

    def __len__(self) -> int:
        return len(self.arrays)

    def load_image(self, i: int) -> Image.Image:
        return Image.fromarray(self.arrays[i])

    def load_array(self, i: int) -> np.ndarray:
        return self.arrays[i].copy()


def test_without_jitter_the_batched_path_gives_the_pil_pixels():
    images = Images()
    pil = torch.stack([make_transform(CFG, train=False)(images.load_image(i)) for i in range(len(images))])
    crops = torch.stack([UInt8Crops(images, CFG, train=False)[i][0] for i in range(len(images))])
    torch.testing.assert_close(BatchAugment(CFG, train=False)(crops), pil, rtol=0, atol=1e-6)


class ReadOnlyImages(Images):
    """Pixels as image folders and the packed cache hand them out: read-only arrays (a PIL image's, a memory
    map's)."""

    def load_array(self, i: int) -> np.ndarray:
        view = self.arrays[i].view()
        view.flags.writeable = False
        return view


@pytest.mark.parametrize("source", ["pil", "array"])
def test_read_only_pixels_give_crops_without_a_warning(source):
    images = ReadOnlyImages()
    if source == "pil":
        images.load_array = None  # the image-folder path: np.asarray of a PIL image is read-only
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns about a non-writable array once per process
        crop, _ = UInt8Crops(images, CFG, train=True)[0]
    assert crop.shape == (3, 32, 32) and crop.dtype == torch.uint8


def summaries(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per image: channel means (N, 3) and the pixel standard deviation (N,)."""
    return x.mean(dim=(2, 3)).numpy(), x.flatten(1).std(dim=1).numpy()


def pil_draws(images: Images, draws: int) -> torch.Tensor:
    t = make_transform(CFG, train=True)
    return torch.stack([t(images.load_image(i)) for _ in range(draws) for i in range(len(images))])


def batch_draws(images: Images, draws: int, cfg: DataConfig = CFG) -> torch.Tensor:
    crops = UInt8Crops(images, cfg, train=True)
    aug = BatchAugment(cfg, train=True)
    return torch.cat([aug(torch.stack([crops[i][0] for i in range(len(images))])) for _ in range(draws)])


def within_image_spread(x: torch.Tensor, n: int) -> np.ndarray:
    """How much the augmentation moves each image's channel means: the std over draws, averaged over images."""
    means, _ = summaries(x)
    return means.reshape(-1, n, 3).std(axis=0).mean(axis=0)


def test_with_jitter_the_batched_path_has_the_pil_paths_statistics():
    torch.manual_seed(0)
    images, draws = Images(), 150
    pil, ours = pil_draws(images, draws), batch_draws(images, draws)
    (pil_means, pil_std), (our_means, our_std) = summaries(pil), summaries(ours)
    # the average colour and contrast, and how much jitter moves each image: the same within sampling noise
    np.testing.assert_allclose(our_means.mean(0), pil_means.mean(0), atol=0.03)
    np.testing.assert_allclose(within_image_spread(ours, len(images)), within_image_spread(pil, len(images)),
                               rtol=0.12)
    assert our_std.mean() == pytest.approx(pil_std.mean(), rel=0.05)
    assert our_std.std() == pytest.approx(pil_std.std(), rel=0.15)
    # the comparison has teeth: without colour jitter (crop and flip only) each image barely moves
    flat = batch_draws(images, 30, DataConfig(image_size=32, resize_ratio=40 / 32, color_jitter=(0, 0, 0, 0)))
    assert (within_image_spread(flat, len(images)) < 0.5 * within_image_spread(pil, len(images))).all()


def test_device_batches_look_like_a_loader():
    images = Images()
    loader = make_loader(UInt8Crops(images, CFG, train=True), batch_size=5, train=True, seed=0)
    batches = DeviceBatches(loader, BatchAugment(CFG, train=True), torch.device("cpu"))
    assert len(batches) == 3 and batches.batch_size == 5 and len(batches.dataset) == 12
    x, y = next(iter(batches))
    assert x.shape == (5, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (5,)


def test_source_training_can_augment_per_batch_on_the_device(digits_root, tmp_path):
    """train_baseline.py --batch_augment: Lightning moves uint8 batches to the device and the module's
    on_after_batch_transfer jitters and normalises them there; validation batches are untouched."""
    from multisource.cli.train import train_baseline_main
    from multisource.models import load_checkpoint
    from multisource.utils.io import read_json

    assert train_baseline_main(["--dataset", "drift_digits", "--bin", "era_2", "--model_name", "tiny-resnet",
                                "--no-pretrained", "--max_epochs", "10", "--batch_size", "16", "--learning_rate", "3e-3", "--batch_augment",
                                "--data_root", str(digits_root), "--results_dir", str(tmp_path), "--device",
                                "cpu"]) == 0
    ckpt = tmp_path / "drift_digits" / "baselines" / "tiny-resnet" / "era_2.ckpt"
    report = read_json(ckpt.with_suffix(".json"))
    assert report["options"]["batch_augment"] is True and report["train_images"] > 0
    assert report["val_accuracy"] > 0.6  # it learned (chance 0.1; the PIL path: 0.93, this one 0.97 when written)
    load_checkpoint(ckpt, expected_model="tiny-resnet")  # the augmentation left nothing in the weights


@pytest.mark.parametrize("shift", [-0.1, -0.03, 0.0, 0.05, 0.1, 0.5])
def test_hue_shift_equals_torchvisions(shift):
    from torchvision.transforms.v2 import functional as F

    torch.manual_seed(0)
    x = torch.rand(4, 3, 9, 9)
    x[0, :, :3] = x[0, :1, :3]  # grey pixels (no chroma) and ties between channels
    x[1, 1] = x[1, 0]
    ours = BatchAugment._hue(x, torch.full((4, 1, 1, 1), shift))
    torch.testing.assert_close(ours, F.adjust_hue(x, shift), rtol=0, atol=2e-6)
