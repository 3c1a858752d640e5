"""Decoding: the KV-cache path gives exactly the tokens of the recompute-
everything path; beam 1 == greedy; top-k 1 == greedy; seeded sampling is
reproducible. First on a toy recurrent "network" (fast, exact), then on the
real T5 encoder-decoder and decoder-only networks at tiny dims.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_lite import decoding
from t5x_lite import generation

# ---- a toy network with a cache ---------------------------------------------------
# State h_t = 0.5 * h_{t-1} + E[token_t], h_{-1} = ctx (a per-row "encoding");
# logits = tanh(h_t) W + P[t] + t * eos_bias. The cached callback carries h;
# the reference recomputes it from the whole prefix every step.
V, D, L, B = 16, 8, 10, 4
EOS = 1


def _toy():
  k = jax.random.split(jax.random.PRNGKey(0), 4)
  emb = jax.random.normal(k[0], (V, D))
  w = jax.random.normal(k[1], (D, V)) * 2.0
  pos = jax.random.normal(k[2], (L + 1, V))
  pos = pos.at[:, EOS].add(0.6 * jnp.arange(L + 1))  # EOS gets likelier
  pos = pos.at[:, 0].add(-100.0)  # never padding
  ctx = jax.random.normal(k[3], (B, D)) * 2.0
  return emb, w, pos, ctx


EMB, W, POS, CTX = _toy()


def _logits(h, index):
  return jnp.tanh(h) @ W + POS[jnp.clip(index, 0, L)]


def cached_fn(state):
  h = 0.5 * state.cache['h'] + EMB[state.cur_token[:, 0]]
  # 'steps' is a scalar leaf, like a cache index: beams must leave it alone.
  return _logits(h, state.cur_index), {'h': h,
                                       'steps': state.cache['steps'] + 1}


def nocache_fn(ctx):
  def fn(state):
    seq = state.sequences[:, :L]  # the teacher-forced decoder inputs
    j = jnp.arange(L)[None, :]
    i = state.cur_index[:, None]
    w = jnp.where(j <= i, 0.5**jnp.maximum(i - j, 0).astype(jnp.float32), 0.)
    h = jnp.einsum('bl,bld->bd', w, EMB[seq]) + 0.5**(i + 1) * ctx
    return _logits(h, state.cur_index), state.cache
  return fn


def _cache(beams=1):
  c = {'h': CTX, 'steps': jnp.zeros((), jnp.int32)}
  return jax.tree_util.tree_map(lambda x: decoding.expand_beams(x, beams), c)


ZEROS = jnp.zeros((B, L), jnp.int32)


def test_toy_greedy_cache_equals_recompute():
  a, sa = jax.jit(lambda c: decoding.greedy(ZEROS, c, cached_fn, EOS))(
      _cache())
  b, sb = jax.jit(lambda c: decoding.greedy(ZEROS, c, nocache_fn(CTX), EOS))(
      _cache())
  np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(sa, sb, rtol=1e-5)
  a = np.asarray(a)
  # The toy is built so some rows stop at EOS before the end: after EOS
  # everything is padding.
  ended = [r for r in a if EOS in r]
  assert ended, a
  for r in ended:
    assert not r[list(r).index(EOS) + 1:].any(), r


def test_toy_greedy_score_is_sum_of_token_log_probs():
  toks, score = decoding.greedy(ZEROS, _cache(), cached_fn, EOS)
  # Re-score the decode teacher-forced with the reference callback.
  seqs = jnp.pad(toks, ((0, 0), (1, 0)))
  fn = nocache_fn(CTX)
  total = np.zeros(B)
  for i in range(L):
    logits, _ = fn(decoding.DecodingState(
        cur_index=jnp.full((B,), i), sequences=seqs, cur_token=None,
        cache=None))
    lp = jax.nn.log_softmax(logits)[jnp.arange(B), toks[:, i]]
    total += np.where(np.asarray(toks[:, i]) > 0, lp, 0.0)
  np.testing.assert_allclose(score, total, rtol=1e-5)


@pytest.mark.parametrize('alpha', [0.0, 0.6])
def test_toy_beam_cache_equals_recompute(alpha):
  beams = 4
  run = lambda fn: jax.jit(lambda c: decoding.beam_search(
      ZEROS, c, fn, EOS, num_decodes=beams, alpha=alpha))(_cache(beams))
  a, sa = run(cached_fn)
  b, sb = run(nocache_fn(decoding.expand_beams(CTX, beams)))
  np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(sa, sb, rtol=1e-5)
  assert a.shape == (B, beams, L)
  # Best first, and the best beam is at least as good as greedy's
  # (length-normalised) score.
  assert np.all(np.diff(np.asarray(sa), axis=1) <= 0)
  g, gs = decoding.greedy(ZEROS, _cache(), cached_fn, EOS)
  glen = np.maximum((np.asarray(g) > 0).sum(1), 1)
  g_norm = np.asarray(gs) / ((5.0 + glen) / 6.0)**alpha
  assert np.all(np.asarray(sa)[:, 0] >= g_norm - 1e-5)


def test_toy_beam1_equals_greedy():
  g, gs = decoding.greedy(ZEROS, _cache(), cached_fn, EOS)
  b, bs = decoding.beam_search(ZEROS, _cache(1), cached_fn, EOS,
                               num_decodes=1, alpha=0.0)
  np.testing.assert_array_equal(b[:, 0], g)
  np.testing.assert_allclose(bs[:, 0], gs, rtol=1e-5)


def test_toy_topk1_and_tiny_topp_equal_greedy():
  g, _ = decoding.greedy(ZEROS, _cache(), cached_fn, EOS)
  for kw in (dict(topk=1), dict(topp=1e-6), dict(topk=3, topp=1e-6)):
    s, _ = decoding.temperature_sample(ZEROS, _cache(), cached_fn, EOS,
                                       jax.random.PRNGKey(7), temperature=1.5,
                                       **kw)
    np.testing.assert_array_equal(s, g, err_msg=str(kw))


def test_toy_sampling_is_reproducible():
  sample = jax.jit(lambda rng: decoding.temperature_sample(
      ZEROS, _cache(), cached_fn, EOS, rng, temperature=1.0, topk=8,
      topp=0.95)[0])
  a = sample(jax.random.PRNGKey(3))
  np.testing.assert_array_equal(a, sample(jax.random.PRNGKey(3)))
  others = [sample(jax.random.PRNGKey(s)) for s in range(4, 8)]
  assert any(not np.array_equal(a, o) for o in others)
  # Top-k 2 only ever picks one of the two most likely tokens.
  s, _ = decoding.temperature_sample(ZEROS, _cache(), nocache_fn(CTX), EOS,
                                     jax.random.PRNGKey(0), temperature=5.0,
                                     topk=2)
  seqs = jnp.pad(s, ((0, 0), (1, 0)))
  for i in range(L):
    logits, _ = nocache_fn(CTX)(decoding.DecodingState(
        cur_index=jnp.full((B,), i), sequences=seqs, cur_token=None,
        cache=None))
    top2 = np.argsort(-np.asarray(logits), axis=1)[:, :2]
    for r in range(B):
      if s[r, i] != 0:
        assert s[r, i] in top2[r]


def test_toy_prompt_with_prefill_equals_forcing():
  """Per-row prompts: prefilling the cache up to each row's prompt length and
  starting there gives the tokens of feeding the prompt one token at a time."""
  prompt_lens = np.array([0, 1, 3, 5])
  rng = np.random.RandomState(0)
  inputs = np.zeros((B, L), np.int32)
  for r, n in enumerate(prompt_lens):
    inputs[r, :n] = rng.randint(2, V, size=n)
  inputs = jnp.asarray(inputs)
  forced, fs = decoding.greedy(inputs, _cache(), cached_fn, EOS)
  # Prefill: run the cached recurrence over BOS + prompt[:-1] per row, then
  # start at index = prompt length (feeding the last prompt token).
  seqs = jnp.pad(inputs, ((0, 0), (1, 0)))
  h = CTX
  for i in range(int(prompt_lens.max())):
    h_new = 0.5 * h + EMB[seqs[:, i]]
    h = jnp.where((i < prompt_lens)[:, None], h_new, h)
  pre, ps = decoding.greedy(inputs, {'h': h, 'steps': jnp.zeros((),
                                                                jnp.int32)},
                            cached_fn, EOS, initial_index=prompt_lens)
  np.testing.assert_array_equal(pre, forced)
  np.testing.assert_allclose(ps, fs, rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(forced)[:, :3][3], inputs[3, :3])
  ref, _ = decoding.greedy(inputs, _cache(), nocache_fn(CTX), EOS)
  np.testing.assert_array_equal(ref, forced)
  # Beam search with the same prefill agrees with its forcing run.
  beams = 3
  bf, _ = decoding.beam_search(inputs, _cache(beams), cached_fn, EOS,
                               num_decodes=beams)
  hb = decoding.expand_beams(h, beams)
  bp, _ = decoding.beam_search(inputs, {'h': hb, 'steps': jnp.zeros(
      (), jnp.int32)}, cached_fn, EOS, num_decodes=beams,
                               initial_index=prompt_lens)
  np.testing.assert_array_equal(bf, bp)
  np.testing.assert_array_equal(np.asarray(bf)[:, :, :5][3],
                                np.tile(inputs[3, :5], (beams, 1)))


def test_max_decode_len_and_brevity_penalty():
  toks, _ = decoding.greedy(ZEROS, _cache(), cached_fn, EOS, max_decode_len=3)
  assert not np.asarray(toks)[:, 3:].any()
  np.testing.assert_allclose(
      decoding.brevity_penalty(0.6, jnp.array([1, 10])),
      [1.0, 2.5**0.6], rtol=1e-6)


# ---- the real networks (tiny) -------------------------------------------------------


def _tiny(size, scan, **model_overrides):
  # pylint: disable=g-import-not-at-top
  from t5x_lite.configs import default, models as sizes
  from t5x_lite import models
  c = default.get_config()
  sizes.apply_size(c, size)
  c.model.vocab_size = 64
  c.model.emb_dim, c.model.mlp_dim, c.model.num_heads = 32, 64, 2
  c.model.scan_layers = scan
  c.model.update(model_overrides)
  m = models.arch_model(models.ModelConfig.from_config(c.model))
  params = m.init_params(jax.random.PRNGKey(1),
                         m.input_shapes({'inputs': 8, 'targets': 8}, 1))
  return m, params


@pytest.fixture(scope='module')
def fp32():
  with jax.default_matmul_precision('highest'):
    yield


@pytest.fixture(scope='module')
def encdec():
  return _tiny('tiny', scan=True)


@pytest.fixture(scope='module')
def enc_batch():
  rng = np.random.RandomState(0)
  enc = np.zeros((3, 12), np.int32)
  for r, n in enumerate([8, 5, 11]):
    enc[r, :n] = rng.randint(2, 64, n)
  return {'encoder_input_tokens': enc}


@pytest.mark.parametrize('method', ['greedy', 'beam'])
def test_encoder_decoder_cache_equals_recompute(fp32, encdec, enc_batch,
                                                method):
  model, params = encdec
  cfg = dict(method=method, beam_size=3, alpha=0.6, max_decode_length=10)
  tok, score = generation.predict_batch(model, params, enc_batch, cfg)
  ref, ref_score = generation.predict_batch(model, params, enc_batch, cfg,
                                          use_cache=False)
  assert tok.shape == (3, 10)
  np.testing.assert_array_equal(tok, ref)
  np.testing.assert_allclose(score, ref_score, rtol=1e-5)


def test_encoder_decoder_greedy_score_is_score_batch(fp32, encdec, enc_batch):
  """The greedy log-prob equals the model's teacher-forced score of it."""
  model, params = encdec
  tok, score = generation.predict_batch(
      model, params, enc_batch, dict(method='greedy', max_decode_length=10))
  tok = np.asarray(tok)
  # Weights cover every generated position up to and including EOS.
  is_eos = np.cumsum(tok == 1, axis=1)
  weights = ((is_eos == 0) | ((is_eos == 1) & (tok == 1))).astype(np.float32)
  batch = dict(enc_batch, decoder_target_tokens=tok,
               decoder_input_tokens=np.pad(tok, ((0, 0), (1, 0)))[:, :-1],
               decoder_loss_weights=weights)
  np.testing.assert_allclose(model.score_batch(params, batch), score,
                             rtol=1e-5, atol=1e-5)


