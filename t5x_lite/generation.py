"""A model's batches decoded: t5x_lite/decoding.py's searches bound to a model.

    tokens, scores = generation.predict_batch(model, params, batch,
                                              config.decoding)

`predict_batch` binds a t5x_lite.models model to the search algorithms
(encode once, init/prefill the KV cache, expand for beams, strip a
decoder-only prompt from the output); `predict_with_features` decodes a
decoder-only model whose batch carries per-position features for the whole
buffer (GLM's 2D positions), rerunning the forward each step.
`DecodeSettings` is the typed view of `config.decoding`.
"""
import dataclasses
import functools
from typing import Any, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp

from t5x_lite import decoding


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
  """The typed view of `config.decoding` (hashable: a jit static argument)."""
  method: str = 'greedy'  # greedy | sample | beam
  beam_size: int = 4
  alpha: float = 0.6
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  max_decode_length: int = 64
  seed: int = 0
  eos_id: int = 1

  @classmethod
  def from_config(cls, cfg) -> 'DecodeSettings':
    if isinstance(cfg, cls):
      return cfg
    d = dict(cfg.items()) if hasattr(cfg, 'items') else dict(cfg)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f'Unknown decoding settings {unknown}; known: '
                       f'{sorted(known)}.')
    s = cls(**d)
    if s.method not in ('greedy', 'sample', 'beam'):
      raise ValueError(f'decoding.method={s.method!r}: use greedy, sample or '
                       'beam (--config.decoding.method=beam).')
    if s.max_decode_length <= 0 or s.beam_size <= 0:
      raise ValueError('decoding.max_decode_length and decoding.beam_size '
                       'must be positive.')
    return s

  @property
  def num_beams(self) -> int:
    return self.beam_size if self.method == 'beam' else 1


def _cache_batch_axis(model) -> int:
  """Batch axis of the cache leaves: 1 under nn.scan ([layers, batch, ...])."""
  return 1 if getattr(model.config, 'scan_layers', False) else 0


def _row_logits(logits: jax.Array, index: jax.Array) -> jax.Array:
  """logits [batch, len, vocab], index [batch] -> [batch, vocab]."""
  index = jnp.clip(index, 0, logits.shape[1] - 1)
  return jnp.take_along_axis(logits, index[:, None, None], axis=1)[:, 0]


def _run_search(s: DecodeSettings, inputs, cache, fn, rng, initial_index,
                cache_offset):
  """The search `s.method` names -> (tokens [batch, L], scores [batch])."""
  if s.method == 'beam':
    seqs, scores = decoding.beam_search(inputs, cache, fn, s.eos_id,
                               num_decodes=s.beam_size, alpha=s.alpha,
                               initial_index=initial_index,
                               cache_offset=cache_offset)
    return seqs[:, 0], scores[:, 0]
  temperature = 0.0 if s.method == 'greedy' else s.temperature
  return decoding.temperature_sample(inputs, cache, fn, s.eos_id, rng,
                            temperature=temperature, topk=s.top_k,
                            topp=s.top_p, initial_index=initial_index)


