"""Failures a user can cause or meet (issue 15), each: the exit status, the
one line it prints, and what survives on disk.

  * two trainers on one workdir: the second exits 2 naming the holder and the
    lock file; the first finishes, its checkpoints and metrics.jsonl intact;
    a lock left by a killed run is taken over with a warning;
  * a diverged learning rate with train.skip_nonfinite_updates: past
    train.max_consecutive_skipped_steps the run exits 1 and the checkpoint of
    the diverged params is moved aside; a NaN eval fails the run the same way;
  * a resume with another train.batch_size: the data position converts
    exactly (the rows trained are the uninterrupted stream's, each once), or
    the resume is refused in one line (exit 2) when it cannot;
  * SIGINT: checkpoint this step, exit 130; a second SIGINT kills at once;
  * a damaged newest checkpoint: one warning line, and the abandoned steps'
    records leave metrics.jsonl (for metrics.abandoned.jsonl);
  * a write that fails (a file size limit, as a full disk would): one line,
    exit 1 within a step or two of it, no false "checkpoints are intact";
  * a rejected resume leaves the workdir's config.json as it was;
  * bytes of a checkpoint changed after its save (same size) are caught by
    the fingerprint saved with it: never restored silently.

Everything is real: subprocesses of the real entrypoint, real Orbax
checkpoints, the shipped corpus, a learning rate that really diverges. The
hooks below only pause, slow down or signal a run at a known step.
"""
import contextlib
import glob
import hashlib
import json
import logging as py_logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from e2e_runs import jax_cache  # pylint: disable=unused-import  (a fixture)
from e2e_runs import NEEDS_DATA
from e2e_runs import subprocess_env
from e2e_runs import tiny_config

from t5x_lite import checkpoint_inspection
from t5x_lite import checkpoints
from t5x_lite import loop
from t5x_lite import metrics as metrics_lib
from t5x_lite import params_checkpoints
from t5x_lite import step_logging
from t5x_lite import tasks
from t5x_lite import workdir_lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
# The tiny run of tests/test_train_e2e.py, with AdamW at a constant rate so a
# resume can raise the rate without another optimizer state.
OVERRIDES = (
    'model.emb_dim=32', 'model.num_heads=2', 'model.head_dim=16',
    'model.mlp_dim=64', 'model.num_encoder_layers=1',
    'model.num_decoder_layers=1', 'task.feature_lengths.inputs=32',
    'task.feature_lengths.targets=8', 'train.batch_size=8',
    'train.num_steps=10', 'train.log_every_steps=1', 'eval.every_steps=5',
    'eval.num_batches=1', 'checkpoint.every_steps=5', 'checkpoint.keep=10',
    'task.shuffle_buffer_size=128', 'optimizer.name=adamw',
    'optimizer.learning_rate=1e-3', 'optimizer.schedule=constant',
    'optimizer.warmup_steps=0', 'train.skip_nonfinite_updates=True',
)
DIVERGE = ('optimizer.learning_rate=1e25', 'train.num_steps=30',
           'checkpoint.every_steps=1')

pytestmark = NEEDS_DATA


def _config(*extra):
  return tiny_config(OVERRIDES + extra)


# The real entrypoint with a hook at one step: HOOK STEP ARG... then train's
# flags. pause: mark the step (a file), wait for a go file; slow: sleep ARG s
# after every later step; signal: send signal ARG, COUNT times.
_HOOKED = textwrap.dedent('''
    import functools, os, signal, sys, time
    kind, at, arg, arg2 = sys.argv[1:5]
    del sys.argv[1:5]
    at = int(at)
    from t5x_lite import train  # first: the CLI sets library log levels
    from t5x_lite import loop
    def hook(step):
      if kind == 'pause' and step == at:
        open(arg, 'w').close()
        while not os.path.exists(arg2):
          time.sleep(0.05)
      elif kind == 'slow' and step > at:
        time.sleep(float(arg))
      elif kind == 'signal' and step == at:
        for _ in range(int(arg2)):
          os.kill(os.getpid(), getattr(signal, arg))
          time.sleep(0.5)
    loop.train_and_evaluate = functools.partial(loop.train_and_evaluate,
                                                hooks=[hook])
    train.run_main()
''')


