"""The training loop: `train_and_evaluate(config, workdir) -> final metrics`.

One function, called by train.py and by tests:

  1. builds the model, optimizer, mesh and the jitted train/eval steps;
  2. resumes from the newest usable checkpoint in workdir/checkpoints (state
     and data position: the data iterator skips exactly the batches already
     consumed, so a resumed run sees the same batches as an uninterrupted one),
     or starts fresh, optionally from the params of checkpoint.restore_from;
  3. trains to train.num_steps, reading each step's metrics one step late so
     dispatch stays asynchronous; logs a progress line and writes
     metrics.jsonl + TensorBoard every train.log_every_steps; evaluates the
     teacher-forced loss on task.eval_split every eval.every_steps and at the
     end; checkpoints every checkpoint.every_steps and at the end;
  4. on SIGTERM (preemption) finishes the step, checkpoints it and returns.

tokens/s counts every input and target position of the global batch (padding
included); MFU divides the analytic model FLOPs (t5x_lite/flops.py) by the
accelerators' dense bf16 peak (metrics.PEAK_FLOPS; null on CPUs unless
train.peak_flops_per_device is set).

A non-finite loss or gradient norm stops the run with an error naming the step
(nothing is checkpointed after the last good step), unless
train.skip_nonfinite_updates, in which case the update is dropped and counted.
"""
import json
import os
import signal
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

from absl import logging
import jax
import numpy as np

from t5x_lite import checkpoints
from t5x_lite import config as config_lib
from t5x_lite import distributed
from t5x_lite import flops
from t5x_lite import metrics as metrics_lib
from t5x_lite import models
from t5x_lite import optimizers
from t5x_lite import partitioning
from t5x_lite import trainer
from t5x_lite.config import ConfigError

CONFIG_FILE = 'config.json'
# A hook runs after every step is dispatched: hook(step) (tests use it to
# send signals at a known step; a profiler could start and stop there).
Hook = Callable[[int], None]


class NonFiniteError(FloatingPointError):
  """A train step produced a non-finite loss or gradient norm."""


# ---- preemption ---------------------------------------------------------------


class PreemptionWatcher:
  """SIGTERM -> checkpoint at the current step and stop.

  One process: a Python SIGTERM handler sets a flag the loop polls after each
  step. Several processes: JAX's distributed runtime already turns SIGTERM
  into a preemption notice, and `reached_preemption_sync_point(step)` makes
  every process stop at the same step (a Python handler would replace JAX's).
  """

  def __init__(self):
    self._flag = threading.Event()
    self._previous = None
    self._installed = False

  def __enter__(self):
    if jax.process_count() == 1 and (
        threading.current_thread() is threading.main_thread()):
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
      self._installed = True
    return self

  def __exit__(self, *exc):
    if self._installed:
      signal.signal(signal.SIGTERM, self._previous)
      self._installed = False

  def _on_sigterm(self, signum, frame):
    del signum, frame
    if not self._flag.is_set():
      logging.warning('SIGTERM: finishing this step, then checkpointing.')
    self._flag.set()

  def reached(self, step: int) -> bool:
    if self._flag.is_set():
      return True
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      try:
        return bool(multihost_utils.reached_preemption_sync_point(step))
      except RuntimeError:  # no preemption sync manager in this runtime
        return False
    return False


# ---- data -------------------------------------------------------------------------


def _check_task(config):
  """Unknown task names fail here, before anything compiles."""
  from t5x_lite import tasks  # pylint: disable=g-import-not-at-top
  names = tasks.registered_names()
  if config.task.name not in names:
    raise ConfigError(
        f'task.name={config.task.name!r} is not a registered task or '
        f'mixture.{config_lib._closest(config.task.name, names)} Known: '  # pylint: disable=protected-access
        f'{", ".join(sorted(names))}.')


