"""Drifting glyphs: an offline temporal-shift benchmark with as many bins and independent examples as asked for.

Classes are characters (default: the 26 capital letters). Every image is an independent draw of font (the
DejaVu, STIX and Computer Modern families that ship with matplotlib, in their weights and slants), size,
position, rotation, shear, stroke, ink and background colours, background texture and pixel noise. The
distribution of the draw moves gradually with the bin's time ``t`` (0 at the first bin, 1 at the last):

* the font family mixture slides along sans -> mono -> serif -> STIX -> Computer Modern;
* bold becomes more frequent, italics rarer, and the shear of the letters turns from left to right;
* the ink's hue carries a class-linked component whose mapping rotates with ``t`` (so what a colour says
  about the class changes over time, as on real data), and dark backgrounds become common;
* the background textures move from plain and gradients to stripes, checks and blotches; the noise grows.

A disjoint ``upstream`` pool, drawn from the whole range of styles with no class-linked colour, plays the
role of ImageNet for the tiny models (SPEC 2.4), as in drifting digits.

Each bin x split x class folder draws its images from its own generator, seeded from (seed, bin, split, class)
alone, so a build is the same bytes whatever the number of worker processes, and no two images share a draw.
"""

from __future__ import annotations

import colorsys
import logging
import math
import string
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ...config import ConfigError, check_range, check_seed
from ...paths import UPSTREAM
from ...utils.seed import derive_seed
from ..card import build_card, write_card
from ..datasets import get_dataset
from ..splits import SPLITS
from .raw import building, render_in_processes

log = logging.getLogger(__name__)

# The families along the drift's style axis; each: (regular, bold, italic, bold italic) file names in
# matplotlib's mpl-data/fonts/ttf. Computer Modern has no bold italic: its bold takes the shear instead.
FAMILIES: tuple[tuple[str, tuple[str, str, str, str]], ...] = (
    ("DejaVu Sans", ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf",
                     "DejaVuSans-BoldOblique.ttf")),
    ("DejaVu Sans Mono", ("DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
                          "DejaVuSansMono-BoldOblique.ttf")),
    ("DejaVu Serif", ("DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf",
                      "DejaVuSerif-BoldItalic.ttf")),
    ("STIX General", ("STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf")),
    ("Computer Modern", ("cmr10.ttf", "cmb10.ttf", "cmti10.ttf", "cmb10.ttf")),
)
TEXTURES = ("plain", "gradient", "stripes", "checks", "blotches")
MAX_BINS = 64


