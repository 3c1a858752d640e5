"""scripts/probe_context.py's measures on inputs whose answers are known."""
import importlib.util
import os

import jax.numpy as jnp
import numpy as np
import pytest

_PATH = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'scripts',
                     'probe_context.py')
_spec = importlib.util.spec_from_file_location('probe_context', _PATH)
probe_context = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probe_context)


def test_unigram_cross_entropy_is_add_one_smoothed_frequencies():
  # train: id 1 x3, id 2 x1, vocab 4 -> counts+1 = [1, 4, 2, 1] / 8.
  got = probe_context.unigram_cross_entropy([1, 1, 1, 2], [1, 2, 3], 4)
  want = -np.mean(np.log([4 / 8, 2 / 8, 1 / 8]))
  np.testing.assert_allclose(got, want, rtol=1e-12)


def test_mlm_nll_splits_selected_positions_by_input_kind():
  mask_id, vocab = 9, 10
  inputs = jnp.array([[9, 4, 7, 5]])  # [MASK], kept, random, unselected
  targets = jnp.array([[3, 4, 6, 5]])
  weights = jnp.array([[1, 1, 1, 0]])
  logits = jnp.zeros((1, 4, vocab)).at[0, 1, 4].set(5.0)
  got = probe_context.mlm_nll_by_kind(
      logits, {'encoder_input_tokens': inputs, 'encoder_target_tokens': targets,
               'encoder_loss_weights': weights}, mask_id)
  uniform = np.log(vocab)
  np.testing.assert_allclose(got['mask'][0], uniform, rtol=1e-6)
  np.testing.assert_allclose(got['kept'][0],
                             np.log(np.exp(5.0) + vocab - 1) - 5.0, rtol=1e-6)
  np.testing.assert_allclose(got['random'][0], uniform, rtol=1e-6)
  assert [got[k][1] for k in ('mask', 'kept', 'random')] == [1, 1, 1]


def test_neighbour_sensitivity_tells_bag_of_words_from_local_context():
  tokens = jnp.arange(1, 65, dtype=jnp.int32).reshape(1, 64)
  table = jnp.eye(1000)[:, :8] * 3.0

  def bag_of_words(t):  # each position sees only its own token
    return table[t]

  def left_neighbour(t):  # each position also sees the token on its left
    return table[t] + jnp.roll(table[t], 1, axis=1)

  bow = probe_context.neighbour_sensitivity(bag_of_words, tokens, 5, 2)
  assert bow['near'] == 0.0 and bow['far'] == 0.0 and bow['self'] > 0.0
  local = probe_context.neighbour_sensitivity(left_neighbour, tokens, 5, 2)
  # Changing token 6 -> 2 moves position 5 and its right neighbour 6 (one
  # of the two distance-1..2 positions on each side: 4, 6, 3, 7) only.
  np.testing.assert_allclose(local['near'], bow['self'] / 4, rtol=1e-6)
  assert local['far'] == 0.0


def test_neighbour_sensitivity_far_distance_fits_the_row():
  tokens = jnp.arange(1, 33, dtype=jnp.int32).reshape(1, 32)
  table = jnp.eye(1000)[:, :8] * 3.0

  def whole_row(t):  # every position sees the sum of the row
    return jnp.broadcast_to(table[t].sum(1, keepdims=True), table[t].shape)

  got = probe_context.neighbour_sensitivity(whole_row, tokens, 10, 2,
                                            far_distance=16)
  # Only positions 26..31 are >= 16 away; each moves as much as the token.
  np.testing.assert_allclose(got['far'], got['self'], rtol=1e-6)
  assert got['far'] > 0.0
  with pytest.raises(ValueError, match='smaller --far_distance'):
    probe_context.neighbour_sensitivity(whole_row, tokens, 10, 2)
