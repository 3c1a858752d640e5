"""loop.py's pieces one at a time, with real values.

  * StepLogger: the log window's means (finite steps only, an objective's own
    metrics included), the skip count, the progress line, metrics.jsonl, and
    the NonFiniteError message, word for word;
  * Checkpointing: the state, the data position item and the config, read
    back; train_setup.data_position turns the item into the next run's
    position;
  * PeriodicEval on a tiny real model and the shipped corpus's eval split:
    the same numbers as evaluation.teacher_forced_metrics (and as summing
    model.eval_fn by hand);
  * train_setup.setup: a fresh run, then a resume from a saved position.

The whole loop (all pieces together) is tests/test_train_e2e.py.
"""
import logging as py_logging
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_lite.configs import default
from t5x_lite.configs import models as sizes
from t5x_lite import checkpoint_inspection
from t5x_lite import checkpoints
from t5x_lite import distributed
from t5x_lite import evaluation
from t5x_lite import generation
from t5x_lite import loop
from t5x_lite import metrics as metrics_lib
from t5x_lite import models
from t5x_lite import objectives
from t5x_lite import optimizers
from t5x_lite import partitioning
from t5x_lite import run_config
from t5x_lite import step_logging
from t5x_lite import train_setup
from t5x_lite import trainer
from t5x_lite.predictor import Predictor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_CORPUS = (os.path.exists(os.path.join(ROOT, 'data', 'cache',
                                           'manifest.json'))
               or bool(os.environ.get('T5X_LITE_DATA_DIR')))
needs_corpus = pytest.mark.skipif(
    not HAVE_CORPUS, reason='the shipped corpus is not built: run `make data`')

warnings.filterwarnings('ignore', message='Some donated buffers')


class _Logs(py_logging.Handler):
  """absl's INFO and WARNING messages, as formatted."""

  def __init__(self):
    super().__init__(py_logging.INFO)
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())

  def __enter__(self):
    logger = py_logging.getLogger('absl')
    self._level = logger.level
    logger.setLevel(py_logging.INFO)
    logger.addHandler(self)
    return self

  def __exit__(self, *exc):
    logger = py_logging.getLogger('absl')
    logger.removeHandler(self)
    logger.setLevel(self._level)


def _step(loss, accuracy=0.5, grad_norm=1.0, learning_rate=1e-2, *,
          skipped=False, **extra):
  """One train_step metrics dict (host floats; device scalars work too)."""
  finite = bool(np.isfinite(loss))
  return dict(loss=loss, z_loss=loss / 100, accuracy=accuracy,
              grad_norm=grad_norm if finite else float('nan'),
              learning_rate=learning_rate, num_tokens=64.0,
              is_finite=float(finite), skipped=float(skipped), **extra)


def _logger(tmp_path, **kwargs):
  writer = metrics_lib.create_writer(str(tmp_path), tensorboard=False)
  throughput = metrics_lib.Throughput(1e9, 100, 1, None)
  return step_logging.StepLogger(writer, throughput, **kwargs), writer


# ---- StepLogger -----------------------------------------------------------------


def test_step_logger_window_means_log_lines_and_records(tmp_path):
  logger, writer = _logger(tmp_path, num_steps=5, log_every=2)
  losses = [4.0, 3.0, 2.0, 1.0, 0.5]
  with _Logs() as logs:
    got = [logger.process(s, _step(l, accuracy=0.1 * s, grad_norm=2.0 * s,
                                   learning_rate=1e-3 * s,
                                   disc_accuracy=0.25 * s), 'x: (8, 8)')
           for s, l in enumerate(losses, 1)]
  writer.close()
  assert got == losses
  records = {r['step']: r for r in metrics_lib.read_metrics(str(tmp_path))}
  assert sorted(records) == [2, 4, 5]  # every log_every, and the last step
  r2, r4, r5 = records[2], records[4], records[5]
  assert r2['loss'] == pytest.approx(3.5)  # mean of steps 1, 2
  assert r2['accuracy'] == pytest.approx(0.15)
  assert r2['grad_norm'] == pytest.approx(3.0)
  assert r2['z_loss'] == pytest.approx(0.035)
  assert r2['disc_accuracy'] == pytest.approx(0.375)  # an objective's own
  assert r2['learning_rate'] == pytest.approx(2e-3)  # the step's, not a mean
  assert r2['num_tokens'] == 64.0 and r2['skipped_steps'] == 0
  assert r4['loss'] == pytest.approx(1.5)  # the window restarted at step 3
  assert r5['loss'] == pytest.approx(0.5) and r5['grad_norm'] == 10.0
  # No 'is_finite'/'skipped' in the records: they are not window means.
  assert not {'is_finite', 'skipped'} & set(r2)
  for key in ('steps_per_s', 'tokens_per_s', 'step_time_s', 'mfu'):
    assert key in r4
  assert r4['steps_per_s'] > 0 and r4['mfu'] is None  # no peak FLOPs given
  assert logger.last_values['loss'] == pytest.approx(0.5)
  lines = [m for m in logs.messages if m.startswith('step ')]
  assert [l.split('  ')[0] for l in lines] == ['step 2/5', 'step 4/5',
                                               'step 5/5']
  assert lines[0].split('  ')[1:4] == ['loss 3.5000', 'acc 0.150', 'lr 2.00e-03']
  assert 'mfu -' in lines[1] and 'skipped' not in lines[1]


