"""T5 networks: EncoderDecoder, DecoderOnly, EncoderOnly (T5X network.py).

`build(cfg)` picks the class by cfg.arch. Pre-LN layers (RMSNorm), residuals,
dropout; one relative position bias table per stack, computed once and shared
by every layer (T5 computes it in layer 0 and reuses it); layers are an
`nn.scan` (params stacked on a leading 'layers' axis) when cfg.scan_layers,
else `layers_0..layers_{n-1}`, each wrapped in `nn.remat` by cfg.remat_policy.

Param tree (scanned; unrolled has layers_<i>/ in place of layers/):
  token_embedder/embedding                      [vocab, embed]
  encoder/relpos_bias/rel_embedding             [heads, buckets]
  encoder/layers/{pre_attention_layer_norm,pre_mlp_layer_norm}/scale
  encoder/layers/attention/{query,key,value}/kernel  [layers, embed, heads*kv]
  encoder/layers/attention/out/kernel           [layers, heads*kv, embed]
  encoder/layers/mlp/{wi_0,wi_1 | wi}/kernel     [layers, embed, mlp]
  encoder/layers/mlp/wo/kernel                  [layers, mlp, embed]
  encoder/encoder_norm/scale
  decoder/relpos_bias/rel_embedding
  decoder/layers/{pre_self_attention_layer_norm, self_attention,
                  pre_cross_attention_layer_norm, encoder_decoder_attention,
                  pre_mlp_layer_norm, mlp}/...  (no cross-attention in
                  DecoderOnly)
  decoder/decoder_norm/scale
  decoder/logits_dense/kernel                   [embed, vocab] (untied only)
  decoder/block_position_embedder/embedding     [num_block_positions, embed]
                                                (GLM; num_block_positions > 0)
EncoderOnly: token_embedder/, encoder/ as above, plus the heads' params
mlm_dense/, mlm_norm/, mlm_bias [vocab] (head 'vocab'), rtd_dense/, rtd_out/
(head 'binary'), pooler/, classifier/ (head 'pooled'); all created at init
whichever head is asked for, so one tree serves every head. (The param names
are BERT's and ELECTRA's, which interop/hf.py maps.)

Decoding (T5X style), 'cache' collection:
  1. cache creation: apply(..., decode=True, mutable=['cache']) with a
     full-length decoder input (the tokens are ignored; EncoderDecoder also
     stores the cross-attention keys/values of `encoded`).
  2. each step: apply({'params', 'cache'}, one token [batch, 1], decode=True,
     mutable=['cache']); every row advances its own cache index.
  DecoderOnly prompts: prefill=True with the whole buffer and prefill_lengths
  [batch] fills the cache in one pass (no separate creation call needed).
"""
import functools

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import ml_collections