def _flags(workdir, *extra):
  return ['--config=configs/local_tiny.py', f'--workdir={workdir}'] + [
      f'--config.{o}' for o in OVERRIDES + extra]


def _train_cmd(workdir, *extra):
  return [PY, '-m', 't5x_lite.train'] + _flags(workdir, *extra)


def _hooked_cmd(kind, at, arg, arg2, workdir, *extra):
  return [PY, '-c', _HOOKED, kind, str(at), str(arg), str(arg2)] + _flags(
      workdir, *extra)


def _run(cmd, jax_cache, timeout=400, **kw):
  return subprocess.run(cmd, cwd=ROOT, env=subprocess_env(jax_cache),
                        timeout=timeout, capture_output=True, text=True, **kw)


def _last_line(proc) -> str:
  return proc.stderr.strip().splitlines()[-1]


def _steps(workdir):
  return sorted(checkpoint_inspection.step_dirs(
      os.path.join(workdir, 'checkpoints')))


def _digest(path) -> str:
  """sha256 over every file under `path` (names and bytes)."""
  h = hashlib.sha256()
  for f in sorted(glob.glob(os.path.join(path, '**'), recursive=True)):
    if os.path.isfile(f):
      h.update(os.path.relpath(f, path).encode())
      with open(f, 'rb') as fh:
        h.update(fh.read())
  return h.hexdigest()


def _train_records(workdir):
  return [r for r in metrics_lib.read_metrics(workdir) if 'loss' in r]


class _Logs(py_logging.Handler):
  """absl's WARNING and ERROR messages."""

  def __init__(self):
    super().__init__(py_logging.WARNING)
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())

  def __enter__(self):
    py_logging.getLogger('absl').addHandler(self)
    return self

  def __exit__(self, *exc):
    py_logging.getLogger('absl').removeHandler(self)


@contextlib.contextmanager
def _recorded_train_rows(config):
  """The train split's batches the loop takes, in order (its own real input
  pipeline, observed: every `next` of the iterator it gets)."""
  taken = []
  real = tasks.get_dataset

  def recording(cfg, split, **kw):
    it = real(cfg, split, **kw)
    if split != config.task.train_split:
      return it
    def gen():
      for batch in it:
        taken.append(batch)
        yield batch
    return gen()

  tasks.get_dataset = recording
  try:
    yield taken
  finally:
    tasks.get_dataset = real


def _rows(batches):
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


@pytest.fixture(scope='module')
def base(tmp_path_factory, jax_cache):
  """10 steps at batch 8 (checkpoints 5 and 10), recording the rows."""
  workdir = str(tmp_path_factory.mktemp('base') / 'run')
  config = _config()
  with _recorded_train_rows(config) as taken:
    loop.train_and_evaluate(config, workdir)
  return dict(workdir=workdir, rows=_rows(taken), digest10=_digest(
      os.path.join(workdir, 'checkpoints', '10')))


def _copy(base_run, tmp_path, name):
  w = str(tmp_path / name)
  shutil.copytree(base_run['workdir'], w)
  return w


# ---- 1. two trainers, one workdir -------------------------------------------


