"""T5 building blocks in Flax linen, with logical axis names on every param.

RMSNorm (T5's LayerNorm), Dense (T5X's DenseGeneral: kernels stored 2-D),
Embed (with `attend` for tied logits), RelativePositionBiases (T5's bucketed
relative attention bias), MultiHeadDotProductAttention (xla einsum or cuDNN
fused path, KV cache for decoding) and the gated MlpBlock.

Conventions: params are float32; activations and matmuls run in `dtype`;
attention logits and softmax run in float32. Shapes are written
`# [batch, q_len, heads, head_dim]` at every einsum. Masks are an
AttentionMask (factored: key lengths, causal, segment ids, prefix) or a
boolean array that broadcasts to [batch, heads, q_len, kv_len] (True = may
attend); biases are float [batch or 1, heads, q_len, kv_len].
"""
import functools
import math
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import flax.linen as nn
import flax.struct
import jax
from jax import ad_checkpoint
from jax import lax
import jax.numpy as jnp
import numpy as np

DType = Any
Initializer = Callable[..., jax.Array]

# Logits of masked positions. Finite so that a fully masked row (padding)
# gives a uniform softmax instead of NaNs.
MASK_VALUE = -1e10

# T5X initialisers: truncated-normal fan-in for dense kernels, normal fan-in
# for attention projections (the query kernel is further divided by
# sqrt(head_dim): T5 folds the 1/sqrt(d) attention scaling into the init).
default_kernel_init = nn.initializers.variance_scaling(1.0, 'fan_in',
                                                       'truncated_normal')
attention_kernel_init = nn.initializers.variance_scaling(1.0, 'fan_in',
                                                         'normal')
embedding_init = nn.initializers.normal(stddev=1.0)
relpos_init = nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform')


def _canonicalize(x: Union[int, Sequence[int]]) -> Tuple[int, ...]:
  return (x,) if isinstance(x, int) else tuple(x)


def activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
  """T5X activation names; 'gelu' is the tanh approximation (HF gelu_new)."""
  fns = {
      'gelu': functools.partial(jax.nn.gelu, approximate=True),
      'gelu_new': functools.partial(jax.nn.gelu, approximate=True),
      'relu': jax.nn.relu,
      'silu': jax.nn.silu,
      'linear': lambda x: x,
  }
  if name not in fns:
    raise ValueError(f'Unknown activation {name!r}; use one of {list(fns)} in '
                     'config.model.mlp_activations.')
  return fns[name]


class RMSNorm(nn.Module):
  """T5 LayerNorm: scale only, no bias, no mean subtraction, fp32 variance."""
  epsilon: float = 1e-6
  dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = x32 * lax.rsqrt(var + self.epsilon)
    scale = self.param(
        'scale', nn.with_logical_partitioning(nn.initializers.ones, ('embed',)),
        (x.shape[-1],), jnp.float32)
    return (y * scale).astype(self.dtype)


class Dense(nn.Module):
  """DenseGeneral without bias; the kernel is stored 2-D as in T5X.

  Contracts input axes `axis` with a kernel [prod(in dims), prod(features)]
  whose logical names are `kernel_axes` (e.g. ('embed', 'joined_kv')), and
  returns [..., *features]. 2-D storage keeps T5X/HF checkpoints a transpose
  away and makes fan-in initialisation see the whole contracted size.
  """
  features: Union[int, Sequence[int]]
  kernel_axes: Tuple[str, str]
  axis: Union[int, Sequence[int]] = -1
  dtype: DType = jnp.float32
  kernel_init: Initializer = default_kernel_init
  # float32 for the logits: accumulate and return fp32 whatever `dtype` is.
  output_dtype: Optional[DType] = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = _canonicalize(self.features)
    axis = tuple(a % x.ndim for a in _canonicalize(self.axis))
    if axis != tuple(range(x.ndim - len(axis), x.ndim)):
      raise ValueError(f'Dense contracts trailing axes only, got {axis}.')
    in_shape = x.shape[x.ndim - len(axis):]
    kernel = self.param(
        'kernel', nn.with_logical_partitioning(self.kernel_init,
                                               self.kernel_axes),
        (int(np.prod(in_shape)), int(np.prod(features))), jnp.float32)
    batch_shape = x.shape[:x.ndim - len(axis)]
    x2 = x.reshape(batch_shape + (-1,)).astype(self.dtype)
    y = jnp.einsum('...i,io->...o', x2, kernel.astype(self.dtype),
                   preferred_element_type=self.output_dtype)
    return y.reshape(batch_shape + features)


