"""ModelConfig is the model file's config and lives with the format in
:mod:`poppins.engine.config`; the training side imports it from here or ``poppins.model``."""
from ..engine.config import CONFIG_MAGIC, CONFIG_VERSION, ModelConfig

__all__ = ["CONFIG_MAGIC", "CONFIG_VERSION", "ModelConfig"]
