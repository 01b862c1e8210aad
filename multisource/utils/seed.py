"""Explicit seeding: every trial gets its own seed, derived reproducibly."""

from __future__ import annotations

import hashlib
import random

import numpy as np


def seed_everything(seed: int) -> None:
    import torch  # here, not at the top: the split rule and the dataset registry use this module without torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def derive_seed(base_seed: int, *parts: object) -> int:
    """A stable 31-bit seed from a base seed and labels (e.g. trial number, target bin)."""
    text = "/".join([str(base_seed), *map(str, parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") & 0x7FFFFFFF


def trial_seed(base_seed: int, trial: int) -> int:
    """Trial k's seed; trial 1 uses the base seed so single runs match ``--seed`` exactly."""
    return base_seed if trial == 1 else derive_seed(base_seed, "trial", trial)