@dataclass(frozen=True)
class DriftGlyphsConfig:
    # Each field is the builder's flag too (cli/preprocess.py): its "help" says what it means.
    num_bins: int = field(default=6, metadata={"help": f"number of eras (at most {MAX_BINS})", "flags": ("--bins",)})
    image_size: int = field(default=32, metadata={"help": "image side in pixels"})
    seed: int = field(default=42, metadata={"help": "seed of every draw (same seed and options, same bytes)"})
    characters: str = field(default=string.ascii_uppercase, metadata={"help": "one class per character"})
    train_per_class: int = field(default=40, metadata={"help": "train images per class and era"})
    val_per_class: int = field(default=10, metadata={"help": "val images per class and era"})
    # 77 x 26 = 2,002 test images per bin: a 95% interval on an accuracy near 0.9 is about +/-1.3 points
    test_per_class: int = field(default=77, metadata={
        "help": "test images per class and era (77: 2,002 test images per era with 26 classes)"})
    upstream_per_class: int = field(default=80, metadata={
        "help": "upstream (pretraining) train images per class (val and test: a tenth each, at least 2)"})
    workers: int = field(default=2, metadata={"help": "rendering processes (the bytes do not depend on it)"})

    def __post_init__(self) -> None:
        check_seed(self)
        check_range(self, "num_bins", 2, MAX_BINS)
        check_range(self, "image_size", 16, 256)
        check_range(self, "train_per_class", 2, 100_000)
        check_range(self, "val_per_class", 1, 100_000)
        check_range(self, "test_per_class", 1, 100_000)
        check_range(self, "upstream_per_class", 2, 100_000)
        check_range(self, "workers", 1, 256)
        for name in ("num_bins", "image_size", "train_per_class", "val_per_class", "test_per_class",
                     "upstream_per_class", "workers"):
            if not isinstance(getattr(self, name), int):
                raise ConfigError(f"DriftGlyphsConfig.{name}={getattr(self, name)!r} is not a whole number.")
        chars = self.characters
        if not isinstance(chars, str) or len(chars) < 2:
            raise ConfigError(f"DriftGlyphsConfig.characters={chars!r}: give at least two characters, one per class "
                              "(default: the 26 capital letters).")
        if len(set(chars)) != len(chars):
            twice = sorted({c for c in chars if chars.count(c) > 1})
            raise ConfigError(f"DriftGlyphsConfig.characters={chars!r} names {''.join(twice)!r} twice; give each "
                              "character once.")
        unusable = [c for c in chars if not (c.isascii() and c.isalnum())]
        if unusable:
            raise ConfigError(f"DriftGlyphsConfig.characters={chars!r}: {''.join(unusable)!r} cannot be a class "
                              "(every font must draw it and it names a folder); use ASCII letters and digits.")
        lower = [c for c in chars if c.islower() and c.upper() in chars]
        if lower:
            raise ConfigError(f"DriftGlyphsConfig.characters={chars!r}: {''.join(lower)!r} and its capital would be "
                              "folders differing only in case; use one of the two.")

    def bin_names(self) -> list[str]:
        return bin_names(self.num_bins)

    def split_sizes(self) -> dict[str, int]:
        return {"train": self.train_per_class, "val": self.val_per_class, "test": self.test_per_class}

    def upstream_sizes(self) -> dict[str, int]:
        eval_n = max(2, self.upstream_per_class // 10)
        return {"train": self.upstream_per_class, "val": eval_n, "test": eval_n}


def bin_names(n: int) -> list[str]:
    """``era_01`` ... ``era_<n>``: zero-padded, so a sorted listing is the time order."""
    width = max(2, len(str(n)))
    return [f"era_{k:0{width}d}" for k in range(1, n + 1)]


@dataclass(frozen=True)
class Draw:
    """Everything one image is made of."""

    family: int
    bold: bool
    italic: bool
    height: float  # the glyph's font size, as a share of the image
    dx: float  # offset of the glyph's centre, as a share of the image
    dy: float
    rotation: float  # degrees
    shear: float  # horizontal shear (x += shear * y)
    stroke: int  # outline width in pixels of a 64-pixel image (0, 1, 2), scaled to the image's size
    ink: tuple[float, float, float]  # RGB 0..255
    paper: tuple[float, float, float]
    paper2: tuple[float, float, float]  # the texture's second colour
    texture: int
    texture_angle: float
    texture_scale: float
    noise: float  # std of the pixel noise, 0..255 scale


@lru_cache(maxsize=None)
def _mixture(n: int, centre: float, width: float) -> np.ndarray:
    """Cumulative weights over ``n`` ordered options, a Gaussian bump at ``centre`` (0..n-1) plus a floor so no
    option vanishes: neighbouring bins draw from overlapping mixtures (gradual drift)."""
    w = np.exp(-0.5 * ((np.arange(n) - centre) / width) ** 2) + 0.03
    return np.cumsum(w / w.sum())


def _pick(cumulative: np.ndarray, u: float) -> int:
    return min(int(np.searchsorted(cumulative, u, side="right")), len(cumulative) - 1)


def _hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    return tuple(255.0 * c for c in colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)))


STROKES = {False: np.cumsum((0.6, 0.3, 0.1)), True: np.cumsum((0.4, 0.4, 0.2))}


