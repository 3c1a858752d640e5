"""Metric writers (TensorBoard + JSONL) and throughput / MFU helpers.

  writer = metrics.create_writer(workdir)           # process 0 writes
  writer.write_scalars(step, {'loss': 2.3, 'learning_rate': 1e-2})
  writer.write_scalars(step, {'eval/loss': 2.1})
  writer.close()

Every scalar goes to TensorBoard event files in the workdir (the
tensorboard package) and, as one JSON object per call, to workdir/metrics.jsonl:
  {"step": 100, "loss": 2.31, "learning_rate": 0.01, "tokens_per_s": ...}
A non-finite value is written as null in JSON (JSON has no NaN) and skipped in
TensorBoard. Processes other than 0 get a writer that only logs.

metrics.jsonl is the run that survived: a run that resumes from step S (a
restart after a kill, or a fallback past a damaged checkpoint) first moves
the records of steps after S, which the checkpoint it resumes from never
saw, to metrics.abandoned.jsonl (`drop_records_after`), and TensorBoard is
told the same with a SessionLog START event at step S+1 (TensorBoard then
drops the older events from S+1 on: its purge_orphaned_data).

TensorBoard events are written with the `tensorboard` package's own event
writer and protos (`EventFileWriter` below), not clu's SummaryWriter: that one
imports TensorFlow, which stays inside t5x_lite/tasks/ so GPU/TPU hosts can
train without it.
"""
import json
import math
import os
import time
from typing import Any, Dict, List, Mapping, Optional, Tuple

from absl import logging
import numpy as np

METRICS_FILE = 'metrics.jsonl'
ABANDONED_FILE = 'metrics.abandoned.jsonl'  # records of steps a resume redid

# Dense bf16 peak FLOP/s of one JAX device, by a substring of device_kind
# (lowercase; first match wins, so the longer names come first). MFU is
# always against this peak, as MaxText and the T5X papers report it.
PEAK_FLOPS = (
    ('tpu v6 lite', 918e12),  # Trillium / v6e
    ('tpu v6', 918e12),
    ('tpu v5 lite', 197e12),  # v5e
    ('tpu v5p', 459e12),
    ('tpu v5', 459e12),
    ('tpu v4', 275e12),  # one megacore chip
    ('tpu v3', 61.5e12),  # one core (two per chip)
    ('tpu v2', 23e12),
    ('gb200', 2450e12),
    ('b200', 2250e12),
    ('gh200', 989e12),
    ('h200', 989e12),
    ('h100', 989e12),  # SXM; the PCIe part is lower (756e12)
    ('h800', 989e12),
    ('a100', 312e12),
    ('a800', 312e12),
    ('l40s', 362e12),
    ('l4', 121e12),
    ('a10g', 70e12),
    ('v100', 125e12),
)


def peak_flops_per_device(device=None, override: float = 0.0
                          ) -> Optional[float]:
  """Peak FLOP/s of `device` (jax.devices()[0] by default); None if unknown.

  CPUs are unknown: their peak depends on the vector units and clocks, so
  MFU is not reported there unless `override` (> 0) gives the peak.
  """
  if override and override > 0:
    return float(override)
  if device is None:
    import jax  # pylint: disable=g-import-not-at-top
    device = jax.devices()[0]
  kind = str(getattr(device, 'device_kind', '')).lower()
  for name, peak in PEAK_FLOPS:
    if name in kind:
      return peak
  return None


def format_duration(seconds: float) -> str:
  """3725 -> '1h02m05s'; 65 -> '1m05s'; 4.2 -> '4s'."""
  if seconds is None or not math.isfinite(seconds) or seconds < 0:
    return '?'
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  if h:
    return f'{h}h{m:02d}m{s:02d}s'
  if m:
    return f'{m}m{s:02d}s'
  return f'{s}s'


