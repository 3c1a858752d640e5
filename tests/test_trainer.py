"""Train step on 8 fake CPU devices: mesh parity, real shardings, gradient
accumulation, non-finite skipping, eval/score steps and the FLOPs formula.

Every mesh must reproduce the 1-device run (fp32, 3 steps, <= 1e-5) for both
optimizers. If a parity assertion fails after a model change, the sharding
or the step broke, not the numbers: do not loosen the tolerance.
"""
import warnings

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from t5x_lite.configs import default
from t5x_lite.configs import models as sizes
from t5x_lite import models
from t5x_lite import objectives
from t5x_lite import optimizers
from t5x_lite import partitioning
from t5x_lite import run_config
from t5x_lite import trainer

VOCAB, LEN, BATCH, STEPS = 128, 16, 8, 3
MESHES = {
    'single': None,  # 1 device: the reference
    'data8': dict(data=8, fsdp=1, tensor=1),
    'fsdp8': dict(data=1, fsdp=8, tensor=1),
    'd2f2t2': dict(data=2, fsdp=2, tensor=2),
}

warnings.filterwarnings('ignore', message='Some donated buffers')


def _config(optimizer='adafactor', mesh=None, microbatches=1):
  c = sizes.apply_size(default.get_config(), 'tiny')
  c.model.vocab_size = VOCAB
  c.model.num_encoder_layers = 1
  c.model.num_decoder_layers = 1
  c.task.feature_lengths = dict(inputs=LEN, targets=LEN)
  c.train.batch_size = BATCH * microbatches
  c.train.microbatches = microbatches
  c.train.skip_nonfinite_updates = True
  c.optimizer.name = optimizer
  c.optimizer.schedule = 'constant'
  c.optimizer.warmup_steps = 0
  c.optimizer.learning_rate = 1e-2 if optimizer == 'adafactor' else 1e-3
  c.optimizer.weight_decay = 0.0 if optimizer == 'adafactor' else 0.1
  # Adam divides each coordinate by its own |g|: with eps=1e-8 and lr 3e-3,
  # fp32 reassociation noise on near-zero gradients moves params by up to
  # 1.3e-4 between meshes (grads agree to ~1e-8). eps=1e-6 bounds that
  # (lr * noise / eps); lr 1e-3 leaves a 3x margin under 1e-5.
  c.optimizer.eps = 1e-6
  c.optimizer.min_dim_size_to_factor = 16  # so the tiny dims get factored
  c.optimizer.grad_clip_norm = 1.0
  for k, v in (mesh or dict(data=1, fsdp=1, tensor=1)).items():
    c.mesh[k] = v
  return c


def _batches(num, rows, seed=0):
  rng = np.random.RandomState(seed)
  out = []
  for _ in range(num):
    inputs = rng.randint(1, VOCAB, (rows, LEN)).astype(np.int32)
    targets = rng.randint(1, VOCAB, (rows, LEN)).astype(np.int32)
    # Ragged real lengths, so per-token normalisation is really exercised.
    lengths = rng.randint(LEN // 4, LEN + 1, (rows, 1))
    real = (np.arange(LEN)[None] < lengths).astype(np.int32)
    targets *= real
    out.append(dict(
        encoder_input_tokens=inputs,
        decoder_input_tokens=np.pad(targets, ((0, 0), (1, 0)))[:, :-1],
        decoder_target_tokens=targets,
        decoder_loss_weights=real))
  return out


_MODELS = {}


def _model(config):
  # One model per model config: it memoises its abstract params (a trace).
  key = config.model.to_json()
  if key not in _MODELS:
    _MODELS[key] = objectives.build_model(config)
  return _MODELS[key]


def _train(config, batches, devices=None, init_state=None):
  """Trains on `batches`; a jitted sharded init unless `init_state` (host
  arrays) is given, which is then placed with the same shardings."""
  model = _model(config)
  tx, schedule = optimizers.make_optimizer(
      run_config.OptimizerConfig.from_config(config))
  mesh = partitioning.make_mesh(config.mesh, devices)
  rules = partitioning.logical_rules(config.mesh.rules)
  lengths = dict(config.task.feature_lengths)
  if init_state is None:
    state, shardings = trainer.create_train_state(
        model, tx, mesh, rules, lengths, jax.random.PRNGKey(0))
  else:
    _, shardings = trainer.abstract_train_state(model, tx, mesh, rules,
                                                lengths)
    state = jax.device_put(init_state, shardings)
  batch_sharding = partitioning.batch_sharding(mesh, rules)
  init_state = jax.device_get(state)  # the step donates the state
  step = trainer.make_train_step(
      model, tx, run_config.StepConfig.from_config(config), mesh, rules,
      shardings, batch_sharding, schedule=schedule)
  metrics = []
  for b in batches:
    state, m = step(state, partitioning.shard_batch(b, batch_sharding),
                    jax.random.PRNGKey(1))
    metrics.append(jax.device_get(m))
  return dict(model=model, tx=tx, mesh=mesh, state=state, step=step,
              shardings=shardings, batch_sharding=batch_sharding,
              metrics=metrics, params=jax.device_get(state.params),
              init_state=init_state)


@pytest.fixture(scope='module')
def runs():
  """{(optimizer, mesh name): run}, each compiled once for the module."""
  prev = jax.config.jax_default_matmul_precision
  jax.config.update('jax_default_matmul_precision', 'highest')
  batches = _batches(STEPS, BATCH)
  out = {}
  try:
    for opt in ('adafactor', 'adamw'):
      for name, mesh in MESHES.items():
        devices = jax.devices()[:1] if mesh is None else None
        # The jitted sharded init runs on one device and on d2f2t2; the
        # other meshes start from the same values (compiles are the cost).
        init = (None if name in ('single', 'd2f2t2') else
                out[opt, 'single']['init_state'])
        out[opt, name] = _train(_config(opt, mesh), batches, devices, init)
    yield out
  finally:
    jax.config.update('jax_default_matmul_precision', prev)


def _max_diff(a, b):
  return max(jax.tree.leaves(jax.tree.map(
      lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))),
      a, b)))


