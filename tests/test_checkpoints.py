"""Checkpoints: round trips, keep-N, fallback past damaged steps, failed writes,
non-finite refusal, params-only restore, and restore into another mesh shape.

The damage tests truncate/delete each kind of file Orbax writes and require
that the restore either gives back the exact arrays or falls back to the
previous step with a warning naming the damaged step: never silent garbage.
"""
import glob
import json
import logging as py_logging
import os

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np
import orbax.checkpoint as ocp
import pytest

from t5x_lite import checkpoint_inspection
from t5x_lite import checkpoints
from t5x_lite import objectives
from t5x_lite import params_checkpoints


@flax.struct.dataclass
class State:
  step: jax.Array
  params: dict
  opt_state: dict


def _state(step, seed=0, mesh=None, spec=P()):
  rng = np.random.RandomState(seed)
  params = {'enc': {'kernel': rng.randn(64, 32).astype(np.float32)},
            'bias': rng.randn(32).astype(np.float32)}
  opt = {'mu': jax.tree.map(lambda x: x * 0.5, params),
         'count': np.int32(step)}
  state = State(step=np.int32(step), params=params, opt_state=opt)
  if mesh is None:
    return jax.tree.map(jnp.asarray, state)
  def put(x):
    s = spec if np.ndim(x) == 2 else P()
    return jax.device_put(x, NamedSharding(mesh, s))
  return jax.tree.map(put, state)


def _assert_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _save_steps(directory, steps, keep=3, async_save=True):
  with checkpoints.Checkpointer(directory, keep=keep,
                                async_save=async_save) as ckpt:
    for s in steps:
      assert ckpt.save(s, _state(s, seed=s), data={'batches': {'0': s},
                                                   'seed': 7},
                       config={'train': {'num_steps': 100}})


class _Capture(py_logging.Handler):
  def __init__(self):
    super().__init__(py_logging.WARNING)
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


@pytest.fixture
def warnings_log():
  handler = _Capture()
  logger = py_logging.getLogger('absl')
  logger.addHandler(handler)
  yield handler.messages
  logger.removeHandler(handler)


def test_round_trip_keep_n_and_items(tmp_path):
  d = str(tmp_path / 'checkpoints')
  _save_steps(d, [10, 20, 30, 40], keep=3)
  assert sorted(checkpoint_inspection.step_dirs(d)) == [20, 30, 40]
  ckpt = checkpoints.Checkpointer(d)
  target = checkpoints._abstract(_state(0))
  r = ckpt.restore(target)
  assert r.step == 40
  _assert_equal(r.state, _state(40, seed=40))
  assert r.data == {'batches': {'0': 40}, 'seed': 7}
  assert r.config == {'train': {'num_steps': 100}}
  r = ckpt.restore(target, step=30)
  _assert_equal(r.state, _state(30, seed=30))
  # Saving an existing step is a no-op, not an overwrite.
  assert not ckpt.save(40, _state(99, seed=99))
  ckpt.close()
  assert checkpoint_inspection.read_json_item(os.path.join(d, '40'),
                                              'data')['seed'] == 7
  assert checkpoints.Checkpointer(str(tmp_path / 'none')).restore(
      target) is None


