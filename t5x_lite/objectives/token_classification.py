"""Token classification (BERT's NER head): a label per token.

A dense layer over every encoder output (network.EncoderOnly head 'tokens',
params token_classifier/) to model.num_token_labels logits; cross entropy
on the batch's `token_labels` at every real token (encoder_input_tokens > 0).
Labels are BIO: O = 0, B = 1 (an entity's first token), I = 2 (the rest).

Metrics (eval/*, micro-averaged over the split from num/den sums):
  token_f1   F1 of the entity class per token (B or I against O)
  entity_f1  exact-match F1 of whole entities (a B and its I run: start and
             end both right, conlleval's rule for a stray predicted I)
Fine-tuning from a pretrained encoder initialises token_classifier/ fresh
(`fresh_params`); everything else is restored. The task feeding it is
tasks/speakers.py's shakespeare_speaker_tags.
"""
import jax
import jax.numpy as jnp

from t5x_lite import lengths
from t5x_lite import losses
from t5x_lite import models
from t5x_lite import network
from t5x_lite.objectives import registry

OUTSIDE, BEGIN, INSIDE = 0, 1, 2
LABELS = ('O', 'B', 'I')


def tagging_sums(predicted, gold, weights):
  """{token_f1_num/_den, entity_f1_num/_den} of BIO tags [batch, len].

  weights [batch, len] (0 on padding: those positions count as O).
  """
  real = weights > 0
  pred = jnp.where(real, predicted, OUTSIDE)
  gold = jnp.where(real, gold, OUTSIDE)
  pred_in, gold_in = pred != OUTSIDE, gold != OUTSIDE
  token_tp = jnp.sum(pred_in & gold_in)
  # A gold entity starting at t matches when every tag agrees up to its end
  # and the prediction does not run on past it. Right to left:
  #   ok[t] = agree[t] and (ok[t+1] if gold[t+1] == I else pred[t+1] != I).
  agree = pred == gold
  next_gold_in = jnp.pad(gold[:, 1:] == INSIDE, ((0, 0), (0, 1)))
  next_pred_in = jnp.pad(pred[:, 1:] == INSIDE, ((0, 0), (0, 1)))

  def _step(ok_next, cols):
    agree_t, next_gold_t, next_pred_t = cols  # each [batch]
    ok = agree_t & jnp.where(next_gold_t, ok_next, ~next_pred_t)
    return ok, ok

  _, ok = jax.lax.scan(
      _step, jnp.ones(gold.shape[:1], bool),
      (agree.T, next_gold_in.T, next_pred_in.T), reverse=True)
  ok = ok.T  # [batch, len]
  matched = jnp.sum((gold == BEGIN) & ok)
  prev_pred = jnp.pad(pred[:, :-1], ((0, 0), (1, 0)))
  pred_entities = jnp.sum((pred == BEGIN) |
                          ((pred == INSIDE) & (prev_pred == OUTSIDE)))
  gold_entities = jnp.sum(gold == BEGIN)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  return {
      'token_f1_num': f32(2 * token_tp),
      'token_f1_den': f32(jnp.sum(pred_in) + jnp.sum(gold_in)),
      'entity_f1_num': f32(2 * matched),
      'entity_f1_den': f32(pred_entities + gold_entities),
  }


class TokenClassificationModel(models.EncoderOnlyModel):
  """EncoderOnly with head 'tokens': per-token cross entropy + F1 sums."""
  HEADS = ('tokens',)
  REQUIRED_FEATURES = ('encoder_input_tokens', 'token_labels')

  def __init__(self, module, cfg, **kw):
    super().__init__(module, cfg, head='tokens', **kw)

  def input_shapes(self, feature_lengths, batch_size):
    n = lengths.model_lengths(self.ARCH, feature_lengths)['encoder']
    return {k: jax.ShapeDtypeStruct((batch_size, n), jnp.int32)
            for k in self.REQUIRED_FEATURES}

  def _targets_and_weights(self, batch):
    return batch['token_labels'], batch['encoder_input_tokens'] > 0

  def loss_terms(self, params, batch, dropout_rng=None, *,
                 enable_dropout=True):
    self._check_features(batch)
    logits = self._logits(params, batch, dropout_rng, enable_dropout)
    labels, weights = self._targets_and_weights(batch)
    loss, z_loss, n = losses.cross_entropy_with_z_loss(
        logits, labels, weights, z_loss=self.z_loss,
        label_smoothing=self.label_smoothing, loss_normalizing_factor=None)
    correct, _ = losses.weighted_accuracy(logits, labels, weights)
    sums = {'loss': loss, 'z_loss': z_loss, 'correct': correct,
            'num_tokens': n}
    sums.update(tagging_sums(jnp.argmax(logits, -1), labels, weights))
    return loss, sums

  def predict_tags(self, params, batch):
    """[batch, len] argmax labels (O/B/I ids; padding reads O)."""
    logits = self.apply(params, batch)
    tags = jnp.argmax(logits, -1)
    return jnp.where(batch['encoder_input_tokens'] > 0, tags, OUTSIDE)


def _make_model(cfg, options, **kwargs):
  del options
  return TokenClassificationModel(network.build(cfg), cfg, **kwargs)


OBJECTIVE = registry.register(registry.Objective(
    name='token_classification',
    layout='token_labels',
    archs=('encoder_only',),
    summary='a label per token (BIO tagging) over an encoder',
    make_model=_make_model,
    fresh_params=('token_classifier',),
    metrics=('token_f1', 'entity_f1'),
    recipe='configs/finetune_tagger.py:tiny',
))
