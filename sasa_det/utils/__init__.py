from .allocator import keep_freed_memory
from .config_errors import ConfigValueError, explain_config_errors, locate_config_key

__all__ = ['ConfigValueError', 'explain_config_errors', 'keep_freed_memory', 'locate_config_key']
