"""Project-root-relative default locations, so scripts work from any working directory."""

from __future__ import annotations

import os
import re
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# The package lives at <project>/multisource; MULTISOURCE_ROOT overrides for installed copies.
PROJECT_ROOT = Path(os.environ.get("MULTISOURCE_ROOT", PACKAGE_DIR.parent)).resolve()
DATASETS_DIR = PROJECT_ROOT / "datasets"
RESULTS_DIR = PROJECT_ROOT / "results"
CONFIGS_DIR = PROJECT_ROOT / "configs"


class UnsafeName(ValueError):
    """A name that would become part of a path (a dataset, bin, class, model, method or tag) is not one plain
    folder name: it could write or read outside the chosen folder."""


_BAD_NAME_CHARS = set('/\\\0:*?"<>|')
UPSTREAM = "upstream"  # a dataset's pretraining pool: <root>/upstream, beside its bins (training/upstream.py)
RESERVED_BINS = (UPSTREAM,)


def name_problem(name: object, *, bin_name: bool = False) -> str | None:
    """Why ``name`` cannot be one folder name (None if it can): the one check every name that becomes part of a
    path passes, whether it came from a card, a table, a flag or a settings file."""
    if not isinstance(name, str):
        return f"a {type(name).__name__}, not text"
    if bin_name and name in RESERVED_BINS:
        return "reserved for a dataset's upstream pretraining pool"
    if not name or name != name.strip():
        return "empty or with leading/trailing spaces"
    if name in (".", "..") or name.startswith("."):
        return "starts with '.'"
    if any(c in _BAD_NAME_CHARS or ord(c) < 32 for c in name):
        return "contains one of / \\ : * ? \" < > | or a control character"
    if len(name.encode("utf-8")) > 255:
        return "longer than 255 bytes"
    return None


def safe_name(name: object, what: str, fix: str = "rename it") -> str:
    """``name`` unchanged if it is one plain folder name; else :class:`UnsafeName` naming it and the fix."""
    problem = name_problem(name)
    if problem:
        raise UnsafeName(f"{what} {name!r} cannot be a folder name ({problem}), so it could reach outside the "
                         f"chosen folder; {fix}.")
    return name  # type: ignore[return-value]


def resolve(path: str | os.PathLike | None, default: Path) -> Path:
    """User paths resolve against the current directory; defaults against the project root."""
    if path is None or str(path) == "":
        return default
    return Path(path).expanduser().resolve()


def baseline_dir(results_dir: Path, dataset: str, model: str) -> Path:
    return Path(results_dir) / safe_name(dataset, "Dataset name") / "baselines" / safe_name(model, "Model name")


def checkpoint_path(results_dir: Path, dataset: str, model: str, bin_name: str) -> Path:
    """Deterministic source-checkpoint location: results/<dataset>/baselines/<model>/<bin>.ckpt."""
    return baseline_dir(results_dir, dataset, model) / f"{safe_name(bin_name, 'Bin')}.ckpt"


def model_results_dir(results_dir: Path, dataset: str, model: str, protocol: str = "leave-one-out",
                      fraction: float = 1.0) -> Path:
    """Where one protocol's experiments, summaries and sweep logs of (dataset, model) live: the paper's
    leave-one-out directly under ``<dataset>/<model>/``, any other under ``<dataset>/<model>/protocols/<name>/``
    (``window:3`` -> ``window-3``), so results of two protocols never mix. A label budget below the whole
    target (``fraction`` < 1) is kept apart below that: ``.../budgets/fraction-0.05/``."""
    base = Path(results_dir) / safe_name(dataset, "Dataset name") / safe_name(model, "Model name")
    if protocol != "leave-one-out":
        base = base / "protocols" / safe_name(protocol.replace(":", "-"), "Protocol")
    return base if fraction == 1 else base / BUDGETS / budget_folder(fraction)


BUDGETS = "budgets"  # <protocol's folder>/budgets/fraction-<F>/: the results of one label budget


def budget_folder(fraction: float) -> str:
    """``fraction-0.05`` for a label budget of 5% of the target's train and val images."""
    return f"fraction-{float(fraction):g}"


def budget_fractions(protocol_dir: Path) -> list[float]:
    """The label budgets below 1 whose folders exist under a protocol's folder, ascending."""
    found = []
    for p in (protocol_dir / BUDGETS).glob("fraction-*") if (protocol_dir / BUDGETS).is_dir() else ():
        try:
            value = float(p.name.removeprefix("fraction-"))
        except ValueError:
            continue
        if p.is_dir() and 0 < value < 1 and p.name == budget_folder(value):
            found.append(value)
    return sorted(found)


VARIANT_SEP = "@"  # a variant's folder: <method>@<tag> (a shell glob would misread the row label's brackets)
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")


def tag_problem(tag: object) -> str | None:
    """Why ``tag`` cannot name a variant of a method (None if it can)."""
    if not isinstance(tag, str) or not _TAG.fullmatch(tag):
        return ("a tag is 1-40 letters, digits, '_', '-' or '.', starting with a letter or digit "
                "(e.g. --tag nearest)")
    return None


def variant_folder(method: str, tag: str = "") -> str:
    """The results folder of a method's variant: ``grasp``, or ``grasp@nearest`` for ``--tag nearest``."""
    return method if not tag else f"{method}{VARIANT_SEP}{tag}"


def variant_label(method: str, tag: str = "") -> str:
    """A variant's row in the comparison: ``grasp``, or ``grasp[nearest]``."""
    return method if not tag else f"{method}[{tag}]"


def split_label(label: str) -> tuple[str, str]:
    """(method, tag) of a row label or a settings file's method key: ``grasp[nearest]`` -> ``("grasp", "nearest")``,
    ``grasp`` -> ``("grasp", "")``."""
    if label.endswith("]") and "[" in label:
        method, _, tag = label[:-1].partition("[")
        return method, tag
    return label, ""


def split_variant(folder: str) -> tuple[str, str]:
    """(method, tag) of a results folder name (tag "" for the method itself)."""
    method, _, tag = folder.partition(VARIANT_SEP)
    return method, tag


MODEL_FILE = "model.ckpt"  # an experiment's final model, where it is one plain architecture (a stream carries it)


def experiment_dir(results_dir: Path, dataset: str, model: str, method: str, target: str, trial: int,
                   protocol: str = "leave-one-out", tag: str = "", fraction: float = 1.0) -> Path:
    return (model_results_dir(results_dir, dataset, model, protocol, fraction)
            / safe_name(variant_folder(method, tag), "Method name") / safe_name(target, "Target bin")
            / f"trial_{int(trial)}")
