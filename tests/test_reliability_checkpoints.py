"""Interrupted training loses at most one checkpoint interval.

The toy mmengine run of conftest (a linear model, CPU, checkpoint every 2 iterations, with the
configs' ``AtomicCheckpointHook``) trains in a subprocess, is killed with SIGKILL, and is resumed
in this process with ``resume=True`` (what ``--resume`` sets). Properties checked:

- killed between checkpoints: the resumed run starts from the last checkpoint and finishes;
- killed while a checkpoint is being written: no damaged file is left under a checkpoint name,
  ``last_checkpoint`` names an intact one, and the resumed run starts from it; with mmengine's
  own ``CheckpointHook`` (the control) the same kill leaves a truncated checkpoint;
- a truncated or corrupt checkpoint named by ``last_checkpoint`` is reported (the message names
  the file) and the previous intact checkpoint is used.
"""
import builtins
import io
import os
import os.path as osp
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zipfile

import pytest
import torch
from mmengine.hooks import Hook

from conftest import make_toy_runner
from sasa_det.engine import atomic_write_bytes, checkpoint_problem

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


pytestmark = pytest.mark.usefixtures('one_thread')  # tiny models: see conftest


class SlowHalfWriter:
    """A binary file whose ``write`` puts half the bytes on disk, signals, then pauses."""

    def __init__(self, f, signal_path):
        self.f, self.signal_path = f, signal_path

    def write(self, data):
        self.f.write(data[:len(data) // 2])
        self.f.flush()
        open(self.signal_path, 'w').close()
        time.sleep(60)
        return self.f.write(data[len(data) // 2:])

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.f.__exit__(*exc)


class Progress(Hook):
    """Appends each finished iteration (1-based) to work_dir/progress. With ``slow_save_iter``,
    that iteration's checkpoint is written by a :class:`SlowHalfWriter` (work_dir/writing
    appears when half of it is on disk), so a kill can land inside the write."""

    def __init__(self, slow_save_iter=None):
        self.slow_save_iter = slow_save_iter

    def before_save_checkpoint(self, runner, checkpoint):
        if checkpoint['meta']['iter'] != self.slow_save_iter:
            return
        signal_path = osp.join(runner.work_dir, 'writing')
        real_open, real_fdopen = builtins.open, os.fdopen

        def slow_open(path, mode='r', *args, **kwargs):  # mmengine's plain write
            f = real_open(path, mode, *args, **kwargs)
            return SlowHalfWriter(f, signal_path) if 'w' in mode and 'b' in mode else f

        def slow_fdopen(fd, mode='r', *args, **kwargs):  # our atomic write
            f = real_fdopen(fd, mode, *args, **kwargs)
            return SlowHalfWriter(f, signal_path) if 'w' in mode else f

        builtins.open, os.fdopen = slow_open, slow_fdopen

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        with open(osp.join(runner.work_dir, 'progress'), 'a') as f:
            f.write(f'{runner.iter + 1}\n')
        time.sleep(0.1)


def train_toy(work_dir, max_iters, resume, slow_save_iter=None, max_keep_ckpts=-1,
              hook_type='AtomicCheckpointHook'):
    """Train the toy model with a checkpoint every 2 iterations; return the run's log text."""
    runner = make_toy_runner(
        work_dir, max_iters, resume=resume, hooks=[Progress(slow_save_iter)],
        checkpoint=dict(type=hook_type, interval=2, by_epoch=False,
                        max_keep_ckpts=max_keep_ckpts))
    runner.train()
    with open(runner.logger.log_file) as f:
        return f.read()


# The subprocess that gets killed: argv = work_dir max_iters slow_save_iter(or -1)
# max_keep_ckpts hook_type
CHILD = textwrap.dedent('''
    import sys
    sys.path.insert(0, {tests!r})
    from test_reliability_checkpoints import train_toy
    slow = int(sys.argv[3])
    train_toy(sys.argv[1], int(sys.argv[2]), resume=False,
              slow_save_iter=slow if slow > 0 else None, max_keep_ckpts=int(sys.argv[4]),
              hook_type=sys.argv[5])
''').format(tests=osp.dirname(osp.abspath(__file__)))


def _start(work_dir, max_iters, slow_save_iter=-1, max_keep_ckpts=-1,
           hook_type='AtomicCheckpointHook'):
    """Start the toy training in a subprocess (to be killed)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''),
               OMP_NUM_THREADS='1')
    return subprocess.Popen([sys.executable, '-c', CHILD, work_dir, str(max_iters),
                             str(slow_save_iter), str(max_keep_ckpts), hook_type], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_for(predicate, proc, timeout=120):
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, 'training exited before it could be killed'
        assert time.time() < deadline, 'timed out waiting for the training subprocess'
        time.sleep(0.05)


def _progress(work_dir):
    path = osp.join(work_dir, 'progress')
    if not osp.exists(path):
        return []
    return [int(line) for line in open(path).read().split()]


def _kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def _first_iter_after_resume(work_dir, iters_before):
    """The first iteration the resumed run trained (progress lines after the killed run's)."""
    return _progress(work_dir)[iters_before]


def _last_checkpoint(work_dir):
    return open(osp.join(work_dir, 'last_checkpoint')).read().strip()


def test_sigkill_mid_training_resumes_from_last_checkpoint(tmp_path):
    """Killed after iteration 5 (checkpoints at 2 and 4): resumes at 5, finishes at 8."""
    work_dir = str(tmp_path / 'work')
    proc = _start(work_dir, max_iters=8)
    _wait_for(lambda: len(_progress(work_dir)) >= 5, proc)
    _kill(proc)
    done = len(_progress(work_dir))
    assert done < 8, 'the run finished before the kill; nothing was tested'
    last_saved = 2 * (done // 2)
    assert _last_checkpoint(work_dir) == osp.join(work_dir, f'iter_{last_saved}.pth')

    log = train_toy(work_dir, max_iters=8, resume=True)
    assert f'Resuming from the latest intact checkpoint {work_dir}/iter_{last_saved}.pth' in log
    assert _first_iter_after_resume(work_dir, done) == last_saved + 1  # lost < one interval
    assert _progress(work_dir)[-1] == 8
    assert checkpoint_problem(osp.join(work_dir, 'iter_8.pth')) is None


@pytest.mark.parametrize('max_keep_ckpts', [-1, 1])
def test_sigkill_while_writing_checkpoint_leaves_no_damaged_file(tmp_path, max_keep_ckpts):
    """Killed with half of iter_4.pth written: no truncated iter_4.pth, resume from iter_2,
    also when only one checkpoint is kept (iter_2 is deleted only after iter_4 is complete)."""
    work_dir = str(tmp_path / 'work')
    proc = _start(work_dir, max_iters=6, slow_save_iter=4, max_keep_ckpts=max_keep_ckpts)
    _wait_for(lambda: osp.exists(osp.join(work_dir, 'writing')), proc)
    _kill(proc)
    names = sorted(n for n in os.listdir(work_dir) if n.endswith('.pth'))
    for name in names:  # without atomic writes, iter_4.pth is here with half its bytes
        assert checkpoint_problem(osp.join(work_dir, name)) is None, name
    assert names == ['iter_2.pth']
    assert _last_checkpoint(work_dir) == osp.join(work_dir, 'iter_2.pth')

    done = len(_progress(work_dir))
    log = train_toy(work_dir, max_iters=6, resume=True, max_keep_ckpts=max_keep_ckpts)
    assert 'unfinished checkpoint write' in log  # the stale temporary was cleaned up
    assert _first_iter_after_resume(work_dir, done) == 3
    assert not [n for n in os.listdir(work_dir) if n.startswith('.tmp-sasa-')]
    assert checkpoint_problem(osp.join(work_dir, 'iter_6.pth')) is None
    if max_keep_ckpts == 1:  # the old ones are still removed, after the new one is written
        assert [n for n in os.listdir(work_dir) if n.endswith('.pth')] == ['iter_6.pth']


def test_control_mmengine_checkpoint_hook_leaves_a_truncated_file(tmp_path):
    """The same kill with mmengine's own CheckpointHook and max_keep_ckpts=1 (``import
    sasa_det`` changes nothing there): iter_2.pth was deleted first, and the only checkpoint
    left, the one last_checkpoint will name, is a truncated iter_4.pth."""
    work_dir = str(tmp_path / 'work')
    proc = _start(work_dir, max_iters=6, slow_save_iter=4, max_keep_ckpts=1,
                  hook_type='CheckpointHook')
    _wait_for(lambda: osp.exists(osp.join(work_dir, 'writing')), proc)
    _kill(proc)
    assert sorted(n for n in os.listdir(work_dir) if n.endswith('.pth')) == ['iter_4.pth']
    assert 'truncated' in checkpoint_problem(osp.join(work_dir, 'iter_4.pth'))


def _member_data_offset(path, suffix):
    """Where the bytes of the zip member whose name ends with ``suffix`` start."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(suffix))
    with open(path, 'rb') as f:
        f.seek(info.header_offset + 26)  # local header: name and extra-field lengths
        name_len, extra_len = struct.unpack('<HH', f.read(4))
    return info.header_offset + 30 + name_len + extra_len


@pytest.mark.parametrize('damage', ['truncate', 'corrupt'])
def test_damaged_last_checkpoint_falls_back_to_previous(tmp_path, damage):
    """last_checkpoint names a truncated / bit-flipped iter_4.pth: warn naming it, use iter_2."""
    work_dir = str(tmp_path / 'work')
    train_toy(work_dir, max_iters=4, resume=False)
    bad = osp.join(work_dir, 'iter_4.pth')
    data = open(bad, 'rb').read()
    if damage == 'truncate':
        data = data[:len(data) // 2]
    else:  # flip bytes of the pickled state (data.pkl), keep the length and the zip directory
        start = _member_data_offset(bad, 'data.pkl')
        data = data[:start] + bytes(b ^ 0xFF for b in data[start:start + 16]) + data[start + 16:]
    open(bad, 'wb').write(data)
    assert checkpoint_problem(bad) is not None

    log = train_toy(work_dir, max_iters=6, resume=True)
    assert f'Checkpoint {bad} (named by {work_dir}/last_checkpoint) cannot be resumed' in log
    assert f'previous intact checkpoint {work_dir}/iter_2.pth' in log
    assert _first_iter_after_resume(work_dir, 4) == 3
    assert _progress(work_dir)[-1] == 6


def test_empty_last_checkpoint_falls_back_to_the_newest(tmp_path):
    """A run killed while mmengine rewrote last_checkpoint leaves it empty: resume from the
    newest intact checkpoint (iter_4), not from scratch."""
    work_dir = str(tmp_path / 'work')
    train_toy(work_dir, max_iters=4, resume=False)
    open(osp.join(work_dir, 'last_checkpoint'), 'w').close()
    log = train_toy(work_dir, max_iters=6, resume=True)
    assert f'{work_dir}/last_checkpoint is empty' in log
    assert _first_iter_after_resume(work_dir, 4) == 5


def test_checkpoint_problem_and_atomic_write(tmp_path):
    """checkpoint_problem accepts torch.save output and names what is wrong with damaged files;
    atomic_write_bytes leaves no temporary behind."""
    buffer = io.BytesIO()
    torch.save({'state_dict': {'w': torch.arange(1000.)}}, buffer)
    good = str(tmp_path / 'good.pth')
    atomic_write_bytes(buffer.getvalue(), good)
    assert os.listdir(tmp_path) == ['good.pth']
    assert checkpoint_problem(good) is None
    assert checkpoint_problem(str(tmp_path / 'absent.pth')) == 'file does not exist'
    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    assert checkpoint_problem(str(empty)) == 'file is empty'
    cut = tmp_path / 'cut.pth'
    cut.write_bytes(buffer.getvalue()[:-100])
    assert 'truncated' in checkpoint_problem(str(cut))
