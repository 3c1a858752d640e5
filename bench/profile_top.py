"""The top ops of a jitted step by device time, from a JAX profiler trace.

    with jax.profiler.trace(log_dir, create_perfetto_trace=True):
      ...  # `steps` steps, each blocked on
    profile_top.top_ops(log_dir, steps, n=10)
    # -> [{'name': 'fusion.12', 'ms_per_step': 3.1, 'share': 0.22}, ...]

No TensorBoard or xprof needed: the perfetto trace JAX writes is JSON. On a
GPU (or TPU) the events are the device's: its 'XLA Ops' threads (HLO op
names) when the trace has them, else every device thread (kernel names). On
CPU, XLA's executor threads. `share` is the op's part of the summed time of
the ops counted (not of wall time: overlapping streams are summed).
"""
import collections
import glob
import gzip
import json
import os
from typing import Dict, List


def _trace_file(log_dir: str) -> str:
  found = sorted(glob.glob(os.path.join(log_dir, '**',
                                        'perfetto_trace.json.gz'),
                           recursive=True))
  if not found:
    raise FileNotFoundError(f'no perfetto_trace.json.gz under {log_dir}; '
                            'trace with create_perfetto_trace=True.')
  return found[-1]


def _names(events, kind):
  """{pid or (pid, tid): name} of the trace's metadata events."""
  out = {}
  for e in events:
    if e.get('ph') == 'M' and e.get('name') == kind:
      key = e['pid'] if kind == 'process_name' else (e['pid'], e.get('tid'))
      out[key] = e.get('args', {}).get('name', '')
  return out


def _op_events(events):
  """The complete ('X') events that are ops on the device (or XLA's CPU
  executor threads when there is no device)."""
  procs, threads = _names(events, 'process_name'), _names(events,
                                                          'thread_name')
  ops = [e for e in events if e.get('ph') == 'X' and 'dur' in e]
  device = [e for e in ops if '/device:' in procs.get(e['pid'], '')]
  if device:
    xla_ops = [e for e in device if 'XLA Ops' in threads.get(
        (e['pid'], e.get('tid')), '')]
    return xla_ops or device
  return [e for e in ops if threads.get((e['pid'], e.get('tid')), ''
                                        ).startswith('tf_XLA')]


def top_ops(log_dir: str, steps: int, n: int = 10) -> List[Dict]:
  """The n ops with the most time, per step, from the trace under log_dir."""
  with gzip.open(_trace_file(log_dir), 'rt') as f:
    data = json.load(f)
  events = data['traceEvents'] if isinstance(data, dict) else data
  total = collections.Counter()
  for e in _op_events(events):
    if '::' not in e['name']:  # runtime functions (ThunkExecutor::...), not ops
      total[e['name']] += float(e['dur'])  # microseconds
  whole = sum(total.values()) or 1.0
  return [{'name': name[:120], 'ms_per_step': round(us / 1e3 / steps, 3),
           'share': round(us / whole, 4)}
          for name, us in total.most_common(n)]