def test_encoder_decoder_beam1_topk1_equal_greedy(fp32, encdec, enc_batch):
  model, params = encdec
  base = dict(max_decode_length=10, alpha=0.0)
  greedy, _ = generation.predict_batch(model, params, enc_batch,
                                     dict(base, method='greedy'))
  beam1, _ = generation.predict_batch(model, params, enc_batch,
                                    dict(base, method='beam', beam_size=1))
  top1, _ = generation.predict_batch(
      model, params, enc_batch, dict(base, method='sample', top_k=1,
                                     temperature=2.0), jax.random.PRNGKey(5))
  np.testing.assert_array_equal(beam1, greedy)
  np.testing.assert_array_equal(top1, greedy)
  sample = dict(base, method='sample', temperature=1.0, seed=11)
  a, _ = generation.predict_batch(model, params, enc_batch, sample)
  b, _ = generation.predict_batch(model, params, enc_batch, sample)
  np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('method', ['greedy', 'beam'])
def test_decoder_only_prefill_equals_recompute(fp32, method):
  """Prefix-LM prompts of different lengths: one prefill pass (bidirectional
  over each prompt, per-row cache index) then cached steps give the tokens of
  rerunning the whole prefix-LM forward at every step."""
  model, params = _tiny('decoder_tiny', scan=False)
  rng = np.random.RandomState(1)
  length = 16
  dec = np.zeros((3, length), np.int32)
  causal = np.zeros((3, length), np.int32)
  for r, p in enumerate([2, 4, 7]):
    dec[r, 1:p + 1] = rng.randint(2, 64, p)  # BOS, then the prompt
    causal[r, :p + 1] = 1
  batch = {'decoder_input_tokens': dec, 'decoder_causal_attention': causal}
  cfg = dict(method=method, beam_size=3, alpha=0.6)
  tok, score = generation.predict_batch(model, params, batch, cfg)
  ref, ref_score = generation.predict_batch(model, params, batch, cfg,
                                          use_cache=False)
  np.testing.assert_array_equal(tok, ref)
  np.testing.assert_allclose(score, ref_score, rtol=1e-5)
  tok = np.asarray(tok)
  # The prompt is stripped: row r has length - 1 - p_r generated slots.
  for r, p in enumerate([2, 4, 7]):
    assert not tok[r, length - p:].any()
    assert tok[r, 0] != 0


