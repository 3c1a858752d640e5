"""The Transformer stacks the networks of network.py are built of.

  masks        layers.AttentionMask of encoder self-attention, decoder
               self-attention (causal, packed, prefix) and cross-attention
  layers       EncoderLayer, DecoderLayer (pre-LN RMSNorm, attention, gated
               MLP, residuals, dropout); `_run_layers` applies a stack of them
               as an nn.scan (params on a leading 'layers' axis) or unrolled,
               each rematted by cfg.remat_policy
  stacks       Encoder (token embedding -> layers -> final norm) and Decoder
               (-> float32 logits), each with its own relative position bias
               table, computed once and shared by every layer (T5)

A Transformer-XL memory (t5x_lite/memory.py) goes through DecoderLayer and
Decoder; the adversarial perturbation (t5x_lite/adversarial.py) sits on each
stack's embedded input (`self.perturb('token_embeddings', x)`).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_lite import layers
from t5x_lite import memory as memory_lib
from t5x_lite.model_config import ModelConfig

EMBED = ('batch', 'length', 'embed')

REMAT_POLICIES = {
    'full': lambda: jax.checkpoint_policies.nothing_saveable,
    'save_dots': lambda: jax.checkpoint_policies.checkpoint_dots,
    'save_dots_no_batch':
        lambda: jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    'save_attn_out':
        lambda: jax.checkpoint_policies.save_only_these_names('attn_out'),
}


def _dtype(cfg: ModelConfig):
  return jnp.dtype(cfg.dtype)


# ---- masks -------------------------------------------------------------------
# layers.AttentionMask, factored (key lengths, causal, segment ids, prefix):
# the einsum path materialises it, the fused path passes each factor in the
# form cuDNN skips work with (lengths, is_causal) instead of a dense mask.


def encoder_mask(tokens, segment_ids=None):
  """Keys that are real tokens (padding is trailing), in the query's segment
  when packed."""
  return layers.AttentionMask(kv_lengths=layers.key_lengths(tokens),
                              q_segment_ids=segment_ids,
                              kv_segment_ids=segment_ids)


def decoder_mask(segment_ids=None, causal_attention=None):
  """Causal (bidirectional on the prefix where causal_attention is 1).

  Padding keys need no mask: a real query never sees a later position, and
  packed padding has its own segment id 0. (The decoder's first input is BOS
  = 0, so tokens > 0 would wrongly hide it.)
  """
  return layers.AttentionMask(causal=True, prefix=causal_attention,
                              q_segment_ids=segment_ids,
                              kv_segment_ids=segment_ids)


def cross_mask(encoder_tokens, decoder_segment_ids=None,
               encoder_segment_ids=None):
  """Decoder queries -> real encoder tokens of the same segment."""
  packed = decoder_segment_ids is not None and encoder_segment_ids is not None
  return layers.AttentionMask(
      kv_lengths=layers.key_lengths(encoder_tokens),
      q_segment_ids=decoder_segment_ids if packed else None,
      kv_segment_ids=encoder_segment_ids if packed else None)


def _positions(positions, length):
  if positions is None:
    return jnp.arange(length, dtype=jnp.int32)[None]  # [1, len]
  return positions.astype(jnp.int32)


# ---- layers ------------------------------------------------------------------


def _norm(cfg, name):
  return layers.RMSNorm(cfg.layer_norm_epsilon, _dtype(cfg), name=name)


def _attention(cfg, name, **kw):
  return layers.MultiHeadDotProductAttention(
      num_heads=cfg.num_heads, head_dim=cfg.head_dim, dtype=_dtype(cfg),
      dropout_rate=cfg.dropout_rate, attention_impl=cfg.attention_impl,
      name=name, **kw)


def _mlp(cfg, x, deterministic):
  return layers.MlpBlock(cfg.mlp_dim, tuple(cfg.mlp_activations), _dtype(cfg),
                         cfg.dropout_rate, name='mlp')(x, deterministic)


class EncoderLayer(nn.Module):
  """Self-attention + MLP, each pre-normed with a residual."""
  config: ModelConfig
  deterministic: bool = True
  scanned: bool = False  # nn.scan wants (carry, out)

  @nn.compact
  def __call__(self, x, mask, bias):
    cfg, det = self.config, self.deterministic
    drop = nn.Dropout(cfg.dropout_rate)
    y = _norm(cfg, 'pre_attention_layer_norm')(x)
    y = _attention(cfg, 'attention')(y, y, mask, bias, deterministic=det)
    x = x + drop(y, deterministic=det)
    y = _norm(cfg, 'pre_mlp_layer_norm')(x)
    x = x + drop(_mlp(cfg, y, det), deterministic=det)
    x = nn.with_logical_constraint(x, EMBED)
    return (x, None) if self.scanned else x


class DecoderLayer(nn.Module):
  """Causal self-attention (+ cross-attention to `encoded`) + MLP."""
  config: ModelConfig
  deterministic: bool = True
  decode: bool = False
  prefill: bool = False
  cross_attention: bool = True
  scanned: bool = False

  @nn.compact
  def __call__(self, x, mask, bias, encoded, enc_dec_mask, prefill_lengths,
               memory=None):
    """memory [batch, M, embed] (Transformer-XL, t5x_lite/memory.py): this
    layer's inputs over the previous positions; keys/values then span
    [memory; x] and the layer also returns its next memory."""
    cfg, det = self.config, self.deterministic
    drop = nn.Dropout(cfg.dropout_rate)
    norm = _norm(cfg, 'pre_self_attention_layer_norm')
    y = norm(x)
    kv, new_memory = y, None
    if memory is not None:
      # No gradient into the previous segment (Transformer-XL's SG).
      memory = jax.lax.stop_gradient(memory)
      new_memory = memory_lib.layer_memory(memory, x)
      # RMSNorm is per position: norm([memory; x]) = [norm(memory); y].
      kv = jnp.concatenate([norm(memory.astype(x.dtype)), y], axis=1)
    y = _attention(cfg, 'self_attention')(
        y, kv, mask, bias, deterministic=det, decode=self.decode,
        prefill=self.prefill, prefill_lengths=prefill_lengths)
    x = x + drop(y, deterministic=det)
    if self.cross_attention:
      y = _norm(cfg, 'pre_cross_attention_layer_norm')(x)
      y = _attention(cfg, 'encoder_decoder_attention',
                     is_cross_attention=True)(
                         y, encoded, enc_dec_mask, None, deterministic=det,
                         decode=self.decode)
      x = x + drop(y, deterministic=det)
    y = _norm(cfg, 'pre_mlp_layer_norm')(x)
    x = x + drop(_mlp(cfg, y, det), deterministic=det)
    x = nn.with_logical_constraint(x, EMBED)
    if self.scanned:
      return x, new_memory
    return x if memory is None else (x, new_memory)


def _run_layers(layer_cls, cfg: ModelConfig, num_layers: int, x, *args,
                memory=None, **attrs):
  """Applies num_layers layers (scanned or unrolled, rematted per policy).

  Must be called inside a compact method: the layers become children of
  that module ('layers' or 'layers_<i>'). memory [layers, batch, M, embed]
  (DecoderLayer): layer i gets memory[i]; returns (x, next memory).
  """
  cls = layer_cls
  if cfg.remat_policy != 'none':
    cls = nn.remat(cls, policy=REMAT_POLICIES[cfg.remat_policy](),
                   prevent_cse=not cfg.scan_layers)
  scan_memory = memory is not None
  if cfg.scan_layers:
    stack = nn.scan(
        cls,
        variable_axes={'params': 0, 'cache': 0},
        split_rngs={'params': True, 'dropout': True},
        in_axes=(nn.broadcast,) * len(args) + ((0,) if scan_memory else ()),
        length=num_layers,
        metadata_params={nn.PARTITION_NAME: 'layers'})
    x, new_memory = stack(cfg, scanned=True, name='layers', **attrs)(
        x, *args, *((memory,) if scan_memory else ()))
    return (x, new_memory) if scan_memory else x
  if memory is None:
    for i in range(num_layers):
      x = cls(cfg, name=f'layers_{i}', **attrs)(x, *args)
    return x
  out = []
  for i in range(num_layers):
    x, m = cls(cfg, name=f'layers_{i}', **attrs)(x, *args, memory[i])
    out.append(m)
  return x, jnp.stack(out)


# ---- stacks ------------------------------------------------------------------


class Encoder(nn.Module):
  """Token embedding -> layers -> final RMSNorm. Returns [batch, len, embed]."""
  config: ModelConfig
  shared_embedding: nn.Module
  # BERT's segment embeddings [type_vocab, embed] (the parent owns the table,
  # as it owns shared_embedding); None: no token types.
  token_type_embedding: nn.Module = None

  @nn.compact
  def __call__(self, tokens, segment_ids=None, positions=None,
               token_type_ids=None, *, enable_dropout=False):
    cfg, det = self.config, not enable_dropout
    drop = nn.Dropout(cfg.dropout_rate)
    x = self.shared_embedding(tokens.astype(jnp.int32))
    x = self.perturb('token_embeddings', x)  # no-op unless adversarial.py
    x = self._add_token_types(x, tokens, token_type_ids)
    x = drop(x, deterministic=det)
    x = nn.with_logical_constraint(x, EMBED)
    pos = _positions(positions, tokens.shape[1])
    bias = layers.RelativePositionBiases(
        cfg.relative_attention_num_buckets,
        cfg.relative_attention_max_distance, cfg.num_heads,
        bidirectional=True, name='relpos_bias')(pos, pos)
    x = _run_layers(EncoderLayer, cfg, cfg.num_encoder_layers, x,
                    encoder_mask(tokens, segment_ids), bias, deterministic=det)
    x = drop(_norm(cfg, 'encoder_norm')(x), deterministic=det)
    return nn.with_logical_constraint(x, EMBED)

  def _add_token_types(self, x, tokens, token_type_ids):
    """x [batch, len, embed] plus its segment embeddings (x itself without a
    table), summed before dropout as BERT does; a row without ids (a
    single-segment task, e.g. classification) is all segment 0."""
    if self.token_type_embedding is None:
      if token_type_ids is not None:
        raise ValueError('The batch has token type ids but the model has no '
                         'token-type embeddings; set '
                         '--config.model.type_vocab_size=2.')
      return x
    types = (jnp.zeros_like(tokens, jnp.int32) if token_type_ids is None
             else token_type_ids.astype(jnp.int32))
    return x + self.token_type_embedding(types).astype(x.dtype)


class Decoder(nn.Module):
  """Embedding -> causal layers -> RMSNorm -> float32 logits [b, len, vocab]."""
  config: ModelConfig
  shared_embedding: nn.Module
  cross_attention: bool = True

  def _decode_length(self, length, max_decode_length):
    """Cache length for decode mode: the input's in the creation pass, else
    max_decode_length or the length of the existing cache."""
    if length > 1:
      if max_decode_length is not None and max_decode_length != length:
        raise ValueError(
            f'The decode=True cache-creation input has length {length} but '
            f'max_decode_length={max_decode_length}; make them equal.')
      return length
    cache = self.variables.get('cache', {})
    lengths = {leaf.shape[-3] for path, leaf in
               jax.tree_util.tree_flatten_with_path(cache)[0]
               if 'self_attention' in jax.tree_util.keystr(path) and
               'cached_key' in jax.tree_util.keystr(path)}
    if not lengths:
      return max_decode_length or length
    cache_len = lengths.pop()
    if max_decode_length is not None and max_decode_length != cache_len:
      raise ValueError(f'max_decode_length={max_decode_length} but the cache '
                       f'was created for {cache_len} positions.')
    return cache_len

  @nn.compact
  def __call__(self, tokens, encoded=None, enc_dec_mask=None,
               segment_ids=None, positions=None, causal_attention=None,
               block_positions=None, *, enable_dropout=False, decode=False,
               prefill=False, prefill_lengths=None, max_decode_length=None,
               memory=None):
    """memory: a t5x_lite/memory.py memory (Transformer-XL); then returns
    (logits, next memory)."""
    cfg, det = self.config, not enable_dropout
    drop = nn.Dropout(cfg.dropout_rate)
    length = tokens.shape[1]
    x = self.shared_embedding(tokens.astype(jnp.int32))
    x = self.perturb('token_embeddings', x)  # no-op unless adversarial.py
    if cfg.num_block_positions > 0:
      # GLM's second position (intra-span index, 0 on part A): a learned
      # embedding added to part-B tokens. `positions` (the span's [MASK]
      # position) drive the relative bias as usual, so part-B tokens of one
      # span differ only by this. Larger indices share the last row.
      table = layers.Embed(cfg.num_block_positions, cfg.emb_dim,
                           dtype=_dtype(cfg), name='block_position_embedder')
      bp = (jnp.zeros_like(tokens, jnp.int32) if block_positions is None
            else block_positions.astype(jnp.int32))
      emb = table(jnp.clip(bp, 0, cfg.num_block_positions - 1))
      x = x + jnp.where((bp > 0)[..., None], emb, 0).astype(x.dtype)
    x = drop(x, deterministic=det)
    x = nn.with_logical_constraint(x, EMBED)
    # GLM (num_block_positions > 0): part B attends to context on both sides
    # of its [MASK] (keys at larger positions), which causal buckets would
    # all lump into bucket 0; bidirectional buckets tell them apart.
    relpos = layers.RelativePositionBiases(
        cfg.relative_attention_num_buckets,
        cfg.relative_attention_max_distance, cfg.num_heads,
        bidirectional=cfg.num_block_positions > 0, name='relpos_bias')
    if memory is not None:
      if decode or prefill:
        raise ValueError('Decoding with a Transformer-XL memory recomputes '
                         'the segment (generation.generate_with_memory); '
                         'decode/prefill take no memory.')
      m = memory['memory'].shape[2]
      q_pos, k_pos = memory_lib.extended_positions(length, m)
      bias = relpos(q_pos, k_pos)  # [1, heads, seg, M + seg]
      mask = memory_lib.attention_mask(memory['memory_lengths'], length, m)
    elif decode:
      # Bias for every (query, key) of the cache; each attention layer picks
      # the row of its cache index (T5X). The step mask comes from the cache.
      pos = _positions(None, self._decode_length(length, max_decode_length))
      bias, mask = relpos(pos, pos), None
    else:
      pos = _positions(positions, length)
      bias = relpos(pos, pos)
      mask = decoder_mask(segment_ids, causal_attention)
    x = _run_layers(DecoderLayer, cfg, cfg.num_decoder_layers, x, mask, bias,
                    encoded, enc_dec_mask, prefill_lengths,
                    memory=None if memory is None else memory['memory'],
                    deterministic=det, decode=decode, prefill=prefill,
                    cross_attention=self.cross_attention)
    if memory is not None:
      x, new_memory = x
      new_memory = {'memory': new_memory, 'memory_lengths':
                    memory_lib.next_lengths(memory['memory_lengths'], length,
                                            new_memory.shape[2])}
    y = drop(_norm(cfg, 'decoder_norm')(x), deterministic=det)
    if cfg.logits_via_embedding:
      # Tied logits, rescaled as T5.1.0 / mesh-tf (d_model ** -0.5).
      logits = self.shared_embedding.attend(y) * (cfg.emb_dim ** -0.5)
    else:
      logits = layers.Dense(cfg.vocab_size, kernel_axes=('embed', 'vocab'),
                            dtype=_dtype(cfg), output_dtype=jnp.float32,
                            name='logits_dense')(y)
    logits = logits.astype(jnp.float32)
    logits = nn.with_logical_constraint(logits, ('batch', 'length', 'vocab'))
    return logits if memory is None else (logits, new_memory)
