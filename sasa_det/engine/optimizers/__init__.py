from .cpu_amp_optimizer_wrapper import CPUAmpOptimWrapper
from .merged_groups_constructor import MergedGroupsOptimWrapperConstructor, merge_param_groups

__all__ = ['CPUAmpOptimWrapper', 'MergedGroupsOptimWrapperConstructor', 'merge_param_groups']