class Embed(nn.Module):
  """Token embedding [vocab, embed]; `attend` gives tied logits."""
  num_embeddings: int
  features: int
  dtype: DType = jnp.float32

  def setup(self):
    self.embedding = self.param(
        'embedding',
        nn.with_logical_partitioning(embedding_init, ('vocab', 'embed')),
        (self.num_embeddings, self.features), jnp.float32)

  def __call__(self, ids: jax.Array) -> jax.Array:
    # [batch, len] -> [batch, len, embed]
    return jnp.take(self.embedding, ids, axis=0).astype(self.dtype)

  def attend(self, query: jax.Array) -> jax.Array:
    """[..., embed] -> [..., vocab] float32 logits (matmul in self.dtype)."""
    return jnp.einsum('...e,ve->...v', query.astype(self.dtype),
                      self.embedding.astype(self.dtype),
                      preferred_element_type=jnp.float32)


# ---- relative position bias --------------------------------------------------


@functools.lru_cache(maxsize=None)
def _bucket_table(num_buckets: int, max_distance: int) -> np.ndarray:
  """bucket(n) for distances n = 0..max_distance + 1 (one direction).

  Computed once in numpy float32 exactly as HF/mesh-tf's formula, so every
  backend agrees on the boundary distances (a device `log` one ulp off would
  move n = 64 to the neighbouring bucket). Beyond max_distance the bucket is
  always num_buckets - 1, hence the clamp in `relative_position_bucket`.
  """
  n = np.arange(max_distance + 2, dtype=np.int64)
  max_exact = num_buckets // 2
  with np.errstate(divide='ignore'):
    scaled = (np.log(n.astype(np.float32) / np.float32(max_exact)) /
              np.float32(math.log(max_distance / max_exact)) *
              np.float32(num_buckets - max_exact))
  large = max_exact + np.where(n < max_exact, 0, scaled).astype(np.int64)
  large = np.minimum(large, num_buckets - 1)
  return np.where(n < max_exact, n, large).astype(np.int32)