def test_step_logger_counts_skipped_steps_outside_the_means(tmp_path):
  # Two steps were skipped by an earlier run (from the checkpoint's item).
  logger, writer = _logger(tmp_path, num_steps=6, log_every=3,
                           skipped_steps=2)
  nan = float('nan')
  with _Logs() as logs:
    got = [logger.process(1, _step(2.0)),
           logger.process(2, _step(nan, skipped=True)),
           logger.process(3, _step(4.0)),
           logger.process(4, _step(nan, skipped=True)),
           logger.process(5, _step(nan, skipped=True)),
           logger.process(6, _step(nan, skipped=True))]
  writer.close()
  assert got == [2.0, None, 4.0, None, None, None]
  assert logger.skipped == 6
  assert ('Step 2: non-finite loss nan / grad norm nan; update skipped '
          '(3 so far).') in logs.messages
  records = {r['step']: r for r in metrics_lib.read_metrics(str(tmp_path))}
  assert records[3]['loss'] == pytest.approx(3.0)  # the finite steps' mean
  assert records[3]['skipped_steps'] == 3
  # A window of skipped steps only: NaN means, written as null.
  assert records[6]['loss'] is None and records[6]['skipped_steps'] == 6
  lines = [m for m in logs.messages if m.startswith('step ')]
  assert lines[0].endswith('skipped 3') and 'loss -' in lines[1]


def test_step_logger_non_finite_step_raises_naming_step_and_checkpoint(
    tmp_path):
  shapes = ('decoder_loss_weights: (8, 8) float32, '
            'encoder_input_tokens: (8, 32) int32')
  for committed, named in ((3, '3'), (None, 'none')):
    logger, writer = _logger(tmp_path / named, num_steps=10, log_every=1,
                             last_checkpoint=lambda c=committed: c)
    assert logger.process(4, _step(1.0)) == 1.0
    with pytest.raises(step_logging.NonFiniteError) as e:
      logger.process(5, _step(float('nan'), learning_rate=0.01))
    writer.close()
    assert str(e.value) == (
        'Step 5 produced a non-finite loss or gradient: loss=nan, '
        'grad_norm=nan, z_loss=nan, learning_rate=0.01; batch . Nothing '
        f'after it was checkpointed (last checkpoint: {named}). Lower '
        'optimizer.learning_rate or set optimizer.grad_clip_norm, or set '
        'train.skip_nonfinite_updates=True to drop such steps.')
  logger, writer = _logger(tmp_path / 'shapes', num_steps=10, log_every=1)
  with pytest.raises(step_logging.NonFiniteError,
                     match=r'batch decoder_loss_weights: '
                     r'\(8, 8\) float32, encoder_input_tokens'):
    logger.process(1, _step(float('inf')), shapes)
  writer.close()
  assert isinstance(e.value, FloatingPointError)


def test_step_logger_takes_device_metrics(tmp_path):
  logger, writer = _logger(tmp_path, num_steps=1, log_every=1)
  m = {k: jnp.asarray(v, jnp.float32) for k, v in _step(2.5).items()}
  assert logger.process(1, m) == 2.5
  writer.close()
  assert metrics_lib.read_metrics(str(tmp_path))[0]['loss'] == 2.5


# ---- Checkpointing ------------------------------------------------------------------


def _tiny_state(step):
  params = {'w': jnp.arange(12, dtype=jnp.float32).reshape(3, 4) * step,
            'b': jnp.ones((4,), jnp.float32)}
  return trainer.TrainState(step=jnp.asarray(step, jnp.int32), params=params,
                            opt_state={'m': jnp.zeros((3, 4), jnp.float32)})


