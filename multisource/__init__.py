"""multisource: multi-source transfer learning under temporal distribution shift.

Layers (dependencies point downwards only):
    experiment  (runner, sweeps, summaries)
    methods     (ensemble, fusion, grasp, pearl)
    training    (Lightning source trainer, target fine-tuning loop)
    data / models / measure
    registry, utils, paths
"""

import os as _os

# OpenMP threads that busy-wait make PyTorch 20-40x slower as soon as another process competes for the
# cores (measured on a 2-core machine: 2.4 s vs 0.1 s per training step). Passive waiting costs little on an
# idle machine. Only a default: set OMP_WAIT_POLICY yourself to override; it must precede importing torch.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
