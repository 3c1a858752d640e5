"""Network invariants at tiny dims: parameter counts of the real sizes,
scanned == unrolled, packing == each segment alone, KV-cache decoding ==
teacher forcing, remat policies == no remat, encoder-only heads."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_lite.configs import models
from t5x_lite import network
from t5x_lite.config import ModelConfig

VOCAB = 96


@pytest.fixture(autouse=True, scope='module')
def _highest_precision():
  old = jax.config.jax_default_matmul_precision
  jax.config.update('jax_default_matmul_precision', 'highest')
  yield
  jax.config.update('jax_default_matmul_precision', old)


def _cfg(arch='encoder_decoder', **kw):
  base = dict(arch=arch, vocab_size=VOCAB, emb_dim=32, num_heads=4,
              head_dim=8, mlp_dim=64, num_encoder_layers=2,
              num_decoder_layers=2, dtype='float32')
  base.update(kw)
  return ModelConfig(**base)


def _tokens(shape, seed=0):
  return jnp.asarray(np.random.RandomState(seed).randint(2, VOCAB, shape),
                     jnp.int32)


def _random_param(path, shape, rng):
  """Test weights from numpy (no jitted flax init: its RNG-heavy compile
  costs seconds per config on CPU). Kernels ~ 1/sqrt(fan_in); norm scales
  near 1 so a mixed-up norm shows."""
  name = jax.tree_util.keystr(path)
  if 'scale' in name:
    return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
  if 'kernel' in name:
    return (rng.standard_normal(shape) / np.sqrt(shape[-2])).astype(np.float32)
  return rng.standard_normal(shape).astype(np.float32)  # embeddings, biases


@functools.lru_cache(maxsize=None)
def _module(cfg):
  return network.build(cfg)


@functools.lru_cache(maxsize=None)
def _param_shapes(cfg):
  variables = jax.eval_shape(_module(cfg).init, jax.random.PRNGKey(0),
                             *network.dummy_inputs(cfg, 2, 8))
  return nn.meta.unbox(variables['params'])


def _init(cfg, seed=0):
  """(module, params) for cfg: eval_shape for the tree, numpy for values.
  A scanned and an unrolled cfg with the same seed get the same weights."""
  rng = np.random.default_rng(seed)
  unrolled = network.unstack_layers(_param_shapes(cfg.replace(
      scan_layers=False)))
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: _random_param(path, x.shape, rng), unrolled)
  if cfg.scan_layers:
    params = network.stack_layers(params)
  return _module(cfg), params


_JITS = {}


def _apply(module, variables, *args, mutable=False, method=None, **kwargs):
  """Jitted module.apply, one compiled function per (module, static
  arguments). Array (or None) keyword arguments are traced, others static."""
  if not isinstance(variables, dict) or 'params' not in variables:
    variables = {'params': variables}
  dynamic = {k: v for k, v in kwargs.items()
             if v is None or isinstance(v, (np.ndarray, jax.Array))}
  static = tuple(sorted((k, v) for k, v in kwargs.items() if k not in dynamic))
  mutable = tuple(mutable) if isinstance(mutable, list) else mutable
  key = (id(module), method, mutable, static, tuple(sorted(dynamic)))
  if key not in _JITS:
    def fn(v, *a, **kw):
      return module.apply(v, *a, mutable=list(mutable) if isinstance(
          mutable, tuple) else mutable, method=method, **dict(static), **kw)
    _JITS[key] = jax.jit(fn)
  return _JITS[key](variables, *args, **dynamic)


# ---- parameter counts --------------------------------------------------------


def _t5_1_1_count(emb, heads, head_dim, mlp, enc, dec, vocab=32128):
  """Independent arithmetic: untied embedding + logits, gated GELU MLPs."""
  inner = heads * head_dim
  enc_layer = 4 * emb * inner + 3 * emb * mlp + 2 * emb
  dec_layer = 8 * emb * inner + 3 * emb * mlp + 3 * emb
  return (2 * vocab * emb + enc * enc_layer + dec * dec_layer + 2 * emb +
          2 * heads * 32)


@pytest.mark.parametrize('name', ['small', 'base', 'large', 'xl', 'xxl'])
def test_t5_1_1_param_counts(name):
  arch, emb, heads, head_dim, mlp, enc, dec = models.SIZES[name]
  n = network.param_count(ModelConfig(
      arch=arch, vocab_size=32128, emb_dim=emb, num_heads=heads,
      head_dim=head_dim, mlp_dim=mlp, num_encoder_layers=enc,
      num_decoder_layers=dec))
  published = models.PUBLISHED_PARAMS[name]
  err = (n - published) / published
  assert n == _t5_1_1_count(emb, heads, head_dim, mlp, enc, dec)
  print(f'{name}: {n:,} params, {100 * err:+.2f}% vs published')
  if name == 'xxl':
    # configs/models.py says 11.3B, but that is the original T5-11B; the
    # T5.1.1 XXL dims (4096/64x64/10240/24+24) give 11.14B, exactly the count
    # of HF's google/t5-v1_1-xxl (T5ForConditionalGeneration, untied head).
    assert n == 11_135_332_352
  else:
    assert abs(err) <= 0.01, (name, n, published)


def test_every_param_has_logical_axis_names():
  allowed = {'vocab', 'embed', 'mlp', 'heads', 'kv', 'joined_kv', 'layers',
             'relpos_buckets', 'classes'}
  for arch in network.ARCHS:
    cfg = _cfg(arch)
    module = network.build(cfg)
    boxed = jax.eval_shape(lambda m=module, c=cfg: m.init(
        jax.random.PRNGKey(0), *network.dummy_inputs(c)))['params']
    leaves = jax.tree_util.tree_leaves(
        boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    for leaf in leaves:
      assert isinstance(leaf, nn.LogicallyPartitioned), (arch, leaf)
      assert len(leaf.names) == leaf.value.ndim
      assert set(leaf.names) <= allowed, leaf.names
      assert leaf.value.dtype == jnp.float32


# ---- layouts -----------------------------------------------------------------


@pytest.mark.parametrize('arch', list(network.ARCHS))
def test_scanned_equals_unrolled(arch):
  cfg = _cfg(arch, scan_layers=True)
  module, params = _init(cfg)
  unrolled_module, unrolled = _init(cfg.replace(scan_layers=False))
  # The converters map the real init layouts onto each other.
  shapes = lambda t: jax.tree_util.tree_map(lambda x: x.shape, t)
  assert shapes(network.stack_layers(unrolled)) == shapes(_param_shapes(cfg))
  assert shapes(network.unstack_layers(params)) == shapes(
      _param_shapes(cfg.replace(scan_layers=False)))
  inputs = [_tokens((2, 8), seed=i) for i in range(
      len(network.dummy_inputs(cfg)))]
  a = _apply(module, params, *inputs)
  b = _apply(unrolled_module, network.unstack_layers(params), *inputs)
  np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
  for x, y in zip(jax.tree_util.tree_leaves(network.unstack_layers(params)),
                  jax.tree_util.tree_leaves(unrolled)):
    np.testing.assert_array_equal(x, y)


# ---- packing -----------------------------------------------------------------


def _pack(parts, length):
  """Concatenates 1-D token arrays into one row with segment ids/positions."""
  tokens = np.zeros((1, length), np.int32)
  seg = np.zeros((1, length), np.int32)
  pos = np.zeros((1, length), np.int32)
  i = 0
  for s, p in enumerate(parts):
    tokens[0, i:i + len(p)] = p
    seg[0, i:i + len(p)] = s + 1
    pos[0, i:i + len(p)] = np.arange(len(p))
    i += len(p)
  return tokens, seg, pos


def _alone(p, length):
  row = np.zeros((1, length), np.int32)
  row[0, :len(p)] = p
  return row


def test_packed_encoder_decoder_equals_segments_alone():
  cfg = _cfg('encoder_decoder')
  module, params = _init(cfg)
  rng = np.random.RandomState(1)
  enc_parts = [np.append(rng.randint(2, VOCAB, 4), 1),
               np.append(rng.randint(2, VOCAB, 5), 1)]
  dec_parts = [np.concatenate([[0], rng.randint(2, VOCAB, 3)]),
               np.concatenate([[0], rng.randint(2, VOCAB, 2)])]
  enc, enc_seg, enc_pos = _pack(enc_parts, 16)
  dec, dec_seg, dec_pos = _pack(dec_parts, 10)
  packed = _apply(module, params, enc, dec, enc_seg, dec_seg,
                        enc_pos, dec_pos)
  start = 0
  for e, d in zip(enc_parts, dec_parts):
    alone = _apply(module, params, _alone(e, 16), _alone(d, 10))
    np.testing.assert_allclose(packed[0, start:start + len(d)],
                               alone[0, :len(d)], atol=1e-5, rtol=1e-5)
    start += len(d)


@pytest.mark.parametrize('prefix', [False, True], ids=['causal', 'prefix_lm'])
def test_packed_decoder_only_equals_segments_alone(prefix):
  cfg = _cfg('decoder_only')
  module, params = _init(cfg)
  rng = np.random.RandomState(2)
  parts = [rng.randint(2, VOCAB, 5), rng.randint(2, VOCAB, 7)]
  prefix_lens = [2, 3]
  toks, seg, pos = _pack(parts, 16)
  causal = None
  if prefix:
    causal, _, _ = _pack([(np.arange(len(p)) < n).astype(np.int32)
                          for p, n in zip(parts, prefix_lens)], 16)
  packed = _apply(module, params, toks, seg, pos, causal)
  start = 0
  for p, n in zip(parts, prefix_lens):
    ca = None
    if prefix:
      ca = _alone((np.arange(len(p)) < n).astype(np.int32), 16)
    alone = _apply(module, params, _alone(p, 16),
                         decoder_causal_attention=ca)
    np.testing.assert_allclose(packed[0, start:start + len(p)],
                               alone[0, :len(p)], atol=1e-5, rtol=1e-5)
    start += len(p)


# ---- KV-cache decoding -------------------------------------------------------


@pytest.mark.parametrize(
    'scan,cross_from_cache', [(True, True), (True, False), (False, True)],
    ids=['scan-cached_cross_kv', 'scan-recomputed_cross_kv',
         'unrolled-cached_cross_kv'])
def test_encoder_decoder_cache_matches_teacher_forcing(scan, cross_from_cache):
  cfg = _cfg('encoder_decoder', scan_layers=scan)
  module, params = _init(cfg)
  enc = np.array(_tokens((2, 8)))
  enc[1, 5:] = 0  # padding in the second row
  dec = np.array(_tokens((2, 6), seed=3))
  dec[:, 0] = 0  # BOS
  full = _apply(module, params, enc, dec)
  encoded = _apply(module, params, enc, method='encode')
  # Cache creation: full-length dummy decoder input; also stores the
  # cross-attention keys/values of `encoded`.
  _, state = _apply(module, params, encoded, enc, np.zeros_like(dec),
                    decode=True, mutable=['cache'], method='decode')
  cache = state['cache']
  step_encoded = None if cross_from_cache else encoded

  @jax.jit
  def step(cache, token):
    logits, state = module.apply(
        {'params': params, 'cache': cache}, step_encoded, enc, token,
        decode=True, max_decode_length=dec.shape[1], mutable=['cache'],
        method='decode')
    return logits, state['cache']

  for i in range(dec.shape[1]):
    logits, cache = step(cache, dec[:, i:i + 1])
    np.testing.assert_allclose(logits[:, 0], full[:, i], atol=1e-5, rtol=0)


@pytest.mark.parametrize('prefix', [False, True], ids=['causal', 'prefix_lm'])
def test_decoder_only_prefill_and_cache_match_teacher_forcing(prefix):
  cfg = _cfg('decoder_only', scan_layers=not prefix)
  module, params = _init(cfg)
  toks = np.asarray(_tokens((2, 10), seed=4))
  lens = np.array([3, 6])
  pos = np.arange(10)[None]
  causal = (pos < lens[:, None]).astype(np.int32) if prefix else None
  full = _apply(module, params, toks, decoder_causal_attention=causal)
  # Prefill with junk after each prompt: decoding must overwrite it.
  buffer = np.where(pos < lens[:, None], toks, 7)
  _, state = _apply(module, params, buffer, decoder_causal_attention=causal,
                    prefill=True, prefill_lengths=lens, mutable=['cache'])
  cache = state['cache']

  @jax.jit
  def step(cache, token):
    logits, state = module.apply({'params': params, 'cache': cache}, token,
                                 decode=True, mutable=['cache'])
    return logits, state['cache']

  idx = lens.copy()
  rows = np.arange(2)
  for _ in range(4):
    logits, cache = step(cache, toks[rows, idx][:, None])
    np.testing.assert_allclose(logits[:, 0], full[rows, idx], atol=1e-5,
                               rtol=0)
    idx += 1


def test_decoder_only_cache_from_scratch():
  """Creation pass (decode=True, full length) then one token at a time."""
  cfg = _cfg('decoder_only')
  module, params = _init(cfg)
  toks = np.asarray(_tokens((2, 6), seed=5))
  full = _apply(module, params, toks)
  cache = _apply(module, params, jnp.zeros_like(toks), decode=True,
                       mutable=['cache'])[1]['cache']
  leaf = cache['decoder']['layers']['self_attention']['cached_key']
  assert leaf.shape == (2, 2, 6, 4, 8)  # [layers, batch, len, heads, kv]
  for i in range(6):
    logits, state = _apply(module, {'params': params, 'cache': cache},
                               toks[:, i:i + 1], decode=True,
                               mutable=['cache'])
    cache = state['cache']
    np.testing.assert_allclose(logits[:, 0], full[:, i], atol=1e-5, rtol=0)


# ---- remat -------------------------------------------------------------------


def _loss_grad(cfg, params, tokens, dropout_rng=None):
  module = _module(cfg)

  def loss(p):
    rngs = None if dropout_rng is None else {'dropout': dropout_rng}
    logits = module.apply({'params': p}, tokens, rngs=rngs,
                          enable_dropout=dropout_rng is not None)
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, tokens[..., None], axis=-1))

  return jax.jit(jax.grad(loss))(params)


def _assert_trees_close(got, want, msg):
  for a, b in zip(jax.tree_util.tree_leaves(got),
                  jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5, err_msg=msg)


def test_remat_policies_give_the_same_gradients():
  """Every policy == no remat (scanned layers, the default path); with
  dropout on, 'full' must replay the same dropout masks when recomputing.

  Decoder-only keeps the compiles cheap: the remat wrapper is the same for
  every layer type. The dropout key is 'rbg' (threefry's bit generator
  doubles CPU compile time)."""
  cfg = _cfg('decoder_only', dropout_rate=0.1)
  _, params = _init(cfg)
  tokens = _tokens((2, 8))
  want = _loss_grad(cfg, params, tokens)
  for policy in ('save_dots', 'save_dots_no_batch', 'save_attn_out'):
    got = _loss_grad(cfg.replace(remat_policy=policy), params, tokens)
    _assert_trees_close(got, want, policy)
  rng = jax.random.key(7, impl='rbg')
  want_drop = _loss_grad(cfg, params, tokens, rng)
  got_drop = _loss_grad(cfg.replace(remat_policy='full'), params, tokens, rng)
  _assert_trees_close(got_drop, want_drop, 'full with dropout')
  # Dropout really was on (and enable_dropout=False really turns it off).
  diff = max(np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in zip(
      jax.tree_util.tree_leaves(want_drop), jax.tree_util.tree_leaves(want)))
  assert diff > 1e-4


# ---- encoder-only heads ------------------------------------------------------


def test_encoder_only_heads():
  cfg = _cfg('encoder_only', num_classes=3)
  module, params = _init(cfg)
  assert {'mlm_dense', 'mlm_bias', 'rtd_out', 'classifier'} <= set(params)
  toks = np.array(_tokens((2, 8)))
  toks[1, 6:] = 0
  shapes = {'vocab': (2, 8, VOCAB), 'binary': (2, 8), 'pooled': (2, 3),
            'hidden': (2, 8, 32)}
  for head, shape in shapes.items():
    out = _apply(module, params, toks, head=head)
    assert out.shape == shape, head
    assert out.dtype == jnp.float32
    assert np.all(np.isfinite(out))
  with pytest.raises(ValueError, match='head='):
    _apply(module, params, toks, head='nope')


def test_bfloat16_activations_float32_params_and_logits():
  cfg = _cfg('encoder_decoder', dtype='bfloat16')
  module, params = _init(cfg)
  inputs = _tokens((2, 8)), _tokens((2, 8), seed=1)
  logits = _apply(module, params, *inputs)
  assert logits.dtype == jnp.float32
  ref, _ = _init(cfg.replace(dtype='float32'))
  want = _apply(ref, params, *inputs)
  # bf16 is close to fp32 but not equal: the dtype really is used.
  diff = np.abs(np.asarray(logits) - np.asarray(want)).max()
  assert 0 < diff < 0.25 * np.abs(np.asarray(want)).max()