class Throughput:
  """Steps/s, tokens/s, MFU and ETA over the steps since the last report.

    tp = Throughput(flops_per_step, tokens_per_step, num_devices, peak)
    tp.start(step)                      # after compilation
    ...
    tp.report(step, total_steps)        # -> dict of rates since last report
  """

  def __init__(self, flops_per_step: float, tokens_per_step: int,
               num_devices: int, peak_flops: Optional[float]):
    self.flops_per_step = float(flops_per_step)
    self.tokens_per_step = int(tokens_per_step)
    self.num_devices = int(num_devices)
    self.peak_flops = peak_flops
    self._t0 = None
    self._step0 = None

  @property
  def started(self) -> bool:
    return self._t0 is not None

  def start(self, step: int, now: Optional[float] = None):
    self._t0 = time.perf_counter() if now is None else now
    self._step0 = int(step)

  def report(self, step: int, total_steps: int,
             now: Optional[float] = None) -> Dict[str, Optional[float]]:
    """Rates since `start`/the previous report; restarts the window."""
    now = time.perf_counter() if now is None else now
    if self._t0 is None:
      self.start(step, now)
      return {}
    steps, secs = int(step) - self._step0, now - self._t0
    self.start(step, now)
    if steps <= 0 or secs <= 0:
      return {}
    steps_per_s = steps / secs
    out = {
        'steps_per_s': steps_per_s,
        'tokens_per_s': steps_per_s * self.tokens_per_step,
        'step_time_s': secs / steps,
        'mfu': None,
        'eta_s': max(0, total_steps - int(step)) / steps_per_s,
    }
    if self.peak_flops:
      out['mfu'] = (self.flops_per_step * steps_per_s /
                    (self.num_devices * self.peak_flops))
    return out


# ---- writers ------------------------------------------------------------------


def _to_float(v) -> Optional[float]:
  try:
    v = float(np.asarray(v))
  except (TypeError, ValueError):
    return None
  return v if math.isfinite(v) else None


class JsonlWriter:
  """clu MetricWriter that appends one JSON object per call to a file.

  Appends (a resumed run continues the same file); each line is flushed so a
  crash loses nothing already written.
  """

  def __init__(self, path: str):
    self.path = path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self._f = open(path, 'a')

  def _write(self, step: int, values: Mapping[str, Any]):
    record = {'step': int(step)}
    record.update(values)
    self._f.write(json.dumps(record, allow_nan=False) + '\n')
    self._f.flush()

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    self._write(step, {k: _to_float(v) for k, v in scalars.items()})

  def write_texts(self, step: int, texts: Mapping[str, str]):
    self._write(step, {k: str(v) for k, v in texts.items()})

  def write_summaries(self, step, values, metadata=None):
    del metadata
    self.write_scalars(step, {k: v for k, v in values.items()
                              if np.ndim(v) == 0})

  def write_hparams(self, hparams: Mapping[str, Any]):
    del hparams  # the resolved config lives in workdir/config.json

  # Not logged to JSONL: images, videos, audio, histograms.
  def write_images(self, step, images):
    del step, images

  def write_videos(self, step, videos):
    del step, videos

  def write_audios(self, step, audios, *, sample_rate):
    del step, audios, sample_rate

  def write_histograms(self, step, arrays, num_buckets=None):
    del step, arrays, num_buckets

  def write_pointcloud(self, step, point_clouds, *, point_colors=None,
                       configs=None):
    del step, point_clouds, point_colors, configs

  def flush(self):
    self._f.flush()

  def close(self):
    if not self._f.closed:
      self._f.close()


# ---- TensorBoard event files without TensorFlow -------------------------------


class EventFileWriter:
  """TensorBoard event files through the `tensorboard` package's own writer
  and protos (what torch.utils.tensorboard uses): no TensorFlow needed.

  Scalars use Summary.Value.simple_value (the scalars dashboard); texts use the
  text plugin's string tensors.
  """

  def __init__(self, logdir: str):
    # pylint: disable=g-import-not-at-top
    from tensorboard.compat.proto import event_pb2
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.compat.proto import tensor_pb2
    from tensorboard.summary.writer import event_file_writer
    # pylint: enable=g-import-not-at-top
    self._event_pb2 = event_pb2
    self._summary_pb2 = summary_pb2
    self._tensor_pb2 = tensor_pb2
    os.makedirs(logdir, exist_ok=True)
    self._writer = event_file_writer.EventFileWriter(
        logdir, filename_suffix='.t5x_lite')

  def _add(self, step: int, values):
    if values:
      summary = self._summary_pb2.Summary(value=values)
      self._writer.add_event(self._event_pb2.Event(
          wall_time=time.time(), step=int(step), summary=summary))

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    self._add(step, [self._summary_pb2.Summary.Value(tag=k,
                                                     simple_value=float(v))
                     for k, v in scalars.items()])

  def write_texts(self, step: int, texts: Mapping[str, str]):
    meta = self._summary_pb2.SummaryMetadata(
        plugin_data=self._summary_pb2.SummaryMetadata.PluginData(
            plugin_name='text'))
    self._add(step, [self._summary_pb2.Summary.Value(
        tag=k, metadata=meta, tensor=self._tensor_pb2.TensorProto(
            dtype=7, string_val=[str(v).encode()]))  # 7: DT_STRING
                     for k, v in texts.items()])

  def write_hparams(self, hparams):
    del hparams  # the resolved config lives in workdir/config.json

  def restart_at(self, step: int):
    """TensorBoard drops the events of earlier files from `step` on."""
    self._writer.add_event(self._event_pb2.Event(
        wall_time=time.time(), step=int(step),
        session_log=self._event_pb2.SessionLog(
            status=self._event_pb2.SessionLog.START)))

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()


