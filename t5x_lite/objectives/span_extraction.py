"""Extractive span (BERT's SQuAD head): start and end logits per token.

A dense layer over every encoder output to two logits (network.EncoderOnly
head 'span', params span_head/). The loss is the cross entropy of the
answer's start over the positions plus that of its end, both restricted to
the batch's encoder_context_mask (the passage: never the question, a
special token or padding). Prediction is the best-scoring pair start <= end
< start + max_answer_tokens inside the context (start logit + end logit).

Metrics (eval/*): accuracy is per boundary (start or end argmax right);
  exact_match  the predicted (start, end) equals the answer's
  span_f1      token-overlap F1 of the predicted and the answer span
               (SQuAD's F1, on token positions), mean over examples
Fine-tuning initialises span_head/ fresh (`fresh_params`). The task feeding
it is tasks/speakers.py's shakespeare_speaker_span.
"""
import dataclasses

import jax
import jax.numpy as jnp

from t5x_lite import lengths
from t5x_lite import losses
from t5x_lite import models
from t5x_lite import network
from t5x_lite.objectives import registry

_MASKED = -1e9  # logit of a position outside the context


@dataclasses.dataclass(frozen=True)
class SpanOptions:
  """objective.span_extraction.*"""
  max_answer_tokens: int = 8  # longest span a prediction may pick


def best_spans(logits, context_mask, max_answer_tokens):
  """(start, end) [batch] int: the best pair start <= end <
  start + max_answer_tokens, both in the context. logits [batch, len, 2]."""
  length = logits.shape[1]
  ctx = context_mask > 0
  start = jnp.where(ctx, logits[..., 0], _MASKED)  # [batch, len]
  end = jnp.where(ctx, logits[..., 1], _MASKED)
  scores = start[:, :, None] + end[:, None, :]  # [batch, start, end]
  offset = jnp.arange(length)[None, :] - jnp.arange(length)[:, None]
  allowed = (offset >= 0) & (offset < max_answer_tokens)  # [start, end]
  scores = jnp.where(allowed[None], scores, 2 * _MASKED)
  best = jnp.argmax(scores.reshape(scores.shape[0], -1), axis=-1)
  return best // length, best % length


def span_sums(pred_start, pred_end, start, end, weights):
  """{exact_match_num/_den, span_f1_num/_den} of [batch] spans (inclusive
  ends); weights [batch] (0 for a padding row)."""
  w = weights.astype(jnp.float32)
  exact = ((pred_start == start) & (pred_end == end)).astype(jnp.float32)
  overlap = jnp.maximum(
      0, jnp.minimum(pred_end, end) - jnp.maximum(pred_start, start) + 1)
  overlap = overlap.astype(jnp.float32)
  precision = overlap / (pred_end - pred_start + 1).astype(jnp.float32)
  recall = overlap / jnp.maximum(end - start + 1, 1).astype(jnp.float32)
  f1 = jnp.where(overlap > 0,
                 2 * precision * recall / jnp.maximum(precision + recall,
                                                      1e-9), 0.0)
  n = jnp.sum(w)
  return {'exact_match_num': jnp.sum(exact * w), 'exact_match_den': n,
          'span_f1_num': jnp.sum(f1 * w), 'span_f1_den': n}


class SpanExtractionModel(models.EncoderOnlyModel):
  """EncoderOnly with head 'span': start/end cross entropy + span metrics."""
  HEADS = ('span',)
  REQUIRED_FEATURES = ('encoder_input_tokens', 'encoder_context_mask',
                       'start_position', 'end_position')

  def __init__(self, module, cfg, *, max_answer_tokens=8, **kw):
    super().__init__(module, cfg, head='span', **kw)
    self.max_answer_tokens = int(max_answer_tokens)

  def input_shapes(self, feature_lengths, batch_size):
    n = lengths.model_lengths(self.ARCH, feature_lengths)['encoder']
    row = lambda: jax.ShapeDtypeStruct((batch_size, n), jnp.int32)
    one = lambda: jax.ShapeDtypeStruct((batch_size,), jnp.int32)
    return {'encoder_input_tokens': row(), 'encoder_context_mask': row(),
            'start_position': one(), 'end_position': one()}

  def _targets_and_weights(self, batch):
    # [batch, 2]: the start and the end are two "tokens" of each row.
    targets = jnp.stack([batch['start_position'].reshape(-1),
                         batch['end_position'].reshape(-1)], axis=1)
    real = jnp.any(batch['encoder_input_tokens'] > 0, axis=-1)  # [batch]
    return targets, jnp.repeat(real[:, None], 2, axis=1)

  def _position_logits(self, logits, batch):
    """[batch, 2, len]: start and end logits over the context positions."""
    ctx = batch['encoder_context_mask'] > 0  # [batch, len]
    logits = jnp.where(ctx[..., None], logits, _MASKED)  # [batch, len, 2]
    return jnp.swapaxes(logits, 1, 2)

  def loss_terms(self, params, batch, dropout_rng=None, *,
                 enable_dropout=True):
    self._check_features(batch)
    logits = self._logits(params, batch, dropout_rng, enable_dropout)
    position_logits = self._position_logits(logits, batch)
    targets, weights = self._targets_and_weights(batch)
    loss, z_loss, n = losses.cross_entropy_with_z_loss(
        position_logits, targets, weights, z_loss=self.z_loss,
        label_smoothing=self.label_smoothing, loss_normalizing_factor=None)
    correct, _ = losses.weighted_accuracy(position_logits, targets, weights)
    sums = {'loss': loss, 'z_loss': z_loss, 'correct': correct,
            'num_tokens': n}
    pred_start, pred_end = best_spans(logits, batch['encoder_context_mask'],
                                      self.max_answer_tokens)
    sums.update(span_sums(pred_start, pred_end, targets[:, 0], targets[:, 1],
                          weights[:, 0]))
    return loss, sums

  def predict_spans(self, params, batch):
    """(start, end) [batch]: the predicted answer's token positions."""
    return best_spans(self.apply(params, batch),
                      batch['encoder_context_mask'], self.max_answer_tokens)


def _make_model(cfg, options, **kwargs):
  options = options or SpanOptions()
  return SpanExtractionModel(network.build(cfg), cfg,
                             max_answer_tokens=options.max_answer_tokens,
                             **kwargs)


def _check(config):
  group = config.objective.get('span_extraction') or {}
  if int(group.get('max_answer_tokens', 1)) < 1:
    raise registry.ConfigError(
        'objective.span_extraction.max_answer_tokens must be >= 1; set '
        '--config.objective.span_extraction.max_answer_tokens=8.')


OBJECTIVE = registry.register(registry.Objective(
    name='span_extraction',
    layout='span',
    archs=('encoder_only',),
    summary='extractive span: start/end logits over the passage tokens',
    options=SpanOptions,
    make_model=_make_model,
    fresh_params=('span_head',),
    metrics=('exact_match', 'span_f1'),
    recipe='configs/finetune_span.py:tiny',
    check=_check,
))
