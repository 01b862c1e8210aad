"""multisource: multi-source transfer learning under temporal distribution shift.

Layers (dependencies point downwards only):
    experiment  (runner, sweeps, summaries)
    methods     (ensemble, fusion, grasp, pearl)
    training    (Lightning source trainer, target fine-tuning loop)
    data / models / measure
    registry, utils, paths
"""

__version__ = "0.1.0"