def draw_style(t: float | None, label: int, n_classes: int, rng: np.random.Generator) -> Draw:
    """One image's draw in a bin at time ``t`` (0..1), or from the upstream pool's broad range (``t`` None).

    Two calls on ``rng`` (uniforms, normals) instead of one per attribute: a draw is most of a build's time."""
    u, z = rng.random(20), rng.standard_normal(5)
    upstream = t is None
    if upstream:
        family, texture = int(u[0] * len(FAMILIES)), int(u[1] * len(TEXTURES))
        bold, italic = bool(u[2] < 0.4), bool(u[3] < 0.4)
        tt = float(u[4])  # the other drifting attributes: anywhere on their range
    else:
        tt = round(float(t), 6)
        family = _pick(_mixture(len(FAMILIES), tt * (len(FAMILIES) - 1), 0.7), u[0])
        texture = _pick(_mixture(len(TEXTURES), tt * (len(TEXTURES) - 1), 0.9), u[1])
        bold, italic = bool(u[2] < 0.15 + 0.6 * tt), bool(u[3] < 0.6 - 0.5 * tt)
    # Colour: a class-linked hue whose mapping rotates with time (none upstream), else any hue.
    if not upstream and u[5] < 0.6:
        hue = label / n_classes + 0.45 * tt + 0.03 * z[0]
    else:
        hue = float(u[6])
    dark_paper = bool(u[7] < 0.05 + 0.45 * tt)
    ink_v, paper_v = (0.75 + 0.25 * u[8], 0.05 + 0.25 * u[9]) if dark_paper else \
        (0.05 + 0.4 * u[8], 0.8 + 0.2 * u[9])
    paper_hue = 0.12 + 0.5 * tt + 0.08 * z[1]
    return Draw(
        family=family, bold=bold, italic=italic,
        height=float(0.55 + 0.3 * u[10]),
        dx=float(-0.1 + 0.2 * u[11]), dy=float(-0.1 + 0.2 * u[12]),
        rotation=float((4 + 8 * tt) * z[2]),
        shear=float(-0.25 + 0.5 * tt + 0.08 * z[3]),
        stroke=_pick(STROKES[bold], u[13]),
        ink=_hsv(hue, 0.5 + 0.5 * u[14], ink_v),
        paper=_hsv(paper_hue, 0.05 + 0.35 * u[15], paper_v),
        paper2=_hsv(paper_hue + 0.5 + 0.1 * z[4], 0.1 + 0.4 * u[16], paper_v),
        texture=texture, texture_angle=float(math.pi * u[17]),
        texture_scale=float(2.5 + 3.5 * u[18]),
        noise=float(3 + 9 * tt + 3 * u[19]),
    )


def font_dir() -> Path:
    import matplotlib  # the fonts ship with it; imported here so reading the dataset never needs it

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@lru_cache(maxsize=None)
def _font(file: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_dir() / file), size)


def _font_file(draw: Draw) -> str:
    return FAMILIES[draw.family][1][2 * draw.italic + draw.bold]


def glyph_mask(char: str, draw: Draw, size: int) -> np.ndarray:
    """The character's coverage (0..1, ``size`` x ``size``): drawn (FreeType anti-aliases), then sheared, rotated
    and placed by one bilinear affine map."""
    big = size
    font = _font(_font_file(draw), max(8, round(draw.height * big)))
    canvas = Image.new("L", (big, big), 0)
    ImageDraw.Draw(canvas).text((big / 2, big / 2), char, fill=255, font=font, anchor="mm",
                                stroke_width=int(math.floor(draw.stroke * size / 64 + 0.5)), stroke_fill=255)
    # One affine map about the centre: rotation, shear, then the offset. PIL wants output -> input.
    a = math.radians(draw.rotation)
    cos, sin = math.cos(a), math.sin(a)
    # forward map M = R(a) @ [[1, shear], [0, 1]]; det M = 1, so its inverse is [[d, -b], [-c, a]]
    m00, m01, m10, m11 = cos, cos * draw.shear - sin, sin, sin * draw.shear + cos
    i00, i01, i10, i11 = m11, -m01, -m10, m00
    c = big / 2
    px, py = c + draw.dx * big, c + draw.dy * big  # where the centre goes
    canvas = canvas.transform((big, big), Image.AFFINE, (i00, i01, c - (i00 * px + i01 * py),
                                                         i10, i11, c - (i10 * px + i11 * py)), resample=Image.BILINEAR)
    return np.asarray(canvas, dtype=np.float32) / 255.0


@lru_cache(maxsize=4)
def _grid(size: int) -> np.ndarray:
    return np.mgrid[0:size, 0:size].astype(np.float32) / size


