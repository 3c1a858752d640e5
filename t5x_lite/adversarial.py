"""Adversarial training on the input embeddings: FGM and PGD (FreeLB-style).

    model = adversarial.for_training(objectives.build_model(config), config)

wraps the model a run trains (train_setup.build) when config.adversarial.method
is set; eval, scoring and decoding keep the wrapped model's clean paths. The
perturbation `delta` is added to each stack's embedded input tokens, the
`self.perturb('token_embeddings', x)` line of stacks.Encoder and
stacks.Decoder: flax's 'perturbations' collection, a no-op unless a value is
passed, whose gradient is d loss / d embeddings.

  fgm  Miyato et al. 2017: one gradient g of the clean loss w.r.t. the
       embeddings; delta = epsilon * g / ||g|| (norm 'l2') or
       epsilon * sign(g) ('linf'); loss = clean + weight * L(x + delta).
  pgd  FreeLB (Zhu et al. 2020): `steps` ascent steps from delta = 0,
       delta <- project_epsilon(delta + step_size * direction(g)), each step's
       g taken at the current delta; the parameter gradients of every
       adversarial pass are averaged (FreeLB's "free" gradients);
       loss = clean + weight * mean over steps of L(x + delta_t). steps=1 with
       step_size=epsilon is exactly fgm.

Norms: 'l2' over each example's whole embedded sequence ([len, embed], as FGM
does for a sequence; padding gets no gradient, so it is never perturbed);
'linf' per element. What is perturbed: the encoder's input (encoder-only,
encoder-decoder) or the decoder's (decoder-only). An encoder-decoder's
decoder input is the teacher-forced target prefix, not the text being
classified or translated: perturbing it trains robustness to a corrupted
prefix, which FGM/FreeLB do not aim at, so it is an option
(perturb_decoder), off by default.

Cost: every pass is one forward and one backward of the network. They run in
the forward of a custom VJP, so one backward gives a pass's parameter
gradient and delta's gradient together (as PyTorch's loss.backward() does for
FGM): fgm is 2 passes per step, pgd steps + 1. The same dropout rng serves
every pass of a step (FreeLB: the same dropout mask in each ascent step, so
the loss change is the perturbation's). Step metrics: adversarial_loss (per
target token, mean over the adversarial passes; `loss` stays the clean one),
adversarial_delta_norm (mean per example of the last delta's norm),
adversarial_passes (passes per step: the extra cost; step_time_s beside it
measures it). flops_per_step counts every pass, so MFU stays honest.
"""
import copy
import dataclasses
from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp

from t5x_lite import partitioning
from t5x_lite.model_config import ConfigError

METHODS = ('', 'fgm', 'pgd')
NORMS = ('l2', 'linf')
COLLECTION = 'perturbations'
# Smallest gradient norm divided by: an example with no gradient (a row of
# padding) gets delta 0 rather than NaN.
_TINY = 1e-12


@dataclasses.dataclass(frozen=True)
class AdversarialOptions:
  """config.adversarial, typed (configs/default.py has each key's comment)."""
  method: str = ''
  epsilon: float = 1.0
  steps: int = 1
  step_size: float = 0.0
  norm: str = 'l2'
  weight: float = 1.0
  perturb_decoder: bool = False

  @property
  def alpha(self) -> float:
    """The ascent step: fgm's is epsilon; pgd's step_size (0: epsilon)."""
    if self.method == 'fgm' or not self.step_size:
      return float(self.epsilon)
    return float(self.step_size)

  @property
  def num_steps(self) -> int:
    return 1 if self.method == 'fgm' else int(self.steps)

  @property
  def passes(self) -> int:
    """Forward+backward passes of the network per step (1: clean only)."""
    return 1 + self.num_steps if self.method else 1


def options_from(config) -> AdversarialOptions:
  """config.adversarial as AdversarialOptions (off when the group is absent,
  as in configs saved before it existed)."""
  group = config.get('adversarial') if hasattr(config, 'get') else None
  return AdversarialOptions(**dict(group or {}))


