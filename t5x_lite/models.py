"""A network bound to its batch features and its loss.

`arch_model(cfg, **loss_kw)` is the arch's own model (an objective that
needs another builds it: t5x_lite/objectives/, `objectives.build_model`):
  EncoderDecoderModel  T5: encoder_input_tokens -> decoder_target_tokens.
  DecoderOnlyModel     one causal sequence; a bidirectional prefix where the
                       batch carries decoder_causal_attention (1 on it).
  EncoderOnlyModel     per-token vocabulary logits over encoder_target_tokens
                       / encoder_loss_weights (head='vocab'), or a pooled
                       classifier (head='pooled', batch feature
                       'classifier_labels' or 'label').

Every model offers (the train step, eval and decoding use only these):
  input_shapes(feature_lengths, batch_size)   ShapeDtypeStructs for init
  init_params(rng, batch) / abstract_params(batch) / init_boxed(rng, batch)
  apply(params, batch, ...)                   logits
  loss_terms(params, batch, dropout_rng)      (loss sum, dict of sums): the
                                              train step's input; sums make
                                              gradient accumulation exact
  loss_fn(params, batch, dropout_rng)         (normalised loss, metrics)
  eval_fn(params, batch)                      dict of sums (finalize_metrics)
  score_batch(params, batch)                  [batch] sum log-likelihood
  flops_per_step(feature_lengths, batch_size) training FLOPs (MFU)
An objective with a model of its own subclasses one of these and overrides
`init_boxed`/`loss_terms`/`flops_per_step` (t5x_lite/objectives/).
"""
import abc
import inspect
from typing import Any, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_lite import flops
from t5x_lite import lengths
from t5x_lite import losses
from t5x_lite import network
from t5x_lite import partitioning
from t5x_lite.model_config import ConfigError, ModelConfig

Batch = Mapping[str, jax.Array]
# Keys of the sums dict every loss_terms / eval_fn returns.
SUM_KEYS = ('loss', 'z_loss', 'correct', 'num_tokens')


def finalize_metrics(sums: Mapping[str, jax.Array],
                     loss_normalizing_factor: float = 0.0
                     ) -> Dict[str, jax.Array]:
  """Sums (from loss_terms / eval_fn, possibly summed over batches) -> metrics.

  loss and z_loss follow the normalisation of losses.normalize; accuracy is
  per real token; num_tokens is the weight sum.
  """
  n = sums['num_tokens']
  metrics = {
      'loss': losses.normalize(sums['loss'], n, loss_normalizing_factor),
      'z_loss': losses.normalize(sums['z_loss'], n, loss_normalizing_factor),
      'accuracy': losses.normalize(sums['correct'], n, 0.0),
      'num_tokens': n,
  }
  # An objective's own sums: a `<name>_num` / `<name>_den` pair
  # becomes the metric `<name>` = num / den.
  for key in sums:
    if key.endswith('_num') and key[:-4] + '_den' in sums:
      metrics[key[:-4]] = losses.normalize(sums[key], sums[key[:-4] + '_den'],
                                           0.0)
  return metrics


