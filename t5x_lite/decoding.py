"""Autoregressive decoding: greedy, temperature/top-k/top-p sampling, beams.

T5X-style: the search algorithms know nothing about networks. They call

    tokens_to_logits(state: DecodingState) -> (logits [batch, vocab], new_cache)

once per step, where `state.cur_token` [batch, 1] sits at `state.cur_index`
[batch] of `state.sequences` and the logits predict the token at
`cur_index + 1`. A cached callback feeds `cur_token` through the network in
decode mode (one position, KV cache); the no-cache reference callback reruns
the whole teacher-forced forward on `sequences` and reads row `cur_index`.
Both must give the same tokens, which is what tests/test_decoding.py checks.

Sequence buffer convention (shared by every function here):
  inputs     [batch, L]     the prompt in *target* space: nonzero entries are
                            forced (a decoder-only prompt, or a forced decoder
                            prefix); zeros are generated. All zeros for T5.
  sequences  [batch, L + 1] position 0 is the BOS token (0, T5's
                            decoder_start_token_id); position j + 1 holds
                            output token j, so `sequences[:, :L]` are the
                            teacher-forced decoder input tokens.
  outputs    [batch, L]     `sequences[:, 1:]`; after EOS everything is 0.

t5x_lite/generation.py binds a t5x_lite.models model to these algorithms
(`predict_batch`: encode once, init/prefill the cache, expand for beams,
strip a decoder-only prompt from the output).
"""
import dataclasses
import functools
from typing import Any, Callable, Optional, Tuple

import flax
import jax
from jax import lax
import jax.numpy as jnp

# Large negative log-probability: finite so that sums of it never make NaNs
# (T5X uses the same constant).
NEG_INF = -1.0e7


@flax.struct.dataclass
class DecodingState:
  """What `tokens_to_logits` sees at every step.

  cur_index: [batch] position of `cur_token` in `sequences` (== the decoder
    position of the query; the logits predict position cur_index + 1).
  sequences: [batch, L + 1] BOS, prompt and the tokens decoded so far.
  cur_token: [batch, 1] the token fed this step.
  cache: the network's 'cache' collection (anything for a no-cache callback).
  """
  cur_index: jax.Array
  sequences: jax.Array
  cur_token: jax.Array
  cache: Any


TokensToLogits = Callable[[DecodingState], Tuple[jax.Array, Any]]


# ---- shared helpers ------------------------------------------------------------


def _take_col(x: jax.Array, index: jax.Array) -> jax.Array:
  """x [batch, n], index [batch] -> x[b, index[b]] [batch] (index clamped)."""
  index = jnp.clip(index, 0, x.shape[1] - 1)
  return jnp.take_along_axis(x, index[:, None], axis=1)[:, 0]


def _set_col(x: jax.Array, index: jax.Array, value: jax.Array,
             where: jax.Array) -> jax.Array:
  """x[b, index[b]] = value[b] for rows where `where`; out-of-range: no-op.

  A one-hot select rather than a scatter: lowers to elementwise ops that
  shard cleanly along batch (T5X's trick).
  """
  hit = (jnp.arange(x.shape[1])[None, :] == index[:, None]) & where[:, None]
  return jnp.where(hit, value[:, None].astype(x.dtype), x)


def prompt_lengths(inputs: jax.Array) -> jax.Array:
  """[batch] 1 + the last nonzero position of `inputs` (0 if none)."""
  pos = jnp.arange(1, inputs.shape[1] + 1)[None, :]
  return jnp.max(jnp.where(inputs != 0, pos, 0), axis=1).astype(jnp.int32)


def with_bos(inputs: jax.Array) -> jax.Array:
  """[batch, L] prompt -> [batch, L + 1] sequence buffer with BOS (0) first."""
  return jnp.pad(inputs.astype(jnp.int32), ((0, 0), (1, 0)))


def _initial_index(inputs, initial_index):
  batch = inputs.shape[0]
  if initial_index is None:
    return jnp.zeros((batch,), jnp.int32)
  return jnp.broadcast_to(jnp.asarray(initial_index, jnp.int32), (batch,))


# ---- sampling (greedy is temperature 0) ----------------------------------------