def _damage(path, mode):
  if mode == 'delete':
    os.remove(path)
  else:
    size = os.path.getsize(path)
    with open(path, 'r+b') as f:
      f.truncate(size // 2 if mode == 'half' else 0)


# (glob inside the step dir, how to damage it); each must be caught.
DAMAGE = [
    ('commit_success.txt', 'delete'),  # a save that never committed
    ('state/ocdbt.process_0/d/*', 'half'),  # array bytes
    ('state/ocdbt.process_0/d/*', 'zero'),
    ('state/d/*', 'half'),  # the OCDBT b-tree
    ('state/manifest.ocdbt', 'delete'),
    ('state/_METADATA', 'half'),
    ('data/metadata', 'half'),  # the data iterator position
    ('config/metadata', 'delete'),
]


@pytest.mark.parametrize('pattern,mode', DAMAGE)
def test_damaged_latest_step_falls_back(tmp_path, warnings_log, pattern,
                                        mode):
  d = str(tmp_path / 'checkpoints')
  _save_steps(d, [10, 20])
  files = sorted(glob.glob(os.path.join(d, '20', pattern)),
                 key=os.path.getsize)
  assert files, pattern
  _damage(files[-1], mode)
  ckpt = checkpoints.Checkpointer(d)
  r = ckpt.restore(checkpoints._abstract(_state(0)))
  assert r.step == 10
  _assert_equal(r.state, _state(10, seed=10))
  assert r.data['batches'] == {'0': 10}
  assert any('step 20' in m and 'unusable' in m for m in warnings_log), (
      warnings_log)
  # The damaged step is kept for inspection, out of the way of new saves.
  assert sorted(checkpoint_inspection.step_dirs(d)) == [10]
  moved = glob.glob(os.path.join(d, checkpoints.UNUSABLE_DIR, '20.*'))
  assert len(moved) == 1 and os.path.exists(
      os.path.join(moved[0], 'REASON.txt'))
  # Training goes on: step 20 can be written again.
  assert ckpt.save(20, _state(21, seed=21))
  ckpt.close()
  r = checkpoints.Checkpointer(d).restore(checkpoints._abstract(_state(0)))
  assert r.step == 20
  _assert_equal(r.state, _state(21, seed=21))


def test_damaged_files_never_restore_silently(tmp_path):
  """Every file of a step, damaged every way: exact arrays or an error."""
  d = str(tmp_path / 'checkpoints')
  _save_steps(d, [5])
  names = sorted(os.path.relpath(p, os.path.join(d, '5')) for p in glob.glob(
      os.path.join(d, '5', '**'), recursive=True) if os.path.isfile(p))
  target = checkpoints._abstract(_state(0))
  for name in names:
    for mode in ('half', 'zero', 'delete'):
      case = str(tmp_path / f'case_{abs(hash((name, mode)))}')
      _save_steps(case, [5])
      # Data file names are content hashes: damage the biggest of its kind.
      pattern = os.path.join(case, '5', os.path.dirname(name), '*') if (
          os.path.basename(os.path.dirname(name)) == 'd') else os.path.join(
              case, '5', name)
      _damage(max(glob.glob(pattern), key=os.path.getsize), mode)
      try:
        r = checkpoints.Checkpointer(case).restore(target)
      except checkpoints.CheckpointError:
        continue  # reported: the only step is unusable
      assert r is not None and r.step == 5, (name, mode)
      _assert_equal(r.state, _state(5, seed=5))


def test_no_checkpoint_message_names_path_and_steps(tmp_path):
  with pytest.raises(checkpoints.CheckpointError, match='does not exist'):
    params_checkpoints.restore_params(str(tmp_path / 'missing'))
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(checkpoints.CheckpointError,
                     match=f'No checkpoint at {empty}.*empty'):
    params_checkpoints.restore_params(str(empty))
  d = str(tmp_path / 'checkpoints')
  _save_steps(d, [10, 20])
  with pytest.raises(checkpoints.CheckpointError,
                     match=r'No checkpoint step 15: steps in .*\[10, 20\]'):
    checkpoints.Checkpointer(d).restore(checkpoints._abstract(_state(0)),
                                        step=15)
  with pytest.raises(checkpoints.CheckpointError,
                     match=r'does not exist; steps in .*\[10, 20\]'):
    params_checkpoints.restore_params(os.path.join(d, '30'))


def test_failed_write_raises_and_keeps_previous_step(tmp_path, monkeypatch):
  d = str(tmp_path / 'checkpoints')
  _save_steps(d, [10])
  ckpt = checkpoints.Checkpointer(d, keep=1)
  # The disk fills up while the data position is being written.
  real = ocp.handlers.JsonCheckpointHandler._save_fn

  async def no_space(self, x, directory):
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(ocp.handlers.JsonCheckpointHandler, '_save_fn',
                      no_space)
  with pytest.raises(checkpoints.CheckpointError,
                     match='step 20.*No space left.*previous checkpoints are '
                     'intact'):
    ckpt.save(20, _state(20, seed=20), data={'x': 1})
    ckpt.wait_until_finished()  # an async failure surfaces here at the latest
  monkeypatch.setattr(ocp.handlers.JsonCheckpointHandler, '_save_fn', real)
  ckpt._mngr.close()
  # keep=1 deleted nothing
  assert sorted(checkpoint_inspection.step_dirs(d)) == [10]
  r = checkpoints.Checkpointer(d).restore(checkpoints._abstract(_state(0)))
  assert r.step == 10
  _assert_equal(r.state, _state(10, seed=10))


def test_refuses_non_finite_state(tmp_path):
  d = str(tmp_path / 'checkpoints')
  ckpt = checkpoints.Checkpointer(d)
  bad = _state(3)
  bad = bad.replace(params={**bad.params,
                            'bias': bad.params['bias'].at[2].set(jnp.inf)})
  with pytest.raises(checkpoints.CheckpointError, match='step 3.*NaN or inf'):
    ckpt.save(3, bad)
  with pytest.raises(checkpoints.CheckpointError, match='step 4.*loss is nan'):
    ckpt.save(4, _state(4), loss=float('nan'))
  ckpt.close()
  assert checkpoint_inspection.step_dirs(d) == {}


def test_restore_params_every_format(tmp_path):
  d = str(tmp_path / 'work' / 'checkpoints')
  _save_steps(d, [10, 20])
  want = _state(20, seed=20).params
  for path in (os.path.join(d, '20'), d, str(tmp_path / 'work')):
    _assert_equal(params_checkpoints.restore_params(path), want)
  # The newest step without its commit marker is skipped.
  os.remove(os.path.join(d, '20', checkpoint_inspection.COMMIT_MARKER))
  _assert_equal(params_checkpoints.restore_params(d),
                _state(10, seed=10).params)
  # interop/hf.py's params-only checkpoint: {'params': ...} + config.json.
  export = tmp_path / 'export'
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(str(export), {'params': want})
  (export / 'config.json').write_text(json.dumps({'model': {}}))
  assert params_checkpoints.resolve_params_path(str(export)) == (
      f'params:{export}')
  got = params_checkpoints.restore_params(str(export))
  _assert_equal(got, want)
  assert isinstance(jax.tree.leaves(got)[0], np.ndarray)
  # Written by the interop helper itself.
  from t5x_lite.configs import default  # pylint: disable=g-import-not-at-top
  from t5x_lite.interop import hf  # pylint: disable=g-import-not-at-top
  hf.save_params_checkpoint(str(tmp_path / 'hf'), want, default.get_config())
  _assert_equal(params_checkpoints.restore_params(str(tmp_path / 'hf')), want)
  # The one writer of the format (HF import, ELECTRA export) and its config.
  out = params_checkpoints.save_params_only(str(tmp_path / 'po'), want,
                                     {'model': {'arch': 'encoder_decoder'}})
  assert out == str(tmp_path / 'po')
  assert params_checkpoints.read_params_only_config(out) == {
      'model': {'arch': 'encoder_decoder'}}
  got = params_checkpoints.restore_params(out)
  _assert_equal(got, want)
  assert isinstance(jax.tree.leaves(got)[0], np.ndarray)
  with pytest.raises(FileExistsError, match='pick a new output directory'):
    params_checkpoints.save_params_only(out, want)
  bare_config = params_checkpoints.save_params_only(str(tmp_path / 'noconf'),
                                                    want)
  assert params_checkpoints.read_params_only_config(bare_config) == {}
  _assert_equal(params_checkpoints.restore_params(bare_config), want)
  (tmp_path / 'noconf' / 'config.json').write_text('{not json')
  with pytest.raises(ValueError, match='not valid JSON'):
    params_checkpoints.read_params_only_config(bare_config)
  # ... or a bare params tree.
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(str(tmp_path / 'bare'), want)
  _assert_equal(params_checkpoints.restore_params(str(tmp_path / 'bare')), want)
  # Into a mesh.
  mesh = Mesh(np.array(jax.devices()[:2]), ('fsdp',))
  target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(
          x.shape, x.dtype, sharding=NamedSharding(
              mesh, P('fsdp') if x.ndim == 2 else P())), want)
  got = params_checkpoints.restore_params(os.path.join(d, '10'), target)
  assert got['enc']['kernel'].sharding.spec == P('fsdp')
  _assert_equal(got, _state(10, seed=10).params)


