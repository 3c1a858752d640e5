"""Train and eval step builders: jitted once, with explicit shardings.

  rules = partitioning.logical_rules(config.mesh.rules)
  tx, schedule = optimizers.make_optimizer(OptimizerConfig.from_config(config))
  lengths = dict(config.task.feature_lengths)
  state, state_shardings = create_train_state(model, tx, mesh, rules, lengths,
                                              rng)
  train_step = make_train_step(model, tx, StepConfig.from_config(config),
                               mesh, rules, state_shardings, batch_sharding,
                               schedule=schedule)
  state, metrics = train_step(state, batch, rng)   # batch: global jax.Arrays
  abstract, shardings = abstract_params(model, mesh, rules, lengths)  # eval

A model that carries a Transformer-XL memory (memory.carries_memory) gets a
MemoryTrainState: the memory rides in the state (sharded like the batch, so
every host keeps its own streams' rows), each step reads it and writes the
next, and Orbax checkpoints it with the params; the builders then need
batch_size= (the global train batch: the memory has one row per stream).

No ConfigDict below the edge: every builder takes explicit arguments in one
order: model, the optimizer (tx), the StepConfig (run_config), the mesh, the
logical rules (partitioning.logical_rules' tuple), then what that builder
alone needs (feature_lengths for the init batch's shapes, or the shardings),
the rng last; options are keyword-only.

The state is born sharded (a jitted init with out_shardings: no host copy of
the full params); the step donates it. Inside every step the mesh and the
logical rules are in context, so the network's activation constraints apply.

Gradient accumulation (StepConfig.microbatches = M) scans over M slices of
the batch, summing gradients of the *summed* loss and the token counts, and
divides once at the end: the result equals one step on the whole batch (up to
float summation order). Microbatch m takes rows m, m+M, m+2M, ...: every
device keeps its own rows, so the split moves no data.
"""
from typing import Any, Callable, Dict, Tuple

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import optax

from t5x_lite import memory as memory_lib
from t5x_lite import models as models_lib
from t5x_lite import partitioning
from t5x_lite.run_config import StepConfig


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: updates taken (skipped ones included)
  params: Any
  opt_state: Any


@flax.struct.dataclass
class MemoryTrainState(TrainState):
  """TrainState plus the Transformer-XL memory (t5x_lite/memory.py) the
  next step continues from. Other models keep TrainState, so their
  checkpoints' trees are unchanged."""
  memory: Any = None


def _memory_specs(rules):
  """PartitionSpecs of a memory: rows sharded like the batch."""
  batch = tuple(partitioning.batch_spec(rules))
  return {'memory': P(None, *batch), 'memory_lengths': P(*batch)}


# ---- state -------------------------------------------------------------------


def _init_batch_shapes(model, feature_lengths):
  # Params do not depend on the batch; one row keeps the traced init small.
  return model.input_shapes(feature_lengths, 1)