class BaseModel(abc.ABC):
  """Shared plumbing: init, apply with the right features, loss sums."""
  ARCH = ''
  # Features every batch must have; [batch, len] int32 unless noted.
  REQUIRED_FEATURES: Tuple[str, ...] = ()

  def __init__(self, module: nn.Module, cfg: ModelConfig, *,
               z_loss: float = 1e-4, label_smoothing: float = 0.0,
               loss_normalizing_factor: float = 0.0):
    self.module = module
    self.config = cfg
    self.z_loss = float(z_loss)
    self.label_smoothing = float(label_smoothing)
    self.loss_normalizing_factor = float(loss_normalizing_factor)
    # Batch features the network's __call__ accepts as keyword arguments;
    # anything else in a batch (targets, weights, extra seqio fields) is ours.
    self._call_args = frozenset(
        inspect.signature(type(module).__call__).parameters)
    self._abstract_cache = {}

  # ---- shapes and init -------------------------------------------------------

  @abc.abstractmethod
  def input_shapes(self, feature_lengths, batch_size: int
                   ) -> Dict[str, jax.ShapeDtypeStruct]:
    """ShapeDtypeStructs of a batch (each subclass names its features)."""

  def _init_kwargs(self) -> Dict[str, Any]:
    return {}

  def _features(self, batch: Batch) -> Dict[str, jax.Array]:
    """The batch entries the network takes, by name."""
    return {k: v for k, v in batch.items() if k in self._call_args}

  def _dummy(self, batch: Batch) -> Dict[str, jax.Array]:
    # Ones, not zeros: id 0 is padding and a fully padded init batch only
    # exercises the masked path.
    return {k: jnp.ones(v.shape, v.dtype) for k, v in batch.items()}

  def init_boxed(self, rng: jax.Array, batch: Batch):
    """Params with their flax LogicallyPartitioned boxes (logical axis names).

    `batch` may hold arrays or ShapeDtypeStructs (only shapes are used).
    """
    batch = self._dummy(batch)
    variables = self.module.init(
        {'params': rng, 'dropout': rng}, **self._features(batch),
        enable_dropout=False, **self._init_kwargs())
    return variables['params']

  def init_params(self, rng: jax.Array, batch: Batch):
    """Plain fp32 parameter arrays (no partitioning metadata)."""
    return partitioning.unbox(self.init_boxed(rng, batch))

  def abstract_params(self, batch: Batch):
    """Boxed ShapeDtypeStructs of the params (no computation; memoised per
    batch shapes, since tracing init is the slow part of building a state)."""
    key = tuple(sorted((k, tuple(v.shape), str(v.dtype))
                       for k, v in batch.items()))
    if key not in self._abstract_cache:
      self._abstract_cache[key] = jax.eval_shape(
          self.init_boxed, jax.random.PRNGKey(0), batch)
    return self._abstract_cache[key]

  # ---- forward and loss ------------------------------------------------------

  def apply(self, params, batch: Batch, *, dropout_rng=None,
            enable_dropout: bool = False, **kwargs) -> jax.Array:
    rngs = {'dropout': dropout_rng} if enable_dropout else None
    return self.module.apply({'params': params}, **self._features(batch),
                             enable_dropout=enable_dropout, rngs=rngs,
                             **kwargs)

  @abc.abstractmethod
  def _targets_and_weights(self, batch: Batch):
    """(targets [batch, len] int, weights [batch, len]) the loss uses."""

  def _logits(self, params, batch, dropout_rng, enable_dropout):
    return self.apply(params, batch, dropout_rng=dropout_rng,
                      enable_dropout=enable_dropout)

  def loss_terms(self, params, batch: Batch, dropout_rng=None, *,
                 enable_dropout: bool = True
                 ) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """(summed loss, sums over SUM_KEYS); the loss sum includes the z-loss."""
    self._check_features(batch)
    logits = self._logits(params, batch, dropout_rng, enable_dropout)
    targets, weights = self._targets_and_weights(batch)
    loss, z_loss, n = losses.cross_entropy_with_z_loss(
        logits, targets, weights, z_loss=self.z_loss,
        label_smoothing=self.label_smoothing, loss_normalizing_factor=None)
    correct, _ = losses.weighted_accuracy(logits, targets, weights)
    return loss, {'loss': loss, 'z_loss': z_loss, 'correct': correct,
                  'num_tokens': n}

  def loss_fn(self, params, batch: Batch, dropout_rng=None, *,
              enable_dropout: bool = True
              ) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """(loss normalised per config.train.loss_normalizing_factor, metrics)."""
    _, sums = self.loss_terms(params, batch, dropout_rng,
                              enable_dropout=enable_dropout)
    metrics = finalize_metrics(sums, self.loss_normalizing_factor)
    return metrics['loss'], metrics

  def eval_fn(self, params, batch: Batch) -> Dict[str, jax.Array]:
    """Sums over SUM_KEYS without dropout; add over batches, then
    `finalize_metrics` (per-token loss: pass loss_normalizing_factor=0)."""
    return self.loss_terms(params, batch, None, enable_dropout=False)[1]

  def score_batch(self, params, batch: Batch) -> jax.Array:
    """[batch] sum over weighted target positions of log p(target)."""
    self._check_features(batch)
    logits = self._logits(params, batch, None, False)
    targets, weights = self._targets_and_weights(batch)
    ll = losses.token_log_likelihood(logits, targets)  # [batch, len]
    return jnp.sum(ll * weights.astype(jnp.float32), axis=-1)

  def flops_per_step(self, feature_lengths, batch_size: int) -> float:
    """Training FLOPs of one step (t5x_lite/flops.py's formula), for MFU."""
    return flops.arch_flops_per_step(
        self.config, lengths.model_lengths(self.ARCH, feature_lengths),
        batch_size)

  def _check_features(self, batch: Batch):
    missing = [k for k in self.REQUIRED_FEATURES if k not in batch]
    if missing:
      raise ValueError(
          f'{type(self).__name__} needs batch features {missing}; got '
          f'{sorted(batch)}. Is config.model.arch ({self.ARCH}) the one the '
          'task was converted for?')


def _int_shapes(batch_size, shapes: Mapping[str, int]):
  return {k: jax.ShapeDtypeStruct((batch_size, n), jnp.int32)
          for k, n in shapes.items()}