def test_second_trainer_exits_2_and_the_first_finishes_intact(
    tmp_path, jax_cache):
  w = str(tmp_path / 'shared')
  marker, go = str(tmp_path / 'at_step_5'), str(tmp_path / 'go')
  first = subprocess.Popen(
      _hooked_cmd('pause', 5, marker, go, w, 'train.num_steps=12'), cwd=ROOT,
      env=subprocess_env(jax_cache), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 300
    while not os.path.exists(marker):
      assert first.poll() is None, first.communicate()[1][-3000:]
      assert time.time() < deadline, 'the first trainer never reached step 5'
      time.sleep(0.1)
    with open(os.path.join(w, workdir_lock.LOCK_FILE)) as f:
      holder = json.load(f)
    assert holder['pid'] == first.pid
    second = _run(_train_cmd(w, 'train.seed=1'), jax_cache)
  finally:
    open(go, 'w').close()
    out, err = first.communicate(timeout=300)
  assert second.returncode == 2, second.stderr[-3000:]
  lock = os.path.join(w, 'LOCK')
  assert second.stderr.strip().splitlines() == [
      f'error: --workdir {w} is in use by host {holder["host"]} pid '
      f'{first.pid} (since {holder["since"]}); lock file {lock}. Wait for '
      'that run to finish or stop it, or pick another --workdir.']
  assert first.returncode == 0, err[-3000:]
  assert _steps(w) == [5, 10, 12]
  # One record per step: the second trainer wrote nothing.
  steps = [r['step'] for r in _train_records(w)]
  assert steps == list(range(1, 13))
  evals = [r['step'] for r in metrics_lib.read_metrics(w) if 'eval/loss' in r]
  assert evals == [0, 5, 10, 12]
  assert not os.path.exists(lock)  # released at the end
  assert len(glob.glob(os.path.join(w, 'events.out.tfevents.*'))) == 1


def test_lock_names_a_live_holder_and_takes_over_a_dead_ones(tmp_path):
  w = str(tmp_path / 'w')
  os.makedirs(w)
  lock_path = os.path.join(w, workdir_lock.LOCK_FILE)
  # A live holder in another process.
  holder = subprocess.Popen(
      [PY, '-c', textwrap.dedent('''
          import sys, time
          from t5x_lite import workdir_lock
          lock = workdir_lock.WorkdirLock(sys.argv[1])
          lock.acquire()
          print('held', flush=True)
          sys.stdin.readline()
          lock.release()
      '''), w], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'held'
    with pytest.raises(workdir_lock.WorkdirInUseError) as e:
      workdir_lock.WorkdirLock(w).acquire()
    assert f'pid {holder.pid}' in str(e.value) and lock_path in str(e.value)
    assert '\n' not in str(e.value)
  finally:
    holder.communicate('\n', timeout=60)
  assert not os.path.exists(lock_path)

  # A holder that died without releasing: its line stays, its flock is gone.
  dead = subprocess.run([PY, '-c', 'import os; print(os.getpid())'],
                        capture_output=True, text=True, check=True)
  pid = int(dead.stdout)
  with open(lock_path, 'w') as f:
    json.dump({'host': socket.gethostname(), 'pid': pid, 'since': 'then'}, f)
  with _Logs() as logs:
    with workdir_lock.hold(w, process_index=0) as lock:
      assert lock.held
      with open(lock_path) as f:
        assert json.load(f)['pid'] == os.getpid()
  assert logs.messages == [
      f'Taking over the lock {lock_path}: host {socket.gethostname()} pid '
      f'{pid} (since then) is no longer running.']
  assert not os.path.exists(lock_path)


# ---- 2. a diverged learning rate, skipping ----------------------------------


def test_skip_cap_stops_a_diverged_run_and_sets_its_checkpoint_aside(
    base, tmp_path, jax_cache):
  w = _copy(base, tmp_path, 'diverged')
  run = _run(_train_cmd(w, *DIVERGE, 'eval.every_steps=100',
                        'train.max_consecutive_skipped_steps=3'), jax_cache)
  assert run.returncode == 1, run.stderr[-3000:]
  unusable = os.path.join(w, 'checkpoints', 'unusable')
  # Step 11 applies the 1e25 update (finite metrics, ruined params); 12-15
  # are all non-finite: the 4th in a row is past the cap of 3.
  assert _last_line(run) == (
      'error: Step 15: 4 non-finite steps in a row (steps 12-15, skipped; the '
      'last: loss=nan, grad_norm=nan, learning_rate=1e+25), more than '
      'train.max_consecutive_skipped_steps=3: the params of step 11 no longer '
      'train. Lower optimizer.learning_rate or set optimizer.grad_clip_norm, '
      'then resume from the last usable checkpoint (or raise '
      'train.max_consecutive_skipped_steps). Checkpoint step 11 holds those '
      f'params: moved to {unusable}; the last usable checkpoint is step 10.')
  assert 'Traceback' not in run.stderr
  assert _steps(w) == [5, 10]
  assert _digest(os.path.join(w, 'checkpoints', '10')) == base['digest10']
  (moved,) = glob.glob(os.path.join(unusable, '11.*'))
  with open(os.path.join(moved, 'REASON.txt')) as f:
    assert f.read().startswith('its params are those of step 11: Step 15:')
  skipped = [r['step'] for r in _train_records(w) if r['loss'] is None]
  assert skipped == [12, 13, 14]  # step 15 raised before its record


def test_nan_eval_fails_the_run_and_is_reported_as_nan(base, tmp_path,
                                                        jax_cache):
  w = _copy(base, tmp_path, 'nan_eval')
  with pytest.raises(loop.NonFiniteError) as e:
    loop.train_and_evaluate(
        _config(*DIVERGE, 'eval.every_steps=2',
                'train.max_consecutive_skipped_steps=0'), w)
  unusable = os.path.join(w, 'checkpoints', 'unusable')
  assert str(e.value) == (
      'Step 12: the eval loss is nan on 1 batches of task.eval_split: the '
      'params no longer give a finite loss and are not checkpointed. Lower '
      'optimizer.learning_rate or set optimizer.grad_clip_norm, then resume '
      'from the last usable checkpoint. Checkpoint step 11 holds those '
      f'params: moved to {unusable}; the last usable checkpoint is step 10.')
  assert _steps(w) == [5, 10]
  evals = {r['step']: r['eval/loss'] for r in metrics_lib.read_metrics(w)
           if 'eval/loss' in r}
  assert evals[12] is None  # NaN in JSON
  # The summary's "last" is that NaN, not the step-10 value.
  history = loop._history_eval_losses(w)  # pylint: disable=protected-access
  assert history[-1][0] == 12 and np.isnan(history[-1][1])


def test_step_logger_total_skip_cap(tmp_path):
  writer = metrics_lib.create_writer(str(tmp_path), tensorboard=False)
  logger = step_logging.StepLogger(
      writer, metrics_lib.Throughput(1e9, 100, 1, None), num_steps=10,
      log_every=1, skipped_steps=2, max_skipped=3,
      last_checkpoint=lambda: 4)
  nan = float('nan')
  bad = dict(loss=nan, z_loss=nan, accuracy=nan, grad_norm=nan,
             learning_rate=0.1, num_tokens=8.0, is_finite=0.0, skipped=1.0)
  good = dict(bad, loss=1.0, z_loss=0.0, accuracy=0.5, grad_norm=1.0,
              is_finite=1.0, skipped=0.0)
  assert logger.process(5, bad) is None  # 3 in all: at the cap
  assert logger.process(6, good) == 1.0
  with pytest.raises(step_logging.NonFiniteError) as e:
    logger.process(7, bad)
  writer.close()
  assert str(e.value) == (
      'Step 7 produced a non-finite loss or gradient (loss=nan, grad_norm=nan, '
      'learning_rate=0.1): 4 steps skipped in all, more than '
      'train.max_skipped_steps=3 (last checkpoint: 4). Lower '
      'optimizer.learning_rate or set optimizer.grad_clip_norm, then resume '
      'from the last usable checkpoint, or find the batches that break (or '
      'raise train.max_skipped_steps).')
  assert e.value.ruined_from is None


# ---- 3. resume with another batch size --------------------------------------


def test_resume_with_another_batch_size_trains_every_row_once(
    base, tmp_path, jax_cache):
  w = _copy(base, tmp_path, 'batch16')
  config = _config('train.batch_size=16', 'train.num_steps=13')
  with _recorded_train_rows(config) as taken:
    result = loop.train_and_evaluate(config, w)
  assert result['step'] == 13 and len(taken) == 3
  assert all(b['encoder_input_tokens'].shape[0] == 16 for b in taken)
  # 10 x 8 rows, then 3 x 16: the first 128 rows of the uninterrupted stream.
  trained = {k: np.concatenate([base['rows'][k], _rows(taken)[k]])
             for k in taken[0]}
  stream = tasks.get_dataset(_config(), 'train', batch_size=8, seed=0,
                             shuffle=True)
  expected = _rows([next(stream) for _ in range(16)])
  for k in expected:
    np.testing.assert_array_equal(trained[k], expected[k], err_msg=k)
  data = checkpoint_inspection.read_json_item(
      os.path.join(w, 'checkpoints', '13'), 'data')
  assert data['batches_consumed'] == {'0': 8}  # 5 converted + 3
  assert data['per_host_batch_size'] == 16


def test_resume_with_a_batch_size_that_cannot_convert_is_refused(
    base, tmp_path, jax_cache):
  w = _copy(base, tmp_path, 'batch24')
  with open(os.path.join(w, 'config.json'), 'rb') as f:
    config_bytes = f.read()
  digest = _digest(os.path.join(w, 'checkpoints'))
  run = _run(_train_cmd(w, 'train.batch_size=24', 'train.num_steps=13'),
             jax_cache)
  assert run.returncode == 2, run.stderr[-3000:]
  assert run.stderr.strip().splitlines()[-1] == (
      'error: config: The checkpoint consumed 80 rows per process (10 batches '
      'of 8); train.batch_size=24 gives 24 rows per process per step, which '
      'does not divide 80: the resume would train rows twice or skip some. '
      'Resume with the batch size it was trained with (8) or one giving rows '
      'per process that divide 80 (1, 2, 4, 5, 8, 10, 16, 20, 40, 80).')
  assert 'Traceback' not in run.stderr
  # Item 12: the rejected config did not overwrite the run's config.json.
  with open(os.path.join(w, 'config.json'), 'rb') as f:
    assert f.read() == config_bytes
  assert _digest(os.path.join(w, 'checkpoints')) == digest
  assert not os.path.exists(os.path.join(w, 'LOCK'))


def test_resume_with_another_model_keeps_config_json(base, tmp_path,
                                                      jax_cache):
  w = _copy(base, tmp_path, 'other_model')
  with open(os.path.join(w, 'config.json'), 'rb') as f:
    config_bytes = f.read()
  run = _run(_train_cmd(w, 'model.mlp_dim=128', 'train.num_steps=12'),
             jax_cache)
  assert run.returncode == 1, run.stderr[-3000:]
  assert _last_line(run).startswith(
      f'error: Checkpoint step 10 in {w}/checkpoints was written for another '
      'model or optimizer: ')
  with open(os.path.join(w, 'config.json'), 'rb') as f:
    assert f.read() == config_bytes
  assert _steps(w) == [5, 10]


# ---- 4. SIGINT --------------------------------------------------------------


def test_sigint_checkpoints_and_exits_130_a_second_one_kills(
    tmp_path, jax_cache):
  w = str(tmp_path / 'ctrl_c')
  run = _run(_hooked_cmd('signal', 7, 'SIGINT', 1, w, 'train.num_steps=20'),
             jax_cache)
  assert run.returncode == 130, run.stderr[-3000:]
  warnings = [l.split('] ', 1)[1] for l in run.stderr.splitlines()
              if l.startswith('W') and '] ' in l and (
                  'loop.py' in l or 'preemption.py' in l)]
  assert warnings == [
      'SIGINT: finishing this step, then checkpointing and exiting (status '
      '130); press Ctrl-C again to exit at once without a checkpoint.',
      'Interrupted (SIGINT): checkpointed step 7; exiting with status 130.']
  assert 'Traceback' not in run.stderr and 'KeyboardInterrupt' not in (
      run.stderr)
  assert _steps(w) == [5, 7]
  assert checkpoint_inspection.read_json_item(
      os.path.join(w, 'checkpoints', '7'),
      'data')['batches_consumed'] == {'0': 7}

  w2 = str(tmp_path / 'ctrl_c_twice')
  run = _run(_hooked_cmd('signal', 7, 'SIGINT', 2, w2, 'train.num_steps=20'),
             jax_cache)
  assert run.returncode == -signal.SIGINT, run.stderr[-3000:]
  assert 'Traceback' not in run.stderr
  assert _steps(w2) == [5]  # killed before step 7 was checkpointed
  # The killed run's lock is taken over by the next start.
  assert os.path.exists(os.path.join(w2, 'LOCK'))
  with _Logs() as logs:
    result = loop.train_and_evaluate(_config('train.num_steps=8'), w2)
  assert result['step'] == 8
  assert any(m.startswith('Taking over the lock ') and
             m.endswith('is no longer running.') for m in logs.messages)


# ---- 5. a damaged checkpoint, a failed write --------------------------------


def test_damaged_latest_checkpoint_one_warning_and_metrics_of_survivors(
    base, tmp_path, jax_cache):
  w = _copy(base, tmp_path, 'damaged')
  before = metrics_lib.read_metrics(w)
  victim = max(glob.glob(os.path.join(w, 'checkpoints', '10', 'state',
                                      'ocdbt.process_0', 'd', '*')),
               key=os.path.getsize)
  with open(victim, 'r+b') as f:
    f.truncate(os.path.getsize(victim) // 2)
  run = _run(_train_cmd(w, 'train.num_steps=12'), jax_cache)
  assert run.returncode == 0, run.stderr[-3000:]
  lines = run.stderr.strip().splitlines()
  not_info = [l for l in lines if not l.startswith('I')]
  assert len(not_info) == 1, not_info
  (moved,) = glob.glob(os.path.join(w, 'checkpoints', 'unusable', '10.*'))
  assert f'Checkpoint step 10 in {w}/checkpoints is unusable (restore ' in (
      not_info[0])
  assert not_info[0].endswith(f'moved it to {moved} and resumed from step 5.')
  assert 'Traceback' not in run.stderr and len(lines) < 40
  # metrics.jsonl is the run that survived: steps 6-10 of the base run left
  # for metrics.abandoned.jsonl, verbatim.
  records = metrics_lib.read_metrics(w)
  assert [r['step'] for r in records if 'loss' in r] == list(range(1, 13))
  assert records[:7] == [r for r in before if r['step'] <= 5]
  abandoned = metrics_lib.read_metrics(
      os.path.join(w, metrics_lib.ABANDONED_FILE))
  assert abandoned == [r for r in before if r['step'] > 5]


# A full disk, portably: writes past 256 KiB fail (EFBIG; Python ignores
# SIGXFSZ). The run's small files fit; a checkpoint's array data does not.
# (The shell sets the limit: a preexec_fn would fork this JAX process.)
_FILE_SIZE_LIMIT = ['/bin/sh', '-c', 'ulimit -f 256 && exec "$0" "$@"']


def test_failed_write_stops_within_steps_in_one_line(base, tmp_path,
                                                     jax_cache):
  del base  # its run filled the compilation cache: no big cache writes here
  w = str(tmp_path / 'full')
  run = _run(_FILE_SIZE_LIMIT + _hooked_cmd('slow', 5, 0.5, '-', w,
                                            'train.num_steps=20'), jax_cache)
  assert run.returncode == 1, run.stderr[-3000:]
  lines = run.stderr.strip().splitlines()
  assert lines[-1] == (
      f'error: Writing checkpoint step 5 to {w}/checkpoints failed: File too '
      'large (errno 27). No checkpoint is on disk yet: a restart begins at '
      'step 0.')
  assert [l for l in lines if l.startswith(('E', 'W', 'error'))] == [
      lines[-1]], lines
  assert 'Traceback' not in run.stderr and len(lines) < 40
  # Stopped within a step or two of the failed write (0.5 s per step).
  last = max(r['step'] for r in _train_records(w))
  assert 5 <= last <= 8, last
  assert _steps(w) == []


def test_bytes_changed_after_the_save_never_restore_silently(tmp_path):
  """Same-size damage (OCDBT data carries no checksum): the fingerprint
  saved with the step catches it, the restore falls back past it."""
  d = str(tmp_path / 'checkpoints')
  state = {'params': {f'w{i}': jax.random.normal(jax.random.PRNGKey(i),
                                                 (128, 128))
                      for i in range(4)}}
  newer = jax.tree.map(lambda x: x + 1, state)
  with checkpoints.Checkpointer(d) as ckpt:
    ckpt.save(1, state)
    ckpt.save(2, newer)
  victim = max(glob.glob(os.path.join(d, '2', 'state', 'ocdbt.process_0',
                                      'd', '*')), key=os.path.getsize)
  size = os.path.getsize(victim)
  with open(victim, 'r+b') as f:
    f.seek(size // 2)
    f.write(b'\xff' * 1024)
  assert os.path.getsize(victim) == size
  with pytest.raises(checkpoints.CheckpointError, match='differ from the '
                     'fingerprint saved with them'):
    params_checkpoints.restore_params(os.path.join(d, '2'))
  with _Logs() as logs:
    restored = checkpoints.Checkpointer(d).restore(
        checkpoints._abstract(state))  # pylint: disable=protected-access
  assert restored.step == 1
  for a, b in zip(jax.tree.leaves(restored.state), jax.tree.leaves(state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert len(logs.messages) == 1 and logs.messages[0].startswith(
      f'Checkpoint step 2 in {d} is unusable (its arrays differ from the '
      'fingerprint saved with them (files changed after the save)); moved it')