def _with_shardings(abstract, shardings):
  """ShapeDtypeStructs that carry `shardings` (what Orbax restores into)."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      abstract, shardings)


def _abstract_params_and_specs(model, mesh, rules, feature_lengths):
  """(param ShapeDtypeStructs, their mesh PartitionSpecs from the rules)."""
  boxed = model.abstract_params(_init_batch_shapes(model, feature_lengths))
  return (partitioning.unbox(boxed),
          partitioning.params_specs(boxed, mesh, rules))


def abstract_params(model, mesh, rules, feature_lengths: Dict[str, int]
                    ) -> Tuple[Any, Any]:
  """(param ShapeDtypeStructs with shardings, NamedShardings) on `mesh`.

  No computation: what a params-only restore (eval, infer) reads into. The
  same shardings as abstract_train_state(...)[1].params. feature_lengths:
  the task's (config.task.feature_lengths), for the init batch's shapes.
  """
  params, pspecs = _abstract_params_and_specs(model, mesh, rules,
                                              feature_lengths)
  shardings = partitioning.specs_to_shardings(pspecs, mesh, params)
  return _with_shardings(params, shardings), shardings


def abstract_train_state(model, optimizer: optax.GradientTransformation,
                         mesh, rules, feature_lengths: Dict[str, int], *,
                         batch_size: int = 0
                         ) -> Tuple[TrainState, TrainState]:
  """(ShapeDtypeStructs with shardings, NamedShardings) of the train state.

  No computation: what Orbax restores into and what jit places by.
  batch_size: the global batch, for a model that carries memory.
  """
  params, pspecs = _abstract_params_and_specs(model, mesh, rules,
                                              feature_lengths)
  opt_state = jax.eval_shape(optimizer.init, params)
  ospecs = partitioning.opt_state_specs(opt_state, pspecs, params)
  step = jax.ShapeDtypeStruct((), jnp.int32)
  if memory_lib.carries_memory(model):
    if batch_size <= 0:
      raise ValueError('A model with a Transformer-XL memory needs '
                       'batch_size= (the global train batch).')
    abstract = MemoryTrainState(step=step, params=params, opt_state=opt_state,
                                memory=model.abstract_memory(batch_size))
    specs = MemoryTrainState(step=P(), params=pspecs, opt_state=ospecs,
                             memory=_memory_specs(rules))
  else:
    abstract = TrainState(step=step, params=params, opt_state=opt_state)
    specs = TrainState(step=P(), params=pspecs, opt_state=ospecs)
  shardings = partitioning.specs_to_shardings(specs, mesh, abstract)
  return _with_shardings(abstract, shardings), shardings


def create_train_state(model, optimizer: optax.GradientTransformation, mesh,
                       rules, feature_lengths: Dict[str, int], rng: jax.Array,
                       *, batch_size: int = 0
                       ) -> Tuple[TrainState, TrainState]:
  """Initialises params and optimizer state directly into their shardings
  (and an empty memory for a model that carries one: batch_size=).

  Returns:
    (state, state_shardings); state.step == 0.
  """
  _, shardings = abstract_train_state(model, optimizer, mesh, rules,
                                      feature_lengths, batch_size=batch_size)
  batch = _init_batch_shapes(model, feature_lengths)

  def init(rng):
    params = model.init_params(rng, batch)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                       opt_state=optimizer.init(params))
    if memory_lib.carries_memory(model):
      state = MemoryTrainState(step=state.step, params=params,
                               opt_state=state.opt_state,
                               memory=model.init_memory(batch_size))
    return state

  state = jax.jit(init, in_shardings=partitioning.replicated(mesh),
                  out_shardings=shardings)(rng)
  return state, shardings


# ---- train step --------------------------------------------------------------


def _split_microbatches(batch, num_micro, mesh, rules):
  """[B, ...] -> [M, B/M, ...] with microbatch m = rows m, m+M, ... ."""
  spec = partitioning.batch_spec(rules)
  def split(x):
    b = x.shape[0]
    x = x.reshape((b // num_micro, num_micro) + x.shape[1:])
    x = jnp.swapaxes(x, 0, 1)  # [M, B/M, ...]
    return jax.lax.with_sharding_constraint(
        x, NamedSharding(mesh, P(None, *spec)))
  return jax.tree.map(split, batch)


def _check_batch(batch, num_micro, num_shards):
  for k, v in batch.items():
    if v.shape[0] % (num_micro * num_shards):
      raise ValueError(
          f'batch feature {k!r} has {v.shape[0]} rows, not divisible by '
          f'train.microbatches ({num_micro}) x batch shards ({num_shards}); '
          'change train.batch_size or the mesh.')


def _where_finite(ok, new, old):
  return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


def _carry_memory(new_state: TrainState, new_memory, old_memory, is_finite
                  ) -> MemoryTrainState:
  """The next state with the memory the next batch continues from (the data
  moved on, skipped step or not). A skipped (non-finite) step's memory would
  poison the steps after it (0 * nan where attention masks a slot): it is
  emptied instead, keeping the old, finite buffers."""
  if is_finite is not None:
    new_memory = memory_lib.tree_select(is_finite, new_memory,
                                        memory_lib.cleared(old_memory))
  return MemoryTrainState(step=new_state.step, params=new_state.params,
                          opt_state=new_state.opt_state, memory=new_memory)


def make_train_step(model, optimizer: optax.GradientTransformation,
                    step_cfg: StepConfig, mesh, rules,
                    state_shardings: TrainState,
                    batch_sharding: NamedSharding, *,
                    schedule: Callable[[jax.Array], jax.Array],
                    donate: bool = True) -> Callable:
  """Jitted `train_step(state, batch, rng) -> (state, metrics)`.

  Args:
    model: a models.BaseModel.
    optimizer: the optax transformation of optimizers.make_optimizer.
    step_cfg: microbatches, loss_normalizing_factor, skip_nonfinite_updates
      (run_config.StepConfig.from_config(config)).
    mesh: the mesh the shardings live on.
    rules: partitioning.logical_rules(config.mesh.rules).
    state_shardings: from create_train_state / abstract_train_state.
    batch_sharding: partitioning.batch_sharding(mesh, rules).
    schedule: the optimizer's learning-rate schedule (make_optimizer's), for
      the learning_rate metric.
    donate: donate the input state's buffers (off to keep the input alive).
  Returns:
    train_step; metrics (replicated float32 scalars): loss (incl. z-loss),
    z_loss, accuracy, num_tokens, grad_norm (before clipping), learning_rate,
    is_finite (1.0 when loss and grad norm are finite), skipped (1.0 when
    skip_nonfinite_updates dropped this update; the step counter still moves).
  """
  num_micro = step_cfg.microbatches
  lnf = step_cfg.loss_normalizing_factor
  skip_nonfinite = step_cfg.skip_nonfinite_updates
  num_shards = partitioning.num_batch_shards(mesh, rules)
  grad_shardings = state_shardings.params
  with_memory = memory_lib.carries_memory(model)
  if with_memory and num_micro != 1:
    raise ValueError('A Transformer-XL memory carries over whole batches: '
                     'train.microbatches must be 1.')

  def grads_and_sums(params, batch, rng):
    grad_fn = jax.grad(model.loss_terms, has_aux=True)
    if num_micro == 1:
      return grad_fn(params, batch, rng, enable_dropout=True)
    micro = _split_microbatches(batch, num_micro, mesh, rules)

    def body(carry, xs):
      i, mb = xs
      g, s = grad_fn(params, mb, jax.random.fold_in(rng, i),
                     enable_dropout=True)
      g_acc, s_acc = carry
      g_acc = jax.tree.map(jnp.add, g_acc, g)
      # Keep the running sum sharded like the params (fsdp memory).
      g_acc = jax.lax.with_sharding_constraint(g_acc, grad_shardings)
      return (g_acc, jax.tree.map(jnp.add, s_acc, s)), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    zeros = jax.lax.with_sharding_constraint(zeros, grad_shardings)
    # Zeros shaped like the model's sums (SUM_KEYS plus any extra ones,
    # e.g. ELECTRA's), from an abstract trace of one microbatch.
    sums_shape = jax.eval_shape(
        lambda p, mb: grad_fn(p, mb, rng, enable_dropout=True)[1],
        params, jax.tree.map(lambda x: x[0], micro))
    sums0 = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32),
                         sums_shape)
    (grads, sums), _ = jax.lax.scan(
        body, (zeros, sums0), (jnp.arange(num_micro), micro))
    return grads, sums

  def train_step(state: TrainState, batch, rng):
    _check_batch(batch, num_micro, num_shards)
    with partitioning.activation_context(mesh, rules):
      dropout_rng = jax.random.fold_in(rng, state.step)
      if with_memory:  # one step that continues state.memory
        grads, (sums, new_memory) = jax.grad(
            model.memory_loss_terms, has_aux=True)(
                state.params, batch, state.memory, dropout_rng,
                enable_dropout=True)
      else:
        grads, sums = grads_and_sums(state.params, batch, dropout_rng)
      # One normalisation for the whole (accumulated) batch.
      denom = (jnp.where(sums['num_tokens'] > 0, sums['num_tokens'], 1.0)
               if lnf == 0 else lnf)
      grads = jax.tree.map(lambda g: (g / denom).astype(jnp.float32), grads)
      grad_norm = optax.tree.norm(grads)
      updates, opt_state = optimizer.update(grads, state.opt_state,
                                            state.params)
      params = optax.apply_updates(state.params, updates)

      metrics = models_lib.finalize_metrics(sums, lnf)
      is_finite = jnp.isfinite(metrics['loss']) & jnp.isfinite(grad_norm)
      skipped = jnp.zeros((), jnp.float32)
      if skip_nonfinite:
        params = _where_finite(is_finite, params, state.params)
        opt_state = _where_finite(is_finite, opt_state, state.opt_state)
        skipped = 1.0 - is_finite.astype(jnp.float32)
      metrics.update(
          grad_norm=grad_norm,
          learning_rate=jnp.asarray(schedule(state.step), jnp.float32),
          is_finite=is_finite.astype(jnp.float32),
          skipped=skipped)
      new_state = TrainState(step=state.step + 1, params=params,
                             opt_state=opt_state)
      if with_memory:
        new_state = _carry_memory(new_state, new_memory, state.memory,
                                  is_finite if skip_nonfinite else None)
    return new_state, metrics

  replicated = partitioning.replicated(mesh)
  return jax.jit(
      train_step,
      in_shardings=(state_shardings, batch_sharding, replicated),
      out_shardings=(state_shardings, replicated),
      donate_argnums=(0,) if donate else ())


# ---- eval and scoring --------------------------------------------------------


def make_eval_step(model, mesh, rules, params_shardings,
                   batch_sharding: NamedSharding) -> Callable:
  """Jitted `eval_step(params, batch) -> dict of sums` (models.SUM_KEYS).

  Add the sums over batches, then `models.finalize_metrics(sums)` for the
  per-token loss, z_loss and accuracy.
  """

  def eval_step(params, batch) -> Dict[str, jax.Array]:
    with partitioning.activation_context(mesh, rules):
      return model.eval_fn(params, batch)

  return jax.jit(eval_step, in_shardings=(params_shardings, batch_sharding),
                 out_shardings=partitioning.replicated(mesh))


def memory_shardings(mesh, rules, memory):
  """NamedShardings of a memory (rows like the batch)."""
  return partitioning.specs_to_shardings(_memory_specs(rules), mesh, memory)


def make_memory_eval_step(model, mesh, rules, params_shardings,
                          batch_sharding: NamedSharding,
                          memory_sharding) -> Callable:
  """Jitted `eval_step(params, batch, memory) -> (sums, next memory)` for a
  model that carries a Transformer-XL memory (no dropout)."""

  def eval_step(params, batch, memory):
    with partitioning.activation_context(mesh, rules):
      _, (sums, new_memory) = model.memory_loss_terms(
          params, batch, memory, None, enable_dropout=False)
      return sums, new_memory

  return jax.jit(
      eval_step,
      in_shardings=(params_shardings, batch_sharding, memory_sharding),
      out_shardings=(partitioning.replicated(mesh), memory_sharding))


def make_score_step(model, mesh, rules, params_shardings,
                    batch_sharding: NamedSharding) -> Callable:
  """Jitted `score_step(params, batch) -> [batch] log-likelihood` (sharded
  like the batch), for seqio scoring evals."""

  def score_step(params, batch):
    with partitioning.activation_context(mesh, rules):
      return model.score_batch(params, batch)

  return jax.jit(score_step, in_shardings=(params_shardings, batch_sharding),
                 out_shardings=batch_sharding)