def _sample_tokens(rng, logits, temperature: float, topk: int, topp: float):
  """One token per row from [batch, vocab] logits."""
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  scaled = logits / temperature
  if topk <= 0 and topp >= 1.0:
    return jax.random.categorical(rng, scaled, axis=-1).astype(jnp.int32)
  # Work in sorted order: top-k keeps the first k, top-p the smallest prefix
  # whose mass reaches p (always at least one token).
  k = topk if topk > 0 else scaled.shape[-1]
  vals, idx = lax.top_k(scaled, k)  # [batch, k] descending
  if topp < 1.0:
    probs = jax.nn.softmax(vals, axis=-1)
    keep = (jnp.cumsum(probs, axis=-1) - probs) < topp
    vals = jnp.where(keep, vals, NEG_INF)
  choice = jax.random.categorical(rng, vals, axis=-1)  # [batch] in 0..k-1
  return jnp.take_along_axis(idx, choice[:, None], axis=-1)[:, 0].astype(
      jnp.int32)


@flax.struct.dataclass
class _SampleState:
  cur_index: jax.Array  # [batch]
  sequences: jax.Array  # [batch, L + 1]
  cache: Any
  ended: jax.Array  # [batch] bool
  log_prob: jax.Array  # [batch] float32
  rng: jax.Array


def temperature_sample(inputs: jax.Array,
                       cache: Any,
                       tokens_to_logits: TokensToLogits,
                       eos_id: int,
                       decode_rng: Optional[jax.Array] = None,
                       temperature: float = 1.0,
                       topk: int = 0,
                       topp: float = 1.0,
                       max_decode_len: Optional[int] = None,
                       initial_index: Optional[jax.Array] = None
                       ) -> Tuple[jax.Array, jax.Array]:
  """Samples (temperature 0: greedy) until EOS or max_decode_len per row.

  Args:
    inputs: [batch, L] prompt in target space (see module doc); zeros for T5.
    cache: the initial (possibly prefilled) cache, batch-major.
    tokens_to_logits: the step callback.
    eos_id: a generated EOS ends its row (forced prompt tokens never do).
    decode_rng: PRNG key; unused when temperature == 0.
    temperature: 0 is greedy argmax; else logits / temperature are sampled.
    topk: keep only the k most likely tokens (0: off). topk=1 is greedy.
    topp: nucleus sampling mass (1.0: off).
    max_decode_len: stop after this many output positions (default L).
    initial_index: [batch] or scalar position of the first token to feed
      (after a prefill of positions < initial_index); default 0.

  Returns:
    (tokens [batch, L] with 0 after EOS, log_prob [batch]): the sum over
    generated (not forced) tokens of log p(token) under the model's own
    softmax, before temperature/top-k/top-p, so greedy scores equal the
    teacher-forced `score_batch` of the decode.
  """
  batch, length = inputs.shape
  max_len = length if max_decode_len is None else min(max_decode_len, length)
  if decode_rng is None:
    decode_rng = jax.random.PRNGKey(0)
  i0 = _initial_index(inputs, initial_index)
  init = _SampleState(
      cur_index=i0, sequences=with_bos(inputs), cache=cache,
      ended=i0 >= max_len, log_prob=jnp.zeros((batch,), jnp.float32),
      rng=decode_rng)

  def cond_fn(s: _SampleState):
    return ~jnp.all(s.ended)

  def body_fn(s: _SampleState):
    cur_token = _take_col(s.sequences, s.cur_index)[:, None]  # [batch, 1]
    logits, new_cache = tokens_to_logits(
        DecodingState(cur_index=s.cur_index, sequences=s.sequences,
                      cur_token=cur_token, cache=s.cache))
    logits = logits.astype(jnp.float32)  # [batch, vocab]
    rng, step_rng = jax.random.split(s.rng)
    sampled = _sample_tokens(step_rng, logits, temperature, topk, topp)
    # A nonzero token already at the next position is prompt: keep it.
    nxt = s.cur_index + 1
    forced_token = _take_col(s.sequences, nxt)
    forced = forced_token != 0
    token = jnp.where(forced, forced_token, sampled)
    token = jnp.where(s.ended, 0, token)
    token_lp = _take_col(jax.nn.log_softmax(logits, axis=-1), token)
    log_prob = s.log_prob + jnp.where(s.ended | forced, 0.0, token_lp)
    sequences = _set_col(s.sequences, nxt, token, ~s.ended)
    ended = s.ended | ((token == eos_id) & ~forced) | (nxt >= max_len)
    return _SampleState(cur_index=nxt, sequences=sequences, cache=new_cache,
                        ended=ended, log_prob=log_prob, rng=rng)

  final = lax.while_loop(cond_fn, body_fn, init)
  return final.sequences[:, 1:], final.log_prob