def check(config):
  """ConfigError (one line naming the fix) for settings it cannot train."""
  o = options_from(config)
  if o.method not in METHODS:
    raise ConfigError(
        f'adversarial.method={o.method!r} is not one of '
        f"'' (off), 'fgm', 'pgd'; set --config.adversarial.method=fgm.")
  if not o.method:
    return
  if o.norm not in NORMS:
    raise ConfigError(f'adversarial.norm={o.norm!r} is not one of '
                      f'{", ".join(NORMS)}; set --config.adversarial.norm=l2.')
  if not o.epsilon > 0:
    raise ConfigError(f'adversarial.epsilon={o.epsilon} must be > 0 (the '
                      'norm of the perturbation); e.g. '
                      '--config.adversarial.epsilon=1.0.')
  if o.steps < 1:
    raise ConfigError(f'adversarial.steps={o.steps} must be >= 1 (PGD '
                      'ascent steps); set --config.adversarial.steps=1.')
  if o.method == 'fgm' and o.steps != 1:
    raise ConfigError(
        f'adversarial.steps={o.steps} but fgm takes one step; set '
        '--config.adversarial.method=pgd for several, or steps=1.')
  if o.step_size < 0:
    raise ConfigError(f'adversarial.step_size={o.step_size} must be >= 0 '
                      '(0: epsilon).')
  if o.weight < 0:
    raise ConfigError(f'adversarial.weight={o.weight} must be >= 0 (the '
                      'adversarial loss is added to the clean one times it).')


def for_training(model, config):
  """The model a run of `config` trains: `model` itself when
  config.adversarial.method is '', else AdversarialModel(model)."""
  check(config)
  return wrap(model, options_from(config),
              dict(config.task.feature_lengths))


def wrap(model, options: AdversarialOptions, feature_lengths=None):
  """AdversarialModel over `model` (`model` itself when options.method is
  ''). With `feature_lengths` the model is probed once (abstractly) so a
  model it cannot perturb fails here, before anything compiles."""
  if not options.method:
    return model
  wrapped = AdversarialModel(model, options)
  if feature_lengths is not None:
    batch = model.input_shapes(feature_lengths, 1)
    params = partitioning.unbox(model.abstract_params(batch))
    wrapped.perturbation_shapes(params, batch, None, False)
  return wrapped


# ---- the network with a delta ------------------------------------------------


class _PerturbedModule:
  """Stands in for the model's flax module: apply() passes `deltas` as the
  'perturbations' collection (deltas None: records the collection's shapes
  instead, in `seen`). Everything else is the module's."""

  def __init__(self, module, deltas=None):
    self._module = module
    self._deltas = deltas
    self.seen = []

  def __getattr__(self, name):
    return getattr(self._module, name)

  def apply(self, variables, *args, mutable=False, **kwargs):
    if self._deltas is not None:
      return self._module.apply(dict(variables, **{COLLECTION: self._deltas}),
                                *args, mutable=mutable, **kwargs)
    # Probe: a mutable collection makes every perturb() create its zeros.
    if mutable is False:
      cols = [COLLECTION]
    elif mutable is True:
      cols = True
    else:
      cols = ([mutable] if isinstance(mutable, str) else list(mutable)) + [
          COLLECTION]
    out, state = self._module.apply(variables, *args, mutable=cols, **kwargs)
    state = dict(state)
    self.seen.append(jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
        state.pop(COLLECTION, {})))
    return out if mutable is False else (out, state)


def _with_module(model, module):
  """A shallow copy of `model` running `module` (the model's own loss,
  features and heads, unchanged)."""
  clone = copy.copy(model)
  clone.module = module
  return clone


def _path_str(path) -> str:
  return '/'.join(str(getattr(k, 'key', k)) for k in path)


# ---- delta: direction, projection, norm --------------------------------------