from t5x_lite import layers
from t5x_lite import model_config
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
  def __call__(self, x, mask, bias, encoded, enc_dec_mask, prefill_lengths):
    cfg, det = self.config, self.deterministic
    drop = nn.Dropout(cfg.dropout_rate)
    y = _norm(cfg, 'pre_self_attention_layer_norm')(x)
    y = _attention(cfg, 'self_attention')(
        y, y, mask, bias, deterministic=det, decode=self.decode,
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
    return (x, None) if self.scanned else x


def _run_layers(layer_cls, cfg: ModelConfig, num_layers: int, x, *args,
                **attrs):
  """Applies num_layers layers (scanned or unrolled, rematted per policy).

  Must be called inside a compact method: the layers become children of
  that module ('layers' or 'layers_<i>').
  """
  cls = layer_cls
  if cfg.remat_policy != 'none':
    cls = nn.remat(cls, policy=REMAT_POLICIES[cfg.remat_policy](),
                   prevent_cse=not cfg.scan_layers)
  if cfg.scan_layers:
    stack = nn.scan(
        cls,
        variable_axes={'params': 0, 'cache': 0},
        split_rngs={'params': True, 'dropout': True},
        in_axes=(nn.broadcast,) * len(args),
        length=num_layers,
        metadata_params={nn.PARTITION_NAME: 'layers'})
    x, _ = stack(cfg, scanned=True, name='layers', **attrs)(x, *args)
    return x
  for i in range(num_layers):
    x = cls(cfg, name=f'layers_{i}', **attrs)(x, *args)
  return x


# ---- stacks ------------------------------------------------------------------


class Encoder(nn.Module):
  """Token embedding -> layers -> final RMSNorm. Returns [batch, len, embed]."""
  config: ModelConfig
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, tokens, segment_ids=None, positions=None, *,
               enable_dropout=False):
    cfg, det = self.config, not enable_dropout
    drop = nn.Dropout(cfg.dropout_rate)
    x = drop(self.shared_embedding(tokens.astype(jnp.int32)), deterministic=det)
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
               prefill=False, prefill_lengths=None, max_decode_length=None):
    cfg, det = self.config, not enable_dropout
    drop = nn.Dropout(cfg.dropout_rate)
    length = tokens.shape[1]
    x = self.shared_embedding(tokens.astype(jnp.int32))
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
    if decode:
      # Bias for every (query, key) of the cache; each attention layer picks
      # the row of its cache index (T5X). The step mask comes from the cache.
      pos = _positions(None, self._decode_length(length, max_decode_length))
      bias, mask = relpos(pos, pos), None
    else:
      pos = _positions(positions, length)
      bias = relpos(pos, pos)
      mask = decoder_mask(segment_ids, causal_attention)
    x = _run_layers(DecoderLayer, cfg, cfg.num_decoder_layers, x, mask, bias,
                    encoded, enc_dec_mask, prefill_lengths, deterministic=det,
                    decode=decode, prefill=prefill,
                    cross_attention=self.cross_attention)
    y = drop(_norm(cfg, 'decoder_norm')(x), deterministic=det)
    if cfg.logits_via_embedding:
      # Tied logits, rescaled as T5.1.0 / mesh-tf (d_model ** -0.5).
      logits = self.shared_embedding.attend(y) * (cfg.emb_dim ** -0.5)
    else:
      logits = layers.Dense(cfg.vocab_size, kernel_axes=('embed', 'vocab'),
                            dtype=_dtype(cfg), output_dtype=jnp.float32,
                            name='logits_dense')(y)
    logits = logits.astype(jnp.float32)
    return nn.with_logical_constraint(logits, ('batch', 'length', 'vocab'))


# ---- models ------------------------------------------------------------------


class EncoderDecoder(nn.Module):
  """T5 encoder-decoder; logits [batch, decoder_len, vocab] float32."""
  config: ModelConfig

  def setup(self):
    cfg = self.config
    self.token_embedder = layers.Embed(cfg.vocab_size, cfg.emb_dim,
                                       dtype=_dtype(cfg))
    self.encoder = Encoder(cfg, self.token_embedder)
    self.decoder = Decoder(cfg, self.token_embedder, cross_attention=True)

  def encode(self, encoder_input_tokens, encoder_segment_ids=None,
             encoder_positions=None, *, enable_dropout=False):
    """[batch, enc_len] -> encoded [batch, enc_len, embed]."""
    return self.encoder(encoder_input_tokens, encoder_segment_ids,
                        encoder_positions, enable_dropout=enable_dropout)

  def decode(self, encoded, encoder_input_tokens, decoder_input_tokens,
             encoder_segment_ids=None, decoder_segment_ids=None,
             decoder_positions=None, *, enable_dropout=False, decode=False,
             max_decode_length=None):
    """Decoder logits given `encoded`.

    decode=True: one token per call with the cache; `encoded` may be None
    after the cache-creation pass stored the cross-attention keys/values
    (passing it recomputes them every step instead).
    """
    if decode:  # no packing while decoding
      enc_dec_mask = cross_mask(encoder_input_tokens)
      decoder_segment_ids = decoder_positions = None
    else:
      enc_dec_mask = cross_mask(encoder_input_tokens, decoder_segment_ids,
                                encoder_segment_ids)
    return self.decoder(decoder_input_tokens, encoded, enc_dec_mask,
                        decoder_segment_ids, decoder_positions,
                        enable_dropout=enable_dropout, decode=decode,
                        max_decode_length=max_decode_length)

  def __call__(self, encoder_input_tokens, decoder_input_tokens,
               encoder_segment_ids=None, decoder_segment_ids=None,
               encoder_positions=None, decoder_positions=None, *,
               enable_dropout=False, decode=False, max_decode_length=None):
    encoded = self.encode(encoder_input_tokens, encoder_segment_ids,
                          encoder_positions, enable_dropout=enable_dropout)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens,
                       encoder_segment_ids, decoder_segment_ids,
                       decoder_positions, enable_dropout=enable_dropout,
                       decode=decode, max_decode_length=max_decode_length)


