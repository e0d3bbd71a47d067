"""Load mmengine's own checkpoints with torch's safe unpickler (``weights_only=True``).

mmengine 0.10.7 calls ``torch.load(filename, map_location=...)``. Since torch 2.6 that means
``weights_only=True``: a restricted unpickler that rebuilds tensors, containers and primitives and
refuses every other global. That refusal is what stops a downloaded checkpoint from running code,
so we keep it and allowlist the few extra globals an mmengine checkpoint really holds (found by
saving one with a Runner and reading ``torch.serialization.get_unsafe_globals_in_checkpoint``,
then reading mmengine's hooks for what else they put in the message hub):

- ``message_hub.log_scalars``: :class:`mmengine.logging.HistoryBuffer`, whose state is two numpy
  arrays (numpy's ``_reconstruct``, ``ndarray``, ``dtype`` and the dtype's class) plus its
  class-level statistics methods, pickled as ``getattr(HistoryBuffer, 'mean')`` and so on;
- ``message_hub.runtime_info``: numpy scalars (numpy's ``scalar``), e.g. the ``eta`` that
  ``IterTimerHook`` computes from a HistoryBuffer, or metric values computed with numpy.

``collections.OrderedDict`` (state dicts) and ``collections.Counter`` (``MultiStepLR``
milestones) are on torch's default allowlist already. Two globals are narrowed, not allowed:

- ``builtins.getattr`` resolves only HistoryBuffer's four default statistics. A general getattr
  would give a checkpoint every attribute of every allowed object (function ``__globals__``,
  the ``builtins`` module through ``getattr.__self__``, ...).
- numpy dtypes: booleans and numbers only. An object array unpickles arbitrary Python objects,
  so ``dtype=object`` stays refused.

mmengine's remote loader (``http(s)://``, ``torchvision://``, ``open-mmlab://``) goes through
``torch.hub.load_state_dict_from_url``, whose ``weights_only`` defaults to False even in torch 2.14;
:func:`allow_mmengine_checkpoints` routes it through the same safe unpickler.
"""
import pickle
from typing import Any, Callable, List, Tuple, Union

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

# The numpy dtypes a checkpoint may carry: what HistoryBuffer stores (float64, int64) and what
# numpy metrics and hooks produce. Booleans and numbers only; never 'O' (object).
_NUMPY_DTYPES = ('bool', 'int8', 'int16', 'int32', 'int64', 'uint8', 'uint16', 'uint32', 'uint64',
                 'float16', 'float32', 'float64')

# What HistoryBuffer._set_default_statistics registers and HistoryBuffer.__getstate__ pickles.
_HISTORY_BUFFER_STATISTICS = ('min', 'max', 'current', 'mean')

SafeGlobal = Union[Callable, Tuple[Callable, str]]


def _history_buffer_statistic(owner: Any, name: str) -> Callable:
    """Stands in for ``builtins.getattr`` while unpickling: HistoryBuffer's statistics only."""
    if owner is HistoryBuffer and name in _HISTORY_BUFFER_STATISTICS:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'checkpoint calls getattr({owner!r}, {name!r}); weights_only loading allows getattr only '
        f'for HistoryBuffer statistics {_HISTORY_BUFFER_STATISTICS}')


def _numpy_multiarray():
    """numpy's private ``multiarray``: in ``numpy._core`` from numpy 2, ``numpy.core`` before."""
    if int(np.__version__.split('.')[0]) >= 2:
        from numpy._core import multiarray
    else:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    return multiarray


def mmengine_checkpoint_globals() -> List[SafeGlobal]:
    """The globals, beyond torch's defaults, that mmengine writes into its checkpoints.

    Entries are objects or ``(object, 'module.name')`` pairs, as ``add_safe_globals`` takes them.
    numpy's pickling helpers are listed under both module names a pickle may record:
    ``numpy._core.multiarray`` (numpy >= 2) and ``numpy.core.multiarray`` (numpy 1.x, e.g. the
    checkpoints of the mmdet model zoo).
    """
    multiarray = _numpy_multiarray()
    numpy_helpers = [(fn, f'{module}.{fn.__name__}')
                     for fn in (multiarray._reconstruct, multiarray.scalar)
                     for module in ('numpy._core.multiarray', 'numpy.core.multiarray')]
    dtype_classes = [type(np.dtype(name)) for name in _NUMPY_DTYPES]
    return [HistoryBuffer, (_history_buffer_statistic, 'builtins.getattr'),
            np.ndarray, np.dtype, *dtype_classes, *numpy_helpers]


def _load_url_weights_only(url: str, *args: Any, **kwargs: Any) -> Any:
    """``torch.hub.load_state_dict_from_url`` with ``weights_only=True`` (its default is False)."""
    return torch.hub.load_state_dict_from_url(url, *args, weights_only=True, **kwargs)


def allow_mmengine_checkpoints() -> None:
    """Let ``torch.load(..., weights_only=True)`` read mmengine checkpoints; refuse other globals.

    Idempotent; ``import sasa_det`` calls it.
    """
    if torch.__version__ < '2.6':  # pragma: no cover - weights_only=False was the default
        return
    torch.serialization.add_safe_globals(mmengine_checkpoint_globals())

    from mmengine.runner import checkpoint as mmengine_checkpoint
    mmengine_checkpoint.load_url = _load_url_weights_only