def _example_axes(x):
  return tuple(range(1, x.ndim))  # all but the leading batch axis


def _l2(x):
  return jnp.sqrt(jnp.sum(jnp.square(x), axis=_example_axes(x),
                          keepdims=True))  # [batch, 1, 1]


def direction(g, norm: str):
  """The unit step along g: g / ||g||_2 per example, or sign(g)."""
  g = g.astype(jnp.float32)
  if norm == 'linf':
    return jnp.sign(g)
  return g / jnp.maximum(_l2(g), _TINY)


def project(delta, epsilon: float, norm: str):
  """delta onto the ball of radius epsilon (per example for l2)."""
  if norm == 'linf':
    return jnp.clip(delta, -epsilon, epsilon)
  return delta * jnp.minimum(1.0, epsilon / jnp.maximum(_l2(delta), _TINY))


def example_norms(delta, norm: str):
  """[batch] norm of each example's delta."""
  if norm == 'linf':
    return jnp.max(jnp.abs(delta), axis=_example_axes(delta))
  return _l2(delta).reshape(delta.shape[0])


# ---- the wrapped model -------------------------------------------------------


class AdversarialModel:
  """`model` whose loss_terms trains on adversarially perturbed embeddings.

  Everything else (apply, eval_fn, score_batch, init, input_shapes) is the
  wrapped model's, whose own loss_terms stays the clean one: eval and decode
  never see a perturbation.
  """

  def __init__(self, model, options: AdversarialOptions):
    self.inner = model
    self.options = options

  def __getattr__(self, name):
    if name in ('inner', 'options'):  # not set yet (copy, pickle)
      raise AttributeError(name)
    return getattr(self.inner, name)

  # ---- one pass --------------------------------------------------------------

  def loss_at(self, params, batch, dropout_rng, deltas, *,
              enable_dropout=True):
    """The wrapped model's (loss sum, sums) with `deltas` (the
    'perturbations' collection) added to the embedded inputs."""
    module = _PerturbedModule(self.inner.module, deltas)
    return _with_module(self.inner, module).loss_terms(
        params, batch, dropout_rng, enable_dropout=enable_dropout)

  def perturbation_shapes(self, params, batch, dropout_rng=None,
                          enable_dropout=True) -> Tuple[Any, Any]:
    """(ShapeDtypeStructs of the 'perturbations' collection, the same tree of
    bools: perturbed or held at zero), from an abstract trace of the loss."""
    module = _PerturbedModule(self.inner.module)
    probe = _with_module(self.inner, module)
    jax.eval_shape(
        lambda p, b, r: probe.loss_terms(p, b, r,
                                         enable_dropout=enable_dropout)[0],
        params, batch, dropout_rng)
    name = type(self.inner).__name__
    if len(module.seen) != 1:
      raise ConfigError(
          f'adversarial.method={self.options.method!r} needs a model whose '
          f'loss runs its network once; {name} runs it {len(module.seen)} '
          "times. Set --config.adversarial.method='' for this objective.")
    shapes = module.seen[0]
    paths = [_path_str(p) for p, _ in
             jax.tree_util.tree_flatten_with_path(shapes)[0]]
    if not paths:
      raise ConfigError(
          f'adversarial.method={self.options.method!r}: the network of {name}'
          " has no perturb('token_embeddings', ...) site (stacks.Encoder/"
          "Decoder have one); set --config.adversarial.method=''.")
    has_encoder = any('encoder' in p.split('/') for p in paths)

    def perturbed(path, _):
      parts = _path_str(path).split('/')
      if 'decoder' in parts and has_encoder:
        return bool(self.options.perturb_decoder)
      return True

    mask = jax.tree_util.tree_map_with_path(perturbed, shapes)
    return shapes, mask

  # ---- the adversarial loss --------------------------------------------------

  def perturbation(self, params, batch, dropout_rng=None, *,
                   enable_dropout=False):
    """The final delta of one step's ascent on `batch` (float32 tree of the
    'perturbations' collection; unperturbed sites are zeros)."""
    return self._passes(params, batch, dropout_rng, enable_dropout)[2]

  def _passes(self, params, batch, dropout_rng, enable_dropout):
    """((total loss sum, sums), param grads of the total, last delta)."""
    o = self.options
    shapes, mask = self.perturbation_shapes(params, batch, dropout_rng,
                                            enable_dropout)
    dtypes = jax.tree.map(lambda s: s.dtype, shapes)
    grad_fn = jax.value_and_grad(
        lambda p, d: self.loss_at(p, batch, dropout_rng,
                                  jax.tree.map(lambda x, t: x.astype(t), d,
                                               dtypes),
                                  enable_dropout=enable_dropout),
        argnums=(0, 1), has_aux=True)

    delta = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), shapes)
    (clean, sums), (grads, g_delta) = grad_fn(params, delta)
    adv_loss = jnp.zeros((), jnp.float32)
    share = 1.0 / o.num_steps
    for _ in range(o.num_steps):
      # [batch, len, embed] per site; unperturbed sites stay zero.
      delta = jax.tree.map(
          lambda d, g, m: project(d + o.alpha * direction(g, o.norm),
                                  o.epsilon, o.norm) if m else d,
          delta, g_delta, mask)
      (adv, _), (g_adv, g_delta) = grad_fn(params, delta)
      adv_loss = adv_loss + share * adv
      grads = jax.tree.map(lambda a, b: a + o.weight * share * b, grads,
                           g_adv)
    total = clean + o.weight * adv_loss

    norms = [example_norms(d, o.norm) for d, m in
             zip(jax.tree.leaves(delta), jax.tree.leaves(mask)) if m]
    sums = dict(sums)
    sums.update(
        adversarial_loss_num=adv_loss,
        adversarial_loss_den=sums['num_tokens'],
        adversarial_delta_norm_num=sum(jnp.sum(n) for n in norms),
        adversarial_delta_norm_den=jnp.asarray(
            sum(n.shape[0] for n in norms), jnp.float32),
        adversarial_passes_num=jnp.asarray(o.passes, jnp.float32),
        adversarial_passes_den=jnp.ones((), jnp.float32))
    return (total, sums), grads, delta

  def loss_terms(self, params, batch, dropout_rng=None, *,
                 enable_dropout: bool = True
                 ) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """(clean + weight * adversarial loss sum, sums with the adversarial
    metrics); its gradient w.r.t. params is the one computed by the passes
    (delta is a constant of the update, as in FGM/FreeLB: no second order)."""

    @jax.custom_vjp
    def adversarial_loss(params, batch, rng):
      return self._passes(params, batch, rng, enable_dropout)[0]

    def fwd(params, batch, rng):
      out, grads, _ = self._passes(params, batch, rng, enable_dropout)
      return out, grads

    def bwd(grads, cotangents):
      ct_loss = cotangents[0]  # the sums are metrics: no gradient
      return (jax.tree.map(lambda g: (ct_loss * g).astype(g.dtype), grads),
              None, None)

    adversarial_loss.defvjp(fwd, bwd)
    return adversarial_loss(params, batch, dropout_rng)

  def loss_fn(self, params, batch, dropout_rng=None, *,
              enable_dropout: bool = True):
    from t5x_lite import models  # pylint: disable=g-import-not-at-top
    _, sums = self.loss_terms(params, batch, dropout_rng,
                              enable_dropout=enable_dropout)
    metrics = models.finalize_metrics(sums, self.inner.loss_normalizing_factor)
    return metrics['loss'], metrics

  def flops_per_step(self, feature_lengths, batch_size: int) -> float:
    """Every pass's training FLOPs (the wrapped model's x passes)."""
    return self.options.passes * self.inner.flops_per_step(feature_lengths,
                                                           batch_size)
