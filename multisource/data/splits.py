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
