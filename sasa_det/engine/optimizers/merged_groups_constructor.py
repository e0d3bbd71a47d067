"""An optimizer constructor that hands the optimizer one parameter group per set of options.

With a ``paramwise_cfg``, mmengine's ``DefaultOptimWrapperConstructor`` gives every parameter a
group of its own (201 for the SASA demo model, 127 for its conv partner), and torch's optimizers
pay a fixed cost per group on every step. :class:`MergedGroupsOptimWrapperConstructor` builds the
same groups and then merges those whose options (lr, weight decay, ...) are equal: each parameter
is optimised with the options the default constructor gives it, in a handful of groups::

    optim_wrapper = dict(constructor='MergedGroupsOptimWrapperConstructor',
                         optimizer=dict(type='AdamW', lr=0.003, weight_decay=0.05),
                         paramwise_cfg=dict(custom_keys={'.rel_row': dict(decay_mult=0.0)}))

A checkpoint's optimizer state holds its groups, so a run resumes only with the constructor it
was saved with.
"""
from typing import List, Optional, Union

from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
from torch import nn


def merge_param_groups(groups: List[dict]) -> List[dict]:
    """Groups with equal options (every key but 'params') as one group each, in the order their
    first parameter appears; the parameters keep their order within each group."""
    merged: List[dict] = []
    merged_options: List[dict] = []  # merged[i]'s options, every key but 'params'
    for group in groups:
        options = {key: value for key, value in group.items() if key != 'params'}
        if options in merged_options:
            merged[merged_options.index(options)]['params'].extend(group['params'])
        else:
            merged_options.append(options)
            merged.append(dict(options, params=list(group['params'])))
    return merged


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class MergedGroupsOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``DefaultOptimWrapperConstructor`` whose parameter groups are merged by their options
    (:func:`merge_param_groups`). Takes the same ``optim_wrapper_cfg`` and ``paramwise_cfg``."""

    def add_params(self, params: List[dict], module: nn.Module, prefix: str = '',
                   is_dcn_module: Optional[Union[int, float]] = None) -> None:
        super().add_params(params, module, prefix, is_dcn_module)
        if not prefix:  # the outermost call: the recursion over the children has finished
            params[:] = merge_param_groups(params)
