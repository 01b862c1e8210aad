"""How to run (hardware, precision, parallelism, paths), per command.

Kept apart from *what* to run (dataset, model, method, hyper-parameters, seed), which the stage configs hold.
:class:`RunOptions` holds what every command shares; each command that has more adds them in its own class:
source training (:class:`TrainOptions`), one experiment (:class:`ExperimentOptions`) and a sweep
(:class:`SweepOptions`, which may also train missing sources). The ``run:`` section of a settings file and the
"how to run" flags map onto them: a command takes the keys of its own class, so one file serves every command.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from pathlib import Path

from .config import ConfigError, check_choice, check_range
from .paths import RESULTS_DIR, checkpoint_path

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "32", "16-mixed", "bf16-mixed")
# Spellings users bring from Lightning or the paper's README, mapped to the one name recorded in results.
PRECISION_ALIASES = {"32-true": "32", "fp32": "32", "16": "16-mixed", "fp16": "16-mixed", "bf16": "bf16-mixed"}


@dataclass
class RunOptions:
    """How any command runs. ``workers`` processes (local) or Ray tasks run bins or experiments in parallel."""

    device: str = "auto"  # auto (cuda when available), cpu or cuda
    precision: str = "auto"  # auto: 16-mixed on CUDA, 32 on CPU
    num_workers: int = 0  # data-loader workers
    data_root: str | None = None
    results_dir: str | None = None
    checkpoint_dir: str | None = None
    executor: str = "local"  # a name in multisource.executors.EXECUTORS (checked when settings are resolved)
    workers: int = 1
    ray_address: str | None = None
    ray_cpus_per_task: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        self.device = {"gpu": "cuda"}.get(self.device, self.device)
        self.precision = PRECISION_ALIASES.get(self.precision, self.precision)
        check_choice(self, "device", DEVICES)
        check_choice(self, "precision", PRECISIONS)
        check_range(self, "num_workers", 0)
        check_range(self, "workers", 1)
        check_range(self, "ray_cpus_per_task", 1)

    def torch_device(self):
        import torch  # only when work starts: importing torch takes seconds, and --help must not

        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for but CUDA is not available; use --device cpu or auto.")
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def precision_on(self, device_type: str) -> str:
        """The precision that really runs on ``device_type`` (recorded in results): mixed precision is a
        CUDA feature here, so on CPU a mixed request runs (and is recorded) in 32-bit, with a warning."""
        if self.precision == "auto":
            return "16-mixed" if device_type == "cuda" else "32"
        if device_type != "cuda" and self.precision != "32":
            log.warning("--precision %s was asked for, but it runs on CUDA only; running (and recording) 32 on %s.",
                        self.precision, device_type)
            return "32"
        return self.precision

    def lightning_accelerator(self) -> str:
        return {"cuda": "gpu"}.get(self.device, self.device)

    def results_path(self) -> Path:
        return Path(self.results_dir).resolve() if self.results_dir else RESULTS_DIR

    def source_checkpoint(self, dataset: str, model: str, bin_name: str) -> Path:
        """Where source ``bin_name``'s checkpoint lives: ``--checkpoint_dir/<bin>.ckpt`` or the default layout.
        The one rule, used by training (to write) and by experiments (to read)."""
        if self.checkpoint_dir:
            return Path(self.checkpoint_dir).resolve() / f"{bin_name}.ckpt"
        return checkpoint_path(self.results_path(), dataset, model, bin_name)


@dataclass
class TrainOptions(RunOptions):
    """How source training (and the upstream pretraining) runs: Lightning's hardware settings as well."""

    devices: int | str = "auto"  # Lightning: number of devices or a list such as "0,1"
    num_nodes: int = 1
    strategy: str = "auto"  # Lightning strategy (ddp, ...)
    batch_augment: bool = False  # the train augmentation per batch on the device

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self, "num_nodes", 1)
        if isinstance(self.devices, str) and self.devices.isdigit():
            self.devices = int(self.devices)


@dataclass
class ExperimentOptions(RunOptions):
    """How one experiment runs and what it keeps."""

    overwrite: bool = False  # re-run a finished experiment
    save_model: bool = True  # write the final model
    batch_augment: bool = False  # the target's train augmentation per batch on the device


@dataclass
class SweepOptions(ExperimentOptions, TrainOptions):
    """How a sweep runs: its experiments' options, and source training's for the missing sources it trains."""

    train_missing: bool = False  # train missing source checkpoints first
    summarize: bool = True  # write the summaries at the end


def recorded(opts: RunOptions, cls: type[RunOptions]) -> dict:
    """The options a result records: those of the stage's class ``cls`` (an experiment's are ExperimentOptions
    whether an experiment command or a sweep ran it), so equal runs record equal options."""
    return {f.name: getattr(opts, f.name) for f in fields(cls)}
