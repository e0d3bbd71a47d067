"""Checkpoint files: safe loading, atomic writing, and finding an intact one to resume from.

Safe loading. Since torch 2.6 ``torch.load`` defaults to ``weights_only=True``: a restricted
unpickler that rebuilds tensors, containers and primitives and refuses every other global. That
refusal is what stops a downloaded checkpoint from running code, so we keep it and allowlist
(:func:`allow_mmengine_checkpoints`, through torch's ``add_safe_globals``) the few extra globals
an mmengine checkpoint really holds, found by saving one with a Runner and reading
``torch.serialization.get_unsafe_globals_in_checkpoint``, then reading mmengine's hooks for what
else they put in the message hub:

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

URLs. mmengine loads ``http(s)://``, ``torchvision://`` and ``open-mmlab://`` checkpoints with
``torch.hub.load_state_dict_from_url``, whose ``weights_only`` defaults to False.
:func:`download_url_checkpoints` downloads those a config names (``load_from``, ``Pretrained``
``init_cfg``) and puts the local file in their place, so mmengine reads them as local files,
with the safe unpickler; ``tools/train.py`` and ``tools/test.py`` call it.

Atomic writes and intact checkpoints. :func:`atomic_write_bytes` writes a temporary file in the
same directory, fsyncs it and renames it onto the final name, so a reader (or a run killed
mid-write) sees either the old file or the complete new one. A checkpoint is intact when
:func:`checkpoint_problem` finds nothing: torch's zip container with a central directory and a
matching CRC-32 for every member (read once, without unpickling), or for the legacy non-zip
format a successful ``torch.load``. :func:`find_latest_intact_checkpoint` is what a resumed run
starts from.
"""
import os
import os.path as osp
import pickle
import re
import uuid
import zipfile
from typing import Any, Callable, List, Optional, Tuple, Union

import numpy as np
import torch
from mmengine.logging import HistoryBuffer, MMLogger, print_log

# --- safe loading -------------------------------------------------------------------------------

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


def allow_mmengine_checkpoints() -> None:
    """Let ``torch.load(..., weights_only=True)`` read mmengine checkpoints; refuse other globals.

    Idempotent; ``import sasa_det`` calls it.
    """
    if hasattr(torch.serialization, 'add_safe_globals'):  # torch >= 2.4
        torch.serialization.add_safe_globals(mmengine_checkpoint_globals())


# --- URL checkpoints ----------------------------------------------------------------------------

def _url_of(name: str) -> Optional[str]:
    """The http(s) URL behind a checkpoint name mmengine would download, else None."""
    from mmengine.runner import checkpoint as mmengine_checkpoint
    if name.startswith(('http://', 'https://')):
        return name
    if name.startswith(('torchvision://', 'modelzoo://')):
        return mmengine_checkpoint.get_torchvision_models()[name.split('://', 1)[1]]
    if name.startswith(('open-mmlab://', 'openmmlab://')):
        model = name.split('://', 1)[1]
        model = mmengine_checkpoint.get_deprecated_model_names().get(model, model)
        url = mmengine_checkpoint.get_external_models()[model]
        return url if url.startswith(('http://', 'https://')) else None
    return None


def download_checkpoint(url: str, model_dir: Optional[str] = None) -> str:
    """Download ``url`` into torch hub's checkpoint directory (once); return the local path."""
    from urllib.parse import urlparse
    model_dir = model_dir or osp.join(torch.hub.get_dir(), 'checkpoints')
    os.makedirs(model_dir, exist_ok=True)
    cached = osp.join(model_dir, osp.basename(urlparse(url).path))
    if not osp.exists(cached):
        print_log(f'Downloading {url} to {cached}', logger='current')
        torch.hub.download_url_to_file(url, cached, progress=False)
    return cached


def download_url_checkpoints(cfg: Any, model_dir: Optional[str] = None) -> None:
    """Replace, in place, every URL checkpoint of ``cfg`` by its downloaded local file.

    Looks at ``cfg.load_from`` and at ``checkpoint`` of every ``init_cfg`` under ``cfg.model``
    (``dict(type='Pretrained', checkpoint=URL)``), as mmengine would load them.
    """
    load_from = cfg.get('load_from')
    if isinstance(load_from, str) and _url_of(load_from):
        cfg.load_from = download_checkpoint(_url_of(load_from), model_dir)
    stack = [cfg.get('model')]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            checkpoint = node.get('checkpoint')
            if node.get('type') == 'Pretrained' and isinstance(checkpoint, str) and _url_of(
                    checkpoint):
                node['checkpoint'] = download_checkpoint(_url_of(checkpoint), model_dir)
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)


# --- atomic writes and intact checkpoints -------------------------------------------------------

