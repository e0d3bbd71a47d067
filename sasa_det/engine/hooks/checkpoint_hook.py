"""``AtomicCheckpointHook``: mmengine's ``CheckpointHook`` whose checkpoints survive a kill.

mmengine 0.10.7's ``CheckpointHook`` writes a checkpoint with ``open(path, 'wb').write(bytes)``
(``LocalBackend.put``), so a run killed during the write leaves a truncated file under the final
name; it deletes the checkpoints beyond ``max_keep_ckpts`` *before* writing the new one, so with
``max_keep_ckpts=1`` such a kill leaves no checkpoint at all; and ``resume=True`` follows
``work_dir/last_checkpoint`` to whatever file it names. Selected in a config's ``default_hooks``,
this subclass changes the three (nothing else in mmengine changes)::

    default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook', interval=1,
                                         max_keep_ckpts=3))

- Checkpoints written to a local directory without ``backend_args`` go through the file backend
  ``'atomic_local'`` (:class:`AtomicLocalBackend`): temporary file, fsync, rename.
- The checkpoints beyond ``max_keep_ckpts`` are deleted after the new checkpoint and
  ``last_checkpoint`` are written.
- A run with ``resume=True`` and no checkpoint given (``tools/train.py --resume``) resumes from
  :func:`~sasa_det.engine.checkpoint.find_latest_intact_checkpoint`: the checkpoint
  ``last_checkpoint`` names if it is intact, else (with a warning naming the file and what is
  wrong with it) the newest intact one beside it.
"""
from mmengine.fileio import LocalBackend, register_backend
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS

from ..checkpoint import atomic_write_bytes, find_latest_intact_checkpoint


@register_backend('atomic_local')
class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend whose ``put`` never leaves a partly written file."""

    def put(self, obj: bytes, filepath) -> None:
        atomic_write_bytes(obj, str(filepath))


class _DeferredRemovals:
    """A file backend whose ``remove`` and ``rmtree`` are queued in ``pending``, not run."""

    def __init__(self, backend) -> None:
        self._backend, self.pending = backend, []

    def remove(self, path) -> None:
        self.pending.append((self._backend.remove, path))

    def rmtree(self, path) -> None:
        self.pending.append((self._backend.rmtree, path))

    def __getattr__(self, name):
        return getattr(self._backend, name)


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """``CheckpointHook`` with atomic writes, save-then-prune and an intact-checkpoint resume.

    Takes ``CheckpointHook``'s arguments. Explicit ``backend_args`` (or ``file_client_args``) and
    non-local ``out_dir`` are used as given, without the atomic write.
    """

    def before_run(self, runner) -> None:
        # Runner.train and Runner.test call before_run just before load_or_resume, which resumes
        # from runner._load_from when it is set (Runner has no public setter for it).
        if runner._resume and runner._load_from is None:
            runner._load_from = find_latest_intact_checkpoint(runner.work_dir)
            if runner._load_from is not None:
                runner.logger.info(f'Resuming from the latest intact checkpoint '
                                   f'{runner._load_from}.')
        super().before_run(runner)

    def before_train(self, runner) -> None:
        out_dir = self.out_dir or runner.work_dir
        if self.backend_args is None and self.file_client_args is None and '://' not in out_dir:
            self.backend_args = dict(backend='atomic_local')
        super().before_train(runner)

    def _save_checkpoint_with_step(self, runner, step, meta) -> None:
        backend = self.file_backend
        self.file_backend = deferred = _DeferredRemovals(backend)
        try:
            super()._save_checkpoint_with_step(runner, step, meta)
        finally:
            self.file_backend = backend
        for remove, path in deferred.pending:  # only now that the new checkpoint is complete
            remove(path)