# ---- the library paths scripts/sample_generations.py used to hand-write -------------
# The two reference callbacks below are the script's own, copied verbatim (but
# for names) from before decoding moved into the library.


def _old_prompted_continuation(model, params, ids, n, length, eos, rng,
                               temperature, topk, topp):
  """The script's prompted causal-LM continuation: no cache, causal
  attention over the prompt, started at the last prompt token."""
  def fn(state):
    logits = model.apply(params, {'decoder_input_tokens':
                                  state.sequences[:, :-1]})
    return generation._row_logits(logits, state.cur_index), state.cache  # pylint: disable=protected-access

  inputs = np.zeros((n, length), np.int32)
  inputs[:, :len(ids)] = ids
  seqs, _ = jax.jit(lambda i, r: decoding.temperature_sample(
      i, (), fn, eos, r, temperature=temperature, topk=topk, topp=topp,
      initial_index=len(ids)))(jnp.asarray(inputs), rng)
  return np.asarray(seqs)[:, len(ids):]


def _old_glm_infill(model, params, part_a, mask_pos, start_id, eos, rng,
                    temperature, topk, topp, span_len=12):
  """The script's GLM infilling callback: 2D positions, prefix recomputed."""
  n, a = part_a.shape
  length = a + 1 + span_len  # part A, [S], the span
  inputs = np.zeros((n, length), np.int32)
  inputs[:, :a - 1] = part_a[:, 1:]
  inputs[:, a - 1] = start_id
  k = np.arange(length)
  causal = (k < a).astype(np.int32)[None].repeat(n, 0)
  positions = np.where(k < a, k, mask_pos)[None].repeat(n, 0)
  block = np.where(k < a, 0, k - a + 1)[None].repeat(n, 0)
  first = jnp.asarray(part_a[:, :1])

  def fn(state):
    dec_in = state.sequences[:, :-1].at[:, :1].set(first)
    logits = model.apply(params, {
        'decoder_input_tokens': dec_in,
        'decoder_causal_attention': jnp.asarray(causal),
        'decoder_positions': jnp.asarray(positions, jnp.int32),
        'decoder_block_positions': jnp.asarray(block, jnp.int32)})
    return generation._row_logits(logits, state.cur_index), state.cache  # pylint: disable=protected-access

  seqs, _ = jax.jit(lambda i, r: decoding.temperature_sample(
      i, (), fn, eos, r, temperature=temperature, topk=topk, topp=topp,
      initial_index=a))(jnp.asarray(inputs), rng)
  return np.asarray(seqs)[:, a:]