def relative_position_bucket(relative_position: jax.Array, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> jax.Array:
  """T5's bucket of relative_position = key_pos - query_pos (int array).

  Bidirectional (encoder): half the buckets for keys after the query.
  Causal (decoder): keys after the query share bucket 0 with distance 0.
  Small distances get one bucket each, larger ones log-spaced up to
  max_distance, beyond which all share the last bucket.
  """
  offset = 0
  if bidirectional:
    num_buckets //= 2
    offset = (relative_position > 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(relative_position)
  else:
    n = jnp.maximum(-relative_position, 0)
  table = jnp.asarray(_bucket_table(num_buckets, max_distance))
  n = jnp.minimum(n, max_distance + 1)
  return offset + jnp.take(table, n)


class RelativePositionBiases(nn.Module):
  """One [heads, buckets] table per stack -> bias [b or 1, heads, q, k]."""
  num_buckets: int
  max_distance: int
  num_heads: int
  bidirectional: bool

  @nn.compact
  def __call__(self, query_positions: jax.Array,
               key_positions: jax.Array) -> jax.Array:
    """query_positions [b or 1, q], key_positions [b or 1, k] (int)."""
    rel = key_positions[:, None, :] - query_positions[:, :, None]  # [b, q, k]
    bucket = relative_position_bucket(rel, self.bidirectional,
                                      self.num_buckets, self.max_distance)
    table = self.param(
        'rel_embedding',
        nn.with_logical_partitioning(relpos_init, ('heads', 'relpos_buckets')),
        (self.num_heads, self.num_buckets), jnp.float32)
    # A gather rather than T5X's one-hot einsum: the one-hot is
    # [b, q, k, buckets], too big at long lengths on GPU.
    bias = jnp.take(table.T, bucket, axis=0)  # [b, q, k, heads]
    return jnp.transpose(bias, (0, 3, 1, 2))  # [b, heads, q, k]


# ---- attention masks ---------------------------------------------------------


def _same_segment(q_ids, kv_ids):
  """[b, q], [b, kv] -> bool [b, 1, q, kv]: True where the ids are equal."""
  return (q_ids[:, :, None] == kv_ids[:, None, :])[:, None]


@flax.struct.dataclass
class AttentionMask:
  """Which keys each query may see, kept factored (True = may attend).

  The einsum path materialises it (`dense`); the fused path hands each factor
  to cuDNN in the form that lets the kernel skip work instead of reading a
  [batch, heads, q, kv] bias: padding as key lengths, causality as
  `is_causal`, and only what has no such form (packed segments, a prefix
  LM's bidirectional prefix) as a boolean mask. Both paths read the same
  fields, so they agree by construction.

  kv_lengths: int32 [batch]; keys at index >= length are padding. Padding is
    trailing (seqio's feature converters pad at the end, packed rows too):
    `key_lengths(tokens)` is one past the last non-pad. A length of 0 (a fully
    padded row) is treated as 1: cuDNN's softmax over no key is undefined,
    and such a row's values are never read.
  causal: query i sees keys j <= i (self-attention, q_len == kv_len).
  q_segment_ids, kv_segment_ids: int [batch, q] / [batch, kv]; packed rows:
    a query sees only keys of its own segment.
  prefix: bool [batch, len], with causal=True; prefix LM: positions where
    both query and key are in the prefix also see each other.
  """
  kv_lengths: Optional[jax.Array] = None
  q_segment_ids: Optional[jax.Array] = None
  kv_segment_ids: Optional[jax.Array] = None
  prefix: Optional[jax.Array] = None
  causal: bool = flax.struct.field(pytree_node=False, default=False)

  def _lengths(self):
    return jnp.maximum(self.kv_lengths.astype(jnp.int32), 1)

  def _causal_or_prefix(self, q_len, kv_len):
    """bool [1 or b, 1, q, kv] (causal, OR the prefix block), or None."""
    if not self.causal:
      return None
    mask = (jnp.arange(q_len)[:, None] >= jnp.arange(kv_len)[None, :]
            )[None, None]  # [1, 1, q, kv]
    if self.prefix is not None:
      p = self.prefix > 0
      mask = jnp.logical_or(mask, (p[:, :, None] & p[:, None, :])[:, None])
    return mask

  def _segments(self):
    if self.q_segment_ids is None:
      return None
    return _same_segment(self.q_segment_ids, self.kv_segment_ids)

  def dense(self, q_len: int, kv_len: int) -> Optional[jax.Array]:
    """The whole mask as bool [b or 1, 1, q or 1, kv] (None: no mask)."""
    parts = [self._causal_or_prefix(q_len, kv_len), self._segments()]
    if self.kv_lengths is not None:
      keep = jnp.arange(kv_len)[None, :] < self._lengths()[:, None]
      parts.append(keep[:, None, None, :])  # [b, 1, 1, kv]
    parts = [p for p in parts if p is not None]
    if not parts:
      return None
    return functools.reduce(jnp.logical_and, parts)

  def fused_args(self, q_len: int, kv_len: int) -> Dict[str, Any]:
    """Keyword arguments of jax.nn.dot_product_attention for this mask."""
    causal = self.causal and self.prefix is None and q_len == kv_len
    rest = [self._segments()]
    if not causal:  # a prefix LM (or q_len != kv_len): a boolean mask
      rest.append(self._causal_or_prefix(q_len, kv_len))
    rest = [p for p in rest if p is not None]
    args = {'is_causal': causal,
            'mask': functools.reduce(jnp.logical_and, rest) if rest else None}
    if self.kv_lengths is not None:
      args['key_value_seq_lengths'] = self._lengths()
    return args


def key_lengths(tokens: jax.Array) -> jax.Array:
  """[batch, len] token ids -> int32 [batch]: one past the last non-pad
  (id > 0) token. Padding is what trails; an id 0 inside a row (a sampled
  replacement, say) stays a visible key rather than cutting the row short."""
  pos = jnp.arange(1, tokens.shape[-1] + 1, dtype=jnp.int32)
  return jnp.max(jnp.where(tokens > 0, pos, 0), axis=-1)


def _dense_mask(mask, q_len, kv_len):
  """An AttentionMask, a boolean mask or None -> boolean mask or None."""
  if isinstance(mask, AttentionMask):
    return mask.dense(q_len, kv_len)
  return mask


# ---- attention ---------------------------------------------------------------


def _xla_attention(query, key, value, bias, mask, *, dropout_rate,
                   dropout_rng, deterministic, dtype):
  """Einsum attention without 1/sqrt(d) scaling; fp32 logits and softmax.

  mask: an AttentionMask, a boolean [b or 1, 1 or heads, q or 1, kv] or None.
  """
  mask = _dense_mask(mask, query.shape[1], key.shape[1])
  # [batch, q_len, heads, head_dim] x [batch, kv_len, heads, head_dim]
  #   -> [batch, heads, q_len, kv_len]
  logits = jnp.einsum('bqhd,bkhd->bhqk', query, key,
                      preferred_element_type=jnp.float32)
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, MASK_VALUE)
  weights = jax.nn.softmax(logits, axis=-1).astype(dtype)
  if not deterministic and dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
    weights = jnp.where(keep, weights / (1.0 - dropout_rate),
                        jnp.zeros_like(weights))
  # [batch, heads, q_len, kv_len] x [batch, kv_len, heads, head_dim]
  #   -> [batch, q_len, heads, head_dim]
  return jnp.einsum('bhqk,bkhd->bqhd', weights, value)


# What `attention_impl='cudnn'` asks jax.nn.dot_product_attention for. Tests
# set it to 'xla' to run this exact branch (bias cast, mask factors, no
# scaling) on CPU against the einsum path.
FUSED_IMPLEMENTATION = 'cudnn'


def _cudnn_attention(query, key, value, bias, mask):
  """cuDNN fused attention (flash): bf16/fp16 inputs, no scaling.

  The relative position bias stays [1, heads, q, kv] (unpacked rows: one
  table for the whole batch) and gets its gradient (dbias) from the kernel.
  An AttentionMask goes in factored (AttentionMask.fused_args): key padding
  as lengths and causality as is_causal cost the kernel nothing and let it
  skip masked tiles. Packed segments have no such form in the public API of
  JAX 0.10 or 0.11 (cuDNN's packed layout, q_offsets/kv_offsets, is reached
  only through jax._src, needs Hopper and was never tried with a per-segment
  bias here), so they go in as a boolean [batch, 1, q, kv] mask, which cuDNN
  folds into the bias: the cheapest correct form available. A plain boolean
  mask (older callers) is broadcast to [.., q, kv] and folded too.
  """
  q_len, kv_len = query.shape[1], key.shape[1]
  if bias is not None:
    bias = bias.astype(query.dtype)
  if isinstance(mask, AttentionMask):
    args = mask.fused_args(q_len, kv_len)
  else:
    args = {'mask': mask}
  if args['mask'] is not None:
    # cuDNN wants the (mask-folded) bias at full [q_len, kv_len]; batch and
    # heads may broadcast. Key-padding masks arrive as [batch, 1, 1, kv_len].
    m = args['mask']
    args['mask'] = jnp.broadcast_to(m, m.shape[:2] + (q_len, kv_len))
  return jax.nn.dot_product_attention(query, key, value, bias=bias, scale=1.0,
                                      implementation=FUSED_IMPLEMENTATION,
                                      **args)


def _select_query_row(bias: jax.Array, index: jax.Array) -> jax.Array:
  """bias [b or 1, heads, L, L], index [b] -> [b, heads, 1, L] (row index)."""
  if bias.shape[0] == 1:
    rows = jnp.take(bias[0], index, axis=1)  # [heads, b, L]
    return jnp.transpose(rows, (1, 0, 2))[:, :, None, :]
  rows = bias[jnp.arange(bias.shape[0]), :, index, :]  # [b, heads, L]
  return rows[:, :, None, :]


class MultiHeadDotProductAttention(nn.Module):
  """T5 attention: q/k/v/o projections, no query scaling, optional KV cache.

  decode=True (self-attention only) processes one new token per call: its
  key/value go into the 'cache' collection at the row's `cache_index`, and
  the query attends to cache slots <= that index. The first call with
  decode=True (init, full-length dummy input) just creates the cache with
  the input's length. prefill=True runs the full sequence normally and writes
  every key/value into the cache with cache_index = prefill_lengths.
  """
  num_heads: int
  head_dim: int
  dtype: DType = jnp.float32
  dropout_rate: float = 0.0
  attention_impl: str = 'xla'
  # Cross-attention in decode mode caches the keys/values of `inputs_kv`
  # (the encoder output) and reuses them when called with inputs_kv=None.
  is_cross_attention: bool = False

  @nn.compact
  def __call__(self,
               inputs_q: jax.Array,
               inputs_kv: jax.Array,
               mask: Union[AttentionMask, jax.Array, None] = None,
               bias: Optional[jax.Array] = None,
               *,
               deterministic: bool = True,
               decode: bool = False,
               prefill: bool = False,
               prefill_lengths: Optional[jax.Array] = None) -> jax.Array:
    heads, depth = self.num_heads, self.head_dim
    query_init = lambda *a: attention_kernel_init(*a) / jnp.sqrt(depth)
    proj = functools.partial(Dense, features=(heads, depth),
                             kernel_axes=('embed', 'joined_kv'),
                             dtype=self.dtype)
    query = proj(kernel_init=query_init, name='query')(inputs_q)
    if self.is_cross_attention and decode:
      key, value = self._cross_kv(proj, inputs_kv)
    else:
      key = proj(kernel_init=attention_kernel_init, name='key')(inputs_kv)
      value = proj(kernel_init=attention_kernel_init, name='value')(inputs_kv)
    # [batch, len, heads, head_dim]
    names = ('batch', 'length', 'heads', 'kv')
    query = nn.with_logical_constraint(query, names)
    key = nn.with_logical_constraint(key, names)
    value = nn.with_logical_constraint(value, names)

    one_step = False
    if (decode or prefill) and not self.is_cross_attention:
      key, value, mask, bias, one_step = self._update_cache(
          query, key, value, mask, bias, prefill, prefill_lengths)

    dropout_on = not deterministic and self.dropout_rate > 0.0
    # cuDNN's fused kernel has no attention dropout, and one decode step is
    # a matrix-vector product where fusion buys nothing: both use einsums.
    if self.attention_impl == 'cudnn' and not dropout_on and not one_step:
      out = _cudnn_attention(query, key, value, bias, mask)
    else:
      out = _xla_attention(
          query, key, value, bias, mask, dropout_rate=self.dropout_rate,
          dropout_rng=self.make_rng('dropout') if dropout_on else None,
          deterministic=deterministic, dtype=self.dtype)
    # [batch, q_len, heads, head_dim]; named so remat policy 'save_attn_out'
    # keeps it instead of recomputing the attention in the backward pass.
    out = ad_checkpoint.checkpoint_name(out, 'attn_out')
    out = nn.with_logical_constraint(out, ('batch', 'length', 'heads', 'kv'))
    return Dense(features=inputs_q.shape[-1], axis=(-2, -1),
                 kernel_axes=('joined_kv', 'embed'), dtype=self.dtype,
                 kernel_init=attention_kernel_init, name='out')(out)

  def _cross_kv(self, proj, inputs_kv):
    """Decode-mode cross-attention keys/values: from inputs_kv (and cached),
    or from the cache when inputs_kv is None."""
    if inputs_kv is None:
      if not self.has_variable('cache', 'cached_key'):
        raise ValueError(
            'Cross-attention decode step without `encoded` needs a cache '
            'created by a decode=True pass that was given `encoded`.')
      return (self.get_variable('cache', 'cached_key'),
              self.get_variable('cache', 'cached_value'))
    key = proj(kernel_init=attention_kernel_init, name='key')(inputs_kv)
    value = proj(kernel_init=attention_kernel_init, name='value')(inputs_kv)
    self.put_variable('cache', 'cached_key', key)
    self.put_variable('cache', 'cached_value', value)
    return key, value

  def _update_cache(self, query, key, value, mask, bias, prefill,
                    prefill_lengths):
    """KV cache bookkeeping; returns (key, value, mask, bias, one_step)."""
    batch = key.shape[0]
    initialized = self.has_variable('cache', 'cached_key')
    cached_key = self.variable('cache', 'cached_key', jnp.zeros, key.shape,
                               key.dtype)
    cached_value = self.variable('cache', 'cached_value', jnp.zeros,
                                 value.shape, value.dtype)
    # One index per row: prompts of different lengths prefill to different
    # positions and then advance together.
    cache_index = self.variable('cache', 'cache_index',
                                lambda: jnp.zeros((batch,), jnp.int32))
    if prefill:
      cached_key.value = key
      cached_value.value = value
      if prefill_lengths is None:
        prefill_lengths = jnp.full((batch,), key.shape[1], jnp.int32)
      cache_index.value = jnp.asarray(prefill_lengths, jnp.int32).reshape(
          (batch,))
      return key, value, mask, bias, False
    if not initialized:  # cache creation pass: a full-length dummy input
      return key, value, mask, bias, False
    if query.shape[1] != 1:
      raise ValueError(
          f'decode=True feeds one token per call, got {query.shape[1]}; use '
          'prefill=True to fill the cache with a whole prompt.')
    length = cached_key.value.shape[1]
    cur = cache_index.value  # [batch]
    # One-hot select instead of a scatter: elementwise, shards along batch.
    hit = jnp.arange(length)[None, :] == cur[:, None]  # [batch, length]
    key = jnp.where(hit[:, :, None, None], key, cached_key.value)
    value = jnp.where(hit[:, :, None, None], value, cached_value.value)
    cached_key.value, cached_value.value = key, value
    cache_index.value = cur + 1
    # The new query sees cache slots 0..cur: [batch, 1, 1, length]
    step_mask = (jnp.arange(length)[None, :] <= cur[:, None])[:, None, None, :]
    mask = _dense_mask(mask, 1, length)
    mask = step_mask if mask is None else jnp.logical_and(mask, step_mask)
    if bias is not None:
      if bias.shape[-1] != length or bias.shape[-2] != length:
        raise ValueError(
            f'decode bias is {bias.shape[-2:]} but the cache holds {length} '
            'positions; pass max_decode_length equal to the cache length.')
      bias = _select_query_row(bias, cur)
    return key, value, mask, bias, True


class MlpBlock(nn.Module):
  """T5 feed-forward: one `wi` per activation, multiplied (gated), then `wo`.

  ('gelu', 'linear') is T5.1.1's gated GELU (wi_0 through gelu times wi_1);
  ('relu',) is T5.1.0's single `wi`.
  """
  intermediate_dim: int
  activations: Tuple[str, ...] = ('gelu', 'linear')
  dtype: DType = jnp.float32
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    single = len(self.activations) == 1
    h = None
    for i, act in enumerate(self.activations):
      name = 'wi' if single else f'wi_{i}'
      # [batch, len, embed] -> [batch, len, mlp]
      y = Dense(self.intermediate_dim, kernel_axes=('embed', 'mlp'),
                dtype=self.dtype, name=name)(x)
      y = activation_fn(act)(y)
      h = y if h is None else h * y
    h = nn.Dropout(rate=self.dropout_rate)(h, deterministic=deterministic)
    h = nn.with_logical_constraint(h, ('batch', 'length', 'mlp'))
    # [batch, len, mlp] -> [batch, len, embed]
    return Dense(x.shape[-1], kernel_axes=('mlp', 'embed'), dtype=self.dtype,
                 name='wo')(h)
