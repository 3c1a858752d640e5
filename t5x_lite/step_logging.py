"""One finished train step's metrics, on the host: the non-finite check, the
log window's means, the progress line, metrics.jsonl + TensorBoard every
train.log_every_steps.

    logger = StepLogger(writer, make_throughput(config, model), num_steps=100,
                        log_every=10)
    loss = logger.process(step, metrics, shapes)   # None: a skipped step

tokens/s counts every input and target position of the global batch (padding
included); MFU divides the analytic model FLOPs (t5x_lite/flops.py) by the
accelerators' dense bf16 peak (metrics.PEAK_FLOPS; null on CPUs unless
train.peak_flops_per_device is set).

A non-finite step raises NonFiniteError, or, under
train.skip_nonfinite_updates, is counted, up to the skip caps
(train.max_consecutive_skipped_steps, train.max_skipped_steps); loop.py
turns the error into the run's. PeriodicEval raises it for a non-finite eval
loss.
"""
from typing import Any, Callable, Dict, Optional

from absl import logging
import jax
import numpy as np

from t5x_lite import lengths
from t5x_lite import metrics as metrics_lib


class NonFiniteError(FloatingPointError):
  """A train step produced a non-finite loss or gradient norm (or an eval
  a non-finite loss). `ruined_from`: the step whose params are to blame
  (the last update applied), when the error says the params are; the loop
  then sets aside the checkpoints holding them."""

  def __init__(self, message: str, ruined_from: Optional[int] = None):
    super().__init__(message)
    self.ruined_from = ruined_from


# ---- the step logger ---------------------------------------------------------


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