def test_restore_into_another_mesh(tmp_path):
  devices = np.array(jax.devices()[:8])
  mesh_a = Mesh(devices.reshape(1, 8), ('data', 'fsdp'))
  mesh_b = Mesh(devices.reshape(2, 4), ('data', 'fsdp'))
  state = _state(7, seed=3, mesh=mesh_a, spec=P('fsdp', None))
  d = str(tmp_path / 'checkpoints')
  with checkpoints.Checkpointer(d) as ckpt:
    ckpt.save(7, state)
  target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(
          x.shape, x.dtype, sharding=NamedSharding(
              mesh_b, P(None, 'fsdp') if x.ndim == 2 else P())),
      _state(0))
  r = checkpoints.Checkpointer(d).restore(target)
  kernel = r.state.params['enc']['kernel']
  assert kernel.sharding.mesh.shape == {'data': 2, 'fsdp': 4}
  assert kernel.addressable_shards[0].data.shape == (64, 8)
  _assert_equal(r.state, _state(7, seed=3))


def test_other_model_is_a_clear_error_not_a_fallback(tmp_path):
  d = str(tmp_path / 'checkpoints')
  _save_steps(d, [10, 20])
  other = _state(0)
  other = other.replace(params={**other.params, 'bias': jnp.zeros(5)})
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match=r'step 20 .*params/bias has shape \(32,\) in the '
                     r'checkpoint but \(5,\) here'):
    checkpoints.Checkpointer(d).restore(checkpoints._abstract(other))
  assert sorted(checkpoint_inspection.step_dirs(d)) == [10, 20]  # nothing moved
  with pytest.raises(checkpoints.CheckpointMismatchError, match='bias'):
    params_checkpoints.restore_params(d, checkpoints._abstract(other.params))


