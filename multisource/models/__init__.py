"""Models: a registry of canonical names + aliases over timm and Hugging Face backends, checkpoints."""

from .checkpoint import CheckpointError, read_checkpoint_meta, save_checkpoint  # noqa: F401
from .factory import ModelError, create_model, data_config, load_checkpoint, resolve_model  # noqa: F401
from .registry import MODELS, ModelSpec, list_models  # noqa: F401