class DecoderOnly(nn.Module):
  """Causal LM; prefix LM where decoder_causal_attention is 1."""
  config: ModelConfig

  def setup(self):
    cfg = self.config
    self.token_embedder = layers.Embed(cfg.vocab_size, cfg.emb_dim,
                                       dtype=_dtype(cfg))
    self.decoder = Decoder(cfg, self.token_embedder, cross_attention=False)

  def __call__(self, decoder_input_tokens, decoder_segment_ids=None,
               decoder_positions=None, decoder_causal_attention=None,
               decoder_block_positions=None, *,
               enable_dropout=False, decode=False, max_decode_length=None,
               prefill=False, prefill_lengths=None):
    """prefill=True: full-length forward that also fills the 'cache' and sets
    each row's cache index to prefill_lengths [batch] (default: the length);
    the next decode=True call feeds the token at that position.
    decoder_block_positions: GLM's intra-span positions (used when
    cfg.num_block_positions > 0)."""
    return self.decoder(decoder_input_tokens, None, None, decoder_segment_ids,
                        decoder_positions, decoder_causal_attention,
                        decoder_block_positions,
                        enable_dropout=enable_dropout, decode=decode,
                        prefill=prefill, prefill_lengths=prefill_lengths,
                        max_decode_length=max_decode_length)


class EncoderOnly(nn.Module):
  """Bidirectional encoder with heads:
    vocab   [batch, len, vocab] logits tied to the token embedding (MLM)
    binary  [batch, len] one logit per token (replaced-token detection)
    pooled  [batch, classes] a tanh pooler over the first token ([CLS])
    hidden  [batch, len, embed] the encoder output
  """
  config: ModelConfig
  HEADS = ('vocab', 'binary', 'pooled', 'hidden')

  def setup(self):
    cfg = self.config
    dt = _dtype(cfg)
    self.token_embedder = layers.Embed(cfg.vocab_size, cfg.emb_dim, dtype=dt)
    self.encoder = Encoder(cfg, self.token_embedder)
    dense = functools.partial(layers.Dense, dtype=dt)
    # MLM: dense + gelu + RMSNorm, then logits tied to the token embedding.
    self.mlm_dense = dense(cfg.emb_dim, kernel_axes=('embed', 'mlp'))
    self.mlm_norm = _norm(cfg, None)
    self.mlm_bias = self.param(
        'mlm_bias', nn.with_logical_partitioning(nn.initializers.zeros,
                                                 ('vocab',)),
        (cfg.vocab_size,), jnp.float32)
    # Binary per token (ELECTRA's discriminator): dense + gelu + one logit.
    self.rtd_dense = dense(cfg.emb_dim, kernel_axes=('embed', 'mlp'))
    self.rtd_out = dense(1, kernel_axes=('mlp', 'classes'),
                         output_dtype=jnp.float32)
    # Classification: tanh pooler over the first token, then classes.
    self.pooler = dense(cfg.emb_dim, kernel_axes=('embed', 'mlp'))
    self.classifier = dense(cfg.num_classes, kernel_axes=('mlp', 'classes'),
                            output_dtype=jnp.float32)
    self.dropout = nn.Dropout(cfg.dropout_rate)

  def _vocab_logits(self, h):
    y = self.mlm_norm(jax.nn.gelu(self.mlm_dense(h), approximate=True))
    logits = self.token_embedder.attend(y) * (self.config.emb_dim ** -0.5)
    logits = logits + self.mlm_bias
    return nn.with_logical_constraint(logits, ('batch', 'length', 'vocab'))

  def _binary_logits(self, h):
    y = jax.nn.gelu(self.rtd_dense(h), approximate=True)
    return self.rtd_out(y)[..., 0].astype(jnp.float32)  # [batch, len]

  def _pooled_logits(self, h, det):
    pooled = jnp.tanh(self.pooler(h[:, 0]))  # [batch, embed]
    pooled = self.dropout(pooled, deterministic=det)
    return self.classifier(pooled).astype(jnp.float32)  # [batch, classes]

  def __call__(self, encoder_input_tokens, encoder_segment_ids=None,
               encoder_positions=None, *, enable_dropout=False, head='vocab'):
    if head not in self.HEADS:
      raise ValueError(f'EncoderOnly head={head!r}; use one of {self.HEADS}.')
    det = not enable_dropout
    h = self.encoder(encoder_input_tokens, encoder_segment_ids,
                     encoder_positions, enable_dropout=enable_dropout)
    if self.is_initializing():  # create every head's params
      self._vocab_logits(h)
      self._binary_logits(h)
      self._pooled_logits(h, det)
    if head == 'vocab':
      return self._vocab_logits(h)
    if head == 'binary':
      return self._binary_logits(h)
    if head == 'pooled':
      return self._pooled_logits(h, det)
    return h


