"""The split rule shared by every dataset: per stratum, shuffle with the seed, 80/10/10 with floors."""

from __future__ import annotations

import random
from typing import Sequence, TypeVar

from ..utils.seed import derive_seed

T = TypeVar("T")
SPLITS = ("train", "val", "test")


def split_stratum(items: Sequence[T], seed: int, stratum: str) -> dict[str, list[T]]:
    """Split one stratum's (already sorted) items: train=floor(0.8n), val=floor(0.1n), test=rest.

    The shuffle seed mixes in the stratum's name, so the result for one stratum does not depend on
    which other strata exist or the order in which they are processed.
    """
    items = list(items)
    rng = random.Random(derive_seed(seed, "split", stratum))
    rng.shuffle(items)
    n = len(items)
    n_train, n_val = (8 * n) // 10, n // 10
    return {"train": items[:n_train], "val": items[n_train:n_train + n_val], "test": items[n_train + n_val:]}


def label_budget_indices(labels: Sequence[int], fraction: float, seed: int) -> list[int]:
    """A stratified, seeded subsample of a split, as sorted indices into ``labels``: from each class with n
    examples, ``max(1, round(fraction * n))`` of them (every class present keeps at least one image).

    Each class draws with its own seed (``seed`` mixed with the class), so the choice for one class does not
    depend on the others, and a smaller fraction's subsample is not required to nest in a larger one's.
    ``fraction`` 1 keeps every index."""
    if not 0 < fraction <= 1:
        raise ValueError(f"a label budget is a fraction in (0, 1], got {fraction}")
    if fraction == 1:
        return list(range(len(labels)))
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(i)
    keep: list[int] = []
    for label, members in sorted(by_class.items()):
        rng = random.Random(derive_seed(seed, "label-budget", f"{fraction:g}", label))
        keep.extend(rng.sample(members, max(1, round(fraction * len(members)))))
    return sorted(keep)
