"""The result of one experiment as a typed record: what the runner writes to ``metrics.json`` and the summaries read.

Every value a summary averages is a declared field with its range (a share in [0, 1], a cost >= 0, a count), so
a damaged or hand-edited file is refused when it is read (:class:`RecordProblem`, naming the value), never
averaged. What no summary reads (a confusion matrix, the per-phase timings, the method's own record) travels in
each part's ``extra`` mapping, so reading a file and writing it back keeps every key.

Schema 2 nests the scores of a method's earlier states under ``stages``; schema 1 (results written before)
kept them at the top level and is still read (:meth:`ExperimentRecord.from_json`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

from ..utils.io import read_json, write_json

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
METRICS_FILE = "metrics.json"


class RecordProblem(ValueError):
    """A metrics.json that cannot be read as a result: the message names the value and why."""


# --- value checks: each returns the value (normalised) or raises RecordProblem naming ``where`` -----------------

def _real(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RecordProblem(f"'{where}' is {value!r}, not a finite number")
    return value


def share(value: Any, where: str) -> float:
    if not 0 <= _real(value, where) <= 1:
        raise RecordProblem(f"'{where}' is {value!r}, outside [0, 1]")
    return value


def cost(value: Any, where: str) -> float:
    if _real(value, where) < 0:
        raise RecordProblem(f"'{where}' is {value!r}, outside [0, inf)")
    return value


def count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RecordProblem(f"'{where}' is {value!r}, not a whole number >= 0")
    return value


def text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise RecordProblem(f"'{where}' is {value!r}, not text")
    return value


def texts(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RecordProblem(f"'{where}' is {value!r}, not a list of names")
    return list(value)


def mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise RecordProblem(f"'{where}' is a {type(value).__name__}, not a mapping")
    return value


def anything(value: Any, where: str) -> Any:
    return value


def checked(check: Callable[[Any, str], Any], default: Any = None, required: bool = False) -> Any:
    """A record field whose value passes ``check`` when read (None allowed unless ``required``)."""
    return field(default=default, metadata={"check": check, "required": required})


P = TypeVar("P", bound="Part")


@dataclass
class Part:
    """A section of the record: declared fields (checked when read) plus ``extra``, every other key as found."""

    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls: type[P], data: Any, where: str) -> P:
        data = mapping(data, where)
        declared = {f.name: f for f in dataclasses.fields(cls) if f.name != "extra" and not f.metadata.get("local")}
        values: dict[str, Any] = {}
        extra = {k: v for k, v in data.items() if k not in declared or v is None}  # a null stays a null
        for name, f in declared.items():
            value, inner = data.get(name), f"{where}.{name}" if where else name
            if value is None:
                if f.metadata.get("required"):
                    raise RecordProblem(f"'{inner}' is missing")
                continue
            parse = f.metadata.get("check", anything)
            values[name] = (parse.from_json(value, inner) if isinstance(parse, type) and issubclass(parse, Part)
                            else parse(value, inner))
        return cls(**values, extra=extra)

    def to_json(self) -> dict[str, Any]:
        out = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name == "extra" or f.metadata.get("local"):
                continue
            value = getattr(self, f.name)
            if value is not None:  # an unset field is left out (a null that was read is in extra)
                out[f.name] = value.to_json() if isinstance(value, Part) else value
        return out


@dataclass
class SplitScores(Part):
    """Scores on the target's val or test split (``confusion_matrix``, per-class numbers and the like in extra)."""

    accuracy: float | None = checked(share)
    f1_macro: float | None = checked(share)
    precision_macro: float | None = checked(share)
    recall_macro: float | None = checked(share)
    accuracy_ci95: list[float] | None = checked(anything)
    f1_macro_ci95: list[float] | None = checked(anything)
    confusion_matrix: list[list[int]] | None = checked(anything)


@dataclass
class StageScores(Part):
    """An earlier state of the method's model (the merge before target fine-tuning), scored after the method."""

    val_accuracy: float | None = checked(share)
    test_accuracy: float | None = checked(share)
    val_f1_macro: float | None = checked(share)
    test_f1_macro: float | None = checked(share)
    same_as_final: bool = checked(anything, default=False)


@dataclass
class StreamStep(Part):
    """One bin of a stream (--protocol stream): what its deployed model was built from, and how that model scores
    on the next bin's test split (the number a deployment cares about before the next bin's labels arrive)."""

    carried_from: str | None = checked(text)  # the bin whose deployed model this one continues (None: the first)
    stands_for: list[str] = checked(texts, default=None)  # the bins that carried model stands for
    next_bin: str | None = checked(text)  # None for the last bin
    next_bin_test: SplitScores | None = checked(SplitScores)


@dataclass
class TimeCost(Part):
    total_s: float | None = checked(cost)


@dataclass
class MemoryCost(Part):
    peak_bytes: float | None = checked(cost)
    resident_model_bytes: float | None = checked(cost)
    max_models_resident: int | None = checked(cost)


@dataclass
class FlopCount(Part):
    total: float | None = checked(cost)
    forward_per_image: float | None = checked(cost)
    convention: str | None = checked(text)


@dataclass
class TargetBudget(Part):
    target_epochs: float | None = checked(cost)
    target_train_images: float | None = checked(cost)  # images trained on, summed over epochs
    # The label budget: its share and the train / val images the method could use (absent before budgets).
    target_fraction: float | None = checked(share)
    target_train_split: int | None = checked(count)
    target_val_split: int | None = checked(count)
    target_sample: str | None = checked(text)  # a fingerprint of the budget's subsample: equal across methods