def greedy(inputs, cache, tokens_to_logits, eos_id, max_decode_len=None,
           initial_index=None):
  """Argmax decoding: temperature_sample with temperature 0."""
  return temperature_sample(inputs, cache, tokens_to_logits, eos_id,
                            temperature=0.0, max_decode_len=max_decode_len,
                            initial_index=initial_index)


# ---- beam search -----------------------------------------------------------------


def brevity_penalty(alpha: float, length: jax.Array) -> jax.Array:
  """T5/GNMT length penalty ((5 + length) / 6) ** alpha."""
  return jnp.power((5.0 + length.astype(jnp.float32)) / 6.0, alpha)


def expand_beams(x: jax.Array, beam_size: int, offset: int = 0) -> jax.Array:
  """[..., batch, ...] -> [..., batch * beam_size, ...] (each row repeated).

  `offset` is the batch axis: 1 for caches of scanned layers ([layers, batch,
  ...]). Arrays with no such axis (a scalar cache index) pass through.
  """
  if x.ndim <= offset:
    return x
  return jnp.repeat(x, beam_size, axis=offset)


def gather_beams(x: jax.Array, beam_indices: jax.Array, old_beams: int,
                 offset: int = 0) -> jax.Array:
  """Reorders [.., batch * old_beams, ..] by beam_indices [batch, new_beams].

  Leaves whose axis `offset` is not batch * old_beams (scalars, anything not
  per row) are left alone.
  """
  batch, new_beams = beam_indices.shape
  if x.ndim <= offset or x.shape[offset] != batch * old_beams:
    return x
  shape = x.shape[:offset] + (batch, old_beams) + x.shape[offset + 1:]
  idx_shape = (1,) * offset + (batch, new_beams) + (1,) * (x.ndim - offset - 1)
  gathered = jnp.take_along_axis(
      x.reshape(shape), beam_indices.reshape(idx_shape), axis=offset + 1)
  return gathered.reshape(x.shape[:offset] + (batch * new_beams,) +
                          x.shape[offset + 1:])


def _gather(tree, beam_indices, old_beams, offset=0):
  return jax.tree_util.tree_map(
      lambda x: gather_beams(x, beam_indices, old_beams, offset), tree)


@flax.struct.dataclass
class _BeamState:
  cur_index: jax.Array  # [batch]
  live_logprobs: jax.Array  # [batch, beams], best first
  live_seqs: jax.Array  # [batch, beams, L + 1]
  finished_scores: jax.Array  # [batch, beams]
  finished_seqs: jax.Array  # [batch, beams, L + 1]
  finished_flags: jax.Array  # [batch, beams]
  cache: Any  # flat batch * beams


@dataclasses.dataclass(frozen=True)
class _BeamConfig:
  """What every beam step needs besides the state (closed over, not carried)."""
  beams: int
  eos_id: int
  alpha: float
  max_len: int
  prompt_len: jax.Array  # [batch]
  cache_offset: int

  def gen_len(self, position: jax.Array) -> jax.Array:
    # Generated tokens up to output position `position` (1-based), prompt
    # excluded, so a decoder-only prompt does not shrink the penalty.
    return jnp.maximum(position - self.prompt_len, 1)

  def penalty(self, position: jax.Array) -> jax.Array:
    return brevity_penalty(self.alpha, self.gen_len(position))


def _beam_init(inputs, cache, beams: int, i0) -> _BeamState:
  """Every beam starts as BOS + prompt; only beam 0 is alive."""
  batch, length = inputs.shape
  seqs0 = jnp.broadcast_to(with_bos(inputs)[:, None, :],
                           (batch, beams, length + 1))
  # Only beam 0 is alive at first, so the first step's top-k draws distinct
  # tokens from it instead of k copies of the same token.
  live0 = jnp.tile(jnp.array([0.0] + [NEG_INF] * (beams - 1), jnp.float32),
                   (batch, 1))
  return _BeamState(
      cur_index=i0, live_logprobs=live0, live_seqs=seqs0,
      finished_scores=jnp.full((batch, beams), NEG_INF, jnp.float32),
      finished_seqs=jnp.zeros_like(seqs0),
      finished_flags=jnp.zeros((batch, beams), jnp.bool_), cache=cache)


def _beam_undecided(c: _BeamConfig, s: _BeamState) -> jax.Array:
  """While-loop condition: some row could still improve its finished set."""
  active = s.cur_index < c.max_len  # [batch]
  # The best a live beam can still do: its log-prob (only falls) under the
  # largest penalty it could reach (alpha >= 0).
  best_live = s.live_logprobs[:, 0] / c.penalty(
      jnp.full_like(s.cur_index, c.max_len))
  worst_finished = jnp.where(
      s.finished_flags[:, -1], s.finished_scores[:, -1], NEG_INF)
  undecided = active & ~(worst_finished > best_live)
  return jnp.any(undecided)


