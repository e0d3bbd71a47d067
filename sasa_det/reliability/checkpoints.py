"""Checkpoints that survive a kill: atomic writes, and auto-resume that skips damaged files.

mmengine 0.10.7 writes a checkpoint with ``open(path, 'wb').write(bytes)``
(``LocalBackend.put``), so a run killed during the write leaves a truncated file under the final
name, and the next ``--resume`` reads ``work_dir/last_checkpoint`` and fails on it (or on a
pointer to it). Three fixes, applied by :func:`install` when ``sasa_det`` is imported:

- ``LocalBackend.put`` writes to a temporary file in the same directory, flushes and fsyncs it,
  then ``os.replace``-s it onto the final name (atomic on POSIX and Windows within a file system)
  and fsyncs the directory. A reader sees either the old file or the complete new one.
- ``CheckpointHook`` deletes the checkpoints beyond ``max_keep_ckpts`` *after* writing the new
  one (mmengine deletes first, so with ``max_keep_ckpts=1`` a kill mid-write left nothing).
- ``find_latest_checkpoint`` (what ``Runner(resume=True)`` calls) verifies the checkpoint that
  ``last_checkpoint`` names. If it is missing, truncated or corrupt, it logs a warning naming the
  file and the reason, and returns the newest intact checkpoint in the same directory instead.

A checkpoint is "intact" when :func:`checkpoint_problem` finds nothing: torch's zip container
with a central directory and matching CRC-32 of every member (this reads the file once, without
unpickling), or for the legacy non-zip format a successful ``torch.load``.
"""
import os
import os.path as osp
import re
import uuid
import zipfile
from typing import List, Optional

import torch

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


def remove_stale_temporaries(directory: str, logger) -> None:
    """Delete temporaries left by a run killed while writing (they are never complete files)."""
    if not osp.isdir(directory):
        return
    for name in os.listdir(directory):
        if name.startswith(TMP_PREFIX):
            logger.warning(f'Removing {osp.join(directory, name)}: an unfinished checkpoint '
                           'write from an interrupted run.')
            try:
                os.unlink(osp.join(directory, name))
            except FileNotFoundError:  # another rank of the same resumed run removed it
                pass


def find_latest_good_checkpoint(work_dir: str) -> Optional[str]:
    """The checkpoint to auto-resume from: ``work_dir/last_checkpoint`` if intact, else the newest
    intact ``*.pth`` beside it. Damaged files are reported (warning naming file and reason)."""
    from mmengine.logging import MMLogger, print_log

    logger = MMLogger.get_current_instance()
    pointer = osp.join(work_dir, 'last_checkpoint')
    named = None
    if osp.exists(pointer):
        with open(pointer) as f:
            named = f.read().strip() or None
    if named is None:  # as mmengine: no pointer, no resume (a fresh run in this work_dir)
        print_log('Did not find last_checkpoint to be resumed.', logger='current')
        return None
    search_dir = osp.dirname(named) or work_dir
    remove_stale_temporaries(search_dir, logger)
    problem = checkpoint_problem(named)
    if problem is None:
        return named
    logger.warning(f'Checkpoint {named} (named by {pointer}) cannot be resumed from: {problem}.')
    for candidate in checkpoint_candidates(search_dir):
        if osp.abspath(candidate) == osp.abspath(named):
            continue
        problem = checkpoint_problem(candidate)
        if problem is None:
            logger.warning(f'Falling back to the previous intact checkpoint {candidate} '
                           f'(instead of {named}).')
            return candidate
        logger.warning(f'Checkpoint {candidate} cannot be resumed from: {problem}; skipped.')
    raise RuntimeError(f'Cannot resume: checkpoint {named} named by {pointer} is damaged '
                       f'and no intact *.pth checkpoint was found in {search_dir}.')


def _save_then_remove_old(save_checkpoint_with_step):
    """Wrap ``CheckpointHook._save_checkpoint_with_step`` so that the checkpoints it drops
    (``max_keep_ckpts``) are deleted after the new one and ``last_checkpoint`` are written,
    not before: with ``max_keep_ckpts=1`` a kill during the write would otherwise leave none."""

    def wrapped(self, runner, step, meta):
        backend, deferred = self.file_backend, []
        backend.remove = lambda path: deferred.append(('remove', path))
        backend.rmtree = lambda path: deferred.append(('rmtree', path))
        try:
            save_checkpoint_with_step(self, runner, step, meta)
        finally:
            del backend.remove, backend.rmtree  # back to the class's methods
        for method, path in deferred:  # only once the new checkpoint is complete
            getattr(backend, method)(path)

    wrapped.__wrapped__ = save_checkpoint_with_step
    return wrapped


def _atomic_put(self, obj: bytes, filepath) -> None:
    """``LocalBackend.put``, atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(obj, str(filepath))


def install() -> None:
    """Make mmengine's local checkpoint writes atomic, its old-checkpoint removal come after
    the new checkpoint is written, and its auto-resume skip damaged files.

    Idempotent. ``mmengine.runner.runner`` imported ``find_latest_checkpoint`` by name, so it is
    replaced there as well as in ``mmengine.runner.checkpoint``.
    """
    from mmengine.fileio.backends import local_backend
    from mmengine.hooks import CheckpointHook
    from mmengine.runner import checkpoint as mm_checkpoint
    from mmengine.runner import runner as mm_runner

    local_backend.LocalBackend.put = _atomic_put
    if not hasattr(CheckpointHook._save_checkpoint_with_step, '__wrapped__'):
        CheckpointHook._save_checkpoint_with_step = _save_then_remove_old(
            CheckpointHook._save_checkpoint_with_step)
    mm_checkpoint.find_latest_checkpoint = find_latest_good_checkpoint
    mm_runner.find_latest_checkpoint = find_latest_good_checkpoint
