"""End to end: the real loop on the shipped corpus, shrunk to seconds.

One uninterrupted 20-step run (module fixture) is the reference; the other
tests interrupt, damage or poison runs of the same config and compare:
  * the run writes checkpoints, TensorBoard events, metrics.jsonl, config.json;
  * SIGKILL after step 13 (step 10 committed) + restart == uninterrupted:
    the same loss at every step and bit-identical final params (CPU);
  * SIGTERM: checkpoint at the current step, exit 0, exact resume;
  * a damaged newest checkpoint: warning, previous step restored, same losses;
  * command-line overrides work; typos and unknown tasks fail in one line;
  * an injected NaN stops the run without a new checkpoint, or is skipped;
  * checkpoint.restore_from starts a new run from another run's params.
Compiled executables are shared through JAX's persistent cache (module
fixture), so only the first run pays for compilation.
"""
import glob
import json
import logging as py_logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from e2e_runs import jax_cache  # pylint: disable=unused-import  (a fixture)
from e2e_runs import NEEDS_DATA
from e2e_runs import subprocess_env
from e2e_runs import tiny_config

from t5x_lite import checkpoint_inspection
from t5x_lite import loop
from t5x_lite import metrics as metrics_lib
from t5x_lite import params_checkpoints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
STEPS = 20
# The tiny run, as command-line overrides (the same list drives in-process
# runs, so subprocess and in-process runs are the same config).
OVERRIDES = (
    'model.emb_dim=32', 'model.num_heads=2', 'model.head_dim=16',
    'model.mlp_dim=64', 'model.num_encoder_layers=1',
    'model.num_decoder_layers=1', 'task.feature_lengths.inputs=32',
    'task.feature_lengths.targets=8', 'train.batch_size=8',
    f'train.num_steps={STEPS}', 'train.log_every_steps=1',
    'eval.every_steps=10', 'eval.num_batches=1', 'checkpoint.every_steps=10',
    'checkpoint.keep=5', 'task.shuffle_buffer_size=128',
    # Identical to the default when every step is finite; shared with the
    # NaN test so that it reuses this config's compiled step.
    'train.skip_nonfinite_updates=True',
)

pytestmark = NEEDS_DATA


def _config(*extra):
  return tiny_config(OVERRIDES + extra)


def _flags(*extra):
  return [f'--config.{o}' for o in OVERRIDES + extra]


# Runs the real entrypoint with a hook that signals this process at a step
# (after waiting for a committed checkpoint, if asked): a preemption or a
# crash at a known point.
_SIGNAL_AT = textwrap.dedent('''
    import functools, os, signal, sys, time
    step_at, signame, wait_for = sys.argv.pop(1), sys.argv.pop(1), sys.argv.pop(1)
    from t5x_lite import loop, train
    def hook(step):
      if step != int(step_at):
        return
      if wait_for != '-':
        deadline = time.time() + 120
        while not os.path.exists(os.path.join(wait_for, 'commit_success.txt')):
          assert time.time() < deadline, 'checkpoint never committed'
          time.sleep(0.05)
      os.kill(os.getpid(), getattr(signal, signame))
    loop.train_and_evaluate = functools.partial(loop.train_and_evaluate,
                                                hooks=[hook])
    train.run_main()
''')


def _train_cmd(workdir, *extra):
  return [PY, '-m', 't5x_lite.train', '--config=configs/local_tiny.py',
          f'--workdir={workdir}', *_flags(*extra)]


def _run(cmd, jax_cache, timeout=300):
  return subprocess.run(cmd, cwd=ROOT, env=subprocess_env(jax_cache),
                        timeout=timeout, capture_output=True, text=True)


def _losses(workdir):
  """{step: loss}, the last record per step (a resumed run redoes steps)."""
  out = {}
  for r in metrics_lib.read_metrics(workdir):
    if 'loss' in r:
      out[r['step']] = r['loss']
  return out


def _params(workdir):
  return params_checkpoints.restore_params(workdir)


def _assert_same_params(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope='module')
def reference(tmp_path_factory, jax_cache):
  workdir = str(tmp_path_factory.mktemp('reference'))
  result = loop.train_and_evaluate(_config(), workdir)
  return dict(workdir=workdir, result=result, losses=_losses(workdir),
              params=_params(workdir))


class _Warnings(py_logging.Handler):
  def __init__(self):
    super().__init__(py_logging.WARNING)
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


# ---- 1. what a run leaves behind ------------------------------------------------