def _float_weights(batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """Loss weights as float32 (seqio gives int32; the loss casts anyway).

  One dtype for every batch, so a batch with fractional or non-finite weights
  runs the same compiled step instead of compiling another.
  """
  return {k: (v.astype(np.float32) if k.endswith('loss_weights') else v)
          for k, v in batch.items()}


def _poison(batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """train.inject_nan_at_step: NaN loss weights, as a broken input would."""
  out = dict(batch)
  hit = False
  for k, v in batch.items():
    if k.endswith('loss_weights'):
      out[k] = np.where(v > 0, np.nan, 0.0).astype(np.float32)
      hit = True
  if not hit:
    raise ConfigError('train.inject_nan_at_step needs a batch with '
                      '*_loss_weights features.')
  return out


def _batch_shapes(batch) -> str:
  return ', '.join(f'{k}: {tuple(v.shape)} {v.dtype}'
                   for k, v in sorted(batch.items()))


class _EvalData:
  """Teacher-forced eval batches: the same ones at every eval.

  With eval.num_batches > 0 the first evaluation keeps them in host memory;
  -1 reads the whole split each time (one epoch, every process the same
  number of batches).
  """

  def __init__(self, config, host: distributed.HostShard):
    self.config = config
    self.host = host
    self.num_batches = int(config.eval.num_batches)
    self._cache: Optional[List[Dict[str, np.ndarray]]] = None

  def _dataset(self, num_epochs):
    from t5x_lite import tasks  # pylint: disable=g-import-not-at-top
    return tasks.get_dataset(
        self.config, self.config.task.eval_split,
        batch_size=self.host.per_host_batch_size, shard_id=self.host.index,
        num_shards=self.host.num_shards, seed=self.config.train.seed,
        shuffle=False, num_epochs=num_epochs)

  def __iter__(self) -> Iterator[Dict[str, np.ndarray]]:
    if self.num_batches == 0:
      return iter(())
    if self.num_batches > 0:
      if self._cache is None:
        it = self._dataset(num_epochs=None)  # repeats if the split is small
        self._cache = [next(it) for _ in range(self.num_batches)]
      return iter(self._cache)
    return self._whole_split()

  def _whole_split(self):
    it = self._dataset(num_epochs=1)
    while True:
      batch = next(it, None)
      if not _all_processes_agree(batch is not None):
        return
      yield batch


def _all_processes_agree(ok: bool) -> bool:
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


# ---- metrics bookkeeping ------------------------------------------------------------


# Train-step metrics that are not per-step means of the model's metrics.
_STEP_KEYS = frozenset(('num_tokens', 'learning_rate', 'is_finite', 'skipped'))


class _Window:
  """Means of the per-step train metrics since the last log line."""
  MEAN_KEYS = ('loss', 'z_loss', 'accuracy', 'grad_norm')

  def __init__(self):
    self.reset()

  def reset(self):
    self.sums = {k: 0.0 for k in self.MEAN_KEYS}
    self.count = 0
    self.finite_count = 0

  def add(self, m: Dict[str, float]):
    self.count += 1
    if m.get('is_finite', 1.0) > 0:  # skipped steps would poison the mean
      self.finite_count += 1
      # MEAN_KEYS, plus an objective's own metrics (ELECTRA's disc_accuracy...)
      for k in set(self.MEAN_KEYS) | (set(m) - _STEP_KEYS):
        self.sums[k] = self.sums.get(k, 0.0) + float(m[k])

  def means(self) -> Dict[str, float]:
    n = max(self.finite_count, 1)
    if not self.finite_count:
      return {k: float('nan') for k in self.MEAN_KEYS}
    return {k: v / n for k, v in self.sums.items()}


def _progress_line(step, num_steps, values, rates, skipped) -> str:
  def fmt(v, spec):
    return '-' if v is None or not np.isfinite(v) else format(v, spec)
  parts = [f'step {step}/{num_steps}',
           f'loss {fmt(values.get("loss"), ".4f")}',
           f'acc {fmt(values.get("accuracy"), ".3f")}',
           f'lr {fmt(values.get("learning_rate"), ".2e")}',
           f'{fmt(rates.get("steps_per_s"), ".2f")} steps/s',
           f'{fmt(rates.get("tokens_per_s"), ",.0f")} tokens/s',
           f'mfu {fmt(rates.get("mfu"), ".1%")}',
           f'ETA {metrics_lib.format_duration(rates.get("eta_s"))}']
  if skipped:
    parts.append(f'skipped {skipped}')
  return '  '.join(parts)


def _history_eval_losses(workdir: str) -> List[tuple]:
  """(step, eval/loss) of every eval in metrics.jsonl, earlier runs included."""
  path = os.path.join(workdir, metrics_lib.METRICS_FILE)
  if not os.path.exists(path):
    return []
  out = []
  for rec in metrics_lib.read_metrics(path):
    if rec.get('eval/loss') is not None:
      out.append((rec['step'], rec['eval/loss']))
  return out


def _write_config(config, workdir: str):
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, CONFIG_FILE)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True) + '\n')
  os.replace(tmp, path)


