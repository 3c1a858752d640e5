"""The GPU fast path computes what the plain path computes.

Fast path: bf16 activations and matmuls, nn.scan over layers, remat that
saves the matmul outputs, the fused-attention branch (`attention_impl=
'cudnn'`), the reduction-form cross entropy. Plain path: float32, unrolled
layers, no remat, einsum attention.

CPU has no cuDNN, so the fused branch runs here with
`layers.FUSED_IMPLEMENTATION = 'xla'`: the same code (bias cast to the
activation dtype, the AttentionMask's factors: key padding as
key_value_seq_lengths, causality as is_causal, packed segments and a prefix
LM's prefix as a boolean mask; scale 1, the call to
jax.nn.dot_product_attention) with XLA's kernel instead of cuDNN's. The
cuDNN kernel itself is checked on a GPU by bench/attention_check.py and
measured by bench/gpu_check.sh.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_lite.configs import default
from t5x_lite.configs import models as sizes
from t5x_lite import layers
from t5x_lite import models
from t5x_lite import objectives
from t5x_lite import network
from t5x_lite import optimizers
from t5x_lite import partitioning
from t5x_lite import run_config
from t5x_lite import trainer

VOCAB, IN_LEN, OUT_LEN, BATCH, STEPS = 256, 32, 16, 16, 20

PLAIN = dict(dtype='float32', scan_layers=False, remat_policy='none',
             attention_impl='xla')
FAST = dict(dtype='bfloat16', scan_layers=True, remat_policy='save_dots',
            attention_impl='cudnn')


@pytest.fixture(autouse=True)
def _fused_branch_on_cpu(monkeypatch):
  monkeypatch.setattr(layers, 'FUSED_IMPLEMENTATION', 'xla')


# ---- attention: the fused branch == the einsum path ------------------------------------


def _attention_case(dtype):
  rng = np.random.default_rng(0)
  b, q, k, h, d = 2, 8, 12, 4, 16
  qkv = [jnp.asarray(rng.normal(size=(b, n, h, d)), dtype) for n in (q, k, k)]
  bias = jnp.asarray(rng.normal(size=(1, h, q, k)), jnp.float32)
  # Key padding (row 1 has 5 padded keys) as the network builds it.
  keep = np.ones((b, k), bool)
  keep[1, -5:] = False
  mask = jnp.asarray(keep)[:, None, None, :]  # [b, 1, 1, kv]
  return qkv, bias, mask


@pytest.mark.parametrize('dtype,tol', [(jnp.float32, 2e-6),
                                       (jnp.bfloat16, 2e-2)])
def test_fused_branch_equals_einsum_attention_and_its_gradients(dtype, tol):
  (q, k, v), bias, mask = _attention_case(dtype)

  def einsum(q, k, v, bias):
    return layers._xla_attention(q, k, v, bias, mask, dropout_rate=0.0,
                                 dropout_rng=None, deterministic=True,
                                 dtype=dtype)

  def fused(q, k, v, bias):
    return layers._cudnn_attention(q, k, v, bias, mask)

  want, got = einsum(q, k, v, bias), fused(q, k, v, bias)
  assert got.shape == want.shape == q.shape and got.dtype == dtype
  np.testing.assert_allclose(np.asarray(got, np.float32),
                             np.asarray(want, np.float32), atol=tol)
  # Gradients, the relative position bias's included (cuDNN's dbias).
  loss = lambda f: lambda *a: jnp.sum(f(*a).astype(jnp.float32) ** 2)
  g_want = jax.grad(loss(einsum), argnums=(0, 1, 2, 3))(q, k, v, bias)
  g_got = jax.grad(loss(fused), argnums=(0, 1, 2, 3))(q, k, v, bias)
  for name, a, b in zip('qkv', g_got[:3], g_want[:3]):
    scale = float(jnp.max(jnp.abs(b.astype(jnp.float32))))
    np.testing.assert_allclose(np.asarray(a, np.float32),
                               np.asarray(b, np.float32),
                               atol=tol * max(scale, 1.0), err_msg=name)
  # Masked keys get no bias gradient on either path.
  assert float(jnp.max(jnp.abs(g_got[3][..., -5:]))) > 0  # row 0 is real
  scale = float(jnp.max(jnp.abs(g_want[3])))
  np.testing.assert_allclose(g_got[3], g_want[3], atol=tol * max(scale, 1.0))


# ---- the fused branch's mask factors: lengths, causal, segments, prefix ------

B, L, H, D = 2, 8, 4, 16


def _qkv(dtype, q_len=L, kv_len=L, seed=1):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.normal(size=(B, n, H, D)), dtype)
          for n in (q_len, kv_len, kv_len)]


def _relpos_bias(q_len=L, kv_len=L):
  """A real T5 relative bias, [1, heads, q, kv] (one table for the batch)."""
  rng = np.random.default_rng(2)
  table = jnp.asarray(rng.normal(size=(H, 32)), jnp.float32)
  rel = jnp.arange(kv_len)[None, :] - jnp.arange(q_len)[:, None]
  bucket = layers.relative_position_bucket(rel, True, 32, 128)
  return jnp.transpose(jnp.take(table.T, bucket, axis=0), (2, 0, 1))[None]


# Row 0: two segments (5 + 2 tokens) and 1 pad; row 1: one segment of 6.
TOKENS = np.array([[5, 6, 7, 8, 9, 3, 4, 0], [5, 6, 7, 8, 9, 3, 0, 0]])
SEGMENTS = np.array([[1, 1, 1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 1, 1, 0, 0]])
PREFIX = np.array([[1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0]])


def _masks():
  lengths = layers.key_lengths(jnp.asarray(TOKENS))
  seg = jnp.asarray(SEGMENTS)
  return {
      'padding': layers.AttentionMask(kv_lengths=lengths),
      'causal': layers.AttentionMask(causal=True),
      'packed': layers.AttentionMask(kv_lengths=lengths, q_segment_ids=seg,
                                     kv_segment_ids=seg),
      'packed_causal': layers.AttentionMask(causal=True, q_segment_ids=seg,
                                            kv_segment_ids=seg),
      'prefix': layers.AttentionMask(causal=True,
                                     prefix=jnp.asarray(PREFIX)),
  }


def test_attention_mask_dense_is_the_networks_boolean_mask():
  """dense() is what network.py built before: tokens > 0, same segment,
  causal (OR the prefix block)."""
  m, real = _masks(), TOKENS > 0
  same = SEGMENTS[:, :, None] == SEGMENTS[:, None, :]
  tri = np.tril(np.ones((L, L), bool))
  pre = PREFIX[:, :, None].astype(bool) & PREFIX[:, None, :].astype(bool)
  want = {'padding': np.broadcast_to(real[:, None, :], (B, L, L)),
          'causal': np.broadcast_to(tri, (B, L, L)),
          'packed': real[:, None, :] & same,
          'packed_causal': tri & same,
          'prefix': tri | pre}
  for name, mask in m.items():
    got = np.broadcast_to(np.asarray(mask.dense(L, L)), (B, 1, L, L))[:, 0]
    np.testing.assert_array_equal(got, want[name], err_msg=name)


def test_fused_args_pass_padding_as_lengths_and_causal_as_is_causal():
  """No dense mask reaches the kernel unless the mask has no other form."""
  m = _masks()
  pad = m['padding'].fused_args(L, L)
  assert pad['mask'] is None and not pad['is_causal']
  np.testing.assert_array_equal(pad['key_value_seq_lengths'], [7, 6])
  causal = m['causal'].fused_args(L, L)
  assert causal == {'is_causal': True, 'mask': None}
  packed = m['packed_causal'].fused_args(L, L)
  assert packed['is_causal'] and packed['mask'].shape == (B, 1, L, L)
  prefix = m['prefix'].fused_args(L, L)  # causal OR prefix: no is_causal
  assert not prefix['is_causal'] and prefix['mask'].shape == (B, 1, L, L)
  # Padding is what trails: an id 0 inside a row stays a key.
  np.testing.assert_array_equal(
      layers.key_lengths(jnp.asarray([[5, 0, 6, 0, 0], [0, 0, 0, 0, 0]])),
      [3, 0])
  # A fully padded row attends to key 0 (cuDNN has no softmax over nothing).
  empty = layers.AttentionMask(kv_lengths=jnp.zeros((B,), jnp.int32))
  np.testing.assert_array_equal(empty.fused_args(L, L)[
      'key_value_seq_lengths'], [1, 1])


def _grads(fn, q, k, v, bias):
  loss = lambda *a: jnp.sum(fn(*a).astype(jnp.float32) ** 2)
  return jax.grad(loss, argnums=(0, 1, 2, 3))(q, k, v, bias)


@pytest.mark.parametrize('name', ['padding', 'causal', 'packed',
                                  'packed_causal', 'prefix'])
@pytest.mark.parametrize('dtype,tol', [(jnp.float32, 2e-6),
                                       (jnp.bfloat16, 2e-2)])
def test_fused_mask_factors_equal_einsum_values_and_gradients(name, dtype,
                                                              tol):
  mask = _masks()[name]
  q, k, v = _qkv(dtype)
  bias = _relpos_bias()

  def einsum(q, k, v, bias):
    return layers._xla_attention(q, k, v, bias, mask.dense(L, L),
                                 dropout_rate=0.0, dropout_rng=None,
                                 deterministic=True, dtype=dtype)

  def fused(q, k, v, bias):
    return layers._cudnn_attention(q, k, v, bias, mask)

  want, got = einsum(q, k, v, bias), fused(q, k, v, bias)
  assert got.shape == q.shape and got.dtype == dtype
  np.testing.assert_allclose(np.asarray(got, np.float32),
                             np.asarray(want, np.float32), atol=tol)
  g_want, g_got = _grads(einsum, q, k, v, bias), _grads(fused, q, k, v, bias)
  for what, a, b in zip(('q', 'k', 'v', 'bias'), g_got, g_want):
    assert a.shape == b.shape, what  # dbias stays [1, heads, q, kv]
    scale = float(jnp.max(jnp.abs(b.astype(jnp.float32))))
    np.testing.assert_allclose(np.asarray(a, np.float32),
                               np.asarray(b, np.float32),
                               atol=tol * max(scale, 1.0), err_msg=what)
  assert float(jnp.max(jnp.abs(g_got[3]))) > 0


@pytest.mark.parametrize('name', ['packed', 'packed_causal'])
def test_packed_rows_never_attend_across_segments_in_the_fused_path(name):
  """Row 0 holds segments 1 (positions 0-4) and 2 (5-6): changing segment
  2's keys and values leaves segment 1's outputs bit-identical, and a loss on
  segment 1 gives segment 2 exactly zero gradient (and vice versa)."""
  mask = _masks()[name]
  q, k, v = _qkv(jnp.float32)
  bias = _relpos_bias()
  fused = lambda k, v: layers._cudnn_attention(q, k, v, bias, mask)
  seg2 = np.zeros((B, L, 1, 1), bool)
  seg2[0, 5:7] = True
  noise = jnp.asarray(np.random.default_rng(3).normal(size=k.shape),
                      jnp.float32) * 10
  out, moved = fused(k, v), fused(jnp.where(seg2, k + noise, k),
                                  jnp.where(seg2, v + noise, v))
  np.testing.assert_array_equal(out[0, :5], moved[0, :5])
  assert float(jnp.max(jnp.abs(out[0, 5:7] - moved[0, 5:7]))) > 1e-3
  for rows, other in ((slice(0, 5), slice(5, 7)), (slice(5, 7), slice(0, 5))):
    loss = lambda k, v, rows=rows: jnp.sum(fused(k, v)[0, rows] ** 2)
    gk, gv = jax.grad(loss, argnums=(0, 1))(k, v)
    assert float(jnp.max(jnp.abs(gk[0, other]))) == 0.0
    assert float(jnp.max(jnp.abs(gv[0, other]))) == 0.0
    assert float(jnp.max(jnp.abs(gv[0, rows]))) > 0.0


def test_cross_attention_lengths_with_different_query_length():
  """Decoder queries (q=4) over padded encoder keys (kv=8), no bias."""
  mask = layers.AttentionMask(kv_lengths=layers.key_lengths(
      jnp.asarray(TOKENS)))
  q, k, v = _qkv(jnp.float32, q_len=4)
  want = layers._xla_attention(q, k, v, None, mask.dense(4, L),
                               dropout_rate=0.0, dropout_rng=None,
                               deterministic=True, dtype=jnp.float32)
  got = layers._cudnn_attention(q, k, v, None, mask)
  np.testing.assert_allclose(got, want, atol=2e-6)


# ---- 20 training steps: fast == plain ---------------------------------------------------


def _config(**model):
  c = sizes.apply_size(default.get_config(), 'tiny')
  c.model.vocab_size = VOCAB
  c.model.num_encoder_layers = 2
  c.model.num_decoder_layers = 2
  c.model.dropout_rate = 0.0
  for k, v in model.items():
    c.model[k] = v
  c.task.feature_lengths = dict(inputs=IN_LEN, targets=OUT_LEN)
  c.train.batch_size = BATCH
  # AdamW works per element, so the scanned layout's stacked arrays get the
  # same updates as the unrolled ones (Adafactor's parameter scale is per
  # array: see t5x_lite/optimizers.py).
  c.optimizer.name = 'adamw'
  c.optimizer.schedule = 'constant'
  c.optimizer.warmup_steps = 0
  c.optimizer.learning_rate = 1e-2
  c.optimizer.weight_decay = 0.0
  c.optimizer.grad_clip_norm = 1.0
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 1, 1
  return c


def _batches():
  """A copy task with ragged lengths: 20 steps are enough to learn a lot."""
  rng = np.random.RandomState(0)
  out = []
  for _ in range(STEPS):
    inputs = rng.randint(2, VOCAB, (BATCH, IN_LEN)).astype(np.int32)
    lengths = rng.randint(IN_LEN // 2, IN_LEN + 1, (BATCH, 1))
    inputs *= np.arange(IN_LEN)[None] < lengths
    targets = inputs[:, :OUT_LEN].copy()
    targets[:, -1] = 1  # EOS
    out.append(dict(
        encoder_input_tokens=inputs,
        decoder_input_tokens=np.pad(targets, ((0, 0), (1, 0)))[:, :-1],
        decoder_target_tokens=targets,
        decoder_loss_weights=(targets > 0).astype(np.int32)))
  return out


def _train(config, params=None):
  """(initial params, losses of STEPS steps), fresh AdamW. `params` (unrolled
  layout) start the run; None initialises them from PRNGKey(0)."""
  model = objectives.build_model(config)
  tx, schedule = optimizers.make_optimizer(
      run_config.OptimizerConfig.from_config(config))
  mesh = partitioning.make_mesh(config.mesh, jax.devices()[:1])
  rules = partitioning.logical_rules(config.mesh.rules)
  lengths = dict(config.task.feature_lengths)
  if params is None:
    state, shardings = trainer.create_train_state(model, tx, mesh, rules,
                                                  lengths,
                                                  jax.random.PRNGKey(0))
    params = jax.device_get(state.params)
  else:
    _, shardings = trainer.abstract_train_state(model, tx, mesh, rules,
                                                lengths)
    stacked = (network.stack_layers(params) if config.model.scan_layers
               else params)
    state = jax.device_put(
        trainer.TrainState(step=jnp.zeros((), jnp.int32), params=stacked,
                           opt_state=tx.init(stacked)), shardings)
  batch_sharding = partitioning.batch_sharding(mesh, rules)
  step = trainer.make_train_step(
      model, tx, run_config.StepConfig.from_config(config), mesh, rules,
      shardings, batch_sharding, schedule=schedule)
  losses = []
  for b in _batches():
    state, m = step(state, partitioning.shard_batch(b, batch_sharding),
                    jax.random.PRNGKey(1))
    losses.append(float(jax.device_get(m['loss'])))
  return params, np.array(losses)


@pytest.fixture(scope='module')
def plain():
  return _train(_config(**PLAIN))


def test_plain_path_learns(plain):
  _, losses = plain
  assert losses[-1] < losses[0] - 0.4, losses  # 6.04 -> 5.53 nats


def test_fast_path_structure_in_float32_equals_plain(plain):
  """scan + remat + fused branch + reduction CE: same losses to fp32 noise."""
  params, want = plain
  _, got = _train(_config(**dict(FAST, dtype='float32')), params)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_fast_path_in_bfloat16_matches_plain_within_bf16_tolerance(plain):
  """The whole fast path: every step's loss within bf16 tolerance."""
  params, want = plain
  _, got = _train(_config(**FAST), params)
  # bf16 has an 8-bit mantissa (relative step 2^-8 = 0.4%). Measured: at
  # most 6e-4 relative over the 20 steps (fp32 structure alone: 7e-7).
  # 5e-3 leaves a margin; a real bug (a wrong mask, a dropped bias, a
  # mis-stacked layer) moves the loss by far more.
  np.testing.assert_allclose(got, want, rtol=5e-3)