@pytest.mark.slow
@pytest.mark.parametrize('opt', ['adafactor', 'adamw'])
@pytest.mark.parametrize('mesh_name', ['data8', 'fsdp8', 'd2f2t2'])
def test_mesh_parity_with_one_device(runs, opt, mesh_name):
  ref, run = runs[opt, 'single'], runs[opt, mesh_name]
  ref_loss = [m['loss'] for m in ref['metrics']]
  loss = [m['loss'] for m in run['metrics']]
  np.testing.assert_allclose(loss, ref_loss, atol=1e-5, rtol=0)
  if opt == 'adafactor':
    assert ref_loss[-1] < ref_loss[0] - 0.01  # it trains
  for key in ('grad_norm', 'accuracy', 'num_tokens', 'z_loss'):
    np.testing.assert_allclose([m[key] for m in run['metrics']],
                               [m[key] for m in ref['metrics']], atol=1e-5)
  assert _max_diff(run['params'], ref['params']) <= 1e-5
  assert int(run['state'].step) == STEPS


def _named(tree):
  """{'path/to/leaf': leaf} of a params-like tree."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): leaf
          for path, leaf in flat}


def _one(named, *parts, shape_has=None):
  hits = [k for k in named if all(p in k for p in parts)]
  if shape_has is not None:
    hits = [k for k in hits if shape_has in named[k].shape]
  assert hits, f'no param matching {parts} in {sorted(named)}'
  return sorted(hits)[0]


def test_params_really_carry_rule_shardings(runs):
  run = runs['adafactor', 'd2f2t2']
  params = _named(run['state'].params)
  emb = _one(params, 'token_embedder')
  # vocab -> tensor, embed -> fsdp.
  assert params[emb].sharding.spec == P('tensor', 'fsdp')
  shard = params[emb].addressable_shards[0].data.shape
  assert shard == (VOCAB // 2, params[emb].shape[1] // 2)
  wi = _one(params, 'mlp', 'wi')
  spec = params[wi].sharding.spec
  # [layers?, embed, mlp]: the last two dims are (fsdp, tensor).
  assert tuple(spec)[-2:] == ('fsdp', 'tensor'), (wi, spec)
  # The network's activation constraints reach the compiled step
  # ([batch, length, embed] -> batch over data+fsdp).
  batch = partitioning.shard_batch(_batches(1, BATCH)[0],
                                   run['batch_sharding'])
  hlo = run['step'].lower(run['state'], batch,
                          jax.random.PRNGKey(1)).as_text()
  assert hlo.count('sdy.sharding_constraint') > 4
  assert '[{"data", "fsdp"}, {}, {}]' in hlo


def test_adafactor_moments_are_sharded_compatibly(runs):
  run = runs['adafactor', 'd2f2t2']
  params = _named(run['state'].params)
  opt = run['state'].opt_state
  fs = next(s for s in jax.tree.leaves(
      opt, is_leaf=lambda x: hasattr(x, 'v_row')) if hasattr(s, 'v_row'))
  v_row, v_col = _named(fs.v_row), _named(fs.v_col)
  emb = _one(params, 'token_embedder')
  # [vocab 128, embed 64]: v_row drops vocab, v_col drops embed.
  assert v_row[emb].shape == (params[emb].shape[1],)
  assert v_row[emb].sharding.spec == P('fsdp')
  assert v_col[emb].sharding.spec == P('tensor')
  wi = _one(params, 'mlp', 'wi')
  row_spec = tuple(v_row[wi].sharding.spec)
  assert row_spec[-1:] == ('fsdp',), row_spec
  for name, leaf in {**v_row, **v_col}.items():
    leaf.sharding.shard_shape(leaf.shape)  # evenly divisible everywhere


def test_nonfinite_update_is_skipped(runs):
  run = runs['adafactor', 'single']
  state = jax.tree.map(jnp.copy, run['state'])
  params = _named(state.params)
  emb = _one(params, 'token_embedder')
  bad_params = jax.tree_util.tree_map_with_path(
      lambda path, x: x.at[0, 0].set(jnp.nan)
      if '/'.join(str(getattr(k, 'key', k)) for k in path) == emb else x,
      state.params)
  bad = state.replace(params=bad_params)
  before = jax.device_get(bad)
  batch = partitioning.shard_batch(_batches(1, BATCH, seed=5)[0],
                                   run['batch_sharding'])
  new, m = run['step'](bad, batch, jax.random.PRNGKey(1))
  assert float(m['is_finite']) == 0.0 and float(m['skipped']) == 1.0
  assert int(new.step) == int(before.step) + 1
  np.testing.assert_array_equal(
      np.asarray(jax.tree.leaves(new.opt_state)[0]),
      np.asarray(jax.tree.leaves(before.opt_state)[0]))
  assert _max_diff(jax.tree.map(np.nan_to_num, jax.device_get(new.params)),
                   jax.tree.map(np.nan_to_num, before.params)) == 0.0


def test_sharded_init_equals_one_device_init(runs):
  for opt in ('adafactor', 'adamw'):
    ref = runs[opt, 'single']['init_state']
    run = runs[opt, 'd2f2t2']['init_state']
    assert _max_diff(run.params, ref.params) == 0.0
    assert _max_diff(run.opt_state, ref.opt_state) == 0.0


def test_gradient_accumulation_matches_big_batch(runs):
  prev = jax.config.jax_default_matmul_precision
  jax.config.update('jax_default_matmul_precision', 'highest')
  init = runs['adafactor', 'single']['init_state']
  try:
    mesh = MESHES['fsdp8']
    batches = _batches(2, 4 * BATCH, seed=3)
    big = _train(_config('adafactor', mesh, microbatches=1), batches,
                 init_state=init)
    acc = _train(_config('adafactor', mesh, microbatches=4), batches,
                 init_state=init)
  finally:
    jax.config.update('jax_default_matmul_precision', prev)
  for key in ('loss', 'z_loss', 'accuracy', 'num_tokens', 'grad_norm'):
    np.testing.assert_allclose([m[key] for m in acc['metrics']],
                               [m[key] for m in big['metrics']], atol=1e-5,
                               err_msg=key)
  assert acc['metrics'][0]['num_tokens'] == batches[0][
      'decoder_loss_weights'].sum()
  assert _max_diff(acc['params'], big['params']) <= 1e-5


def test_eval_and_score_steps_agree_with_training_loss(runs):
  ref = runs['adamw', 'single']
  run = runs['adamw', 'd2f2t2']
  config = _config('adamw', MESHES['d2f2t2'])
  model, mesh = run['model'], run['mesh']
  batch = _batches(1, BATCH)[0]  # the first training batch
  gbatch = partitioning.shard_batch(batch, run['batch_sharding'])
  params0 = run['init_state'].params
  rules = partitioning.logical_rules(config.mesh.rules)
  eval_step = trainer.make_eval_step(model, mesh, rules,
                                     run['shardings'].params,
                                     run['batch_sharding'])
  sums = jax.device_get(eval_step(params0, gbatch))
  metrics = models.finalize_metrics(sums)
  # At init (step 0) the eval loss is the first training step's loss.
  assert float(metrics['loss']) == pytest.approx(
      float(ref['metrics'][0]['loss']), abs=1e-5)
  assert float(sums['num_tokens']) == batch['decoder_loss_weights'].sum()
  score_step = trainer.make_score_step(model, mesh, rules,
                                       run['shardings'].params,
                                       run['batch_sharding'])
  scores = np.asarray(score_step(params0, gbatch))
  assert scores.shape == (BATCH,) and np.all(scores < 0)
  # Without label smoothing, sum log p = -(cross entropy sum).
  assert scores.sum() == pytest.approx(-(sums['loss'] - sums['z_loss']),
                                       rel=1e-5)


@pytest.mark.parametrize('mesh_name', ['fsdp8', 'd2f2t2'])
def test_abstract_params_are_the_train_states_params(mesh_name):
  """What eval/infer restore params into (trainer.abstract_params) is what
  training places them by: the same shapes, dtypes and shardings."""
  c = _config(mesh=MESHES[mesh_name])
  model = _model(c)
  tx, _ = optimizers.make_optimizer(run_config.OptimizerConfig.from_config(c))
  mesh = partitioning.make_mesh(c.mesh)
  rules = partitioning.logical_rules(c.mesh.rules)
  lengths = dict(c.task.feature_lengths)
  abstract, shardings = trainer.abstract_params(model, mesh, rules, lengths)
  state, state_shardings = trainer.abstract_train_state(model, tx, mesh, rules,
                                                        lengths)
  assert jax.tree.structure(abstract) == jax.tree.structure(state.params)
  for a, b in zip(jax.tree.leaves(abstract), jax.tree.leaves(state.params)):
    assert (a.shape, a.dtype, a.sharding) == (b.shape, b.dtype, b.sharding)
  assert jax.tree.leaves(shardings) == jax.tree.leaves(state_shardings.params)
  specs = {tuple(s.spec) for s in jax.tree.leaves(shardings)}
  assert any(spec and spec != (None,) * len(spec) for spec in specs), specs


def test_model_flops_match_the_shared_formula():
  c = sizes.apply_size(default.get_config(), 'base')
  c.train.batch_size = 128
  c.task.feature_lengths = dict(inputs=512, targets=114)
  # The shared T5 FLOPs reference: t5_step_flops(128, 512, 114) (T5.1.1 base).
  assert objectives.flops_per_step(c) == 54520858017792
  c = _config()
  c.model.num_encoder_layers = c.model.num_decoder_layers = 2
  # t5_step_flops(8, 16, 16, 64, 128, 4, 16, 2, 2, vocab=128)
  assert objectives.flops_per_step(c) == 166723584
  c.model.arch = 'decoder_only'
  # len 32: 3*2*[256*2*(4*64*64 + 3*64*128) + 256*2*2*32*64 + 256*64*128]
  assert objectives.flops_per_step(c) == 3 * 2 * (
      256 * 2 * (4 * 64 * 64 + 3 * 64 * 128) + 256 * 2 * 2 * 32 * 64 +
      256 * 64 * 128)


@pytest.mark.parametrize('size,objective', [
    ('decoder_tiny', ''), ('encoder_tiny', ''),
    ('encoder_tiny', 'classification')])
def test_every_arch_binds_its_features(size, objective):
  """Shapes only (jax.eval_shape): each model's batch reaches its network and
  its loss; prefix-LM's decoder_causal_attention is passed through."""
  c = sizes.apply_size(default.get_config(), size)
  c.model.vocab_size = VOCAB
  c.objective.name = objective
  c.task.feature_lengths = dict(inputs=LEN, targets=LEN)
  model = objectives.build_model(c)
  shapes = model.input_shapes(c.task.feature_lengths, BATCH)
  if size == 'decoder_tiny':
    assert shapes['decoder_input_tokens'].shape == (BATCH, 2 * LEN)
    shapes['decoder_causal_attention'] = shapes['decoder_input_tokens']
    features = model._features(shapes)  # pylint: disable=protected-access
    assert 'decoder_causal_attention' in features
  params = partitioning.unbox(model.abstract_params(shapes))
  loss, metrics = jax.eval_shape(
      lambda p, b: model.loss_fn(p, b, jax.random.PRNGKey(0)), params, shapes)
  assert loss.shape == () and loss.dtype == jnp.float32
  assert {'loss', 'z_loss', 'accuracy', 'num_tokens'} <= set(metrics)
  scores = jax.eval_shape(model.score_batch, params, shapes)
  assert scores.shape == (BATCH,)
