"""What to run (ExperimentConfig) and how (ExperimentOptions)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import ConfigError, check_choice, check_range
from ..paths import RESULTS_DIR

DEVICES = ("auto", "cpu", "cuda")


@dataclass
class ExperimentConfig:
    dataset: str = "drift_digits"
    model: str = "tiny-resnet"
    method: str = "grasp"
    target: str = ""
    sources: tuple[str, ...] = ()  # default: every other bin, chronologically
    trial: int = 1
    seed: int = 42  # trial k > 1 derives its own seed from this one
    batch_size: int = 32
    image_size: int | None = None  # default: the dataset's
    method_config: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sources = tuple(self.sources or ())
        check_range(self, "trial", 1)
        check_range(self, "batch_size", 1)
        if not self.target:
            raise ConfigError("ExperimentConfig.target is empty; pass --target BIN.")
        if self.target in self.sources:
            raise ConfigError(f"Target bin {self.target} is also listed as a source; a method must not see the "
                              "target's own source model. Remove it from --sources.")
        if len(set(self.sources)) != len(self.sources):
            raise ConfigError(f"--sources lists a bin twice: {list(self.sources)}.")


@dataclass
class ExperimentOptions:
    data_root: str | None = None
    checkpoint_dir: str | None = None
    results_dir: str | None = None
    device: str = "auto"
    num_workers: int = 0
    precision: str = "auto"
    overwrite: bool = False
    save_model: bool = True

    def __post_init__(self) -> None:
        check_choice(self, "device", DEVICES)
        check_range(self, "num_workers", 0)

    def torch_device(self) -> torch.device:
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for but CUDA is not available; use --device cpu or auto.")
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def resolved_precision(self, device: torch.device) -> str:
        if self.precision in ("auto", None):
            return "16-mixed" if device.type == "cuda" else "32"
        return {"32-true": "32", "16": "16-mixed", "bf16": "bf16-mixed"}.get(self.precision, self.precision)

    def results_path(self) -> Path:
        return Path(self.results_dir).resolve() if self.results_dir else RESULTS_DIR
