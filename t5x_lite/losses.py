"""Losses, computed in float32 from logits.

`cross_entropy_with_z_loss` is T5X's `compute_weighted_cross_entropy`:
soft targets for label smoothing (minus the smoothed distribution's entropy,
so a perfect model scores 0), plus the z-loss `z * log(Z)^2` that keeps the
softmax normaliser near 1 (T5X / PaLM; coefficient `config.train.z_loss`).

Normalisation (`loss_normalizing_factor`):
  None   sums over tokens (the train step divides after gradient accumulation,
         so microbatching equals one big batch exactly);
  0      divide by the sum of the weights (real target tokens);
  c > 0  divide by the constant c (T5X's fixed factor for pretraining).
"""
from typing import Optional, Tuple

import jax
import jax.numpy as jnp


def normalize(total, weight_sum, loss_normalizing_factor: Optional[float]):
  """Applies the normalisation convention of the module doc to a sum."""
  if loss_normalizing_factor is None:
    return total
  if loss_normalizing_factor == 0:
    # A batch with no real tokens has loss 0, not NaN.
    return total / jnp.where(weight_sum > 0, weight_sum, 1.0)
  return total / loss_normalizing_factor


def _weights(weights, shape):
  if weights is None:
    return jnp.ones(shape, jnp.float32)
  return jnp.asarray(weights, jnp.float32)


def cross_entropy_with_z_loss(
    logits: jax.Array,
    targets: jax.Array,
    weights: Optional[jax.Array] = None,
    *,
    z_loss: float = 1e-4,
    label_smoothing: float = 0.0,
    loss_normalizing_factor: Optional[float] = 0.0,
) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """Weighted token cross entropy with z-loss and label smoothing.

  Args:
    logits: [batch, len, vocab] (any float dtype; computed in float32).
    targets: [batch, len] int token ids.
    weights: [batch, len] loss weights (0 on padding); None means all 1.
    z_loss: coefficient of log(Z)^2, added to the loss (and reported apart).
    label_smoothing: probability mass spread uniformly over the other tokens.
    loss_normalizing_factor: see the module doc (None: sums).
  Returns:
    (loss, z_loss, weight_sum): loss includes the z-loss term; both
    normalised the same way; weight_sum is the sum of the weights.
  """
  logits = logits.astype(jnp.float32)
  vocab = logits.shape[-1]
  weights = _weights(weights, targets.shape)
  confidence = 1.0 - label_smoothing
  low_confidence = (1.0 - confidence) / (vocab - 1)
  # Entropy of the smoothed target distribution: the loss floor, subtracted.
  normalizing_constant = -(
      confidence * jnp.log(confidence) +
      (vocab - 1) * low_confidence * jnp.log(low_confidence + 1e-20))
  # -sum_v soft_v * log_softmax_v with soft = low + (confidence - low) *
  # one_hot(target), and sum_v soft_v = 1, is
  #   log_z - (confidence - low) * logit[target] - low * sum_v logit_v.
  # Written that way no [batch, len, vocab] one-hot or log-softmax array is
  # built: XLA fuses the float32 upcast into the three reductions, so the
  # only vocab-sized buffer is the logits themselves (and softmax in the
  # backward pass).
  log_z = jax.nn.logsumexp(logits, axis=-1)  # [batch, len]
  target_logit = jnp.take_along_axis(
      logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  token_loss = log_z - (confidence - low_confidence) * target_logit
  if label_smoothing:
    token_loss -= low_confidence * jnp.sum(logits, axis=-1)  # [batch, len]
  token_z_loss = z_loss * jnp.square(log_z)  # [batch, len]
  token_loss = token_loss + token_z_loss - normalizing_constant

  weight_sum = jnp.sum(weights)
  loss = jnp.sum(token_loss * weights)
  total_z_loss = jnp.sum(token_z_loss * weights)
  return (normalize(loss, weight_sum, loss_normalizing_factor),
          normalize(total_z_loss, weight_sum, loss_normalizing_factor),
          weight_sum)


def token_log_likelihood(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """log p(target) per position: [batch, len, vocab] -> [batch, len] float32."""
  logits = logits.astype(jnp.float32)
  log_softmax = jax.nn.log_softmax(logits, axis=-1)
  return jnp.take_along_axis(log_softmax, targets[..., None], axis=-1)[..., 0]


def weighted_accuracy(logits, targets, weights=None):
  """(number of weighted correct argmax predictions, weight sum)."""
  weights = _weights(weights, targets.shape)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return jnp.sum(correct * weights), jnp.sum(weights)


def binary_cross_entropy_with_logits(
    logits: jax.Array,
    labels: jax.Array,
    weights: Optional[jax.Array] = None,
    *,
    loss_normalizing_factor: Optional[float] = 0.0,
) -> Tuple[jax.Array, jax.Array]:
  """Weighted sigmoid cross entropy (ELECTRA's replaced-token detection).

  Args:
    logits: [batch, len] per-token "replaced" logits.
    labels: [batch, len] 1 where the token was replaced, else 0.
    weights: [batch, len] (0 on padding); None means all 1.
    loss_normalizing_factor: see the module doc (None: sums).
  Returns:
    (loss, weight_sum).
  """
  logits = logits.astype(jnp.float32)
  labels = labels.astype(jnp.float32)
  weights = _weights(weights, labels.shape)
  # -[y log s(x) + (1-y) log(1-s(x))], stable: log s(x) = -softplus(-x).
  token_loss = (labels * jax.nn.softplus(-logits) +
                (1.0 - labels) * jax.nn.softplus(logits))
  weight_sum = jnp.sum(weights)
  loss = jnp.sum(token_loss * weights)
  return normalize(loss, weight_sum, loss_normalizing_factor), weight_sum


def info_nce(queries: jax.Array, keys: jax.Array, temperature: float,
             weights: Optional[jax.Array] = None
             ) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """InfoNCE with in-batch negatives (SimCSE's loss), one way: queries -> keys.

  Row i of `keys` is the positive of query i; every other real row of `keys`
  is a negative. Similarity is cosine / temperature. One-way as in SimCSE's
  code (the cross entropy of query i over all keys); the symmetric variant
  would average this with the keys -> queries direction.

  Args:
    queries: [batch, dim] embeddings (any scale: L2-normalised here).
    keys: [batch, dim] embeddings, aligned with queries.
    temperature: tau > 0 (SimCSE: 0.05).
    weights: [batch] 1 for real rows, 0 for padding rows (they are neither
      scored nor used as negatives); None means all 1.
  Returns:
    (loss summed over weighted rows, rows whose positive scores highest of
    all keys (in-batch retrieval hits), weight sum).
  """
  q = queries.astype(jnp.float32)
  k = keys.astype(jnp.float32)
  q = q / jnp.maximum(jnp.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
  k = k / jnp.maximum(jnp.linalg.norm(k, axis=-1, keepdims=True), 1e-12)
  weights = _weights(weights, q.shape[:1])
  # [batch, dim] x [batch, dim] -> [batch (queries), batch (keys)]
  sim = jnp.einsum('qd,kd->qk', q, k) / temperature
  # A padding row must not be anyone's negative.
  sim = jnp.where(weights[None, :] > 0, sim, -1e9)
  log_p = jax.nn.log_softmax(sim, axis=-1)  # [batch, batch]
  row_loss = -jnp.diagonal(log_p)  # [batch]
  hits = (jnp.argmax(sim, axis=-1) == jnp.arange(sim.shape[0]))
  weight_sum = jnp.sum(weights)
  return (jnp.sum(row_loss * weights),
          jnp.sum(hits.astype(jnp.float32) * weights), weight_sum)
