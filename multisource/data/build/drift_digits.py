"""Drifting digits: an offline temporal-shift benchmark built from scikit-learn's 8x8 digits.

Five eras share the task (10 digit classes) but the rendering style drifts gradually with the era:
rotation, stroke width, ink and paper tints, blur and noise, one step per era. A disjoint ``upstream``
pool rendered in varied styles plays the role of ImageNet: tiny models are pretrained on it once, and
every source model starts from that checkpoint (SPEC 2.4).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from ...config import check_range, check_seed
from ...paths import UPSTREAM
from ...utils.seed import derive_seed
from ..card import build_card, write_card
from ..datasets import get_dataset
from ..splits import SPLITS, split_stratum
from .raw import building, render_in_processes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DriftDigitsConfig:
    # Each field is the builder's flag too (cli/preprocess.py): its "help" says what it means.
    image_size: int = field(default=32, metadata={"help": "image side in pixels"})
    seed: int = field(default=42, metadata={"help": "seed of every draw (same seed and options, same bytes)"})
    upstream_fraction: float = field(default=0.15, metadata={
        "help": "share of each class's instances reserved for the upstream (pretraining) pool"})
    train_renders: int = field(default=3, metadata={
        "help": "renders per training instance (fresh jitter each; renders never cross splits)"})
    eval_renders: int = field(default=3, metadata={
        "help": "renders per val/test instance (of the same instances: steadier estimates)"})
    max_rotation: float = field(default=42.0, metadata={"help": "rotation in degrees at the last era (0 at the first)"})
    rotation_power: float = field(default=0.6, metadata={
        "help": "below 1 front-loads the rotation steps, so early eras drift as much as late ones"})
    workers: int = field(default=2, metadata={"help": "rendering processes (the bytes do not depend on it)"})

    def __post_init__(self) -> None:
        check_seed(self)
        check_range(self, "image_size", 8, 1024)
        check_range(self, "upstream_fraction", 0, 0.9)
        check_range(self, "train_renders", 1)
        check_range(self, "eval_renders", 1)
        check_range(self, "max_rotation", 0, 180)
        check_range(self, "rotation_power", 0, 10, low_open=True)
        check_range(self, "workers", 1, 256)


@dataclass(frozen=True)
class Style:
    rotation: float
    stroke: float  # 0 = thin original strokes, 1 = fully dilated
    ink: tuple[float, float, float]
    paper: tuple[float, float, float]
    blur: float
    noise: float


def _lerp(a, b, t: float):
    return tuple(x + (y - x) * t for x, y in zip(a, b))


def era_style(era_index: int, n_eras: int, cfg: DriftDigitsConfig, rng: np.random.Generator) -> Style:
    """The style of one rendering in era ``era_index`` (0-based): a per-era step plus small jitter."""
    t = era_index / max(1, n_eras - 1)
    jitter = rng.uniform(-1, 1, size=4)
    return Style(
        rotation=float(cfg.max_rotation * t ** cfg.rotation_power + 5.0 * jitter[0]),
        stroke=float(np.clip(0.8 * t + 0.1 * jitter[1], 0, 1)),
        ink=_lerp((20, 20, 30), (40, 50, 150), t),
        paper=_lerp((245, 245, 240), (235, 222, 185), t),
        blur=float(max(0.0, 0.5 * t + 0.1 * jitter[2])),
        noise=float(4.0 + 6.0 * t + jitter[3]),
    )


def upstream_style(cfg: DriftDigitsConfig, rng: np.random.Generator) -> Style:
    """Varied styles (rotation, stroke, tints), like a generic pretraining corpus."""
    t = rng.uniform(0, 1, size=3)
    return Style(
        rotation=float(rng.uniform(-8, 8)),
        stroke=float(t[0] * 0.8),
        ink=tuple(float(v) for v in rng.uniform(0, 120, size=3)),
        paper=tuple(float(v) for v in rng.uniform(190, 255, size=3)),
        blur=float(t[1] * 0.5),
        noise=float(2 + 8 * t[2]),
    )


def render_digit(digit: np.ndarray, style: Style, size: int, rng: np.random.Generator) -> Image.Image:
    """Render one 8x8 digit (values 0..16) as a ``size`` x ``size`` RGB image in ``style``."""
    inner = max(8, round(size * 0.7))
    glyph = Image.fromarray((digit / 16.0 * 255).astype(np.uint8), "L").resize((inner, inner), Image.BICUBIC)
    if style.stroke > 0:
        glyph = Image.blend(glyph, glyph.filter(ImageFilter.MaxFilter(3)), style.stroke)
    canvas = Image.new("L", (size, size), 0)
    shift = rng.integers(-2, 3, size=2) * size // 32
    offset = (size - inner) // 2
    canvas.paste(glyph, (int(offset + shift[0]), int(offset + shift[1])))
    canvas = canvas.rotate(style.rotation, resample=Image.BILINEAR)
    if style.blur > 0:
        canvas = canvas.filter(ImageFilter.GaussianBlur(style.blur))
    mask = np.asarray(canvas, dtype=np.float32)[..., None] / 255.0
    rgb = np.array(style.paper, np.float32) * (1 - mask) + np.array(style.ink, np.float32) * mask
    rgb += rng.normal(0, style.noise, size=rgb.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), "RGB")


def assign_instances(targets: np.ndarray, bins: list[str], cfg: DriftDigitsConfig) -> dict[str, dict[str, list[int]]]:
    """Disjoint digit instances per bin (upstream + eras) and per split, stratified by class."""
    out: dict[str, dict[str, list[int]]] = {b: {s: [] for s in SPLITS} for b in [UPSTREAM, *bins]}
    for cls in sorted(set(int(t) for t in targets)):
        idx = sorted(int(i) for i in np.flatnonzero(targets == cls))
        random.Random(derive_seed(cfg.seed, "assign", cls)).shuffle(idx)
        n_up = int(round(cfg.upstream_fraction * len(idx)))
        groups = {UPSTREAM: idx[:n_up]}
        rest = idx[n_up:]
        for i, b in enumerate(bins):
            groups[b] = sorted(rest[i::len(bins)])
        for b, members in groups.items():
            for split, items in split_stratum(sorted(members), cfg.seed, f"{b}/{cls}").items():
                out[b][split].extend(items)
    return out


def build_drift_digits(output_dir: Path, cfg: DriftDigitsConfig = DriftDigitsConfig(), *,
                       overwrite: bool = False, progress: bool = True) -> dict:
    """Build the dataset into ``output_dir`` (via a temporary folder, moved into place at the end)."""
    from sklearn.datasets import load_digits  # here, not at the top: scikit-learn takes a second to import

    info = get_dataset("drift_digits")
    bins = list(info.bins)
    digits = load_digits()
    images, targets = digits.images, digits.target
    assignment = assign_instances(targets, bins, cfg)
    with building(Path(output_dir), overwrite=overwrite) as tmp:
        card = _render(tmp, info, bins, images, targets, assignment, cfg, progress)
    log.info("Built drifting digits in %s", output_dir)
    return card


def _render_digits(tmp: Path, classes: list[str], bins: list[str], b: str, split: str, indices: list[int],
                   images: np.ndarray, targets: np.ndarray, cfg: DriftDigitsConfig) -> int:
    """Render digits ``indices`` (their ``images`` and ``targets``) into bin ``b``'s ``split`` (a worker's task);
    returns how many. Each render draws from its own seed, so the bytes do not depend on how work is split."""
    renders = cfg.train_renders if split == "train" else cfg.eval_renders
    for i, image, target in zip(indices, images, targets):
        folder = tmp / b / split / classes[int(target)]
        folder.mkdir(parents=True, exist_ok=True)
        for r in range(renders):
            rng = np.random.default_rng(derive_seed(cfg.seed, "render", b, split, i, r))
            style = upstream_style(cfg, rng) if b == UPSTREAM else era_style(bins.index(b), len(bins), cfg, rng)
            render_digit(image, style, cfg.image_size, rng).save(folder / f"d{i:04d}_r{r}.png", optimize=False)
    return len(indices)


def _render(tmp: Path, info, bins: list[str], images: np.ndarray, targets: np.ndarray,
            assignment: dict[str, dict[str, list[int]]], cfg: DriftDigitsConfig, progress: bool = True) -> dict:
    """Every image and the card into ``tmp``, in ``cfg.workers`` processes."""
    classes = list(info.classes)
    chunks = [(b, s, assignment[b][s][k:k + 64]) for b in [UPSTREAM, *bins] for s in SPLITS
              for k in range(0, len(assignment[b][s]), 64)]
    tasks = [(tmp, classes, bins, b, s, idx, images[idx], targets[idx], cfg) for b, s, idx in chunks]
    render_in_processes(_render_digits, tasks, workers=cfg.workers, total=sum(len(idx) for _, _, idx in chunks),
                        desc="Rendering drifting digits", unit="digit", progress=progress)
    card = build_card(tmp, dataset="drift_digits", classes=classes, bins=bins, seed=cfg.seed,
                      image_size=cfg.image_size, hflip=info.hflip, example_group=info.example_group,
                      extra={"config": {k: v for k, v in cfg.__dict__.items() if k != "workers"},
                             "source": "sklearn.datasets.load_digits (1797 8x8 digits)"},
                      bin_extra={b: {"era": k + 1} for k, b in enumerate(bins)})
    card[UPSTREAM] = build_card(tmp, dataset="drift_digits", classes=list(info.classes), bins=[UPSTREAM],
                                seed=cfg.seed)["bins"][UPSTREAM]
    write_card(tmp, card)
    return card
