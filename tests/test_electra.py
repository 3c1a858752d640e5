"""ELECTRA's pieces: replaced labels, stop-gradient sampling, the shared
embedding, the loss composition and its metrics, on a tiny synthetic batch.

If a gradient test fails, the objective is wrong (the generator must learn
from MLM only; the discriminator from RTD and, through the shared embedding,
nothing else of the generator's): fix the code, not the test.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from one_device_step import train_state_and_step

from t5x_lite.configs import default
from t5x_lite.configs import models as sizes
from t5x_lite import objectives
from t5x_lite.objectives import electra
from t5x_lite import flops
from t5x_lite import losses
from t5x_lite import models

VOCAB, LEN, BATCH, MASK = 64, 16, 4, 63


def _config(**model):
  c = sizes.apply_size(default.get_config(), 'encoder_tiny')
  c.objective.name = 'electra'
  c.model.vocab_size = VOCAB
  c.model.emb_dim = 32
  c.model.num_heads = 4
  c.model.head_dim = 8
  c.model.mlp_dim = 64
  c.model.num_encoder_layers = 1
  c.objective.electra.generator_size_fraction = 0.5
  for k, v in model.items():
    c.model[k] = v
  c.task.feature_lengths = dict(inputs=LEN, targets=LEN)
  c.train.batch_size = BATCH
  c.optimizer.name = 'adamw'
  c.optimizer.schedule = 'constant'
  c.optimizer.warmup_steps = 0
  c.optimizer.learning_rate = 3e-3
  c.mesh.data = 1
  return c


def _batch(seed=0):
  rng = np.random.RandomState(seed)
  targets = rng.randint(3, MASK, (BATCH, LEN)).astype(np.int32)
  targets[:, -3:] = 0  # padding at the end of every row
  weights = ((rng.rand(BATCH, LEN) < 0.3) & (targets > 0)).astype(np.int32)
  weights[:, 0] = 1  # at least one selected position per row
  inputs = np.where(weights > 0, MASK, targets).astype(np.int32)
  return dict(encoder_input_tokens=inputs, encoder_target_tokens=targets,
              encoder_loss_weights=weights)


@pytest.fixture(scope='module')
def model_and_params():
  model = objectives.build_model(_config())
  shapes = model.input_shapes({'inputs': LEN}, 1)
  params = jax.jit(lambda rng: model.init_params(rng, shapes))(
      jax.random.PRNGKey(0))
  return model, params


def test_from_config_picks_electra_and_generator_dims(model_and_params):
  model, params = model_and_params
  assert isinstance(model, electra.ElectraModel)
  assert set(params) == {'discriminator', 'generator'}
  gen = electra.generator_config(model.config, model.options)
  assert (gen.emb_dim, gen.num_heads, gen.mlp_dim) == (16, 2, 32)
  # embed_project: [emb 32 -> gen 16]; MLM head back to the embedding width.
  assert params['generator']['embed_project']['project']['kernel'].shape == (
      32, 16)
  assert params['generator']['mlm_dense']['kernel'].shape == (16, 32)


def test_replaced_labels_sample_equal_to_original_counts_as_original():
  original = jnp.array([[5, 6, 7, 8]])
  selected = jnp.array([[True, True, False, True]])
  sampled = jnp.array([[5, 9, 11, 8]])  # pos 0 and 3 resample the original
  disc_input, replaced = electra.replace_tokens(original, selected, sampled)
  np.testing.assert_array_equal(disc_input, [[5, 9, 7, 8]])
  np.testing.assert_array_equal(replaced, [[0, 1, 0, 0]])


def test_original_tokens_restores_the_text():
  b = _batch()
  np.testing.assert_array_equal(electra.original_tokens(b),
                                b['encoder_target_tokens'])
  # A converter that zeroes unselected targets gives the same text.
  zeroed = dict(b, encoder_target_tokens=b['encoder_target_tokens'] *
                b['encoder_loss_weights'])
  np.testing.assert_array_equal(electra.original_tokens(zeroed),
                                b['encoder_target_tokens'])


def test_gumbel_sample_follows_softmax_and_has_no_gradient():
  logits = jnp.log(jnp.array([0.6, 0.3, 0.1]))
  draws = electra.gumbel_sample(jax.random.PRNGKey(0),
                                jnp.broadcast_to(logits, (20000, 3)))
  freq = np.bincount(np.asarray(draws), minlength=3) / 20000
  np.testing.assert_allclose(freq, [0.6, 0.3, 0.1], atol=0.015)

  def f(lg):
    ids = electra.gumbel_sample(jax.random.PRNGKey(1), lg)
    return jnp.sum(jax.nn.one_hot(ids, 3) * lg)  # uses lg only via the sample
  g = jax.grad(f)(jnp.broadcast_to(logits, (8, 3)))
  # Only the explicit `* lg` term has a gradient: one-hot rows, nothing else.
  np.testing.assert_array_equal(np.sum(g, -1), np.ones(8))


def _subtree_norms(tree):
  return {jax.tree_util.keystr(k): float(jnp.sum(jnp.abs(v)))
          for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_gradients_flow_only_where_electra_says(model_and_params):
  """RTD loss: no gradient into any generator param (stop-gradient sample).
  MLM loss: generator params and the shared embedding, no other
  discriminator param."""
  model, params = model_and_params
  batch = _batch()
  rng = jax.random.PRNGKey(3)

  def disc_loss(p):
    f = model.forward(p, batch, rng, enable_dropout=False)
    loss, _ = losses.binary_cross_entropy_with_logits(
        f['disc_logits'], f['replaced'], f['disc_weights'])
    return loss

  def mlm_loss(p):
    f = model.forward(p, batch, rng, enable_dropout=False)
    loss, _, _ = losses.cross_entropy_with_z_loss(
        f['gen_logits'], batch['encoder_target_tokens'], f['mlm_weights'])
    return loss

  g_disc = jax.jit(jax.grad(disc_loss))(params)
  assert all(v == 0.0 for v in _subtree_norms(g_disc['generator']).values())
  assert sum(_subtree_norms(g_disc['discriminator']).values()) > 0

  g_mlm = jax.jit(jax.grad(mlm_loss))(params)
  gen = _subtree_norms(g_mlm['generator'])
  assert all(v > 0 for v in gen.values()), gen
  disc = _subtree_norms(g_mlm['discriminator'])
  shared = "['token_embedder']['embedding']"
  assert disc.pop(shared) > 0  # the generator trains the shared embedding
  assert all(v == 0.0 for v in disc.values()), disc


def test_generator_reads_and_writes_the_shared_embedding(model_and_params):
  model, params = model_and_params
  batch = _batch()
  flat = jax.tree_util.tree_flatten_with_path(params['generator'])[0]
  # No token table of its own (rel_embedding is its relative position bias).
  assert not any(jax.tree_util.keystr(k).endswith("['embedding']")
                 for k, _ in flat)
  before = model.generator_logits(params, batch)
  bumped = jax.tree.map(lambda x: x, params)
  emb = params['discriminator']['token_embedder']['embedding']
  bumped['discriminator']['token_embedder']['embedding'] = emb * 1.5
  after = model.generator_logits(bumped, batch)
  assert float(jnp.max(jnp.abs(after - before))) > 1e-3


def test_loss_is_mlm_plus_weighted_rtd_and_metrics_add_up(model_and_params):
  model, params = model_and_params
  batch = _batch()
  total, sums = model.loss_terms(params, batch, jax.random.PRNGKey(5),
                                 enable_dropout=False)
  m = models.finalize_metrics(sums)
  np.testing.assert_allclose(
      m['loss'], m['mlm_loss'] + 50.0 * m['disc_loss'], rtol=1e-5)
  np.testing.assert_allclose(total, sums['loss'])
  n_real = float(np.sum(batch['encoder_target_tokens'] > 0))
  n_sel = float(np.sum(batch['encoder_loss_weights']))
  assert float(sums['num_tokens']) == n_sel
  assert float(sums['disc_accuracy_den']) == n_real
  np.testing.assert_allclose(m['disc_baseline_accuracy'],
                             1.0 - m['replaced_rate'], rtol=1e-6)
  np.testing.assert_allclose(m['masked_replaced_rate'] * n_sel,
                             m['replaced_rate'] * n_real, rtol=1e-5)
  # An untrained generator almost never reproduces the original.
  assert float(m['masked_replaced_rate']) > 0.8
  # Accuracy from the confusion counts: hits + correct rejections.
  caught, flagged, n_rep = (float(sums[k]) for k in (
      'disc_recall_num', 'disc_precision_den', 'disc_recall_den'))
  np.testing.assert_allclose(
      m['disc_accuracy'] * n_real, caught + (n_real - n_rep - (flagged - caught)),
      rtol=1e-5)
  for k in ('disc_accuracy', 'accuracy', 'replaced_rate', 'disc_recall'):
    assert 0.0 <= float(m[k]) <= 1.0


def test_train_steps_with_microbatches_fall_and_log_electra_metrics():
  c = _config()
  c.train.microbatches = 2  # the accumulation carry holds ELECTRA's sums
  state, step = train_state_and_step(c)
  batch = _batch()
  hist = []
  for _ in range(12):
    state, m = step(state, batch, jax.random.PRNGKey(1))
    hist.append({k: float(v) for k, v in m.items()})
  assert all(np.isfinite(h['loss']) for h in hist)
  assert hist[-1]['loss'] < 0.7 * hist[0]['loss'], [h['loss'] for h in hist]
  assert hist[-1]['disc_loss'] < hist[0]['disc_loss']
  assert {'disc_accuracy', 'disc_baseline_accuracy', 'replaced_rate',
          'mlm_loss'} <= set(hist[-1])


def test_flops_count_generator_and_discriminator():
  c = _config()
  bert = c.copy_and_resolve_references()
  bert.objective.name = ''
  f_electra = objectives.flops_per_step(c)
  f_bert = objectives.flops_per_step(bert)
  # ELECTRA = BERT (trunk + vocab logits) + the generator's trunk.
  gen = bert.copy_and_resolve_references()
  g = electra.generator_config(models.ModelConfig.from_config(c.model),
                              electra.Options(generator_size_fraction=0.5))
  for k in ('emb_dim', 'num_heads', 'mlp_dim'):
    gen.model[k] = getattr(g, k)
  no_layers = gen.copy_and_resolve_references()
  no_layers.model.num_encoder_layers = 0
  gen_trunk = (objectives.flops_per_step(gen) -
               objectives.flops_per_step(no_layers))
  np.testing.assert_allclose(f_electra, f_bert + gen_trunk, rtol=1e-9)
  assert gen_trunk > 0


def test_objective_needs_encoder_only():
  from t5x_lite import config as config_lib
  c = _config()
  c.model.arch = 'decoder_only'
  c.model.num_decoder_layers = 1
  with pytest.raises(config_lib.ConfigError, match='encoder_only'):
    config_lib.validate(c, num_devices=1)
