"""Unsupervised contrastive sentence embeddings (SimCSE, Gao et al. 2021).

Two objectives on an encoder_only model:

  contrastive      each row (one text, never packed: task
                   shakespeare_sentences, one corpus paragraph per row) is
                   encoded twice with different dropout masks; the two
                   embeddings of a row are a positive pair, every other row of
                   the batch a negative; InfoNCE (losses.info_nce) over
                   cosine / `temperature`.
                   Recipe configs/pretrain_simcse.py:tiny.
  mlm_contrastive  BERT MLM on the masked rows (shakespeare_mlm_contrastive,
                   mlm's masking) + `contrastive_weight` x the same InfoNCE on
                   two dropout views of the *unmasked* rows (the originals the
                   targets hold). Recipe configs/pretrain_simcse.py:mlm.

Choices, and why:
  * The embedding is the mean of the encoder output (the 'hidden' head, after
    the final RMSNorm and its dropout) over the row's real tokens, not a
    [CLS] pooler: it adds no parameters, so the trained tree is exactly an
    MLM encoder's (fine-tuning and the retrieval evaluation read any
    encoder_only checkpoint the same way, untrained and MLM-only ones
    included), and rows need no [CLS] token.
  * InfoNCE is one-way (view 1 -> view 2), as SimCSE's code computes it.
  * The views differ only by dropout, so model.dropout_rate must be > 0
    (a ConfigError otherwise: the views would be identical and the task
    trivial). Evaluation keeps dropout on for the two views with a fixed key
    (the views of a run's evals are comparable); with it off they coincide.
  * In-batch negatives are those of one (micro)batch: with
    train.microbatches = M each slice contrasts its own batch/M rows.

Sums (models.SUM_KEYS plus `<name>_num` / `<name>_den` pairs):
  contrastive:  loss = InfoNCE summed over rows, num_tokens = rows (the step
                divides: a per-row mean); correct = rows whose other view is
                their nearest of the batch -> `accuracy`; contrastive_loss,
                inbatch_accuracy (the same two, named), view_cosine (mean
                cosine of a row's two views: < 1 shows the views differ).
  mlm_contrastive: loss = MLM sum + w x InfoNCE sum x (selected tokens /
                rows), num_tokens = selected tokens, so loss/num_tokens = MLM
                mean + w x InfoNCE mean; accuracy is the MLM's; mlm_loss,
                contrastive_loss, inbatch_accuracy, view_cosine.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp

from t5x_lite import flops
from t5x_lite import lengths
from t5x_lite import losses
from t5x_lite import models
from t5x_lite import network
from t5x_lite.model_config import ConfigError, ModelConfig
from t5x_lite.objectives import electra
from t5x_lite.objectives import mlm
from t5x_lite.objectives import registry

SIMCSE_DROPOUT = 0.1  # SimCSE's (BERT's) dropout: what the errors suggest


@dataclasses.dataclass(frozen=True)
class Options:
  """config.objective.contrastive.*"""
  temperature: float = 0.05  # similarity = cosine / temperature (SimCSE)


@dataclasses.dataclass(frozen=True)
class MlmOptions:
  """config.objective.mlm_contrastive.*"""
  temperature: float = 0.05  # similarity = cosine / temperature (SimCSE)
  contrastive_weight: float = 1.0  # loss = MLM + weight * InfoNCE (means)


# ---- the pieces (pure functions; tests check each) ---------------------------


def mean_pool(hidden: jax.Array, tokens: jax.Array) -> jax.Array:
  """[batch, len, embed] encoder output -> [batch, embed] float32, the mean
  over the row's real tokens (id > 0); an all-padding row gives zeros."""
  mask = (tokens > 0).astype(jnp.float32)  # [batch, len]
  # [batch, len, embed] x [batch, len] -> [batch, embed]
  total = jnp.einsum('bld,bl->bd', hidden.astype(jnp.float32), mask)
  return total / jnp.maximum(jnp.sum(mask, axis=-1, keepdims=True), 1.0)


def row_weights(tokens: jax.Array) -> jax.Array:
  """[batch] 1.0 for rows with a real token (padding rows are not scored)."""
  return jnp.any(tokens > 0, axis=-1).astype(jnp.float32)