def _beam_log_probs(c: _BeamConfig, s: _BeamState,
                    tokens_to_logits: TokensToLogits):
  """One callback call on the flat beams -> (log_probs [batch, beams, vocab],
  new_cache)."""
  batch, beams, width = s.live_seqs.shape  # width = L + 1
  flat_seqs = s.live_seqs.reshape(batch * beams, width)
  flat_index = jnp.repeat(s.cur_index, beams)
  cur_token = _take_col(flat_seqs, flat_index)[:, None]
  logits, new_cache = tokens_to_logits(
      DecodingState(cur_index=flat_index, sequences=flat_seqs,
                    cur_token=cur_token, cache=s.cache))
  vocab = logits.shape[-1]
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return log_probs.reshape(batch, beams, vocab), new_cache


def _beam_candidates(c: _BeamConfig, s: _BeamState, log_probs, nxt):
  """Top 2 * beams extensions over all beams and tokens.

  Returns (top_lp [batch, 2 * beams] best first, top_beam [batch, 2 * beams]
  the beam each extends, top_seqs [batch, 2 * beams, L + 1] with the token
  written at `nxt`, ends [batch, 2 * beams] generated EOS).
  """
  batch, beams, width = s.live_seqs.shape
  vocab = log_probs.shape[-1]
  cand = s.live_logprobs[:, :, None] + log_probs  # [batch, beams, vocab]
  # A prompt token at the next position is forced and free.
  forced_token = _take_col(s.live_seqs[:, 0, :], nxt)  # [batch]
  forced = forced_token != 0
  forced_cand = jnp.where(
      jnp.arange(vocab)[None, None, :] == forced_token[:, None, None],
      s.live_logprobs[:, :, None], NEG_INF)
  cand = jnp.where(forced[:, None, None], forced_cand, cand)
  # 2 * beams candidates: enough that `beams` of them survive even if all
  # the others just ended with EOS.
  top_lp, top_flat = lax.top_k(cand.reshape(batch, beams * vocab),
                               2 * beams)  # [batch, 2 * beams]
  top_beam = top_flat // vocab
  top_token = (top_flat % vocab).astype(jnp.int32)
  top_seqs = jnp.take_along_axis(s.live_seqs, top_beam[:, :, None], axis=1)
  top_seqs = _set_col(
      top_seqs.reshape(batch * 2 * beams, width),
      jnp.repeat(nxt, 2 * beams), top_token.reshape(-1),
      jnp.ones((batch * 2 * beams,), jnp.bool_)).reshape(
          batch, 2 * beams, width)
  ends = (top_token == c.eos_id) & ~forced[:, None]  # [batch, 2 * beams]
  return top_lp, top_beam, top_seqs, ends


def _merge_finished(c: _BeamConfig, s: _BeamState, top_lp, top_seqs, ends,
                    nxt):
  """Adds the candidates that just finished to the finished set, keeping the
  best `beams` -> (scores [batch, beams], seqs [batch, beams, L + 1], flags)."""
  beams = c.beams
  # Only an EOS ranked within the top `beams` candidates finishes a
  # hypothesis (Hugging Face's rule; T5X takes any of the 2 * beams). A
  # beam of 1 is then exactly greedy at alpha 0: the single hypothesis
  # ends when greedy would, and never for a second-best EOS.
  newly_finished = ends & (jnp.arange(2 * beams)[None, :] < beams)
  new_scores = top_lp / c.penalty(nxt)[:, None]
  new_scores = new_scores + (~newly_finished) * NEG_INF
  all_scores = jnp.concatenate([s.finished_scores, new_scores], axis=1)
  all_flags = jnp.concatenate([s.finished_flags, newly_finished], axis=1)
  all_seqs = jnp.concatenate([s.finished_seqs, top_seqs], axis=1)
  fin_scores, fin_idx = lax.top_k(all_scores, beams)
  fin_flags = jnp.take_along_axis(all_flags, fin_idx, axis=1)
  fin_seqs = jnp.take_along_axis(all_seqs, fin_idx[:, :, None], axis=1)
  return fin_scores, fin_seqs, fin_flags