class EncoderDecoderModel(BaseModel):
  """T5: teacher-forced decoder over decoder_target_tokens."""
  ARCH = 'encoder_decoder'
  REQUIRED_FEATURES = ('encoder_input_tokens', 'decoder_input_tokens',
                       'decoder_target_tokens')

  def input_shapes(self, feature_lengths, batch_size):
    lens = lengths.model_lengths(self.ARCH, feature_lengths)
    return _int_shapes(batch_size, {
        'encoder_input_tokens': lens['encoder'],
        'decoder_input_tokens': lens['decoder'],
        'decoder_target_tokens': lens['decoder'],
        'decoder_loss_weights': lens['decoder'],
    })

  def _targets_and_weights(self, batch):
    targets = batch['decoder_target_tokens']
    weights = batch.get('decoder_loss_weights')
    if weights is None:
      weights = targets > 0
    return targets, weights


class DecoderOnlyModel(BaseModel):
  """Causal LM; prefix LM through decoder_causal_attention."""
  ARCH = 'decoder_only'
  REQUIRED_FEATURES = ('decoder_input_tokens', 'decoder_target_tokens')

  def input_shapes(self, feature_lengths, batch_size):
    n = lengths.model_lengths(self.ARCH, feature_lengths)['decoder']
    return _int_shapes(batch_size, {
        'decoder_input_tokens': n,
        'decoder_target_tokens': n,
        'decoder_loss_weights': n,
    })

  def _targets_and_weights(self, batch):
    targets = batch['decoder_target_tokens']
    weights = batch.get('decoder_loss_weights')
    if weights is None:
      weights = targets > 0
    return targets, weights


class EncoderOnlyModel(BaseModel):
  """Per-token vocabulary logits (head='vocab': masked-token prediction) or a
  pooled classifier (head='pooled')."""
  ARCH = 'encoder_only'
  HEADS = ('vocab', 'pooled')

  def __init__(self, module, cfg, *, head: str = 'vocab', **kw):
    if head not in self.HEADS:
      raise ValueError(f'EncoderOnlyModel head={head!r}; use one of '
                       f'{self.HEADS}.')
    super().__init__(module, cfg, **kw)
    self.head = head

  @property
  def REQUIRED_FEATURES(self):  # pylint: disable=invalid-name
    if self.head == 'pooled':
      return ('encoder_input_tokens', 'classifier_labels')
    return ('encoder_input_tokens', 'encoder_target_tokens')

  def input_shapes(self, feature_lengths, batch_size):
    n = lengths.model_lengths(self.ARCH, feature_lengths)['encoder']
    shapes = _int_shapes(batch_size, {'encoder_input_tokens': n})
    if self.head == 'pooled':
      shapes['classifier_labels'] = jax.ShapeDtypeStruct((batch_size,),
                                                         jnp.int32)
    else:
      shapes.update(_int_shapes(batch_size, {'encoder_target_tokens': n,
                                             'encoder_loss_weights': n}))
    return shapes

  def _init_kwargs(self):
    return {'head': self.head}

  def apply(self, params, batch, *, dropout_rng=None, enable_dropout=False,
            **kwargs):
    kwargs.setdefault('head', self.head)
    return super().apply(params, batch, dropout_rng=dropout_rng,
                         enable_dropout=enable_dropout, **kwargs)

  def _logits(self, params, batch, dropout_rng, enable_dropout):
    logits = super()._logits(params, batch, dropout_rng, enable_dropout)
    if self.head == 'pooled':
      logits = logits[:, None, :]  # [batch, 1, classes]: one "token" per row
    return logits

  def _check_features(self, batch):
    if self.head == 'pooled' and 'classifier_labels' not in batch:
      # The seqio classification converter names the feature `label`.
      if 'label' in batch:
        return
    super()._check_features(batch)

  def _targets_and_weights(self, batch):
    if self.head == 'pooled':
      labels = batch.get('classifier_labels', batch.get('label'))
      labels = labels.reshape(-1, 1)  # [batch, 1]
      weights = batch.get('classifier_weights')
      if weights is None:
        weights = jnp.ones(labels.shape, jnp.float32)
      return labels, weights.reshape(-1, 1)
    targets = batch['encoder_target_tokens']
    weights = batch.get('encoder_loss_weights')
    if weights is None:
      weights = targets > 0
    return targets, weights


MODEL_CLASSES = {
    'encoder_decoder': EncoderDecoderModel,
    'decoder_only': DecoderOnlyModel,
    'encoder_only': EncoderOnlyModel,
}


def arch_model(cfg: ModelConfig, **kwargs) -> BaseModel:
  """The arch's own model over network.build(cfg); kwargs: z_loss,
  label_smoothing, loss_normalizing_factor and the class's own (head=)."""
  cls = MODEL_CLASSES.get(cfg.arch)
  if cls is None:
    raise ConfigError(f'model.arch={cfg.arch!r} is not one of '
                      f'{", ".join(MODEL_CLASSES)}.')
  return cls(network.build(cfg), cfg, **kwargs)
