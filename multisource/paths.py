"""Project-root-relative default locations, so scripts work from any working directory."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# The package lives at <project>/multisource; MULTISOURCE_ROOT overrides for installed copies.
PROJECT_ROOT = Path(os.environ.get("MULTISOURCE_ROOT", PACKAGE_DIR.parent)).resolve()
DATASETS_DIR = PROJECT_ROOT / "datasets"
RESULTS_DIR = PROJECT_ROOT / "results"
CONFIGS_DIR = PROJECT_ROOT / "configs"


def resolve(path: str | os.PathLike | None, default: Path) -> Path:
    """User paths resolve against the current directory; defaults against the project root."""
    if path is None or str(path) == "":
        return default
    return Path(path).expanduser().resolve()


def baseline_dir(results_dir: Path, dataset: str, model: str) -> Path:
    return results_dir / dataset / "baselines" / model


def checkpoint_path(results_dir: Path, dataset: str, model: str, bin_name: str) -> Path:
    """Deterministic source-checkpoint location: results/<dataset>/baselines/<model>/<bin>.ckpt."""
    return baseline_dir(results_dir, dataset, model) / f"{bin_name}.ckpt"


def model_results_dir(results_dir: Path, dataset: str, model: str, protocol: str = "leave-one-out") -> Path:
    """Where one protocol's experiments, summaries and sweep logs of (dataset, model) live: the paper's
    leave-one-out directly under ``<dataset>/<model>/``, any other under ``<dataset>/<model>/protocols/<name>/``
    (``window:3`` -> ``window-3``), so results of two protocols never mix."""
    base = Path(results_dir) / dataset / model
    return base if protocol == "leave-one-out" else base / "protocols" / protocol.replace(":", "-")


def experiment_dir(results_dir: Path, dataset: str, model: str, method: str, target: str, trial: int,
                   protocol: str = "leave-one-out") -> Path:
    return model_results_dir(results_dir, dataset, model, protocol) / method / target / f"trial_{trial}"
