"""The training loop: `train_and_evaluate(config, workdir) -> final metrics`.

One function, called by train.py and by tests, made of pieces a test can
drive one by one:

  train_setup.setup    model, optimizer, mesh, shardings, the state (resumed
                       from the newest usable checkpoint in
                       workdir/checkpoints, data position included, or fresh,
                       optionally from the params of checkpoint.restore_from),
                       the data iterators and the jitted steps;
  step_logging.StepLogger
                       one finished step's metrics: the non-finite check, the
                       log window's means, the progress line, metrics.jsonl +
                       TensorBoard every train.log_every_steps;
  PeriodicEval         the teacher-forced loss on task.eval_split
                       (evaluation.teacher_forced) every eval.every_steps and
                       at the end;
  Checkpointing        the state with the data position (the iterator skips
                       exactly the batches already consumed on resume, so a
                       resumed run sees the same batches as an uninterrupted
                       one) every checkpoint.every_steps and at the end;
  _run_steps           trains to train.num_steps, reading each step's metrics
                       one step late so dispatch stays asynchronous; on
                       SIGTERM (preemption) or a first SIGINT (Ctrl-C)
                       finishes the step, checkpoints it and returns (a
                       second SIGINT kills the process at once).

Around them: the workdir lock (workdir_lock.py: a second trainer on the same
workdir stops in one line before it builds anything), and, on resume, the
metrics.jsonl records of steps the restored checkpoint never saw move to
metrics.abandoned.jsonl (metrics.drop_records_after), so the file is the run
that survived.

A non-finite loss or gradient norm stops the run with an error naming the step
(nothing is checkpointed after the last good step), unless
train.skip_nonfinite_updates, in which case the update is dropped and counted,
up to train.max_consecutive_skipped_steps in a row and train.max_skipped_steps
in all (0: no cap): past a cap the params themselves are the problem (a
diverged learning rate), so the run stops with the non-finite error and the
checkpoints holding those params are moved to checkpoints/unusable/. A
checkpoint due at a skipped step waits for the next finite one. A non-finite
eval loss always stops the run the same way: no checkpoint is written of a
state whose params or eval loss are not finite.

A checkpoint write that fails stops the run within a step or two
(Checkpointer.poll after every step), not at the next checkpoint.
"""
import os
import time
from typing import (Any, Callable, Dict, Iterable, Iterator, List, Optional,
                    Sequence, Tuple)

from absl import logging
import jax
import numpy as np

from t5x_lite import checkpoints
from t5x_lite import distributed
from t5x_lite import evaluation
from t5x_lite import metrics as metrics_lib
from t5x_lite import models
from t5x_lite import partitioning
from t5x_lite import preemption as preemption_lib
from t5x_lite import step_logging
from t5x_lite import train_setup
from t5x_lite import workdir_lock
from t5x_lite.config import ConfigError

PreemptionWatcher = preemption_lib.PreemptionWatcher
# train_and_evaluate raises it; callers catch it here.
NonFiniteError = step_logging.NonFiniteError

# A hook runs after every step is dispatched: hook(step) (tests use it to
# send signals at a known step; a profiler could start and stop there).
Hook = Callable[[int], None]


# ---- train batches -----------------------------------------------------------------


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


def _next_batch(train_data: Iterator[Dict[str, np.ndarray]], step: int,
                inject_at: int) -> Dict[str, np.ndarray]:
  """The host batch of `step` (float loss weights; poisoned at
  train.inject_nan_at_step)."""
  batch = _float_weights(next(train_data))
  if inject_at and step == inject_at:
    batch = _poison(batch)
    logging.warning('train.inject_nan_at_step: NaN loss weights in the '
                    'batch of step %d (testing).', step)
  return batch


# ---- periodic eval ----------------------------------------------------------------


