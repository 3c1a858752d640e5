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
are BERT's and ELECTRA's, which interop/hf.py maps.) With
model.type_vocab_size > 0 (BERT's sentence pairs, objectives/nsp.py) also
token_type_embedder/embedding [type_vocab, embed] and nsp_head/ (head 'nsp').

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
# The stacks the models are built of (t5x_lite/stacks.py).
from t5x_lite.stacks import Decoder
from t5x_lite.stacks import Encoder
from t5x_lite.stacks import _dtype
from t5x_lite.stacks import _norm
from t5x_lite.stacks import cross_mask


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
               prefill=False, prefill_lengths=None, memory=None):
    """prefill=True: full-length forward that also fills the 'cache' and sets
    each row's cache index to prefill_lengths [batch] (default: the length);
    the next decode=True call feeds the token at that position.
    decoder_block_positions: GLM's intra-span positions (used when
    cfg.num_block_positions > 0). memory: Transformer-XL's (memory.py);
    then (logits, next memory)."""
    return self.decoder(decoder_input_tokens, None, None, decoder_segment_ids,
                        decoder_positions, decoder_causal_attention,
                        decoder_block_positions,
                        enable_dropout=enable_dropout, decode=decode,
                        prefill=prefill, prefill_lengths=prefill_lengths,
                        max_decode_length=max_decode_length, memory=memory)


class EncoderOnly(nn.Module):
  """Bidirectional encoder with heads:
    vocab   [batch, len, vocab] logits tied to the token embedding (MLM)
    binary  [batch, len] one logit per token (replaced-token detection)
    pooled  [batch, classes] a tanh pooler over the first token ([CLS])
    tokens  [batch, len, num_token_labels] a label per token (tagging)
    span    [batch, len, 2] start and end logits of an answer span
  (tokens/span params, token_classifier/ and span_head/, exist only in a
  model initialised for that head: fine-tuning creates them fresh.)
    hidden  [batch, len, embed] the encoder output
    nsp     [batch, 2] next-sentence logits (NotNext 0, IsNext 1) over the
            pooler; vocab_nsp: (vocab, nsp) from one encoder pass (BERT's
            pretraining). Only with model.type_vocab_size > 0, which also
            adds token_type_embedder/ (summed with the token embeddings,
            batch feature encoder_token_type_ids) and nsp_head/.
  `mlm_positions` [batch, K] (BERT's masked_lm_positions) makes vocab and
  vocab_nsp gather those positions first: vocab logits [batch, K, vocab].
  """
  config: ModelConfig
  HEADS = ('vocab', 'binary', 'pooled', 'hidden', 'tokens', 'span')
  PAIR_HEADS = ('nsp', 'vocab_nsp')  # need type_vocab_size > 0

  def setup(self):
    cfg = self.config
    dt = _dtype(cfg)
    self.token_embedder = layers.Embed(cfg.vocab_size, cfg.emb_dim, dtype=dt)
    # Sentence pairs (BERT): segment embeddings and the IsNext head, their
    # own top-level params so the default tree is unchanged without them.
    self.token_type_embedder = (
        layers.Embed(cfg.type_vocab_size, cfg.emb_dim, dtype=dt)
        if cfg.type_vocab_size > 0 else None)
    self.encoder = Encoder(cfg, self.token_embedder, self.token_type_embedder)
    dense = functools.partial(layers.Dense, dtype=dt)
    if cfg.type_vocab_size > 0:
      self.nsp_head = dense(2, kernel_axes=('mlp', 'classes'),
                            output_dtype=jnp.float32)
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
    # Fine-tuning heads over every token (BERT's NER and SQuAD heads).
    self.token_classifier = dense(cfg.num_token_labels,
                                  kernel_axes=('embed', 'classes'),
                                  output_dtype=jnp.float32)
    self.span_head = dense(2, kernel_axes=('embed', 'classes'),
                           output_dtype=jnp.float32)

  def _vocab_logits(self, h, positions=None):
    if positions is not None:
      # BERT's masked_lm_positions: only the selected positions reach the
      # vocabulary projection (the costliest matmul of a small encoder).
      h = jnp.take_along_axis(h, positions[..., None].astype(jnp.int32),
                              axis=1)  # [batch, K, embed]
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

  def _nsp_logits(self, h, det):
    # The classifier's tanh pooler, shared: NSP pretrains what fine-tuning
    # classifies from (BERT's pooler is trained by NSP only).
    pooled = jnp.tanh(self.pooler(h[:, 0]))  # [batch, embed]
    pooled = self.dropout(pooled, deterministic=det)
    return self.nsp_head(pooled).astype(jnp.float32)  # [batch, 2]

  def _token_logits(self, h, det):
    h = self.dropout(h, deterministic=det)
    return self.token_classifier(h)  # [batch, len, num_token_labels]

  def _span_logits(self, h, det):
    h = self.dropout(h, deterministic=det)
    return self.span_head(h)  # [batch, len, 2]: start, end

  def __call__(self, encoder_input_tokens, encoder_segment_ids=None,
               encoder_positions=None, encoder_token_type_ids=None, *,
               enable_dropout=False, head='vocab', mlm_positions=None):
    pairs = self.config.type_vocab_size > 0
    if head not in self.HEADS + (self.PAIR_HEADS if pairs else ()):
      hint = (f'; {head!r} needs model.type_vocab_size=2'
              if head in self.PAIR_HEADS else '')
      raise ValueError(f'EncoderOnly head={head!r}; use one of '
                       f'{self.HEADS}{hint}.')
    det = not enable_dropout
    h = self.encoder(encoder_input_tokens, encoder_segment_ids,
                     encoder_positions, encoder_token_type_ids,
                     enable_dropout=enable_dropout)
    if self.is_initializing() and pairs:
      self._nsp_logits(h, det)
    if head == 'nsp':
      return self._nsp_logits(h, det)
    if head == 'vocab_nsp':
      return self._vocab_logits(h, mlm_positions), self._nsp_logits(h, det)
    if self.is_initializing():  # create every head's params
      self._vocab_logits(h)
      self._binary_logits(h)
      self._pooled_logits(h, det)
    if head == 'vocab':
      return self._vocab_logits(h, mlm_positions)
    if head == 'binary':
      return self._binary_logits(h)
    if head == 'pooled':
      return self._pooled_logits(h, det)
    if head == 'tokens':
      return self._token_logits(h, det)
    if head == 'span':
      return self._span_logits(h, det)
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