def background(draw: Draw, size: int, rng: np.random.Generator) -> np.ndarray:
    """The paper: one of the textures, mixing ``paper`` and ``paper2`` (``size`` x ``size`` x 3, 0..255)."""
    kind = TEXTURES[draw.texture]
    if kind == "plain":
        return np.broadcast_to(np.array(draw.paper, np.float32), (size, size, 3))
    yy, xx = _grid(size)
    along = xx * math.cos(draw.texture_angle) + yy * math.sin(draw.texture_angle)
    if kind == "gradient":
        w = along - along.min()
        w /= max(float(w.max()), 1e-6)
    elif kind == "stripes":
        w = 0.5 + 0.5 * np.sin(2 * math.pi * (draw.texture_scale * along + draw.texture_angle))
    elif kind == "checks":
        across = -xx * math.sin(draw.texture_angle) + yy * math.cos(draw.texture_angle)
        w = ((np.floor(along * draw.texture_scale) + np.floor(across * draw.texture_scale)) % 2).astype(np.float32)
    else:  # blotches: smooth low-frequency noise
        coarse = Image.fromarray((rng.random((4, 4)) * 255).astype(np.uint8), "L")
        w = np.asarray(coarse.resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
    w = 0.55 * w[..., None]  # the texture never hides the glyph: at most 55% of the way to the second colour
    return np.array(draw.paper, np.float32) * (1 - w) + np.array(draw.paper2, np.float32) * w


def render_glyph(char: str, draw: Draw, size: int, rng: np.random.Generator) -> Image.Image:
    mask = glyph_mask(char, draw, size)[..., None]
    rgb = background(draw, size, rng) * (1 - mask) + np.array(draw.ink, np.float32) * mask
    rgb += draw.noise * rng.standard_normal(rgb.shape, dtype=np.float32)
    return Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), "RGB")


def bin_time(bin_index: int, n_bins: int) -> float:
    return bin_index / max(1, n_bins - 1)


def _render_folder(folder: str, cfg: DriftGlyphsConfig, bin_name: str, t: float | None, split: str, label: int,
                   count: int) -> int:
    """Write one bin x split x class folder (a worker's task); returns how many images it wrote."""
    char = cfg.characters[label]
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(derive_seed(cfg.seed, "glyph", bin_name, split, char))
    for i in range(count):
        draw = draw_style(t, label, len(cfg.characters), rng)
        # stored, not deflated: the pixel noise makes compression a waste of time (the files are the same size)
        render_glyph(char, draw, cfg.image_size, rng).save(out / f"{char}_{i:05d}.png", compress_level=0)
    return count


def build_drift_glyphs(output_dir: Path, cfg: DriftGlyphsConfig = DriftGlyphsConfig(), *,
                       overwrite: bool = False, progress: bool = True) -> dict:
    """Build the dataset into ``output_dir`` (via a temporary folder, moved into place at the end)."""
    info = get_dataset("drift_glyphs")
    bins, classes = cfg.bin_names(), list(cfg.characters)
    missing = [f for _, files in FAMILIES for f in files if not (font_dir() / f).is_file()]
    if missing:
        raise FileNotFoundError(f"matplotlib's font folder {font_dir()} lacks {', '.join(sorted(set(missing)))}; "
                                "reinstall matplotlib (pip install --force-reinstall matplotlib).")
    with building(Path(output_dir), overwrite=overwrite) as tmp:
        tasks = []
        for b, t, sizes in [(UPSTREAM, None, cfg.upstream_sizes()),
                            *[(b, bin_time(k, len(bins)), cfg.split_sizes()) for k, b in enumerate(bins)]]:
            for split in SPLITS:
                for label, char in enumerate(classes):
                    tasks.append((str(tmp / b / split / char), cfg, b, t, split, label, sizes[split]))
        total = sum(task[-1] for task in tasks)
        render_in_processes(_render_folder, tasks, workers=cfg.workers, total=total,
                            desc="Rendering drifting glyphs", unit="img", progress=progress, chunksize=4)
        card = build_card(tmp, dataset="drift_glyphs", classes=classes, bins=bins, seed=cfg.seed,
                          image_size=cfg.image_size, hflip=info.hflip, example_group=info.example_group,
                          extra={"config": {k: v for k, v in asdict(cfg).items() if k != "workers"},
                                 "source": "fonts shipped with matplotlib: " + ", ".join(f for f, _ in FAMILIES)},
                          bin_extra={b: {"era": k + 1, "time": round(bin_time(k, len(bins)), 6)}
                                     for k, b in enumerate(bins)})
        card[UPSTREAM] = build_card(tmp, dataset="drift_glyphs", classes=classes, bins=[UPSTREAM],
                                    seed=cfg.seed)["bins"][UPSTREAM]
        write_card(tmp, card)
    log.info("Built drifting glyphs (%d bins, %d images) in %s", len(bins), total, output_dir)
    return card