# (temperature, top_k, top_p): greedy, then sampling with both filters.
_SAMPLINGS = [(0.0, 0, 1.0), (1.0, 20, 0.95)]


@pytest.fixture(scope='module')
def decoder_lm():
  return _tiny('decoder_tiny', scan=False)


@pytest.mark.parametrize('temperature,topk,topp', _SAMPLINGS)
def test_causal_prompt_equals_old_script_callback(fp32, decoder_lm,
                                                  temperature, topk, topp):
  """predict_batch(bidirectional_prompt=False), cached and not, continues a prompt with
  causal attention over it exactly as the script's hand-written callback
  did, samples included (both paths start at the last prompt token)."""
  model, params = decoder_lm
  n, length, eos = 3, 16, 1
  ids = list(np.random.RandomState(2).randint(2, 64, 5))
  rng = jax.random.PRNGKey(4)
  ref = _old_prompted_continuation(model, params, ids, n, length, eos, rng,
                                   temperature, topk, topp)
  dec_in = np.zeros((n, length), np.int32)
  dec_in[:, 1:len(ids) + 1] = ids
  causal = np.zeros((n, length), np.int32)
  causal[:, :len(ids) + 1] = 1
  batch = {'decoder_input_tokens': dec_in, 'decoder_causal_attention': causal}
  cfg = dict(method='greedy' if temperature == 0 else 'sample',
             temperature=temperature, top_k=topk, top_p=topp, eos_id=eos)
  for use_cache in (True, False):
    tok, _ = generation.predict_batch(model, params, batch, cfg, rng,
                                    use_cache=use_cache, bidirectional_prompt=False)
    tok = np.asarray(tok)
    np.testing.assert_array_equal(tok[:, :length - len(ids)], ref,
                                  err_msg=f'use_cache={use_cache}')
    assert not tok[:, length - len(ids):].any()
  if temperature:  # the rows are distinct samples of one prompt
    assert len({tuple(r) for r in ref}) > 1, ref
  # Causal and bidirectional attention over the prompt are different models
  # (a random one may still agree on the argmax: compare the scores).
  greedy = dict(cfg, method='greedy')
  _, bi = generation.predict_batch(model, params, batch, greedy, rng)
  _, uni = generation.predict_batch(model, params, batch, greedy, rng,
                                  bidirectional_prompt=False)
  assert not np.allclose(bi, uni, rtol=1e-3)


