"""Golden values for the losses on hand-computed examples."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_lite import losses

# One position, vocab 3, probabilities (1/4, 2/4, 1/4): Z = 4 when the logits
# are log(1), log(2), log(1); the target is token 1.
LOGITS = jnp.log(jnp.array([[[1.0, 2.0, 1.0]]]))  # [batch=1, len=1, vocab=3]
TARGETS = jnp.array([[1]])


def test_plain_cross_entropy_is_minus_log_p():
  loss, z, n = losses.cross_entropy_with_z_loss(LOGITS, TARGETS, z_loss=0.0)
  assert float(loss) == pytest.approx(math.log(2), abs=1e-6)
  assert float(z) == 0.0
  assert float(n) == 1.0


def test_z_loss_adds_coefficient_times_log_z_squared():
  loss, z, _ = losses.cross_entropy_with_z_loss(LOGITS, TARGETS, z_loss=1e-4)
  expected_z = 1e-4 * math.log(4) ** 2  # = 1.9218e-4
  assert float(z) == pytest.approx(expected_z, rel=1e-5)
  assert float(loss) == pytest.approx(math.log(2) + expected_z, rel=1e-6)


def test_label_smoothing_golden():
  # confidence 0.9 on the target, 0.05 on each of the two other tokens.
  loss, _, _ = losses.cross_entropy_with_z_loss(
      LOGITS, TARGETS, z_loss=0.0, label_smoothing=0.1)
  cross = -(0.9 * math.log(0.5) + 2 * 0.05 * math.log(0.25))
  entropy = -(0.9 * math.log(0.9) + 2 * 0.05 * math.log(0.05))
  # (0.623832 + 0.138629) - (0.094825 + 0.299573) = 0.368064
  assert float(loss) == pytest.approx(cross - entropy, abs=1e-6)
  assert float(loss) == pytest.approx(0.368064, abs=1e-6)
  # The smoothed distribution itself scores exactly 0.
  perfect = jnp.log(jnp.array([[[0.05, 0.9, 0.05]]]))
  loss0, _, _ = losses.cross_entropy_with_z_loss(
      perfect, TARGETS, z_loss=0.0, label_smoothing=0.1)
  assert float(loss0) == pytest.approx(0.0, abs=1e-6)


def test_gradient_matches_t5x_closed_form():
  # d/dlogits = softmax * (1 + 2 z log Z) - soft_targets (T5X's custom grad).
  z = 1e-2
  logits = jnp.array([[[0.3, -1.2, 2.0, 0.5]]])
  targets = jnp.array([[2]])
  grad = jax.grad(lambda l: losses.cross_entropy_with_z_loss(
      l, targets, z_loss=z, label_smoothing=0.2)[0])(logits)
  log_z = jax.nn.logsumexp(logits[0, 0])
  soft = np.full(4, 0.2 / 3)
  soft[2] = 0.8
  expected = jax.nn.softmax(logits[0, 0]) * (1 + 2 * z * log_z) - soft
  np.testing.assert_allclose(grad[0, 0], expected, atol=1e-6)


def test_normalization_modes_and_weights():
  # Two positions: -log p = log 2 and log 4; the second has weight 0, then 3.
  logits = jnp.log(jnp.array([[[1.0, 2.0, 1.0], [1.0, 2.0, 1.0]]]))
  targets = jnp.array([[1, 0]])
  w = jnp.array([[1.0, 0.0]])
  total, _, n = losses.cross_entropy_with_z_loss(
      logits, targets, w, z_loss=0.0, loss_normalizing_factor=None)
  assert (float(total), float(n)) == pytest.approx((math.log(2), 1.0))
  w = jnp.array([[1.0, 3.0]])
  total, _, n = losses.cross_entropy_with_z_loss(
      logits, targets, w, z_loss=0.0, loss_normalizing_factor=None)
  s = math.log(2) + 3 * math.log(4)
  assert (float(total), float(n)) == pytest.approx((s, 4.0))
  per_token, _, _ = losses.cross_entropy_with_z_loss(
      logits, targets, w, z_loss=0.0, loss_normalizing_factor=0)
  assert float(per_token) == pytest.approx(s / 4.0, rel=1e-6)
  fixed, _, _ = losses.cross_entropy_with_z_loss(
      logits, targets, w, z_loss=0.0, loss_normalizing_factor=10.0)
  assert float(fixed) == pytest.approx(s / 10.0, rel=1e-6)
  # No real tokens: 0, not NaN.
  empty, _, n = losses.cross_entropy_with_z_loss(
      logits, targets, jnp.zeros((1, 2)), loss_normalizing_factor=0)
  assert float(empty) == 0.0 and float(n) == 0.0


def test_bfloat16_logits_are_upcast():
  loss, _, _ = losses.cross_entropy_with_z_loss(
      LOGITS.astype(jnp.bfloat16), TARGETS, z_loss=0.0)
  assert loss.dtype == jnp.float32
  assert float(loss) == pytest.approx(math.log(2), abs=1e-2)


def test_token_log_likelihood_and_accuracy():
  ll = losses.token_log_likelihood(LOGITS, TARGETS)
  assert float(ll[0, 0]) == pytest.approx(math.log(0.5), abs=1e-6)
  correct, n = losses.weighted_accuracy(
      jnp.log(jnp.array([[[1.0, 2.0, 1.0], [3.0, 1.0, 1.0]]])),
      jnp.array([[1, 2]]), jnp.array([[2.0, 1.0]]))
  assert (float(correct), float(n)) == (2.0, 3.0)


def test_binary_cross_entropy_golden():
  logits = jnp.array([[0.0, math.log(3.0), -2.0]])
  labels = jnp.array([[1, 1, 0]])
  weights = jnp.array([[1.0, 1.0, 0.0]])
  loss, n = losses.binary_cross_entropy_with_logits(
      logits, labels, weights, loss_normalizing_factor=None)
  # sigmoid(0) = 1/2, sigmoid(log 3) = 3/4; the third is masked out.
  assert float(loss) == pytest.approx(math.log(2) - math.log(0.75), abs=1e-6)
  assert float(n) == 2.0
  mean, _ = losses.binary_cross_entropy_with_logits(logits, labels, weights)
  assert float(mean) == pytest.approx(float(loss) / 2, rel=1e-6)
  # Large logits stay finite (softplus form).
  big, _ = losses.binary_cross_entropy_with_logits(
      jnp.array([[100.0, -100.0]]), jnp.array([[0, 1]]))
  assert float(big) == pytest.approx(100.0, rel=1e-6)


@pytest.mark.parametrize('smoothing', [0.0, 0.1])
def test_matches_optax_on_a_32k_vocabulary(smoothing):
  """The gather/reduction form equals optax's one-hot cross entropy."""
  import optax  # pylint: disable=g-import-not-at-top
  vocab = 32128
  rng = np.random.RandomState(0)
  logits = jnp.asarray(rng.normal(0, 3, (2, 5, vocab)), jnp.float32)
  targets = jnp.asarray(rng.randint(0, vocab, (2, 5)))
  got, _, _ = losses.cross_entropy_with_z_loss(
      logits, targets, z_loss=0.0, label_smoothing=smoothing,
      loss_normalizing_factor=None)
  soft = optax.smooth_labels(jax.nn.one_hot(targets, vocab), smoothing *
                             vocab / (vocab - 1))  # optax spreads over all V
  conf = 1.0 - smoothing
  low = smoothing / (vocab - 1)
  floor = -(conf * math.log(conf) + smoothing * math.log(low)) if smoothing else 0
  want = jnp.sum(optax.softmax_cross_entropy(logits, soft)) - 10 * floor
  np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