class PeriodicEval:
  """The teacher-forced eval the loop runs every eval.every_steps.

    periodic = PeriodicEval(eval_step, eval_data, batch_sharding, writer)
    periodic(step, params)   # eval/* scalars to writer, one log line
    periodic.last            # the last non-empty result

  `batches` (host numpy, re-iterable: train_setup.EvalData) are placed on
  the mesh and summed by evaluation.teacher_forced, the function
  evaluation.teacher_forced_metrics uses too.
  """

  def __init__(self, eval_step: Callable, batches: Iterable[Dict[str, Any]],
               batch_sharding, writer, stream_eval=None):
    self.eval_step = eval_step
    self.batches = batches
    self.batch_sharding = batch_sharding
    self.writer = writer
    # A stream task's evaluation.StreamEval (perplexity with and without
    # the Transformer-XL memory) replaces the teacher-forced sums.
    self.stream_eval = stream_eval
    self.last: Dict[str, float] = {}

  def evaluate(self, params) -> Dict[str, float]:
    """{'eval/<metric>': value, 'eval/batches': n}; {} without batches."""
    if self.stream_eval is not None:
      return {f'eval/{k}': v for k, v in
              self.stream_eval.evaluate(params).items()}
    placed = (partitioning.shard_batch(_float_weights(b), self.batch_sharding)
              for b in self.batches)
    # loss, accuracy, z_loss, num_tokens and any objective-specific metric.
    m, n = evaluation.teacher_forced(self.eval_step, params, placed)
    if not n:
      return {}
    out = {f'eval/{k}': v for k, v in m.items()}
    out['eval/batches'] = n
    return out

  def __call__(self, step: int, params, params_from: Optional[int] = None):
    """Evaluates, writes and logs; a non-finite loss is written (null in
    JSON), logged as nan and raised as NonFiniteError: those params are not
    to be checkpointed (`params_from`: the step that made them)."""
    t0 = time.perf_counter()
    result = self.evaluate(params)
    if result:
      self.last = result
      self.writer.write_scalars(step, result)
      logging.info('eval step %d: loss %.4f  accuracy %.3f  (%d batches, '
                   '%.1fs)', step, result['eval/loss'],
                   result['eval/accuracy'], result['eval/batches'],
                   time.perf_counter() - t0)
      ppl = {k[len('eval/ppl_'):]: v for k, v in result.items()
             if k.startswith('eval/ppl_')}
      if ppl:  # a stream task's perplexities (with / without the memory)
        logging.info('eval step %d: perplexity %s', step, '  '.join(
            f'{v:.2f} ({k.replace("_", " ")})' for k, v in sorted(ppl.items())))
      if not np.isfinite(result['eval/loss']):
        raise NonFiniteError(
            f'Step {step}: the eval loss is {result["eval/loss"]} on '
            f'{result["eval/batches"]} batches of task.eval_split: the params '
            'no longer give a finite loss and are not checkpointed. Lower '
            'optimizer.learning_rate or set optimizer.grad_clip_norm, then '
            'resume from the last usable checkpoint.',
            ruined_from=step if params_from is None else params_from)


# ---- checkpointing ----------------------------------------------------------------


class Checkpointing:
  """Saves the state with its data position ('data') and the config.

    saving = Checkpointing(ckpt, config, host, seed)
    saving.save(step, state, loss=loss, batches_consumed=n, skipped_steps=k)
  """

  def __init__(self, ckpt: checkpoints.Checkpointer, config,
               host: distributed.HostShard, seed: int):
    self.ckpt = ckpt
    self.config = config
    self.host = host
    self.seed = int(seed)

  def data_item(self, batches_consumed: int, skipped_steps: int
                ) -> Dict[str, Any]:
    """The 'data' item: batches consumed by every process (gathered), the
    seed, the batch geometry, the task and the skipped-step count."""
    counts = {str(jax.process_index()): batches_consumed}
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      every = multihost_utils.process_allgather(np.int64(batches_consumed))
      counts = {str(i): int(n) for i, n in enumerate(np.ravel(every))}
    item = {'batches_consumed': counts, 'seed': self.seed,
            'process_count': jax.process_count(),
            'per_host_batch_size': self.host.per_host_batch_size,
            'task': self.config.task.name, 'skipped_steps': skipped_steps}
    if not self.config.train.data_iterator_checkpointing:
      item.pop('batches_consumed')
    return item

  def save(self, step: int, state, *, loss: Optional[float],
           batches_consumed: int, skipped_steps: int):
    self.ckpt.save(step, state,
                   data=self.data_item(batches_consumed, skipped_steps),
                   config=train_setup.config_dict(self.config), loss=loss)

  def poll(self):
    """Raises a failed asynchronous write as soon as it is known."""
    self.ckpt.poll()

  def committed_step(self) -> Optional[int]:
    """The newest step on disk once pending writes finish (a failed write
    is logged, not raised: the caller is reporting another error)."""
    try:
      self.ckpt.wait_until_finished()
    except checkpoints.CheckpointError as e:
      logging.error('%s', e)
    return self.ckpt.latest_step()

  def set_aside_ruined(self, since: int, why: str) -> str:
    """Moves the checkpoints of steps >= `since` (they hold the params a
    NonFiniteError blames) to checkpoints/unusable/; says what is left."""
    self.committed_step()
    moved = [s for s in self.ckpt.all_steps() if s >= since]
    for s in moved:
      self.ckpt.set_aside(s, why)
    good = self.ckpt.latest_step()
    left = ('no usable checkpoint is left' if good is None else
            f'the last usable checkpoint is step {good}')
    if not moved:
      return f'No checkpoint holds those params; {left}.'
    where = os.path.join(self.ckpt.directory, checkpoints.UNUSABLE_DIR)
    return (f'Checkpoint step{"s" if len(moved) > 1 else ""} '
            f'{", ".join(map(str, moved))} hold{"" if len(moved) > 1 else "s"}'
            f' those params: moved to {where}; {left}.')


