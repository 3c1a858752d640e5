"""Schedules' golden values; Adafactor against a numpy T5 reference; AdamW."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from t5x_lite.configs import default
from t5x_lite import optimizers
from t5x_lite.config import ConfigError
from t5x_lite.run_config import OptimizerConfig
from t5x_lite.run_config import StepConfig


def _config(**opt):
  c = default.get_config()
  c.train.num_steps = 110
  for k, v in opt.items():
    c.optimizer[k] = v
  return OptimizerConfig.from_config(c)


def test_typed_configs_default_to_configs_default():
  c = default.get_config()
  opt = OptimizerConfig.from_config(c)
  assert opt == OptimizerConfig(num_steps=c.train.num_steps)
  assert set(c.optimizer) == {f.name for f in dataclasses.fields(opt)} - {
      'num_steps'}
  assert StepConfig.from_config(c) == StepConfig()
  c.optimizer.warmup_steps = 7
  c.train.microbatches = 4
  assert OptimizerConfig.from_config(c).warmup_steps == 7
  assert StepConfig.from_config(c).microbatches == 4


def _lr(schedule, steps):
  return [float(schedule(s)) for s in steps]


def test_rsqrt_schedule_golden():
  s = optimizers.make_schedule(
      _config(schedule='rsqrt', learning_rate=0.01, warmup_steps=100))
  # Flat at the peak through warmup, then peak * sqrt(100 / step).
  assert _lr(s, [0, 50, 100, 400, 10000]) == pytest.approx(
      [0.01, 0.01, 0.01, 0.005, 0.001], rel=1e-6)
  # T5's 1/sqrt(max(step, 10k)) is the same curve with peak 0.01, W=10k.
  s = optimizers.make_schedule(
      _config(schedule='rsqrt', learning_rate=0.01, warmup_steps=10000))
  assert float(s(40000)) == pytest.approx(1 / math.sqrt(40000), rel=1e-6)


def test_linear_schedule_golden():
  s = optimizers.make_schedule(_config(
      schedule='linear', learning_rate=1.0, warmup_steps=10, decay_steps=110,
      end_learning_rate_fraction=0.1))
  assert _lr(s, [0, 5, 10, 60, 110, 200]) == pytest.approx(
      [0.0, 0.5, 1.0, 0.55, 0.1, 0.1], abs=1e-6)


def test_cosine_schedule_golden():
  s = optimizers.make_schedule(_config(
      schedule='cosine', learning_rate=1.0, warmup_steps=10, decay_steps=0,
      end_learning_rate_fraction=0.1))  # decay_steps 0: train.num_steps=110
  # step 35: a quarter through the decay: 0.1 + 0.9 * (1 + cos(pi/4)) / 2.
  assert _lr(s, [5, 10, 35, 60, 110, 500]) == pytest.approx(
      [0.5, 1.0, 0.868198, 0.55, 0.1, 0.1], abs=1e-6)
  # Matches optax's own warmup-cosine schedule.
  ref = optax.warmup_cosine_decay_schedule(0.0, 1.0, 10, 110, 0.1)
  steps = np.arange(0, 120, 7)
  np.testing.assert_allclose(_lr(s, steps), _lr(ref, steps), atol=1e-6)


def test_constant_schedule_golden():
  s = optimizers.make_schedule(
      _config(schedule='constant', learning_rate=2e-3, warmup_steps=4))
  assert _lr(s, [0, 1, 4, 1000]) == pytest.approx([0, 5e-4, 2e-3, 2e-3])
  s = optimizers.make_schedule(
      _config(schedule='constant', learning_rate=2e-3, warmup_steps=0))
  assert float(s(0)) == pytest.approx(2e-3)


def test_bad_decay_steps_is_a_config_error():
  with pytest.raises(ConfigError, match='decay_steps'):
    optimizers.make_schedule(_config(schedule='cosine', warmup_steps=200))


def _t5_adafactor_reference(params, grads_seq, lrs):
  """Shazeer & Stern Adafactor with T5's settings, in numpy.

  decay 1 - t^-0.8, eps 1e-30, update clipping 1.0, relative step
  (lr * max(rms(param), 1e-3)), factored over the two largest dims.
  """
  p = {k: np.array(v, np.float64) for k, v in params.items()}
  v_row, v_col, v = {}, {}, {}
  for t, (grads, lr) in enumerate(zip(grads_seq, lrs), start=1):
    decay = 1.0 - t ** -0.8
    for k, g in grads.items():
      g = np.array(g, np.float64)
      g2 = g * g + 1e-30
      if g.ndim == 2:  # [32, 48]: rows keep dim 0, cols keep dim 1
        v_row[k] = decay * v_row.get(k, 0.0) + (1 - decay) * g2.mean(axis=1)
        v_col[k] = decay * v_col.get(k, 0.0) + (1 - decay) * g2.mean(axis=0)
        r = v_row[k] / v_row[k].mean()
        u = g / np.sqrt(r)[:, None] / np.sqrt(v_col[k])[None, :]
      else:
        v[k] = decay * v.get(k, 0.0) + (1 - decay) * g2
        u = g / np.sqrt(v[k])
      u = u / max(1.0, np.sqrt(np.mean(u * u)) / 1.0)
      scale = max(np.sqrt(np.mean(p[k] ** 2)), 1e-3)
      p[k] = p[k] - lr * scale * u
  return p


def test_adafactor_matches_t5_reference():
  c = _config(name='adafactor', schedule='rsqrt', learning_rate=0.01,
              warmup_steps=1, min_dim_size_to_factor=16)
  tx, schedule = optimizers.make_optimizer(c)
  rng = np.random.RandomState(0)
  params = {'w': rng.randn(32, 48).astype(np.float32),
            'scale': rng.randn(48).astype(np.float32)}
  grads_seq = [{k: rng.randn(*v.shape).astype(np.float32)
                for k, v in params.items()} for _ in range(3)]
  state = tx.init(params)
  # Factored: v_row drops the largest dim (48), v_col the other one.
  fs = state[0]
  assert fs.v_row['w'].shape == (32,) and fs.v_col['w'].shape == (48,)
  p = jax.tree.map(jnp.asarray, params)
  for g in grads_seq:
    updates, state = tx.update(g, state, p)
    p = optax.apply_updates(p, updates)
  ref = _t5_adafactor_reference(params, grads_seq, [schedule(i) for i in
                                                    range(3)])
  for k in params:
    np.testing.assert_allclose(p[k], ref[k], rtol=1e-5, atol=1e-6)


def test_adafactor_momentum_is_off_by_default():
  def has_ema(c):
    tx, _ = optimizers.make_optimizer(c)
    state = tx.init({'w': jnp.zeros((4, 4))})
    return any(isinstance(s, optax.EmaState) for s in state)
  assert not has_ema(_config(name='adafactor'))  # T5: b1 is adamw's only
  assert has_ema(_config(name='adafactor', adafactor_momentum=0.9))


def test_adamw_decay_mask_and_global_clipping():
  c = _config(name='adamw', schedule='constant', learning_rate=0.1,
              warmup_steps=0, weight_decay=0.5, grad_clip_norm=1.0)
  tx, _ = optimizers.make_optimizer(c)
  params = {'w': jnp.ones((2, 2)), 'scale': jnp.ones((2,))}
  grads = {'w': jnp.full((2, 2), 3.0), 'scale': jnp.full((2,), 4.0)}
  updates, _ = tx.update(grads, tx.init(params), params)
  # Adam's first step moves every coordinate by lr (sign of the clipped grad);
  # matrices also decay by lr * wd * param, vectors do not.
  np.testing.assert_allclose(updates['w'], -0.1 - 0.1 * 0.5, rtol=1e-5)
  np.testing.assert_allclose(updates['scale'], -0.1, rtol=1e-5)
  # Clipping happened first: the reference on pre-clipped grads agrees.
  norm = math.sqrt(4 * 9 + 2 * 16)
  clipped = jax.tree.map(lambda g: g / norm, grads)
  ref_tx = optax.adamw(0.1, weight_decay=0.5,
                       mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p))
  ref, _ = ref_tx.update(clipped, ref_tx.init(params), params)
  for k in params:
    np.testing.assert_allclose(updates[k], ref[k], rtol=1e-6)