@pytest.fixture(scope='module')
def glm_lm():
  return _tiny('decoder_tiny', scan=False, num_block_positions=16)


@pytest.mark.parametrize('temperature,topk,topp', _SAMPLINGS)
def test_glm_infill_equals_old_script_callback(fp32, glm_lm, temperature,
                                               topk, topp):
  """objectives.glm.infill (via generation.predict_with_features) gives
  the tokens of the script's hand-written GLM callback, 2D positions and
  all."""
  from t5x_lite.objectives import glm  # pylint: disable=g-import-not-at-top
  model, params = glm_lm
  mask, start, eos, span_len = 63, 61, 1, 6
  rng_np = np.random.RandomState(3)
  part_a = rng_np.randint(2, 60, (3, 9)).astype(np.int32)
  mask_pos = 4
  part_a[:, mask_pos] = mask
  rng = jax.random.PRNGKey(6)
  ref = _old_glm_infill(model, params, part_a, mask_pos, start, eos, rng,
                        temperature, topk, topp, span_len=span_len)
  got = glm.infill(model, params, part_a, mask_pos, start, eos, rng,
                          temperature, topk, topp, span_len=span_len)
  assert got.shape == ref.shape == (3, span_len + 1)
  np.testing.assert_array_equal(got, ref)
  assert got[:, 0].all()  # something was generated
  # The 2D positions matter: without them the model infills differently.
  batch = glm.infill_batch(part_a, mask_pos, start, span_len)
  plain = {k: v for k, v in batch.items()
           if k not in ('decoder_positions', 'decoder_block_positions')}
  tok, _ = generation.predict_with_features(
      model, params, plain, dict(method='greedy', eos_id=eos))
  greedy = glm.infill(model, params, part_a, mask_pos, start, eos, rng,
                             span_len=span_len)
  assert not np.array_equal(np.asarray(tok)[:, :span_len + 1], greedy)


