"""A new built-in dataset is its builder and one registration: registered at run time here (the builder and its
settings class live in this module), it gets its build command with its settings as flags, its generated
scripts, and every reader opens what it built from the card, without a line anywhere else."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from multisource.cli import main as cli_main
from multisource.cli.generated import generated_files
from multisource.cli.preprocess import build_main
from multisource.config import check_range
from multisource.data.card import build_card, write_card
from multisource.data.datasets import DATASETS, DatasetInfo
from multisource.data.build.embedded import data_config_classes, embedded_build
from multisource.data.loaders import open_dataset
from multisource.data.build.raw import building

NAME = "stripes"


@dataclass(frozen=True)
class StripesSettings:
    image_size: int = field(default=16, metadata={"help": "image side in pixels"})
    per_class: int = field(default=3, metadata={"help": "images per class, bin and split", "flags": ("--n",)})
    seed: int = 0

    def __post_init__(self) -> None:
        check_range(self, "per_class", 1, 50)


def build_stripes(output_dir: Path, cfg: StripesSettings, *, overwrite: bool, progress: bool) -> dict:
    """Two bins of horizontal or vertical stripes whose contrast drifts."""
    rng = np.random.default_rng(cfg.seed)
    bins, classes = ["early", "late"], ["horizontal", "vertical"]
    with building(Path(output_dir), overwrite=overwrite) as tmp:
        for k, b in enumerate(bins):
            for split in ("train", "val", "test"):
                for c, name in enumerate(classes):
                    folder = tmp / b / split / name
                    folder.mkdir(parents=True)
                    for i in range(cfg.per_class):
                        stripes = np.arange(cfg.image_size) // 2 % 2 * (120 + 100 * k)  # contrast drifts
                        img = np.broadcast_to(stripes[:, None] if c == 0 else stripes[None, :],
                                              (cfg.image_size, cfg.image_size))
                        img = np.clip(img + rng.integers(0, 30, img.shape), 0, 255).astype(np.uint8)
                        Image.fromarray(np.stack([img] * 3, -1)).save(folder / f"{i}.png")
        card = build_card(tmp, dataset=NAME, classes=classes, bins=bins, seed=cfg.seed, image_size=cfg.image_size,
                          hflip=False, extra={"config": dataclasses.asdict(cfg)})
        write_card(tmp, card)
    return card


@pytest.fixture
def registered(monkeypatch):
    """The one registration, undone after the test."""
    info = DatasetInfo(name=NAME, dir_name="Stripes", bins=("early", "late"), classes=("horizontal", "vertical"),
                       image_size=16, preprocess_script=f"{NAME}_preprocessing.py", embedded=True, title="stripes",
                       builder=f"{__name__}:build_stripes", build_settings=f"{__name__}:StripesSettings",
                       hflip=False, description="Stripes whose contrast drifts.")
    monkeypatch.setitem(DATASETS._items, NAME, info)
    yield info


def test_a_new_embedded_dataset_needs_its_builder_and_one_registration(registered, tmp_path, capsys, monkeypatch):
    files = generated_files()
    script = files[f"preprocessing/{NAME}_preprocessing.py"]
    assert f'build_main(dataset="{NAME}")' in script
    assert f"baseline_training/{NAME}/train_all_subsets.py" in files
    assert f"experiments/grasp/run_all_grasp_{NAME}.py" in files
    assert embedded_build(NAME).config_cls is StripesSettings and StripesSettings in data_config_classes()

    out = tmp_path / "Stripes"
    assert build_main(["--output_dir", str(out), "--n", "2", "--image_size", "12", "--no_progress"],
                      dataset=NAME) == 0
    printed = capsys.readouterr().out
    assert f"Built stripes in {out} (2 bins, 2 classes" in printed and "late: train 4, val 4, test 4" in printed
    handle = open_dataset(NAME, out)
    assert handle.bins == ["early", "late"] and handle.classes == ["horizontal", "vertical"]
    assert handle.card["config"]["per_class"] == 2 and handle.card["image_size"] == 12

    assert build_main(["--output_dir", str(tmp_path / "bad"), "--per_class", "0"], dataset=NAME) == 2
    err = capsys.readouterr().err
    assert "StripesSettings.per_class" in err and err.count("\n") == 1 and not (tmp_path / "bad").exists()
    assert f"{NAME}" in cli_main.usage().split("build a dataset:")[1].split("\n")[0]
    monkeypatch.setattr(sys, "argv", ["multisource"])  # main() names the subcommand in sys.argv for argparse
    assert cli_main.main(["preprocess", NAME, "--output_dir", str(tmp_path / "again"), "--n", "1"]) == 0
    assert open_dataset(NAME, tmp_path / "again").card["config"]["per_class"] == 1
    # a settings file's top level and data: section hold its settings, as they do drifting digits'
    cfg = tmp_path / "stripes.yaml"
    cfg.write_text(f"dataset: {NAME}\nimage_size: 10\ndata:\n  per_class: 2\n")
    assert build_main(["--config", str(cfg), "--output_dir", str(tmp_path / "from_file")], dataset=NAME) == 0
    built = open_dataset(NAME, tmp_path / "from_file").card
    assert (built["image_size"], built["config"]["per_class"]) == (10, 2)


def test_a_registration_that_cannot_build_is_refused_when_made():
    with pytest.raises(ValueError, match="does not name its builder and build_settings"):
        DatasetInfo(name="x", dir_name="X", bins=("a", "b"), classes=("c", "d"), embedded=True,
                    builder=f"{__name__}:build_stripes")


@dataclass(frozen=True)
class ClashingSettings:
    workers: int = 1  # the raw build command's own --workers


def test_a_settings_field_named_like_a_shared_flag_is_said_to_be_the_registrations_mistake(monkeypatch):
    info = DatasetInfo(name=NAME, dir_name="Stripes", bins=("a", "b"), classes=("c", "d"),
                       builder=f"{__name__}:build_stripes", build_settings=f"{__name__}:ClashingSettings")
    monkeypatch.setitem(DATASETS._items, NAME, info)
    with pytest.raises(SystemExit, match="ClashingSettings.workers is also the build command's own flag --workers"):
        build_main(["--help"], dataset=NAME)


@dataclass(frozen=True)
class StripesRawSettings:
    per_class: int = field(default=3, metadata={"help": "images per class", "flags": ("--n",)})


def test_a_new_raw_dataset_builder_gets_the_shared_flags_and_its_own(monkeypatch, tmp_path):
    """A dataset read from a raw download: --source_dir and the shared flags, plus its settings' fields."""
    calls = []

    def build(source_dir, output_dir, **options):
        calls.append((Path(source_dir), Path(output_dir), options))
        return {"bins": {}, "classes": []}

    monkeypatch.setattr(f"{__name__}.build_stripes", build)
    info = DatasetInfo(name=NAME, dir_name="Stripes", bins=("early", "late"), classes=("horizontal", "vertical"),
                       builder=f"{__name__}:build_stripes", build_settings=f"{__name__}:StripesRawSettings")
    monkeypatch.setitem(DATASETS._items, NAME, info)
    assert build_main(["--source_dir", str(tmp_path / "raw"), "--output_dir", str(tmp_path / "o"), "--n", "4",
                       "--seed", "3", "--workers", "1", "--no_progress"], dataset=NAME) == 0
    (source, out, options), = calls
    assert (source, out) == (tmp_path / "raw", tmp_path / "o")
    assert options == {"seed": 3, "workers": 1, "overwrite": False, "cache_size": 0, "progress": False,
                       "per_class": 4}
