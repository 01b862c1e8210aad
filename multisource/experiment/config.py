"""What one experiment runs (ExperimentConfig). How it runs is a :class:`multisource.options.ExperimentOptions`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import ConfigError, check_range, check_seed
from ..data.datasets import get_dataset
from ..methods import get_method
from ..models.factory import resolve_model
from ..paths import tag_problem
from .protocols import DEFAULT_PROTOCOL, canonical_protocol


def fraction_problem(value: object) -> str | None:
    """Why ``value`` is not a label budget (None when it is one): a number in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "a label budget is a number in (0, 1], e.g. 0.05 for 5% of the target's train and val images"
    if not 0 < value <= 1:
        return "a label budget is a share of the target's train and val images, in (0, 1] (1: all of them)"
    if float(f"{value:g}") != value:  # the budget names its results folder (fraction-<F>): it must read back
        return f"give at most 6 significant digits (e.g. {float(f'{value:g}'):g}), so its folder names it exactly"
    return None


@dataclass
class ExperimentConfig:
    """Names are made canonical on construction (aliases resolved once), so lower layers use them as they are."""

    dataset: str = "drift_digits"
    model: str = "tiny-resnet"
    method: str = "grasp"
    target: str = ""
    sources: tuple[str, ...] = ()  # default: the protocol's sources, chronologically
    protocol: str = DEFAULT_PROTOCOL  # leave-one-out | past | window:N (experiment/protocols.py)
    trial: int = 1
    seed: int = 42  # trial k > 1 derives its own seed from this one
    batch_size: int = 32
    image_size: int | None = None  # default: the dataset's
    # Run a method that combines parameters on sources fine-tuned from different starts (refused otherwise).
    allow_mixed_starts: bool = False
    method_config: Any = field(default_factory=dict)  # the method's config dataclass, or a mapping of its fields
    # Names a variant of the method (other settings, say --source_order nearest-first): kept apart on disk
    # (<method>@<tag>/) and its own row, <method>[<tag>], in the comparison, paired with every other row.
    tag: str = ""
    # A label budget: the share of the target's train and val images the method may use (a stratified, seeded
    # subsample, the same for every method of a trial; the test split is whole). Results under budgets/.
    target_fraction: float = 1.0

    def __post_init__(self) -> None:
        self.sources = tuple(self.sources or ())
        check_range(self, "trial", 1)
        check_seed(self)
        check_range(self, "batch_size", 1)
        if self.image_size is not None:
            check_range(self, "image_size", 8)
        if not self.target:
            raise ConfigError("ExperimentConfig.target is empty; pass --target BIN.")
        if self.target in self.sources:
            raise ConfigError(f"Target bin {self.target} is also listed as a source; a method must not see the "
                              "target's own source model. Remove it from --sources.")
        if len(set(self.sources)) != len(self.sources):
            raise ConfigError(f"--sources lists a bin twice: {list(self.sources)}.")
        if self.tag and (problem := tag_problem(self.tag)):
            raise ConfigError(f"--tag {self.tag!r}: {problem}.", field="tag")
        if problem := fraction_problem(self.target_fraction):
            raise ConfigError(f"--target_fraction {self.target_fraction!r}: {problem}.", field="target_fraction")
        self.target_fraction = float(self.target_fraction)
        self.dataset = get_dataset(self.dataset).key
        self.protocol = canonical_protocol(self.protocol)
        self.model = resolve_model(self.model).name
        self.method = get_method(self.method).name