# ---- the loop -------------------------------------------------------------------------


def _stop_line(preemption: PreemptionWatcher, step: int) -> str:
  if preemption.signal_name == 'SIGINT':
    return (f'Interrupted (SIGINT): checkpointed step {step}; exiting with '
            'status 130.')
  return f'Preempted: checkpointed step {step}; exiting.'


def _run_steps(run: train_setup.RunSetup, logger: step_logging.StepLogger,
               periodic_eval: PeriodicEval, saving: Checkpointing,
               hooks: Sequence[Hook], preemption: PreemptionWatcher
               ) -> Tuple[int, bool]:
  """Trains from run.start_step to train.num_steps; (last step, preempted)."""
  config = run.config
  num_steps = int(config.train.num_steps)
  eval_every = int(config.eval.every_steps)
  ckpt_every = int(config.checkpoint.every_steps)
  inject_at = int(config.train.get('inject_nan_at_step', 0))
  state, run.state = run.state, None  # the steps donate it
  step, consumed, pending = run.start_step, run.position.batches_consumed, None
  deferred = False  # a checkpoint due at a skipped step, not written yet
  preempted = preemption.reached(step)  # a signal during set-up
  if step == 0 and eval_every > 0 and num_steps > 0 and not preempted:
    periodic_eval(0, state.params)  # the untrained loss: the curve's start
  if step >= num_steps:
    logging.info('Step %d >= train.num_steps=%d: nothing to train.', step,
                 num_steps)
  while step < num_steps and not preempted:
    batch = _next_batch(run.train_data, step + 1, inject_at)
    consumed += 1
    shapes = _batch_shapes(batch)
    state, m = run.train_step(
        state, partitioning.shard_batch(batch, run.batch_sharding),
        run.dropout_rng)
    step += 1
    # The previous step's metrics: ready by now, so this rarely blocks.
    if pending is not None:
      logger.process(*pending)
    pending = (step, m, shapes)
    saving.poll()  # a failed asynchronous write stops the run here
    for hook in hooks:
      hook(step)
    at_eval = step % eval_every == 0 or step == num_steps
    at_ckpt = step % ckpt_every == 0 or step == num_steps or deferred
    preempted = preemption.reached(step)
    if at_eval or at_ckpt or preempted:
      loss = logger.process(*pending)  # this step's metrics are needed now
      pending = None
      if at_eval and not preempted:
        periodic_eval(step, state.params, params_from=logger.last_applied)
      # A skipped step's state just failed a step: wait for a finite one
      # (the last step and a preemption save it anyway: there is no next).
      deferred = (at_ckpt and loss is None and step < num_steps and
                  not preempted)
      if deferred:
        logging.info('Step %d was skipped (non-finite): its checkpoint waits '
                     'for the next finite step.', step)
      elif at_ckpt or preempted:
        saving.save(step, state, loss=loss, batches_consumed=consumed,
                    skipped_steps=logger.skipped)
      logger.throughput.start(step)  # keep eval and saving out of steps/s
    if preempted:
      logging.warning('%s', _stop_line(preemption, step))
      break
  if preempted and step == run.start_step:
    logging.warning('%s before the first step: nothing new to checkpoint; '
                    'exiting.', preemption.signal_name or 'Preemption')
  if pending is not None:
    logger.process(*pending)
  run.ckpt.wait_until_finished()
  return step, preempted


def _history_eval_losses(workdir: str) -> List[tuple]:
  """(step, eval/loss) of every eval in metrics.jsonl, earlier runs
  included; a non-finite loss (null in JSON) is nan, not left out, so the
  summary never calls an older value the last."""
  path = os.path.join(workdir, metrics_lib.METRICS_FILE)
  if not os.path.exists(path):
    return []
  out = []
  for rec in metrics_lib.read_metrics(path):
    if 'eval/loss' in rec:
      loss = rec['eval/loss']
      out.append((rec['step'], float('nan') if loss is None else loss))
  return out


