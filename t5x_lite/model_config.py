"""The typed model config: one source of truth for every `config.model` field.

`ModelConfig` defines each field with its default and a one-line comment;
configs/default.py's `model` group is `model_config_dict()` (derived, not
retyped), and the fields marked structural (they decide the param tree) are
what a checkpoint's saved config overrides when it is loaded
(`STRUCTURAL_MODEL_KEYS`). Nothing here imports JAX.
"""
import dataclasses
from typing import Any, Dict, Tuple

import ml_collections

ARCHS = ('encoder_decoder', 'decoder_only', 'encoder_only')
DTYPES = ('float32', 'bfloat16', 'float16')
ATTENTION_IMPLS = ('xla', 'cudnn')
REMAT_POLICIES = ('none', 'full', 'save_dots', 'save_dots_no_batch',
                  'save_attn_out')
ACTIVATIONS = ('gelu', 'relu', 'linear', 'silu', 'gelu_new')


class ConfigError(ValueError):
  """A config a user wrote is wrong; the message says how to fix it."""


def _field(default, doc: str, structural: bool = True):
  return dataclasses.field(default=default,
                           metadata={'doc': doc, 'structural': structural})


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The network's view of `config.model` (T5X's T5Config)."""
  arch: str = _field('encoder_decoder',
                     'encoder_decoder (T5) | decoder_only | encoder_only')
  size: str = _field('tiny', 'the row of configs/models.py these dims came '
                     'from', structural=False)
  vocab_size: int = _field(32128, 'logits size; T5 pads 32000+100 sentinels '
                           'to 32128')
  emb_dim: int = _field(64, 'd_model')
  num_heads: int = _field(4, 'attention heads')
  head_dim: int = _field(16, 'd_kv; num_heads*head_dim need not equal emb_dim')
  mlp_dim: int = _field(128, 'd_ff')
  num_encoder_layers: int = _field(2, 'also the layer count of encoder_only '
                                   'models')
  num_decoder_layers: int = _field(2, 'also the layer count of decoder_only '
                                   'models')
  mlp_activations: Tuple[str, ...] = _field(
      ('gelu', 'linear'), "gated GELU (T5.1.1); ('relu',) is T5.1.0")
  logits_via_embedding: bool = _field(False, 'tied logits with d_model**-0.5 '
                                      '(T5.1.0)')
  dropout_rate: float = _field(0.0, 'T5.1.1 pretraining used none; 0.1 for '
                               'fine-tuning', structural=False)
  dtype: str = _field('float32', 'activation/matmul dtype: float32 | '
                      'bfloat16', structural=False)
  relative_attention_num_buckets: int = _field(32, 'relative position '
                                               'buckets')
  relative_attention_max_distance: int = _field(128, 'distance of the last '
                                                'bucket')
  layer_norm_epsilon: float = _field(1e-6, 'RMSNorm epsilon')
  attention_impl: str = _field('xla', 'xla (einsum) | cudnn (fused, GPU '
                               'only)', structural=False)
  remat_policy: str = _field('none', 'none | full | save_dots | '
                             'save_dots_no_batch | save_attn_out',
                             structural=False)
  scan_layers: bool = _field(True, 'nn.scan over layers: one compiled layer, '
                             'fast compiles')
  num_classes: int = _field(2, "encoder_only pooled head's classes")
  num_block_positions: int = _field(
      0, 'decoder_only: learned table of a second (intra-span) position, '
      'as blank infilling uses; 0: none')
  num_token_labels: int = _field(
      3, "encoder_only per-token tagging head's labels (O, B-, I-)")
  type_vocab_size: int = _field(
      0, 'encoder_only: segment (token-type) embeddings added to the token '
      'embeddings, and the next-sentence head (BERT: 2); 0: none')
  memory_length: int = _field(
      0, 'decoder_only: Transformer-XL memory, the cached hidden states of '
      'the previous segment each layer attends to (configs/pretrain_txl.py);'
      ' 0: off', structural=False)

  @classmethod
  def from_config(cls, model_cfg) -> 'ModelConfig':
    d = dict(model_cfg)
    d['mlp_activations'] = tuple(d['mlp_activations'])
    return cls(**d)

  def replace(self, **kw) -> 'ModelConfig':
    return dataclasses.replace(self, **kw)


STRUCTURAL_MODEL_KEYS = tuple(
    f.name for f in dataclasses.fields(ModelConfig) if f.metadata['structural'])
MODEL_FIELD_DOCS: Dict[str, str] = {
    f.name: f.metadata['doc'] for f in dataclasses.fields(ModelConfig)}


def model_config_dict(**overrides: Any) -> ml_collections.ConfigDict:
  """configs/default.py's `model` group: every ModelConfig field's default."""
  d = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
  d.update(overrides)
  return ml_collections.ConfigDict(d)


def options_dict(options_cls) -> ml_collections.ConfigDict:
  """A ConfigDict of an options dataclass's defaults (objective groups)."""
  return ml_collections.ConfigDict(
      {f.name: f.default for f in dataclasses.fields(options_cls)})