ARCHS = {
    'encoder_decoder': EncoderDecoder,
    'decoder_only': DecoderOnly,
    'encoder_only': EncoderOnly,
}


def build(cfg) -> nn.Module:
  """The network for cfg.arch (a ModelConfig or the config.model ConfigDict)."""
  if not isinstance(cfg, ModelConfig):
    cfg = ModelConfig.from_config(cfg)
  if cfg.arch not in ARCHS:
    raise ValueError(f'model.arch={cfg.arch!r} is not one of {list(ARCHS)}.')
  return ARCHS[cfg.arch](cfg)


# ---- params: shapes, counts, layouts -----------------------------------------


def dummy_inputs(cfg: ModelConfig, batch: int = 1, length: int = 8):
  """Positional init inputs for build(cfg) (ones: 0 is padding)."""
  tokens = jnp.ones((batch, length), jnp.int32)
  return (tokens, tokens) if cfg.arch == 'encoder_decoder' else (tokens,)


def abstract_params(cfg: ModelConfig):
  """Param ShapeDtypeStructs (unboxed) from jax.eval_shape: no allocation."""
  module = build(cfg)
  variables = jax.eval_shape(
      lambda: module.init(jax.random.PRNGKey(0), *dummy_inputs(cfg)))
  return nn.meta.unbox(variables['params'])


def param_count(cfg: ModelConfig) -> int:
  return sum(int(np.prod(x.shape)) for x in
             jax.tree_util.tree_leaves(abstract_params(cfg)))


def _layer_keys(tree):
  keys = [k for k in tree if k.startswith('layers_') and k[7:].isdigit()]
  return sorted(keys, key=lambda k: int(k[7:]))


def stack_layers(tree):
  """Unrolled -> scanned layout: layers_0..n-1 become `layers` (axis 0).

  Works on any nested dict of plain arrays (params or a cache; unbox flax
  LogicallyPartitioned params first)."""
  if not isinstance(tree, dict) and not hasattr(tree, 'items'):
    return tree
  out = {k: stack_layers(v) for k, v in tree.items()
         if not (k.startswith('layers_') and k[7:].isdigit())}
  keys = _layer_keys(tree)
  if keys:
    per_layer = [stack_layers(tree[k]) for k in keys]
    out['layers'] = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs),
                                           *per_layer)
  return out


def unstack_layers(tree):
  """Scanned -> unrolled layout: `layers` (leading axis n) -> layers_0..n-1."""
  if not isinstance(tree, dict) and not hasattr(tree, 'items'):
    return tree
  out = {}
  for k, v in tree.items():
    if k == 'layers':
      n = jax.tree_util.tree_leaves(v)[0].shape[0]
      for i in range(n):
        out[f'layers_{i}'] = jax.tree_util.tree_map(lambda x, i=i: x[i], v)
    else:
      out[k] = unstack_layers(v)
  return out


# ---- CLI: python -m t5x_lite.network --sizes ---------------------------------


def size_report() -> list:
  """(name, params, published or None, relative error or None) per size."""
  from t5x_lite.configs import models  # pylint: disable=g-import-not-at-top
  rows = []
  for name in models.SIZES:
    c = models.apply_size(ml_collections.ConfigDict(
        {'model': model_config.model_config_dict()}), name)
    c.model.vocab_size = 32128
    n = param_count(ModelConfig.from_config(c.model))
    pub = models.PUBLISHED_PARAMS.get(name)
    rows.append((name, n, pub, None if pub is None else (n - pub) / pub))
  return rows


def _main(argv):
  del argv
  if not flags.FLAGS.sizes:
    raise app.UsageError('Nothing to do: pass --sizes.')
  for name, n, pub, err in size_report():
    line = f'{name:16s} {n:>16,d} params ({n / 1e6:10.2f}M)'
    if pub is not None:
      line += f'  published {pub / 1e6:.0f}M  error {100 * err:+.2f}%'
      line += '' if abs(err) <= 0.01 else '  OUT OF 1%'
    print(line)


if __name__ == '__main__':
  flags.DEFINE_bool('sizes', False, 'Print the parameter count of every '
                    'size in configs/models.py (vocab 32128).')
  app.run(_main)