def _tensorboard_writer(logdir: str):
  return EventFileWriter(logdir)


class _FiniteScalars:
  """Wraps a TensorBoard writer: drops None/non-finite scalars."""

  def __init__(self, writer):
    self._w = writer

  def write_scalars(self, step, scalars):
    clean = {k: f for k, v in scalars.items()
             if (f := _to_float(v)) is not None}
    if clean:
      self._w.write_scalars(step, clean)

  def write_texts(self, step, texts):
    self._w.write_texts(step, texts)

  def write_hparams(self, hparams):
    self._w.write_hparams(hparams)

  def restart_at(self, step: int):
    self._w.restart_at(step)

  def flush(self):
    self._w.flush()

  def close(self):
    self._w.close()


class MultiWriter:
  """Fans each call out to several writers (clu's MultiWriter, minus the
  methods we do not use)."""

  def __init__(self, writers):
    self.writers = list(writers)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    for w in self.writers:
      w.write_scalars(step, scalars)

  def write_texts(self, step: int, texts: Mapping[str, str]):
    for w in self.writers:
      w.write_texts(step, texts)

  def write_hparams(self, hparams: Mapping[str, Any]):
    for w in self.writers:
      w.write_hparams(hparams)

  def restart_at(self, step: int):
    """A resumed run continues from `step` (writers that keep history)."""
    for w in self.writers:
      if hasattr(w, 'restart_at'):
        w.restart_at(step)

  def flush(self):
    for w in self.writers:
      w.flush()

  def close(self):
    for w in self.writers:
      w.close()


def create_writer(workdir: str, *, tensorboard: bool = True,
                  process_index: Optional[int] = None) -> MultiWriter:
  """TensorBoard events + metrics.jsonl in `workdir` (process 0 only)."""
  if process_index is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index()
  if process_index != 0:
    return MultiWriter([])
  writers = [JsonlWriter(os.path.join(workdir, METRICS_FILE))]
  if tensorboard:
    writers.append(_FiniteScalars(_tensorboard_writer(workdir)))
  return MultiWriter(writers)


def drop_records_after(workdir: str, step: Optional[int]
                       ) -> Tuple[int, List[int]]:
  """Moves the records of workdir/metrics.jsonl with a step after `step`
  (None: every record, for a run that starts over) to
  metrics.abandoned.jsonl, appended verbatim; a line that does not parse
  stays. Returns (records moved, their first and last step). Atomic: the
  file is rewritten beside itself and renamed over."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return 0, []
  kept, dropped, steps = [], [], []
  with open(path) as f:
    for line in f:
      if not line.strip():
        continue
      try:
        record_step = int(json.loads(line)['step'])
      except (ValueError, KeyError, TypeError):
        kept.append(line)
        continue
      if step is None or record_step > step:
        dropped.append(line if line.endswith('\n') else line + '\n')
        steps.append(record_step)
      else:
        kept.append(line)
  if not dropped:
    return 0, []
  with open(os.path.join(workdir, ABANDONED_FILE), 'a') as f:
    f.writelines(dropped)
    f.flush()
    os.fsync(f.fileno())
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.writelines(kept)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  return len(dropped), [min(steps), max(steps)]


def read_metrics(workdir_or_path: str):
  """The records of a metrics.jsonl (a workdir or the file), in order."""
  path = workdir_or_path
  if os.path.isdir(path):
    path = os.path.join(path, METRICS_FILE)
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