def _config_dict(config) -> Dict[str, Any]:
  return json.loads(config.to_json_best_effort())


def _warn_on_config_drift(saved: Dict[str, Any], config):
  """Changes that make a resumed data position mean something else."""
  now = _config_dict(config)
  for group, key in (('task', 'name'), ('task', 'feature_lengths'),
                     ('task', 'pack'), ('train', 'batch_size'),
                     ('train', 'seed')):
    before = saved.get(group, {}).get(key)
    if before is not None and before != now[group][key]:
      logging.warning(
          'Resuming with %s.%s=%r, but the checkpoint was trained with %r: the '
          'data position is restored as a batch count and will not reproduce '
          'the uninterrupted run.', group, key, now[group][key], before)


# ---- the loop -------------------------------------------------------------------------


def train_and_evaluate(config, workdir: str, *,
                       hooks: Sequence[Hook] = ()) -> Dict[str, Any]:
  """Trains `config` in `workdir` (resuming if it holds checkpoints).

  Args:
    config: a validated ConfigDict (configs/default.py schema).
    workdir: checkpoints/, metrics.jsonl, TensorBoard events and config.json.
    hooks: callables run with the step number after each step is dispatched.
  Returns:
    final metrics: step, loss/accuracy (the last log window), eval/loss,
    first_eval_loss/last_eval_loss (over the workdir's history),
    skipped_steps, preempted, steps_per_s.
  Raises:
    ConfigError: a config problem, before anything compiles.
    NonFiniteError: a non-finite step without train.skip_nonfinite_updates.
    checkpoints.CheckpointError: a checkpoint could not be read or written.
  """
  # From here on SIGTERM checkpoints and returns instead of killing the
  # process, set-up and compilation included.
  with PreemptionWatcher() as preemption:
    return _train(config, workdir, hooks, preemption)