def _result(workdir: str, step: int, preempted: bool,
            logger: step_logging.StepLogger, last_eval: Dict[str, float],
            stopped_by: Optional[str] = None) -> Dict[str, Any]:
  """train_and_evaluate's return value (and the validation-loss line)."""
  history = _history_eval_losses(workdir) if jax.process_index() == 0 else []
  result = {'step': step, 'preempted': preempted,
            'stopped_by': stopped_by if preempted else None,
            'skipped_steps': logger.skipped}
  result.update({k: v for k, v in logger.last_values.items() if v is not None})
  result.update(last_eval)
  if history:
    (s0, first), (s1, last) = history[0], history[-1]
    result.update(first_eval_loss=first, last_eval_loss=last)
    logging.info('Validation loss: first %.4f (step %d) -> last %.4f '
                 '(step %d).', first, s0, last, s1)
    print(f'validation loss: first {first:.4f} (step {s0}) -> last '
          f'{last:.4f} (step {s1})', flush=True)
  return result


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
    skipped_steps, preempted, stopped_by ('SIGTERM', 'SIGINT' or None),
    steps_per_s.
  Raises:
    ConfigError: a config problem, before anything compiles.
    workdir_lock.WorkdirInUseError: another live run holds the workdir.
    NonFiniteError: a non-finite step without train.skip_nonfinite_updates,
      past a skip cap, or a non-finite eval loss.
    checkpoints.CheckpointError: a checkpoint could not be read or written.
  """
  # From here on SIGTERM and a first SIGINT checkpoint and return instead of
  # killing the process, set-up and compilation included.
  with PreemptionWatcher() as preemption:
    workdir = train_setup.prepare(config, workdir)
    with workdir_lock.hold(workdir):
      return _train(config, workdir, hooks, preemption)


def _start_metrics(run: train_setup.RunSetup):
  """The metrics writer, after moving the records of steps the restored
  checkpoint never saw (all of them for a fresh start) out of
  metrics.jsonl, and telling TensorBoard where the run continues."""
  if jax.process_index() == 0:
    moved, span = metrics_lib.drop_records_after(
        run.workdir, run.start_step if run.resumed else None)
    if moved:
      logging.info(
          '%s: moved %d records of steps %d-%d, which this run redoes from '
          'step %d, to %s.', metrics_lib.METRICS_FILE, moved, span[0],
          span[1], run.start_step, metrics_lib.ABANDONED_FILE)
  writer = metrics_lib.create_writer(run.workdir)
  if run.resumed:
    writer.restart_at(run.start_step + 1)
  return writer


def _train(config, workdir: str, hooks: Sequence[Hook],
           preemption: PreemptionWatcher) -> Dict[str, Any]:
  """train_and_evaluate's body: set-up, the pieces, the steps, the result."""
  run = train_setup.build(config, workdir)
  throughput = step_logging.make_throughput(config, run.model)
  writer = _start_metrics(run)
  saving = Checkpointing(run.ckpt, config, run.host, run.position.seed)
  logger = step_logging.StepLogger(
      writer, throughput, num_steps=int(config.train.num_steps),
      log_every=int(config.train.log_every_steps),
      skipped_steps=run.position.skipped_steps,
      last_checkpoint=saving.committed_step,
      max_consecutive_skipped=int(
          config.train.get('max_consecutive_skipped_steps', 0)),
      max_skipped=int(config.train.get('max_skipped_steps', 0)),
      start_step=run.start_step)
  periodic_eval = PeriodicEval(run.eval_step, run.eval_data,
                               run.batch_sharding, writer,
                               stream_eval=run.stream_eval)
  failed_write = False
  try:
    step, preempted = _run_steps(run, logger, periodic_eval, saving, hooks,
                                 preemption)
  except NonFiniteError as e:
    if e.ruined_from is not None:  # the checkpoints of those params go
      e.args = (f'{e.args[0]} ' + saving.set_aside_ruined(
          e.ruined_from, f'its params are those of step {e.ruined_from}: '
          f'{e.args[0]}'),)
    raise
  except checkpoints.CheckpointError:
    failed_write = True
    raise
  finally:
    try:
      if failed_write:  # Orbax threads may wait for a failed one: let go
        run.ckpt.abandon()
      else:
        run.ckpt.close()
    finally:
      writer.close()
  return _result(run.workdir, step, preempted, logger, periodic_eval.last,
                 preemption.signal_name)