def test_run_writes_checkpoints_events_metrics(reference):
  w, result = reference['workdir'], reference['result']
  assert checkpoint_inspection.step_dirs(
      os.path.join(w, 'checkpoints')).keys() == {10, 20}
  for s in (10, 20):
    assert checkpoint_inspection.inspect_step(
        os.path.join(w, 'checkpoints', str(s))) is None
  data = checkpoint_inspection.read_json_item(
      os.path.join(w, 'checkpoints', '20'), 'data')
  assert data['batches_consumed'] == {'0': 20} and data['seed'] == 0
  records = metrics_lib.read_metrics(w)
  train = [r for r in records if 'loss' in r]
  assert [r['step'] for r in train] == list(range(1, STEPS + 1))
  for key in ('step', 'loss', 'learning_rate', 'tokens_per_s', 'mfu',
              'accuracy', 'grad_norm', 'steps_per_s', 'skipped_steps'):
    assert key in train[-1], key
  assert train[-1]['tokens_per_s'] > 0 and train[-1]['learning_rate'] > 0
  evals = [r for r in records if 'eval/loss' in r]
  assert [r['step'] for r in evals] == [0, 10, 20]
  # It learns: the validation loss falls from the untrained model's.
  assert evals[-1]['eval/loss'] < evals[0]['eval/loss'] - 0.5
  assert result['first_eval_loss'] == evals[0]['eval/loss']
  assert result['last_eval_loss'] == evals[-1]['eval/loss']
  assert result['step'] == STEPS and result['skipped_steps'] == 0
  with open(os.path.join(w, 'config.json')) as f:
    assert json.load(f)['train']['num_steps'] == STEPS
  # TensorBoard: a real event file with the loss curve in it.
  events = glob.glob(os.path.join(w, 'events.out.tfevents.*'))
  assert len(events) == 1
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow.core.util import event_pb2  # pylint: disable=g-import-not-at-top
  tb = {}
  for rec in tf.data.TFRecordDataset(events[0]):
    e = event_pb2.Event.FromString(rec.numpy())
    for v in e.summary.value:
      tb[(v.tag, e.step)] = v.simple_value
  assert tb[('loss', STEPS)] == pytest.approx(train[-1]['loss'], rel=1e-6)
  assert ('eval/loss', 10) in tb


# ---- 2. exact resume after SIGKILL ---------------------------------------------------


def test_sigkill_and_restart_is_exact(reference, tmp_path, jax_cache):
  w = str(tmp_path / 'killed')
  ckpt10 = os.path.join(w, 'checkpoints', '10')
  first = _run([PY, '-c', _SIGNAL_AT, '13', 'SIGKILL', ckpt10] +
               _train_cmd(w)[3:], jax_cache)
  assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
  assert sorted(checkpoint_inspection.step_dirs(
      os.path.join(w, 'checkpoints'))) == [10]
  killed_at = max(_losses(w))
  assert 10 < killed_at < STEPS
  result = loop.train_and_evaluate(_config(), w)  # the restart
  assert result['step'] == STEPS
  # Steps 11..killed_at ran twice: the killed run's records moved to
  # metrics.abandoned.jsonl, metrics.jsonl holds the restart's, once each.
  records = [r for r in metrics_lib.read_metrics(w) if 'loss' in r]
  assert [r['step'] for r in records] == list(range(1, STEPS + 1))
  abandoned = {r['step']: r['loss'] for r in metrics_lib.read_metrics(
      os.path.join(w, metrics_lib.ABANDONED_FILE)) if 'loss' in r}
  assert sorted(abandoned) == list(range(11, killed_at + 1))
  assert abandoned == {s: _losses(w)[s] for s in abandoned}
  assert _losses(w) == reference['losses']  # every step, exactly
  _assert_same_params(_params(w), reference['params'])


# ---- 3. SIGTERM: checkpoint now, exit 0, resume exactly -----------------------------


def test_sigterm_checkpoints_exits_zero_and_resumes_exactly(
    reference, tmp_path, jax_cache):
  w = str(tmp_path / 'preempted')
  run = _run([PY, '-c', _SIGNAL_AT, '7', 'SIGTERM', '-'] + _train_cmd(w)[3:],
             jax_cache)
  assert run.returncode == 0, run.stderr[-3000:]
  assert 'Preempted: checkpointed step 7' in run.stderr
  assert sorted(checkpoint_inspection.step_dirs(
      os.path.join(w, 'checkpoints'))) == [7]
  data = checkpoint_inspection.read_json_item(
      os.path.join(w, 'checkpoints', '7'), 'data')
  assert data['batches_consumed'] == {'0': 7}
  result = loop.train_and_evaluate(_config(), w)
  assert result['step'] == STEPS and not result['preempted']
  assert _losses(w) == reference['losses']
  _assert_same_params(_params(w), reference['params'])


# ---- 4. overrides and config errors ---------------------------------------------------