def cosine(a: jax.Array, b: jax.Array) -> jax.Array:
  """[batch] cosine of aligned rows of two [batch, dim] arrays."""
  a = a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
  b = b / jnp.maximum(jnp.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
  return jnp.sum(a * b, axis=-1)


def embed(model: models.BaseModel, params, tokens: jax.Array, *,
          dropout_rng=None) -> jax.Array:
  """[batch, embed] sentence embeddings of `tokens` [batch, len] (the mean-
  pooled 'hidden' head); dropout on iff `dropout_rng` is given."""
  hidden = model.apply(params, {'encoder_input_tokens': tokens},
                       dropout_rng=dropout_rng,
                       enable_dropout=dropout_rng is not None, head='hidden')
  return mean_pool(hidden, tokens)


def two_views(model, params, tokens, rng):
  """(view 1, view 2) [batch, embed]: the rows embedded under two dropout
  keys split from `rng` (eval: None -> a fixed key)."""
  if rng is None:
    rng = jax.random.PRNGKey(0)
  rng1, rng2 = jax.random.split(rng)
  return (embed(model, params, tokens, dropout_rng=rng1),
          embed(model, params, tokens, dropout_rng=rng2))


def contrastive_sums(model, params, tokens, rng, temperature):
  """(InfoNCE sum, sums of the contrastive metrics) of two dropout views."""
  z1, z2 = two_views(model, params, tokens, rng)
  w = row_weights(tokens)
  loss, hits, rows = losses.info_nce(z1, z2, temperature, w)
  return loss, {
      'contrastive_loss_num': loss, 'contrastive_loss_den': rows,
      'inbatch_accuracy_num': hits, 'inbatch_accuracy_den': rows,
      'view_cosine_num': jnp.sum(cosine(z1, z2) * w), 'view_cosine_den': rows,
  }


def _two_trunks_flops(cfg: ModelConfig, feature_lengths, batch_size):
  """Two encoder passes (forward + backward) without vocabulary logits."""
  lens = lengths.model_lengths('encoder_only', feature_lengths)
  f = functools.partial(flops.arch_flops_per_step, lens=lens,
                        batch=batch_size)
  return 2 * (f(cfg) - f(cfg.replace(num_encoder_layers=0)))


def _need_encoder_only(cfg: ModelConfig, name: str):
  if cfg.arch != 'encoder_only':
    raise ConfigError(
        f"objective {name!r} needs model.arch='encoder_only', got "
        f'{cfg.arch!r}; use configs/pretrain_simcse.py or set '
        '--config.model.arch=encoder_only.')


# ---- the models --------------------------------------------------------------


class ContrastiveModel(models.EncoderOnlyModel):
  """SimCSE: InfoNCE between two dropout views of each row (module doc)."""
  HEADS = ('hidden',)

  def __init__(self, module, cfg: ModelConfig, options: Options = Options(),
               **kw):
    _need_encoder_only(cfg, 'contrastive')
    super().__init__(module, cfg, head='hidden', **kw)
    self.temperature = float(options.temperature)

  @property
  def REQUIRED_FEATURES(self):  # pylint: disable=invalid-name
    return ('encoder_input_tokens',)

  def input_shapes(self, feature_lengths, batch_size):
    n = lengths.model_lengths(self.ARCH, feature_lengths)['encoder']
    # pylint: disable-next=protected-access
    return models._int_shapes(batch_size, {'encoder_input_tokens': n})

  def loss_terms(self, params, batch, dropout_rng=None, *,
                 enable_dropout: bool = True):
    del enable_dropout  # the views are dropout views, in eval too (doc)
    self._check_features(batch)
    loss, sums = contrastive_sums(self, params, batch['encoder_input_tokens'],
                                  dropout_rng, self.temperature)
    sums.update(loss=loss, z_loss=jnp.zeros((), jnp.float32),
                correct=sums['inbatch_accuracy_num'],
                num_tokens=sums['contrastive_loss_den'])
    return loss, sums

  def flops_per_step(self, feature_lengths, batch_size):
    return _two_trunks_flops(self.config, feature_lengths, batch_size)


class MlmContrastiveModel(models.EncoderOnlyModel):
  """BERT MLM + weight x InfoNCE on two dropout views of the original rows."""

  def __init__(self, module, cfg: ModelConfig,
               options: MlmOptions = MlmOptions(), **kw):
    _need_encoder_only(cfg, 'mlm_contrastive')
    super().__init__(module, cfg, head='vocab', **kw)
    self.temperature = float(options.temperature)
    self.contrastive_weight = float(options.contrastive_weight)

  def loss_terms(self, params, batch, dropout_rng=None, *,
                 enable_dropout: bool = True):
    mlm_rng = view_rng = None
    if dropout_rng is not None:
      mlm_rng, view_rng = jax.random.split(dropout_rng)
    mlm_sum, sums = super().loss_terms(params, batch, mlm_rng,
                                       enable_dropout=enable_dropout)
    c_sum, c_sums = contrastive_sums(self, params,
                                     electra.original_tokens(batch), view_rng,
                                     self.temperature)
    n_mlm, n_rows = sums['num_tokens'], c_sums['contrastive_loss_den']
    # The step divides by num_tokens (selected positions): rescaling the
    # InfoNCE sum by selected / rows makes that MLM mean + w x InfoNCE mean.
    total = mlm_sum + self.contrastive_weight * c_sum * (
        n_mlm / jnp.maximum(n_rows, 1.0))
    sums = dict(sums, loss=total, mlm_loss_num=mlm_sum, mlm_loss_den=n_mlm,
                **c_sums)
    return total, sums

  def flops_per_step(self, feature_lengths, batch_size):
    return super().flops_per_step(feature_lengths, batch_size) + (
        _two_trunks_flops(self.config, feature_lengths, batch_size))


# ---- registration ------------------------------------------------------------


def _check(config, name):
  if config.model.dropout_rate <= 0:
    raise ConfigError(
        f'objective {name!r} contrasts two dropout views of each row, and '
        f'model.dropout_rate={config.model.dropout_rate} makes them '
        f'identical; set --config.model.dropout_rate={SIMCSE_DROPOUT} '
        '(SimCSE).')
  group = config.objective[name]
  if group.temperature <= 0:
    raise ConfigError(f'objective.{name}.temperature must be > 0 (SimCSE: '
                      f'0.05), got {group.temperature}.')
  t = config.train
  if t.batch_size // max(1, t.microbatches) < 2:
    raise ConfigError(
        f'objective {name!r} needs >= 2 rows per (micro)batch for in-batch '
        f'negatives; got train.batch_size={t.batch_size} / '
        f'train.microbatches={t.microbatches}.')
  if name == 'mlm_contrastive':
    if group.contrastive_weight < 0:
      raise ConfigError('objective.mlm_contrastive.contrastive_weight must '
                        f'be >= 0, got {group.contrastive_weight}.')
    if config.task.pack:
      raise ConfigError(
          "objective 'mlm_contrastive' embeds one row as one text, and "
          'packing puts several in a row; set --config.task.pack=False.')


def _make_model(model_cls, cfg, options, **kwargs):
  return model_cls(network.EncoderOnly(cfg), cfg, options, **kwargs)


def _sentence_preprocessors(prep):
  # Each text on its own row: cut to the row length (room for EOS), EOS.
  return [prep.append_eos_after_trim]


OBJECTIVE = registry.register(registry.Objective(
    name='contrastive',
    layout='sentences',
    archs=('encoder_only',),
    summary='SimCSE: InfoNCE between two dropout views of each text',
    preprocessors=_sentence_preprocessors,
    task_features=('targets',),
    options=Options,
    make_model=functools.partial(_make_model, ContrastiveModel),
    metrics=('contrastive_loss', 'inbatch_accuracy', 'view_cosine'),
    recipe='configs/pretrain_simcse.py:tiny',
    check=functools.partial(_check, name='contrastive'),
))

MLM_OBJECTIVE = registry.register(registry.Objective(
    name='mlm_contrastive',
    layout='masked_tokens',
    archs=('encoder_only',),
    summary='BERT MLM + weight x SimCSE InfoNCE on the unmasked rows',
    preprocessors=mlm.OBJECTIVE.preprocessors,
    options=MlmOptions,
    make_model=functools.partial(_make_model, MlmContrastiveModel),
    metrics=('mlm_loss', 'contrastive_loss', 'inbatch_accuracy',
             'view_cosine'),
    recipe='configs/pretrain_simcse.py:mlm',
    check=functools.partial(_check, name='mlm_contrastive'),
))