def _decode_encoder_decoder(model, s, use_cache, params, batch, rng):
  module = model.module
  enc = batch['encoder_input_tokens'].astype(jnp.int32)  # [batch, enc_len]
  n, length = s.num_beams, s.max_decode_length
  variables = {'params': params}
  # Encode once; every step's cross-attention reads these.
  encoded = module.apply(variables, enc, enable_dropout=False,
                         method=module.encode)  # [batch, enc_len, emb]
  encoded = decoding.expand_beams(encoded, n)
  enc = decoding.expand_beams(enc, n)
  inputs = jnp.zeros((enc.shape[0] // n, length), jnp.int32)
  if use_cache:
    # Cache creation (T5X): a decode=True pass on a full-length dummy sizes
    # the self-attention cache and stores the cross-attention keys/values of
    # `encoded`, so the steps below pass encoded=None and never recompute them.
    _, mutated = module.apply(
        variables, encoded, enc, jnp.ones((enc.shape[0], length), jnp.int32),
        enable_dropout=False, decode=True, max_decode_length=length,
        method=module.decode, mutable=['cache'])
    cache, offset = mutated['cache'], _cache_batch_axis(model)

    def fn(state):
      logits, mutated = module.apply(
          {'params': params, 'cache': state.cache}, None, enc,
          state.cur_token, enable_dropout=False, decode=True,
          max_decode_length=length, method=module.decode, mutable=['cache'])
      return logits[:, -1, :], mutated['cache']  # [batch * beams, vocab]
  else:
    cache, offset = (), 0

    def fn(state):
      # Reference path: the full teacher-forced decoder on the prefix.
      logits = module.apply(variables, encoded, enc, state.sequences[:, :-1],
                            enable_dropout=False, method=module.decode)
      return _row_logits(logits, state.cur_index), state.cache
  return _run_search(s, inputs, cache, fn, rng, None, offset)


def _recompute_fn(model, params, features: Mapping[str, jax.Array],
                  first_token: Optional[jax.Array] = None
                  ) -> decoding.TokensToLogits:
  """The no-cache step callback of a decoder-only model.

  Reruns the teacher-forced forward on the whole buffer every step and reads
  row `cur_index`. `features` ([batch, L] each, e.g. decoder_positions) go to
  every forward unchanged; `first_token` [batch, 1] fills decoder input 0,
  which the sequence buffer keeps as BOS (None: BOS, 0).
  """
  def fn(state):
    tokens = state.sequences[:, :-1]  # [batch, L] decoder input tokens
    if first_token is not None:
      tokens = tokens.at[:, :1].set(first_token)
    logits = model.apply(params, dict(features, decoder_input_tokens=tokens))
    return _row_logits(logits, state.cur_index), state.cache  # [batch, vocab]
  return fn


def _strip_prompt(tokens: jax.Array, prompt_len: jax.Array) -> jax.Array:
  """[batch, L] outputs -> the continuation after each row's prompt,
  left-aligned, zero-padded to L."""
  length = tokens.shape[1]
  idx = jnp.arange(length)[None, :] + prompt_len[:, None]
  cont = jnp.take_along_axis(tokens, jnp.clip(idx, 0, length - 1), axis=1)
  return jnp.where(idx < length, cont, 0)


def _decoder_only_prompt(batch, bidirectional_prompt):
  """The prompt a decoder-only batch marks with decoder_causal_attention.

  Returns (inputs [batch, L] the prompt in target space, prompt_len [batch],
  prefix [batch, L] the bidirectional-attention mask or None).
  """
  dec_in = batch['decoder_input_tokens'].astype(jnp.int32)  # [batch, L]
  causal = batch.get('decoder_causal_attention')
  # The prompt in target space: decoder inputs are targets shifted right, so
  # input position j + 1 holds target j.
  if causal is None:
    inputs = jnp.zeros_like(dec_in)
  else:
    inputs = jnp.pad(dec_in[:, 1:] * causal[:, 1:], ((0, 0), (0, 1)))
  prompt_len = decoding.prompt_lengths(inputs)  # [batch]
  positions = jnp.arange(dec_in.shape[1])[None, :]
  # Prefix LM: BOS and the prompt attend bidirectionally (seqio's
  # decoder_causal_attention covers input positions 0..prompt_len). A causal
  # LM's prompt is marked the same way but stays causal.
  if bidirectional_prompt is None:
    bidirectional_prompt = causal is not None
  prefix = None if causal is None or not bidirectional_prompt else (
      positions <= prompt_len[:, None]).astype(jnp.int32)
  return inputs, prompt_len, prefix


def _prefilled_decoder_only(model, params, inputs, prompt_len, flat_prefix,
                            n):
  """Cache after one prefill pass over BOS + prompt, and its step callback."""
  module = model.module
  length = inputs.shape[1]
  positions = jnp.arange(length)[None, :]
  # Prefill positions 0..prompt_len in one pass (bidirectionally for a
  # prefix LM), each row's cache index set to its prompt length; decoding
  # then feeds the last prompt token at prompt_len (T5X). The prefill also
  # creates the cache, sized by the buffer length.
  pre_tokens = decoding.expand_beams(
      decoding.with_bos(inputs)[:, :length] *
      (positions <= prompt_len[:, None]), n)
  _, mutated = module.apply(
      {'params': params}, pre_tokens, decoder_causal_attention=flat_prefix,
      enable_dropout=False, prefill=True,
      prefill_lengths=decoding.expand_beams(prompt_len, n), mutable=['cache'])

  def fn(state):
    logits, mutated = module.apply(
        {'params': params, 'cache': state.cache}, state.cur_token,
        enable_dropout=False, decode=True, max_decode_length=length,
        mutable=['cache'])
    return logits[:, -1, :], mutated['cache']
  return mutated['cache'], fn


def _decode_decoder_only(model, s, use_cache, params, batch, rng,
                         bidirectional_prompt):
  n = s.num_beams
  inputs, prompt_len, prefix = _decoder_only_prompt(batch,
                                                    bidirectional_prompt)
  flat_prefix = None if prefix is None else decoding.expand_beams(prefix, n)
  if use_cache:
    cache, fn = _prefilled_decoder_only(model, params, inputs, prompt_len,
                                        flat_prefix, n)
    offset = _cache_batch_axis(model)
  else:
    features = {} if flat_prefix is None else {
        'decoder_causal_attention': flat_prefix}
    cache, fn, offset = (), _recompute_fn(model, params, features), 0
  # Both paths start at the last prompt token, so they draw the same random
  # numbers and sample the same tokens.
  tokens, scores = _run_search(s, inputs, cache, fn, rng, prompt_len, offset)
  # Return the continuation only, left-aligned: drop each row's prompt.
  return _strip_prompt(tokens, prompt_len), scores


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _predict_jit(model, s: DecodeSettings, use_cache: bool,
                 bidirectional_prompt, params, batch, rng):
  if model.ARCH == 'encoder_decoder':
    return _decode_encoder_decoder(model, s, use_cache, params, batch, rng)
  if model.ARCH == 'decoder_only':
    return _decode_decoder_only(model, s, use_cache, params, batch, rng,
                                bidirectional_prompt)
  raise ValueError(
      f'Decoding needs an encoder_decoder or decoder_only model; '
      f'{type(model).__name__} is {model.ARCH!r} (score it instead).')


_DECODE_FEATURES = ('encoder_input_tokens', 'decoder_input_tokens',
                    'decoder_causal_attention')


def predict_batch(model, params, batch: Mapping[str, Any], decoding_cfg,
                  rng: Optional[jax.Array] = None, *, use_cache: bool = True,
                  bidirectional_prompt: Optional[bool] = None
                  ) -> Tuple[jax.Array, jax.Array]:
  """Decodes a batch with `model` (a t5x_lite.models model).

  Args:
    model: EncoderDecoderModel (uses encoder_input_tokens; decodes
      decoding_cfg.max_decode_length tokens) or DecoderOnlyModel (uses
      decoder_input_tokens and decoder_causal_attention, which marks the
      prompt; decodes up to the batch length).
    params: the model's params.
    batch: feature-converted numpy/jax arrays; other features are ignored
      (per-position features such as decoder_positions: use
      `predict_with_features`).
    decoding_cfg: `config.decoding` (or a DecodeSettings): method greedy |
      sample | beam, beam_size, alpha, temperature, top_k, top_p,
      max_decode_length, seed, eos_id.
    rng: sampling key; default PRNGKey(decoding_cfg.seed).
    use_cache: False runs the recompute-everything reference (tests); it
      gives the cached path's tokens, samples included.
    bidirectional_prompt: decoder-only only: whether the prompt (marked by
      decoder_causal_attention) attends bidirectionally, as a prefix LM was
      trained; None: yes when the batch has decoder_causal_attention. False
      continues the marked prompt with causal attention over it, as a
      causal LM was trained.

  Returns:
    (tokens [batch, len] int32, zeros after EOS; a decoder-only prompt is
    stripped), scores [batch] (log-likelihood of the generated tokens; the
    length-normalised beam score for beam search).
  """
  s = DecodeSettings.from_config(decoding_cfg)
  if rng is None:
    rng = jax.random.PRNGKey(s.seed)
  feats = {k: jnp.asarray(v) for k, v in batch.items()
           if k in _DECODE_FEATURES}
  bidirectional = (None if bidirectional_prompt is None
                   else bool(bidirectional_prompt))
  return _predict_jit(model, s, bool(use_cache), bidirectional, params, feats,
                      rng)


# ---- decoder-only with per-position features (no cache) -------------------------


def _features_prompt(dec_in: jax.Array):
  """decoder_input_tokens [batch, L] -> (inputs [batch, L] the prompt in
  target space, prompt_len [batch], first decoder input [batch, 1])."""
  inputs = jnp.pad(dec_in[:, 1:], ((0, 0), (0, 1)))
  return inputs, decoding.prompt_lengths(inputs), dec_in[:, :1]


@functools.partial(jax.jit, static_argnums=(0, 1))
def _predict_features_jit(model, s: DecodeSettings, params, batch, rng):
  n = s.num_beams
  dec_in = batch['decoder_input_tokens'].astype(jnp.int32)  # [batch, L]
  inputs, prompt_len, first = _features_prompt(dec_in)
  features = {k: decoding.expand_beams(v, n) for k, v in batch.items()
              if k != 'decoder_input_tokens'}
  fn = _recompute_fn(model, params, features, decoding.expand_beams(first, n))
  # Start at each row's last prompt token: everything before it is given.
  tokens, scores = _run_search(s, inputs, (), fn, rng, prompt_len, 0)
  return _strip_prompt(tokens, prompt_len), scores


def _check_feature_batch(model, batch: Mapping[str, jax.Array]):
  if model.ARCH != 'decoder_only':
    raise ValueError(
        f'predict_with_features decodes decoder_only models; '
        f'{type(model).__name__} is {model.ARCH!r} (use predict_batch).')
  if 'decoder_input_tokens' not in batch:
    raise ValueError('predict_with_features needs decoder_input_tokens '
                     f'[batch, L]; got {sorted(batch)}.')
  shape = batch['decoder_input_tokens'].shape
  bad = {k: v.shape for k, v in batch.items() if v.shape != shape}
  if bad:
    raise ValueError(
        f'predict_with_features: every feature is given for the whole '
        f'buffer, shaped like decoder_input_tokens {shape}; got {bad}. Fill '
        'the positions still to be generated too.')


def predict_with_features(model, params, batch: Mapping[str, Any],
                          decoding_cfg, rng: Optional[jax.Array] = None
                          ) -> Tuple[jax.Array, jax.Array]:
  """Decodes a decoder-only batch whose positions carry their own features.

  For what a decode-mode KV cache cannot take: positions other than
  0, 1, 2, ..., per-position embeddings, an attention mask fixed for the
  whole buffer (GLM's 2D positions, t5x_lite/objectives/glm.py). No
  cache: every step reruns the teacher-forced forward on the whole buffer
  (cost quadratic in the length; fine for short generations).

  Args:
    model: a DecoderOnlyModel.
    params: its params.
    batch: decoder_input_tokens [batch, L]: each row's prompt is everything
      up to its last nonzero token (position 0 included, which need not be
      BOS), fed as given; the zeros after it are generated left to right.
      Every other feature the network takes (decoder_positions,
      decoder_block_positions, decoder_causal_attention, ...) is given for
      the whole buffer, generated positions included, [batch, L] each, and
      passed to every step's forward unchanged; features the network does
      not take are ignored.
    decoding_cfg: as predict_batch (max_decode_length unused: the buffer
      length bounds the decode).
    rng: sampling key; default PRNGKey(decoding_cfg.seed).

  Returns:
    As predict_batch: (tokens [batch, L] the continuation after each row's
    prompt, left-aligned, zeros after EOS, scores [batch]).
  """
  s = DecodeSettings.from_config(decoding_cfg)
  if rng is None:
    rng = jax.random.PRNGKey(s.seed)
  feats = {k: jnp.asarray(v) for k, v in batch.items()}
  _check_feature_batch(model, feats)
  return _predict_features_jit(model, s, params, feats, rng)


# ---- Transformer-XL: greedy decoding that carries the memory -----------------


@functools.partial(jax.jit, static_argnums=(0,))
def _segment_with_memory(model, params, tokens, memory):
  """(logits [batch, seg, vocab], next memory) of one segment."""
  return model.apply(params, {'decoder_input_tokens': tokens}, memory=memory)


def generate_with_memory(model, params, prompt, num_tokens: int,
                         segment_length: int):
  """Greedy continuation of `prompt` [batch, P] (P >= 1, no padding) by a
  model that carries a Transformer-XL memory (memory.carries_memory).

  The prompt is read segment by segment (segment_length tokens each), every
  full segment moving into the memory as in training; the open segment then
  grows one greedy token at a time, its forward rerun over the segment (the
  memory has no KV cache), and moves into the memory when it is full. The
  model thus sees up to memory_length + segment_length tokens of context;
  with a prompt and continuation that fit, the tokens equal greedy decoding
  of the whole sequence without memory (tests/test_transformer_xl.py).
  Returns int32 [batch, num_tokens].
  """
  prompt = jnp.asarray(prompt, jnp.int32)
  batch, length = prompt.shape
  if length < 1:
    raise ValueError('generate_with_memory needs a prompt of >= 1 token.')
  seg = int(segment_length)
  memory = model.init_memory(batch)
  # Full prompt segments into the memory; the last (1..seg tokens) stays open
  # so its last position's logits give the first new token.
  committed = (length - 1) // seg
  for i in range(committed):
    _, memory = _segment_with_memory(model, params,
                                     prompt[:, i * seg:(i + 1) * seg], memory)
  open_tokens = prompt[:, committed * seg:]
  out = []
  for _ in range(int(num_tokens)):
    n = open_tokens.shape[1]
    padded = jnp.pad(open_tokens, ((0, 0), (0, seg - n)))  # causal: unseen
    logits, next_memory = _segment_with_memory(model, params, padded, memory)
    token = jnp.argmax(logits[:, n - 1], axis=-1).astype(jnp.int32)
    out.append(token)
    if n == seg:  # the segment is full: it becomes the memory
      memory, open_tokens = next_memory, token[:, None]
    else:
      open_tokens = jnp.concatenate([open_tokens, token[:, None]], axis=1)
  return jnp.stack(out, axis=1)