def _beam_step(c: _BeamConfig, tokens_to_logits: TokensToLogits,
               s: _BeamState) -> _BeamState:
  """While-loop body: extend, keep the best live beams, merge finished."""
  nxt = s.cur_index + 1  # [batch]
  log_probs, new_cache = _beam_log_probs(c, s, tokens_to_logits)
  top_lp, top_beam, top_seqs, ends = _beam_candidates(c, s, log_probs, nxt)
  # Live set: best `beams` candidates that did not end.
  alive_lp = top_lp + ends * NEG_INF
  new_live_lp, keep = lax.top_k(alive_lp, c.beams)  # [batch, beams]
  new_live_seqs = jnp.take_along_axis(top_seqs, keep[:, :, None], axis=1)
  cache_beams = jnp.take_along_axis(top_beam, keep, axis=1)
  new_cache = _gather(new_cache, cache_beams, c.beams, c.cache_offset)
  fin_scores, fin_seqs, fin_flags = _merge_finished(c, s, top_lp, top_seqs,
                                                    ends, nxt)
  # Rows already at max length keep their state (their index stops too).
  act = s.cur_index < c.max_len  # [batch]
  keep_row = lambda new, old: jnp.where(
      act.reshape(act.shape + (1,) * (new.ndim - 1)), new, old)
  return _BeamState(
      cur_index=jnp.where(act, nxt, s.cur_index),
      live_logprobs=keep_row(new_live_lp, s.live_logprobs),
      live_seqs=keep_row(new_live_seqs, s.live_seqs),
      finished_scores=keep_row(fin_scores, s.finished_scores),
      finished_seqs=keep_row(fin_seqs, s.finished_seqs),
      finished_flags=keep_row(fin_flags, s.finished_flags),
      cache=new_cache)


def _best_hypotheses(c: _BeamConfig, final: _BeamState):
  """Finished and still-live hypotheses ranked together -> (seqs [batch,
  beams, L], scores [batch, beams]) best first."""
  # Hypotheses still live at max length compete with the finished ones on the
  # same length-normalised score (T5X returns live beams only when nothing
  # finished; letting them compete also makes beam 1 == greedy at alpha 0).
  live_scores = final.live_logprobs / c.penalty(final.cur_index)[:, None]
  live_scores = jnp.where(final.live_logprobs > 0.5 * NEG_INF, live_scores,
                          NEG_INF)
  all_scores = jnp.concatenate([final.finished_scores, live_scores], axis=1)
  all_seqs = jnp.concatenate([final.finished_seqs, final.live_seqs], axis=1)
  scores, idx = lax.top_k(all_scores, c.beams)
  seqs = jnp.take_along_axis(all_seqs, idx[:, :, None], axis=1)
  return seqs[:, :, 1:], scores


def beam_search(inputs: jax.Array,
                cache: Any,
                tokens_to_logits: TokensToLogits,
                eos_id: int,
                num_decodes: int = 4,
                alpha: float = 0.6,
                max_decode_len: Optional[int] = None,
                initial_index: Optional[jax.Array] = None,
                cache_offset: int = 0) -> Tuple[jax.Array, jax.Array]:
  """T5X beam search with the ((5 + len) / 6) ** alpha length penalty.

  Args:
    inputs: [batch, L] prompt (see module doc); zeros for T5.
    cache: initial cache already expanded to batch * num_decodes rows
      (`expand_beams`), at axis `cache_offset`.
    tokens_to_logits: the step callback; sees batch * num_decodes rows.
    eos_id: ends a hypothesis (moves it to the finished set).
    num_decodes: beam size.
    alpha: length-penalty exponent; 0 ranks by raw log-probability (then a
      beam of 1 is exactly greedy decoding).
    max_decode_len: output positions at most (default L).
    initial_index: [batch] or scalar first position to feed (after prefill).
    cache_offset: the batch axis of cache leaves (1 under nn.scan).

  Returns:
    (sequences [batch, num_decodes, L], scores [batch, num_decodes]), best
    first. Scores are length-normalised log-probabilities of generated
    tokens; hypotheses cut at max length without EOS rank with the rest.
  """
  length = inputs.shape[1]
  c = _BeamConfig(
      beams=num_decodes, eos_id=eos_id, alpha=alpha,
      max_len=length if max_decode_len is None else min(max_decode_len,
                                                        length),
      prompt_len=prompt_lengths(inputs), cache_offset=cache_offset)
  init = _beam_init(inputs, cache, num_decodes,
                    _initial_index(inputs, initial_index))
  final = lax.while_loop(functools.partial(_beam_undecided, c),
                         functools.partial(_beam_step, c, tokens_to_logits),
                         init)
  return _best_hypotheses(c, final)