@dataclass
class InformationUsed(Part):
    """What the method read, as the runner observed it."""

    num_source_models: int | None = checked(count)
    pretrained_start: str | bool | None = checked(anything)  # the start's file (or a flag in older records)
    source_data: list[str] = checked(texts, default=None)
    target_data: list[str] = checked(texts, default=None)
    target_fraction: float | None = checked(share)  # of the target's train and val images (label budget)


@dataclass
class RunSettings(Part):
    """The resolved settings the experiment ran with (``config`` in the file)."""

    dataset: str | None = checked(text)
    protocol: str | None = checked(text)
    method_config: dict | None = checked(mapping)
    base_seed: int | None = checked(anything)
    batch_size: int | None = checked(anything)
    image_size: int | None = checked(anything)
    precision: str | None = checked(anything)  # as it ran
    precision_requested: str | None = checked(anything)
    start_fingerprint: str | None = checked(anything)
    sources: list[str] | None = checked(texts)
    tag: str | None = checked(text)  # the variant (--tag), "" or absent for the method itself
    target_fraction: float | None = checked(share)  # the label budget (absent: 1, the whole target)


@dataclass
class Environment(Part):
    device: str | None = checked(anything)
    multisource: str | None = checked(anything)
    git_commit: str | None = checked(anything)
    python: str | None = checked(anything)
    packages: dict | None = checked(anything)


def _trial(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RecordProblem(f"trial {value!r} is not a whole number >= 1")
    return value


def _stages(value: Any, where: str) -> dict[str, StageScores]:
    return {name: StageScores.from_json(s, f"{where}.{name}") for name, s in mapping(value, where).items()}


@dataclass
class ExperimentRecord(Part):
    """One finished experiment (``metrics.json``)."""

    schema_version: int = checked(anything, default=SCHEMA_VERSION)
    status: str = checked(text, default="complete")
    dataset: str = checked(text, default="")
    method: str = checked(text, default="")
    model: str = checked(text, default="")
    target: str = checked(text, default="", required=True)
    trial: int = checked(_trial, default=1, required=True)
    seed: int | None = checked(anything)
    protocol: str | None = checked(text)
    sources: list[str] = checked(texts, default=None)
    data_fingerprint: str | None = checked(anything)
    config: RunSettings = checked(RunSettings, default=None)
    environment: Environment = checked(Environment, default=None)
    information_used: InformationUsed | None = checked(InformationUsed)
    val: SplitScores = checked(SplitScores, default=None)
    test: SplitScores = checked(SplitScores, default=None, required=True)
    stages: dict[str, StageScores] = checked(_stages, default=None)
    time: TimeCost = checked(TimeCost, default=None)
    memory: MemoryCost = checked(MemoryCost, default=None)
    flops: FlopCount = checked(FlopCount, default=None)
    budget: TargetBudget = checked(TargetBudget, default=None)
    reused_from: str | None = checked(anything)
    stream: StreamStep | None = checked(StreamStep)  # only under --protocol stream
    # where the record was read from (never written): the summaries read the predictions file beside it
    folder: Path | None = field(default=None, compare=False, metadata={"local": True})

    def __post_init__(self) -> None:  # absent parts read as empty ones, so a reader never tests for None
        for name, kind in (("config", RunSettings), ("environment", Environment), ("val", SplitScores),
                           ("test", SplitScores), ("time", TimeCost), ("memory", MemoryCost), ("flops", FlopCount),
                           ("budget", TargetBudget)):
            if getattr(self, name) is None:
                setattr(self, name, kind())
        self.sources = list(self.sources or [])
        self.stages = dict(self.stages or {})

    @classmethod
    def from_json(cls, data: Any, where: str = "") -> "ExperimentRecord":
        """Read a metrics.json's content (schema 1 or 2); raises :class:`RecordProblem` naming what is wrong."""
        data = mapping(data, "metrics.json")
        version = data.get("schema_version", 1)
        if version not in READABLE_SCHEMAS:
            raise RecordProblem(f"schema_version {version!r} is not one this version reads "
                                f"({', '.join(map(str, READABLE_SCHEMAS))}); upgrade multisource")
        if version == 1:  # schema 1 kept each stage's scores at the top level
            data = dict(data)
            data["stages"] = {k: data.pop(k) for k in [k for k, v in data.items()
                                                        if isinstance(v, dict) and "same_as_final" in v]}
        record = super().from_json(data, where)
        if record.status != "complete" or record.test.accuracy is None:
            raise RecordProblem("'test.accuracy' is missing" if record.status == "complete" else
                                f"status is {record.status!r}, not complete")
        return record

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        out["stages"] = {name: s.to_json() for name, s in self.stages.items()}
        out["schema_version"] = SCHEMA_VERSION  # written in this layout, whatever it was read from
        return out

    @property
    def effective_protocol(self) -> str | None:
        """The protocol the experiment ran under, as its settings recorded it."""
        return self.config.protocol or self.protocol


def read_record(run_dir: Path) -> ExperimentRecord:
    """The record in an experiment folder; raises OSError (missing, unreadable) or ValueError (not a result)."""
    record = ExperimentRecord.from_json(read_json(Path(run_dir) / METRICS_FILE))
    record.folder = Path(run_dir)
    return record


def write_record(run_dir: Path, record: ExperimentRecord) -> Path:
    return write_json(Path(run_dir) / METRICS_FILE, record.to_json())
