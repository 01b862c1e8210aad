"""Silence dependencies' chatter (Lightning's tips, deprecation warnings) in CLIs and worker processes."""

from __future__ import annotations

import logging
import warnings

_NOISY = ("lightning", "lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero",
          "lightning.fabric.utilities.rank_zero", "torch.distributed")


def quiet_dependencies() -> None:
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*(LeafSpec|treespec).*")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