def test_command_line_overrides_and_clear_config_errors(tmp_path, jax_cache):
  w = str(tmp_path / 'three')
  run = _run(_train_cmd(w, 'train.num_steps=3', 'eval.every_steps=3'),
             jax_cache)
  assert run.returncode == 0, run.stderr[-3000:]
  assert max(_losses(w)) == 3
  with open(os.path.join(w, 'config.json')) as f:
    assert json.load(f)['train']['num_steps'] == 3
  assert sorted(checkpoint_inspection.step_dirs(
      os.path.join(w, 'checkpoints'))) == [3]

  for override, expect in (
      ('train.num_stepz=3', "train has no key 'num_stepz'. Did you mean "
       "'num_steps'?"),
      ('task.name=shakespeare_span_corruptoin', "Did you mean "
       "'shakespeare_span_corruption'"),
      # A key that moved names its new place; an objective the task does
      # not train names the one it does.
      ('model.objective=electra', 'It moved to objective.name'),
      ('objective.name=prefix_lm', "task 'shakespeare_span_corruption' trains "
       "objective 'span_corruption'")):
    bad = str(tmp_path / 'bad')
    run = _run(_train_cmd(bad, override), jax_cache)
    assert run.returncode == 2, (override, run.stderr[-2000:])
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith('error: ') and expect in last, (override, last)
    assert 'Traceback' not in run.stderr
    # Stopped before training: no state, no metrics.
    assert not os.path.exists(os.path.join(bad, 'checkpoints'))
    assert not os.path.exists(os.path.join(bad, 'metrics.jsonl'))


# ---- 5. damaged checkpoint, NaN -------------------------------------------------------------


def test_damaged_latest_checkpoint_falls_back_and_trains_on(
    reference, tmp_path, jax_cache):
  w = str(tmp_path / 'damaged')
  shutil.copytree(reference['workdir'], w)
  os.remove(os.path.join(w, 'metrics.jsonl'))
  data_files = glob.glob(os.path.join(
      w, 'checkpoints', '20', 'state', 'ocdbt.process_*', 'd', '*'))
  victim = max(data_files, key=os.path.getsize)
  with open(victim, 'r+b') as f:
    f.truncate(os.path.getsize(victim) // 2)
  handler = _Warnings()
  py_logging.getLogger('absl').addHandler(handler)
  try:
    result = loop.train_and_evaluate(_config(), w)
  finally:
    py_logging.getLogger('absl').removeHandler(handler)
  assert any('step 20' in m and 'unusable' in m for m in handler.messages), (
      handler.messages)
  assert result['step'] == STEPS
  losses = _losses(w)
  assert sorted(losses) == list(range(11, STEPS + 1))  # resumed from 10
  assert losses == {s: reference['losses'][s] for s in losses}
  _assert_same_params(_params(w), reference['params'])
  assert glob.glob(os.path.join(w, 'checkpoints', 'unusable', '20.*'))


def test_nan_stops_without_checkpoint_or_is_skipped(tmp_path, jax_cache):
  w = str(tmp_path / 'nan')
  nan = ('train.num_steps=8', 'checkpoint.every_steps=3',
         'eval.every_steps=100', 'train.inject_nan_at_step=5')
  with pytest.raises(loop.NonFiniteError) as e:
    loop.train_and_evaluate(
        _config(*nan, 'train.skip_nonfinite_updates=False'), w)
  msg = str(e.value)
  assert 'Step 5' in msg and 'loss=nan' in msg
  assert 'decoder_loss_weights: (8, 8) float32' in msg  # the batch shapes
  assert 'last checkpoint: 3' in msg
  assert sorted(checkpoint_inspection.step_dirs(
      os.path.join(w, 'checkpoints'))) == [3]

  w = str(tmp_path / 'nan_skipped')
  result = loop.train_and_evaluate(_config(*nan), w)  # skips non-finite
  assert result['step'] == 8 and result['skipped_steps'] == 1
  records = {r['step']: r for r in metrics_lib.read_metrics(w) if 'loss' in r}
  assert records[4]['skipped_steps'] == 0 and records[5]['skipped_steps'] == 1
  assert records[5]['loss'] is None  # the poisoned step: NaN -> null
  assert np.isfinite(records[8]['loss'])
  assert sorted(checkpoint_inspection.step_dirs(
      os.path.join(w, 'checkpoints'))) == [3, 6, 8]
  assert checkpoint_inspection.all_finite(_params(w))


def test_restore_from_starts_with_those_params(reference, tmp_path, jax_cache):
  w = str(tmp_path / 'finetune')
  loop.train_and_evaluate(_config(
      'train.num_steps=2', f'checkpoint.restore_from={reference["workdir"]}'),
      w)
  evals = {r['step']: r['eval/loss'] for r in metrics_lib.read_metrics(w)
           if 'eval/loss' in r}
  ref_evals = {r['step']: r['eval/loss'] for r in metrics_lib.read_metrics(
      reference['workdir']) if 'eval/loss' in r}
  # Step 0 of the new run evaluates the reference's final params.
  assert evals[0] == ref_evals[STEPS]
  data = checkpoint_inspection.read_json_item(
      os.path.join(w, 'checkpoints', '2'), 'data')
  assert data['batches_consumed'] == {'0': 2}  # its own data position
