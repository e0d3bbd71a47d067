"""Model complexity: parameters, multiply-adds and FLOPs with attention counted exactly."""
from .counter import complexity, complexity_breakdown, register_module_rule
from . import attention_rules  # noqa: F401  (registers the attention layers' rules)

__all__ = ['complexity', 'complexity_breakdown', 'register_module_rule']