# Our temporary files start with this prefix, so they never match the '*.pth' checkpoint names
# and a stale one (left by SIGKILL during a write) is recognisable and safe to delete.
TMP_PREFIX = '.tmp-sasa-'
_STEP = re.compile(r'(\d+)(?=\.[^.]*$)')


def atomic_write_bytes(data: bytes, path: str) -> None:
    """Write ``data`` to ``path`` so that ``path`` is never seen partly written."""
    directory = osp.dirname(osp.abspath(path))
    os.makedirs(directory, exist_ok=True)
    unique = f'{os.getpid()}.{uuid.uuid4().hex[:8]}'
    tmp = osp.join(directory, f'{TMP_PREFIX}{osp.basename(path)}.{unique}')
    # os.open with 0o666 (not mkstemp's 0o600) so the umask decides, as for open(path, 'wb').
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, 'O_BINARY', 0), 0o666)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: str) -> None:
    """Persist the rename itself (the directory entry); not possible on every OS."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - file systems that refuse fsync on directories
        pass
    finally:
        os.close(fd)


def checkpoint_problem(path: str) -> Optional[str]:
    """Why the checkpoint file at ``path`` cannot be resumed from, or None if it is intact."""
    if not osp.isfile(path):
        return 'file does not exist'
    if osp.getsize(path) == 0:
        return 'file is empty'
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                bad_member = archive.testzip()  # reads every member and checks its CRC-32
        except Exception as err:  # noqa: BLE001 - zipfile raises many types on garbage
            return f'damaged zip container ({type(err).__name__}: {err})'
        return None if bad_member is None else f'CRC mismatch in member {bad_member!r}'
    with open(path, 'rb') as f:
        if f.read(4) == b'PK\x03\x04':
            # torch's zip format without a readable central directory: the tail was cut off.
            return 'truncated (zip central directory missing)'
    try:  # legacy (pre-1.6) torch.save format: only a full load can tell
        torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure means "cannot resume from it"
        return f'cannot be loaded ({type(err).__name__}: {err})'
    return None


def _step(path: str) -> int:
    """The number in a checkpoint name (iter_12.pth -> 12); -1 when there is none."""
    match = _STEP.search(osp.basename(path))
    return int(match.group(1)) if match else -1


def checkpoint_candidates(directory: str) -> List[str]:
    """The ``*.pth`` files in ``directory``, newest first (by the step in the name, then mtime)."""
    if not osp.isdir(directory):
        return []
    paths = [osp.join(directory, name) for name in os.listdir(directory)
             if name.endswith('.pth') and not name.startswith(TMP_PREFIX)]
    return sorted(paths, key=lambda p: (_step(p), osp.getmtime(p)), reverse=True)


def remove_stale_temporaries(directory: str) -> None:
    """Delete temporaries left by a run killed while writing (they are never complete files)."""
    if not osp.isdir(directory):
        return
    for name in os.listdir(directory):
        if name.startswith(TMP_PREFIX):
            print_log(f'Removing {osp.join(directory, name)}: an unfinished checkpoint write '
                      'from an interrupted run.', logger='current', level=30)  # WARNING
            try:
                os.unlink(osp.join(directory, name))
            except FileNotFoundError:  # another rank of the same resumed run removed it
                pass


def find_latest_intact_checkpoint(work_dir: str) -> Optional[str]:
    """The checkpoint to resume from: the one ``work_dir/last_checkpoint`` names if intact, else
    the newest intact ``*.pth`` beside it; None when there is no ``last_checkpoint`` (a fresh
    run). Damaged files are reported with a warning naming the file and the reason."""
    logger = MMLogger.get_current_instance()
    pointer = osp.join(work_dir, 'last_checkpoint')
    if not osp.exists(pointer):  # as mmengine: no pointer, no resume
        logger.info('Did not find last_checkpoint to be resumed.')
        return None
    with open(pointer) as f:
        named = f.read().strip()
    search_dir = osp.dirname(named) if named else work_dir
    remove_stale_temporaries(search_dir)
    if not named:  # a kill while mmengine rewrote the pointer
        logger.warning(f'{pointer} is empty.')
    else:
        problem = checkpoint_problem(named)
        if problem is None:
            return named
        logger.warning(f'Checkpoint {named} (named by {pointer}) cannot be resumed from: '
                       f'{problem}.')
    for candidate in checkpoint_candidates(search_dir):
        if named and osp.abspath(candidate) == osp.abspath(named):
            continue
        problem = checkpoint_problem(candidate)
        if problem is None:
            logger.warning(f'Falling back to the previous intact checkpoint {candidate} '
                           f'(instead of {named}).')
            return candidate
        logger.warning(f'Checkpoint {candidate} cannot be resumed from: {problem}; skipped.')
    raise RuntimeError(f'Cannot resume: checkpoint {named} named by {pointer} is damaged '
                       f'and no intact *.pth checkpoint was found in {search_dir}.')