def _train(config, workdir: str, hooks: Sequence[Hook],
           preemption: PreemptionWatcher) -> Dict[str, Any]:
  """train_and_evaluate's body."""
  workdir = os.path.abspath(workdir)
  config_lib.validate(config)
  _check_task(config)
  from t5x_lite import tasks  # pylint: disable=g-import-not-at-top

  # ---- model, optimizer, mesh -------------------------------------------------
  model = models.from_config(config)
  tx, schedule = optimizers.make_optimizer(config)
  mesh = partitioning.make_mesh(config.mesh)
  rules = partitioning.logical_rules(config)
  batch_sharding = partitioning.batch_sharding(mesh, rules)
  host = distributed.host_shard(config.train.batch_size, batch_sharding)
  eval_batch = int(config.eval.batch_size) or int(config.train.batch_size)
  shards = partitioning.num_batch_shards(mesh, rules)
  if eval_batch % shards:
    raise ConfigError(
        f'eval.batch_size={eval_batch} is not divisible by the {shards} batch '
        'shards (mesh data*fsdp); change eval.batch_size.')
  eval_host = distributed.host_shard(eval_batch, batch_sharding)
  abstract_state, state_shardings = trainer.abstract_train_state(
      model, tx, config, mesh)
  logging.info('mesh %s; %d processes; this one reads input shard %d/%d '
               '(%d rows per step)', dict(mesh.shape), jax.process_count(),
               host.index, host.num_shards, host.per_host_batch_size)

  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
  _write_config(config, workdir)

  # ---- state: resume, or init (optionally from restore_from params) -----------
  ckpt = checkpoints.Checkpointer(
      checkpoints.checkpoint_dir(workdir), keep=int(config.checkpoint.keep),
      async_save=bool(config.checkpoint.async_save))
  rng = jax.random.PRNGKey(int(config.train.seed))
  init_rng, dropout_rng = jax.random.split(rng)
  restored = ckpt.restore(abstract_state)
  data_position = {}
  if restored is not None:
    state = restored.state
    data_position = restored.data
    _warn_on_config_drift(restored.config, config)
    logging.info('Resumed from %s/%d.', ckpt.directory, restored.step)
  else:
    state, _ = trainer.create_train_state(model, tx, config, mesh, init_rng)
    if config.checkpoint.restore_from:
      params = checkpoints.restore_params(config.checkpoint.restore_from,
                                          abstract_state.params)
      state = state.replace(params=params)
      logging.info('Initialised params from %s (fresh optimizer state).',
                   config.checkpoint.restore_from)
  start_step = int(jax.device_get(state.step))
  num_steps = int(config.train.num_steps)

  # ---- data ---------------------------------------------------------------------
  pid = str(jax.process_index())
  consumed = int(data_position.get('batches_consumed', {}).get(pid, 0))
  saved_processes = data_position.get('process_count', jax.process_count())
  if saved_processes != jax.process_count():
    logging.warning(
        'The checkpoint was written by %d processes, this run has %d: each '
        'process skips %d batches of its new input shard, which is not the '
        'data an uninterrupted run would see next.', saved_processes,
        jax.process_count(), consumed)
  data_seed = int(config.train.seed)
  if restored is not None and not config.train.data_iterator_checkpointing:
    # No saved position: a fresh order rather than replaying the first batches.
    consumed, data_seed = 0, data_seed + start_step
    logging.warning('train.data_iterator_checkpointing=False: the input '
                    'restarts with seed %d instead of resuming.', data_seed)
  train_data = tasks.get_dataset(
      config, config.task.train_split,
      batch_size=host.per_host_batch_size, shard_id=host.index,
      num_shards=host.num_shards, seed=data_seed,
      shuffle=bool(config.task.shuffle), skip_batches=consumed)
  eval_data = _EvalData(config, eval_host)
  skipped_total = int(data_position.get('skipped_steps', 0))

  def data_item(step_batches):
    counts = {pid: step_batches}
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      every = multihost_utils.process_allgather(np.int64(step_batches))
      counts = {str(i): int(n) for i, n in enumerate(np.ravel(every))}
    item = {'batches_consumed': counts, 'seed': data_seed,
            'process_count': jax.process_count(),
            'per_host_batch_size': host.per_host_batch_size,
            'task': config.task.name, 'skipped_steps': skipped_total}
    if not config.train.data_iterator_checkpointing:
      item.pop('batches_consumed')
    return item

  # ---- steps ----------------------------------------------------------------------
  train_step = trainer.make_train_step(model, tx, config, mesh,
                                       state_shardings, batch_sharding,
                                       schedule=schedule)
  eval_step = trainer.make_eval_step(model, config, mesh,
                                     state_shardings.params, batch_sharding)

  def evaluate(params) -> Dict[str, float]:
    sums, n = None, 0
    for batch in eval_data:
      s = eval_step(params, partitioning.shard_batch(_float_weights(batch),
                                                     batch_sharding))
      sums = s if sums is None else jax.tree.map(lambda a, b: a + b, sums, s)
      n += 1
    if not n:
      return {}
    m = jax.device_get(models.finalize_metrics(sums))
    # loss, accuracy, z_loss, num_tokens and any objective-specific metric.
    out = {f'eval/{k}': float(v) for k, v in m.items()}
    out['eval/batches'] = n
    return out

  lens = models.sequence_lengths(config.model.arch,
                                 config.task.feature_lengths)
  tokens_per_step = int(config.train.batch_size) * sum(lens.values())
  peak = metrics_lib.peak_flops_per_device(
      override=float(config.train.get('peak_flops_per_device', 0.0)))
  throughput = metrics_lib.Throughput(
      flops.model_flops_per_step(config), tokens_per_step, jax.device_count(),
      peak)
  writer = metrics_lib.create_writer(workdir)
  log_every = max(1, int(config.train.log_every_steps))
  eval_every = int(config.eval.every_steps)
  ckpt_every = int(config.checkpoint.every_steps)
  inject_at = int(config.train.get('inject_nan_at_step', 0))

  window = _Window()
  last_rates: Dict[str, Any] = {}
  last_values: Dict[str, Any] = {}
  last_eval: Dict[str, float] = {}
  preempted = False

  def process(pending) -> Optional[float]:
    """Host-side work for one finished step: checks, window, log line.

    Returns the step's loss, or None for a skipped (non-finite) step.
    """
    nonlocal skipped_total, last_rates, last_values
    step, m_dev, shapes = pending
    m = {k: float(v) for k, v in jax.device_get(m_dev).items()}
    if m['is_finite'] <= 0:
      if m['skipped'] > 0:
        skipped_total += 1
        logging.warning('Step %d: non-finite loss %.4g / grad norm %.4g; '
                        'update skipped (%d so far).', step, m['loss'],
                        m['grad_norm'], skipped_total)
      else:
        try:
          ckpt.wait_until_finished()  # so the message names a committed step
        except checkpoints.CheckpointError as e:
          logging.error('%s', e)
        good = ckpt.latest_step()
        raise NonFiniteError(
            f'Step {step} produced a non-finite loss or gradient: loss='
            f'{m["loss"]}, grad_norm={m["grad_norm"]}, z_loss={m["z_loss"]}, '
            f'learning_rate={m["learning_rate"]:.3g}; batch {shapes}. '
            f'Nothing after it was checkpointed (last checkpoint: '
            f'{"none" if good is None else good}). Lower '
            'optimizer.learning_rate or set optimizer.grad_clip_norm, or set '
            'train.skip_nonfinite_updates=True to drop such steps.')
    if not throughput.started:
      throughput.start(step)  # the first step included compilation
    window.add(m)
    if step % log_every == 0 or step == num_steps:
      rates = throughput.report(step, num_steps) or last_rates
      last_rates = rates
      values = dict(window.means(), learning_rate=m['learning_rate'],
                    num_tokens=m['num_tokens'], skipped_steps=skipped_total)
      values.update({k: rates.get(k) for k in
                     ('steps_per_s', 'tokens_per_s', 'mfu', 'step_time_s')})
      last_values = values
      writer.write_scalars(step, values)
      logging.info('%s', _progress_line(step, num_steps, values, rates,
                                        skipped_total))
      window.reset()
    return m['loss'] if m['is_finite'] > 0 else None

  def run_eval(step, params):
    nonlocal last_eval
    t0 = time.perf_counter()
    result = evaluate(params)
    if result:
      last_eval = result
      writer.write_scalars(step, result)
      logging.info('eval step %d: loss %.4f  accuracy %.3f  (%d batches, '
                   '%.1fs)', step, result['eval/loss'],
                   result['eval/accuracy'], result['eval/batches'],
                   time.perf_counter() - t0)

  def save(step, state, loss):
    ckpt.save(step, state, data=data_item(consumed), config=_config_dict(
        config), loss=loss)

  step = start_step
  pending = None
  try:
    preempted = preemption.reached(step)  # a SIGTERM during set-up
    if step == 0 and eval_every > 0 and num_steps > 0 and not preempted:
      run_eval(0, state.params)  # the untrained loss: the curve's start
    if step >= num_steps:
      logging.info('Step %d >= train.num_steps=%d: nothing to train.', step,
                   num_steps)
    while step < num_steps and not preempted:
      batch = _float_weights(next(train_data))
      consumed += 1
      if inject_at and step + 1 == inject_at:
        batch = _poison(batch)
        logging.warning('train.inject_nan_at_step: NaN loss weights in the '
                        'batch of step %d (testing).', step + 1)
      shapes = _batch_shapes(batch)
      state, m = train_step(
          state, partitioning.shard_batch(batch, batch_sharding),
          dropout_rng)
      step += 1
      # The previous step's metrics: ready by now, so this rarely blocks.
      if pending is not None:
        process(pending)
      pending = (step, m, shapes)
      for hook in hooks:
        hook(step)
      at_eval = step % eval_every == 0 or step == num_steps
      at_ckpt = step % ckpt_every == 0 or step == num_steps
      preempted = preemption.reached(step)
      if at_eval or at_ckpt or preempted:
        loss = process(pending)  # this step's metrics are needed now
        pending = None
        if at_eval and not preempted:
          run_eval(step, state.params)
        if at_ckpt or preempted:
          save(step, state, loss)
        throughput.start(step)  # keep eval and saving out of steps/s
      if preempted:
        logging.warning('Preempted: checkpointed step %d; exiting.', step)
        break
    if preempted and step == start_step:
      logging.warning('SIGTERM before the first step: nothing new to '
                      'checkpoint; exiting.')
    if pending is not None:
      process(pending)
    ckpt.wait_until_finished()
  finally:
    try:
      ckpt.close()
    finally:
      writer.close()

  history = _history_eval_losses(workdir) if jax.process_index() == 0 else []
  result = {'step': step, 'preempted': preempted,
            'skipped_steps': skipped_total}
  result.update({k: v for k, v in last_values.items() if v is not None})
  result.update(last_eval)
  if history:
    (s0, first), (s1, last) = history[0], history[-1]
    result.update(first_eval_loss=first, last_eval_loss=last)
    logging.info('Validation loss: first %.4f (step %d) -> last %.4f '
                 '(step %d).', first, s0, last, s1)
    print(f'validation loss: first {first:.4f} (step {s0}) -> last '
          f'{last:.4f} (step {s1})', flush=True)
  return result
