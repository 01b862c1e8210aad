"""The ways of combining source models for a target bin (ensemble, fusion, grasp, pearl), the merging
baselines (task_arithmetic, ties, dare, soup) and the reference rows every combination must beat
(target_only, source_finetune).

Each method is a registry entry: a config dataclass plus ``run(config, pool, target, meter) -> MethodResult``.
"""

from .base import (METHODS, MethodResult, MethodSpec, SourcePool, TargetData, get_method, list_methods,  # noqa: F401
                   no_transfer_method, reference_method)
from . import ensemble, fusion, grasp, pearl, soup, source_finetune, target_only, task_vectors  # noqa: F401,E402  (registers)
from .inputs import run_method, source_pool, target_data  # noqa: F401,E402