def test_train_state_moves_between_mesh_shapes(tmp_path):
  """A real TrainState (tiny T5, Adafactor) saved on fsdp=8 restores on
  data=2 x fsdp=4 with identical params and optimizer state."""
  from t5x_lite.configs import default
  from t5x_lite.configs import models as sizes
  from t5x_lite import models
  from t5x_lite import optimizers
  from t5x_lite import partitioning
  from t5x_lite import run_config
  from t5x_lite import trainer

  def setup(mesh_dims):
    c = sizes.apply_size(default.get_config(), 'tiny')
    c.model.vocab_size = 128
    c.model.num_encoder_layers = c.model.num_decoder_layers = 1
    c.task.feature_lengths = dict(inputs=16, targets=8)
    c.optimizer.min_dim_size_to_factor = 16
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh_dims
    model = objectives.build_model(c)
    tx, _ = optimizers.make_optimizer(
        run_config.OptimizerConfig.from_config(c))
    mesh = partitioning.make_mesh(c.mesh)
    return c, model, tx, mesh

  c, model, tx, mesh = setup((1, 8, 1))
  rules = partitioning.logical_rules(c.mesh.rules)
  state, _ = trainer.create_train_state(model, tx, mesh, rules,
                                        dict(c.task.feature_lengths),
                                        jax.random.PRNGKey(3))
  emb = state.params['token_embedder']['embedding']
  assert tuple(emb.sharding.spec)[-1] == 'fsdp'  # [vocab, embed]
  d = str(tmp_path / 'checkpoints')
  with checkpoints.Checkpointer(d) as ckpt:
    ckpt.save(1, state, data={'batches_consumed': {'0': 1}})

  c, model, tx, mesh = setup((2, 4, 1))
  abstract, shardings = trainer.abstract_train_state(
      model, tx, mesh, rules, dict(c.task.feature_lengths))
  r = checkpoints.Checkpointer(d).restore(abstract)
  emb = r.state.params['token_embedder']['embedding']
  assert emb.sharding.mesh.shape['fsdp'] == 4
  assert emb.addressable_shards[0].data.shape == (128, 64 // 4)
  jax.tree.map(lambda x, s: np.testing.assert_equal(x.sharding, s),
               r.state, shardings)
  _assert_equal(r.state, jax.device_get(state))