def test_glm_infill_batch_layout():
  from t5x_lite.objectives import glm  # pylint: disable=g-import-not-at-top
  part_a = np.array([[5, 6, 63, 7]], np.int32)
  b = glm.infill_batch(part_a, 2, start_id=61, span_len=2)
  np.testing.assert_array_equal(b['decoder_input_tokens'],
                                [[5, 6, 63, 7, 61, 0, 0]])
  np.testing.assert_array_equal(b['decoder_causal_attention'],
                                [[1, 1, 1, 1, 0, 0, 0]])
  np.testing.assert_array_equal(b['decoder_positions'],
                                [[0, 1, 2, 3, 2, 2, 2]])
  np.testing.assert_array_equal(b['decoder_block_positions'],
                                [[0, 0, 0, 0, 1, 2, 3]])
  with pytest.raises(ValueError, match='mask_pos'):
    glm.infill_batch(part_a, 4, 61, 2)
  with pytest.raises(ValueError, match='padding'):
    glm.infill_batch(np.array([[5, 0, 63]]), 2, 61, 2)


@pytest.mark.parametrize('method', ['greedy', 'beam'])
def test_features_path_equals_predict_batch(fp32, decoder_lm, method):
  """With only decoder_causal_attention as its feature, predict_with_features
  is predict_batch's prefix-LM decode (beams included)."""
  model, params = decoder_lm
  rng = np.random.RandomState(1)
  length = 16
  dec = np.zeros((3, length), np.int32)
  causal = np.zeros((3, length), np.int32)
  for r, p in enumerate([2, 4, 7]):
    dec[r, 1:p + 1] = rng.randint(2, 64, p)
    causal[r, :p + 1] = 1
  batch = {'decoder_input_tokens': dec, 'decoder_causal_attention': causal}
  cfg = dict(method=method, beam_size=3, alpha=0.6)
  tok, score = generation.predict_batch(model, params, batch, cfg)
  got, got_score = generation.predict_with_features(model, params, batch, cfg)
  np.testing.assert_array_equal(got, tok)
  np.testing.assert_allclose(got_score, score, rtol=1e-5)


def test_features_path_errors_name_the_fix(encdec, decoder_lm):
  model, params = decoder_lm
  dec = np.ones((2, 8), np.int32)
  with pytest.raises(ValueError, match='whole buffer'):
    generation.predict_with_features(
        model, params, {'decoder_input_tokens': dec,
                        'decoder_positions': dec[:, :4]}, {})
  with pytest.raises(ValueError, match='use predict_batch'):
    generation.predict_with_features(encdec[0], encdec[1],
                                   {'decoder_input_tokens': dec}, {})
