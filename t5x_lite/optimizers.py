"""Optax chains and learning-rate schedules from a run_config.OptimizerConfig.

`make_optimizer(OptimizerConfig.from_config(config)) -> (tx, schedule)`;
`schedule(step)` is the learning rate the step-th update uses (step counts
updates applied so far, from 0).

Schedules (peak = learning_rate, W = warmup_steps, D = decay_steps or
num_steps (train.num_steps) when 0, end = end_learning_rate_fraction * peak):
  rsqrt     T5's inverse square root: peak * sqrt(W / max(step, W)). As in T5
            and T5X ('constant * rsqrt_decay' with base 1.0 and 10k warmup
            steps is 0.01 flat, then 1/sqrt(step)), "warmup" is a flat
            plateau at the peak, not a ramp; the peak equals learning_rate so
            the knob means the same in every schedule. W=0 acts as W=1.
  linear    0 -> peak linearly over W steps, then linearly to end at step D.
  cosine    0 -> peak linearly over W steps, then cosine to end at step D.
  constant  0 -> peak linearly over W steps, then peak.
D counts from step 0 (warmup included), as optax's warmup schedules do.

Optimizers:
  adafactor  optax.adafactor with T5's settings from the config: decay_rate
             0.8, update clipping 1.0, relative step
             (multiply_by_parameter_scale, min scale 1e-3), factored second
             moments for arrays with two dims >= min_dim_size_to_factor, no
             momentum unless adafactor_momentum > 0.
             With scan_layers the stacked [layers, ...] arrays are one block for
             the update clipping and the parameter scale (optax works per
             array); the factored moments stay per layer.
  adamw      optax.adamw(b1, b2, eps, weight_decay); decay applies to arrays
             with ndim >= 2 (matrices and embeddings), not to norm scales.
Global-norm clipping (grad_clip_norm > 0) runs first, on the raw gradients.
"""
from typing import Callable, Tuple

import jax
import jax.numpy as jnp
import optax

from t5x_lite.config import ConfigError
from t5x_lite.run_config import OptimizerConfig

Schedule = Callable[[jax.Array], jax.Array]


# ---- schedules ---------------------------------------------------------------


def _warmup(step, peak, warmup_steps):
  """Linear ramp 0 -> peak over warmup_steps (factor 1 once past it)."""
  if warmup_steps <= 0:
    return jnp.asarray(peak, jnp.float32)
  return peak * jnp.minimum(1.0, step / warmup_steps)


def make_schedule(opt: OptimizerConfig) -> Schedule:
  """The learning-rate schedule `opt` describes (module doc)."""
  peak = opt.learning_rate
  warmup = opt.warmup_steps
  decay_steps = opt.decay_steps or opt.num_steps
  end = peak * opt.end_learning_rate_fraction
  name = opt.schedule

  if name in ('linear', 'cosine') and decay_steps <= warmup:
    raise ConfigError(
        f'optimizer.decay_steps ({decay_steps}, or train.num_steps when 0) '
        f'must exceed optimizer.warmup_steps ({warmup}) for the {name} '
        'schedule.')

  def rsqrt(step):
    step = jnp.asarray(step, jnp.float32)
    w = float(max(warmup, 1))
    return peak * jnp.sqrt(w / jnp.maximum(step, w))

  def linear(step):
    step = jnp.asarray(step, jnp.float32)
    frac = jnp.clip((step - warmup) / (decay_steps - warmup), 0.0, 1.0)
    decayed = peak + (end - peak) * frac
    return jnp.where(step < warmup, _warmup(step, peak, warmup), decayed)

  def cosine(step):
    step = jnp.asarray(step, jnp.float32)
    frac = jnp.clip((step - warmup) / (decay_steps - warmup), 0.0, 1.0)
    decayed = end + (peak - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
    return jnp.where(step < warmup, _warmup(step, peak, warmup), decayed)

  def constant(step):
    step = jnp.asarray(step, jnp.float32)
    return _warmup(step, peak, warmup)

  schedules = dict(rsqrt=rsqrt, linear=linear, cosine=cosine,
                   constant=constant)
  if name not in schedules:
    raise ConfigError(f'optimizer.schedule={name!r} is not one of '
                      f'{", ".join(schedules)}.')
  return schedules[name]


# ---- optimizers --------------------------------------------------------------


def _decay_mask(params):
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(opt: OptimizerConfig
                   ) -> Tuple[optax.GradientTransformation, Schedule]:
  """`(tx, schedule)` for `opt` (see the module doc)."""
  o = opt
  schedule = make_schedule(opt)
  if o.name == 'adafactor':
    tx = optax.adafactor(
        learning_rate=schedule,
        min_dim_size_to_factor=o.min_dim_size_to_factor,
        decay_rate=o.decay_rate,
        multiply_by_parameter_scale=o.multiply_by_parameter_scale,
        clipping_threshold=(o.clipping_threshold
                            if o.clipping_threshold > 0 else None),
        momentum=o.adafactor_momentum if o.adafactor_momentum > 0 else None,
        weight_decay_rate=o.weight_decay if o.weight_decay > 0 else None,
        factored=o.factored)
  elif o.name == 'adamw':
    tx = optax.adamw(
        learning_rate=schedule, b1=o.b1, b2=o.b2, eps=o.eps,
        weight_decay=o.weight_decay, mask=_decay_mask)
  else:
    raise ConfigError(
        f'optimizer.name={o.name!r} is not one of adafactor, adamw.')
  if o.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(o.grad_clip_norm), tx)
  return tx, schedule