def test_checkpointing_saves_state_data_position_and_config(tmp_path):
  config = default.get_config()
  config.train.seed = 7
  host = distributed.HostShard(index=0, num_shards=1, per_host_batch_size=16)
  directory = str(tmp_path / 'checkpoints')
  ckpt = checkpoints.Checkpointer(directory, async_save=True)
  saving = loop.Checkpointing(ckpt, config, host, seed=7)
  assert saving.committed_step() is None  # nothing written yet
  state = _tiny_state(3)
  saving.save(3, state, loss=1.5, batches_consumed=3, skipped_steps=1)
  assert saving.committed_step() == 3  # waits for the async write
  step_dir = os.path.join(directory, '3')
  assert checkpoint_inspection.inspect_step(step_dir) is None
  data = checkpoint_inspection.read_json_item(step_dir, 'data')
  assert data == {'batches_consumed': {'0': 3}, 'seed': 7, 'process_count': 1,
                  'per_host_batch_size': 16, 'task': config.task.name,
                  'skipped_steps': 1}
  assert list(data) == list(saving.data_item(3, 1))  # the item, in order
  assert checkpoint_inspection.read_json_item(step_dir, 'config') == (
      train_setup.config_dict(config))
  with pytest.raises(checkpoints.CheckpointError, match='the loss is nan'):
    saving.save(4, _tiny_state(4), loss=float('nan'), batches_consumed=4,
                skipped_steps=1)
  ckpt.close()

  restored = checkpoints.Checkpointer(directory).restore(
      checkpoints._abstract(state))  # pylint: disable=protected-access
  assert restored.step == 3 and restored.data == data
  for a, b in zip(jax.tree.leaves(restored.state), jax.tree.leaves(state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # What the next run starts from: the config's seed, the saved count.
  assert train_setup.data_position(config, restored, 3) == (
      train_setup.DataPosition(seed=7, batches_consumed=3, skipped_steps=1))
  assert train_setup.data_position(config, None, 0) == (
      train_setup.DataPosition(seed=7, batches_consumed=0, skipped_steps=0))
  # Without data-iterator checkpointing: no count saved, a fresh order.
  config.train.data_iterator_checkpointing = False
  assert 'batches_consumed' not in saving.data_item(3, 1)
  assert train_setup.data_position(config, restored, 3) == (
      train_setup.DataPosition(seed=10, batches_consumed=0, skipped_steps=1))


# ---- PeriodicEval ---------------------------------------------------------------------


def _tiny_run_config(**mesh):
  from t5x_lite.configs import local_tiny  # pylint: disable=g-import-not-at-top
  c = local_tiny.get_config()
  c.model.emb_dim, c.model.num_heads, c.model.head_dim = 32, 2, 16
  c.model.mlp_dim = 64
  c.model.num_encoder_layers = c.model.num_decoder_layers = 1
  c.task.feature_lengths.inputs, c.task.feature_lengths.targets = 32, 8
  c.train.batch_size = 8
  c.eval.num_batches = 2
  c.task.shuffle_buffer_size = 128
  for k, v in (mesh or dict(data=-1)).items():
    c.mesh[k] = v
  return c


@needs_corpus
def test_periodic_eval_equals_evaluation_teacher_forced(tmp_path):
  c = _tiny_run_config()
  model = objectives.build_model(c)
  tx, _ = optimizers.make_optimizer(run_config.OptimizerConfig.from_config(c))
  mesh = partitioning.make_mesh(c.mesh)
  rules = partitioning.logical_rules(c.mesh.rules)
  batch_sharding = partitioning.batch_sharding(mesh, rules)
  state, shardings = trainer.create_train_state(
      model, tx, mesh, rules, dict(c.task.feature_lengths),
      jax.random.PRNGKey(1))
  eval_step = trainer.make_eval_step(model, mesh, rules, shardings.params,
                                     batch_sharding)
  data = train_setup.EvalData(
      c, distributed.host_shard(c.train.batch_size, batch_sharding))
  writer = metrics_lib.create_writer(str(tmp_path), tensorboard=False)
  periodic = loop.PeriodicEval(eval_step, data, batch_sharding, writer)
  with _Logs() as logs:
    periodic(10, state.params)
  writer.close()
  got = periodic.last
  assert got['eval/batches'] == 2 and np.isfinite(got['eval/loss'])
  assert got['eval/loss'] > 5.0  # untrained: about log(vocab)
  assert any(m.startswith('eval step 10: loss ') and '(2 batches, ' in m
             for m in logs.messages), logs.messages
  record = metrics_lib.read_metrics(str(tmp_path))[0]
  assert record['step'] == 10 and record['eval/loss'] == got['eval/loss']

  # evaluation.py's numbers: the same batches, the same function.
  predictor = Predictor(
      model, state.params, generation.DecodeSettings.from_config(c.decoding),
      mesh=mesh, rules=rules, param_shardings=shardings.params)
  want = evaluation.teacher_forced_metrics(predictor, c)
  assert got == {f'eval/{k}': v for k, v in want.items()}
  # ... and by hand: model.eval_fn's sums over the batches, finalized.
  sums = [jax.jit(model.eval_fn)(jax.device_get(state.params), b)
          for b in data]
  total = jax.tree.map(lambda *x: sum(x), *sums)
  by_hand = models.finalize_metrics(total)
  for k, v in by_hand.items():
    assert got[f'eval/{k}'] == pytest.approx(float(v), rel=1e-5), k

  # No eval batches (eval.num_batches=0): nothing evaluated or written.
  empty = loop.PeriodicEval(eval_step, [], batch_sharding, writer)
  assert empty.evaluate(state.params) == {}
  empty(20, state.params)
  assert empty.last == {}


def test_teacher_forced_sums_then_finalizes():
  sums = [{'loss': jnp.float32(6.0), 'z_loss': jnp.float32(0.5),
           'correct': jnp.float32(2.0), 'num_tokens': jnp.float32(4.0)},
          {'loss': jnp.float32(2.0), 'z_loss': jnp.float32(0.3),
           'correct': jnp.float32(4.0), 'num_tokens': jnp.float32(4.0)}]
  m, n = evaluation.teacher_forced(lambda p, b: sums[b], None, [0, 1])
  assert n == 2
  assert m == {'loss': 1.0, 'z_loss': pytest.approx(0.1), 'accuracy': 0.75,
               'num_tokens': 8.0}
  assert all(isinstance(v, float) for v in m.values())
  assert evaluation.teacher_forced(lambda p, b: sums[b], None, []) == ({}, 0)


# ---- train_setup.setup ------------------------------------------------------------------


@needs_corpus
def test_setup_fresh_then_resumed_from_a_saved_position(tmp_path):
  c = _tiny_run_config()
  c.checkpoint.async_save = False
  w = str(tmp_path / 'run')
  run = train_setup.setup(c, w)
  try:
    assert run.workdir == os.path.abspath(w)
    assert os.path.isfile(os.path.join(w, train_setup.CONFIG_FILE))
    assert run.start_step == 0 and int(run.state.step) == 0
    assert run.position == train_setup.DataPosition(0, 0, 0)
    assert run.host.per_host_batch_size == 8
    batch = next(run.train_data)
    assert batch['encoder_input_tokens'].shape == (8, 32)
    assert len(list(run.eval_data)) == 2
    saving = loop.Checkpointing(run.ckpt, c, run.host, run.position.seed)
    saving.save(0, run.state, loss=None, batches_consumed=5, skipped_steps=2)
  finally:
    run.ckpt.close()

  with _Logs() as logs:
    again = train_setup.setup(c, w)
  again.ckpt.close()
  assert any(m.startswith('Resumed from ') for m in logs.messages)
  assert again.position == train_setup.DataPosition(0, 5, 2)
  for a, b in zip(jax.tree.leaves(again.state.params),
                  jax.tree.leaves(run.state.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_setup_rejects_an_unknown_task_before_writing_anything(tmp_path):
  c = sizes.apply_size(default.get_config(), 'tiny')
  c.task.name = 'no_such_task'
  w = str(tmp_path / 'never')
  with pytest.raises(train_setup.ConfigError, match="task.name='no_such_task'"):
    train_setup.setup(c, w)
  assert not os.path.exists(w)


def test_setup_names_an_impossible_workdir_in_one_line(tmp_path):
  c = sizes.apply_size(default.get_config(), 'tiny')
  c.task.name = 'shakespeare_span_corruption'
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  with pytest.raises(train_setup.ConfigError) as e:
    train_setup.setup(c, str(blocker / 'run'))
  msg = str(e.value)
  assert '\n' not in msg and str(blocker / 'run') in msg
  assert 'Not a directory' in msg and 'pick a directory' in msg
