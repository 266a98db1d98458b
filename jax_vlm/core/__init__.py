"""What every layer shares: user errors, the plug-in registry, config sections with defaults."""

from jax_vlm.core import registry, settings
from jax_vlm.core.errors import StageInterrupted, UserError, require

__all__ = ['StageInterrupted', 'UserError', 'registry', 'require', 'settings']