class StepLogger:
  """Host-side work for each finished step, in step order.

    logger = StepLogger(writer, throughput, num_steps=100, log_every=10)
    loss = logger.process(step, metrics, shapes)   # None: a skipped step

A non-finite step raises NonFiniteError (the message names the step, its
metrics, the batch shapes and `last_checkpoint()`), or, when train_step
dropped it (train.skip_nonfinite_updates), is counted in `skipped`. Every
`log_every` steps and at `num_steps` the window's means (finite steps only),
the learning rate and the rates go to `writer` and one progress line.
  """

  def __init__(self, writer, throughput: metrics_lib.Throughput, *,
               num_steps: int, log_every: int, skipped_steps: int = 0,
               last_checkpoint: Callable[[], Optional[int]] = lambda: None,
               max_consecutive_skipped: int = 0, max_skipped: int = 0,
               start_step: Optional[int] = None):
    self.writer = writer
    self.throughput = throughput
    self.num_steps = int(num_steps)
    self.log_every = max(1, int(log_every))
    self.skipped = int(skipped_steps)  # earlier runs' included
    self.last_checkpoint = last_checkpoint
    self.max_consecutive_skipped = int(max_consecutive_skipped)  # 0: no cap
    self.max_skipped = int(max_skipped)  # 0: no cap
    self.streak = 0  # skipped steps in a row, up to the last processed step
    # The last step whose update was applied: a skipped step leaves its
    # params in place, so they are the params a skip streak is stuck on.
    self.last_applied = start_step
    self.window = _Window()
    self.last_rates: Dict[str, Any] = {}
    self.last_values: Dict[str, Any] = {}  # the last log line's, as written

  def process(self, step: int, metrics: Dict[str, Any], shapes: str = ''
              ) -> Optional[float]:
    """Checks, window and log line of one step's metrics (device or host
    scalars: train_step's dict). Returns its loss, or None for a skipped
    (non-finite) step."""
    m = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if m['is_finite'] <= 0:
      self._non_finite(step, m, shapes)
    else:
      self.streak, self.last_applied = 0, step
    if not self.throughput.started:
      self.throughput.start(step)  # the first step included compilation
    self.window.add(m)
    if step % self.log_every == 0 or step == self.num_steps:
      self._log(step, m)
    return m['loss'] if m['is_finite'] > 0 else None

  def _non_finite(self, step: int, m: Dict[str, float], shapes: str):
    if m['skipped'] > 0:
      self.skipped += 1
      self.streak += 1
      logging.warning('Step %d: non-finite loss %.4g / grad norm %.4g; '
                      'update skipped (%d so far).', step, m['loss'],
                      m['grad_norm'], self.skipped)
      self._check_caps(step, m)
      return
    good = self.last_checkpoint()
    raise NonFiniteError(
        f'Step {step} produced a non-finite loss or gradient: loss='
        f'{m["loss"]}, grad_norm={m["grad_norm"]}, z_loss={m["z_loss"]}, '
        f'learning_rate={m["learning_rate"]:.3g}; batch {shapes}. '
        f'Nothing after it was checkpointed (last checkpoint: '
        f'{"none" if good is None else good}). Lower '
        'optimizer.learning_rate or set optimizer.grad_clip_norm, or set '
        'train.skip_nonfinite_updates=True to drop such steps.')

  def _check_caps(self, step: int, m: Dict[str, float]):
    """Past train.max_consecutive_skipped_steps in a row the params are to
    blame (a diverged learning rate leaves every later step non-finite);
    past train.max_skipped_steps the run has dropped too much data."""
    what = (f'loss={m["loss"]}, grad_norm={m["grad_norm"]}, learning_rate='
            f'{m["learning_rate"]:.3g}')
    fix = ('Lower optimizer.learning_rate or set optimizer.grad_clip_norm, '
           'then resume from the last usable checkpoint')
    cap = self.max_consecutive_skipped
    if cap > 0 and self.streak > cap:
      since = self.last_applied
      since = step - self.streak if since is None else since
      raise NonFiniteError(
          f'Step {step}: {self.streak} non-finite steps in a row (steps '
          f'{step - self.streak + 1}-{step}, skipped; the last: {what}), more '
          f'than train.max_consecutive_skipped_steps={cap}: the params of '
          f'step {since} no longer train. {fix} (or raise '
          'train.max_consecutive_skipped_steps).', ruined_from=since)
    cap = self.max_skipped
    if cap > 0 and self.skipped > cap:
      good = self.last_checkpoint()
      raise NonFiniteError(
          f'Step {step} produced a non-finite loss or gradient ({what}): '
          f'{self.skipped} steps skipped in all, more than '
          f'train.max_skipped_steps={cap} (last checkpoint: '
          f'{"none" if good is None else good}). {fix}, or find the batches '
          'that break (or raise train.max_skipped_steps).')

  def _log(self, step: int, m: Dict[str, float]):
    rates = self.throughput.report(step, self.num_steps) or self.last_rates
    self.last_rates = rates
    values = dict(self.window.means(), learning_rate=m['learning_rate'],
                  num_tokens=m['num_tokens'], skipped_steps=self.skipped)
    values.update({k: rates.get(k) for k in
                   ('steps_per_s', 'tokens_per_s', 'mfu', 'step_time_s')})
    self.last_values = values
    self.writer.write_scalars(step, values)
    logging.info('%s', _progress_line(step, self.num_steps, values, rates,
                                      self.skipped))
    self.window.reset()


def make_throughput(config, model) -> metrics_lib.Throughput:
  """Steps/s, tokens/s and MFU of `config`'s global batch on every device
  (FLOPs from the run's own model: no second model is built)."""
  lens = lengths.model_lengths(config.model.arch,
                               config.task.feature_lengths)
  tokens_per_step = int(config.train.batch_size) * sum(lens.values())
  peak = metrics_lib.peak_flops_per_device(
      override=float(config.train.get('peak_flops_per_device', 0.0)))
  return metrics_lib.Throughput(
      model.flops_per_step(config.task.feature_lengths,
                           int(config.train.batch_size)),
      tokens_per_step, jax.device_count(), peak)

