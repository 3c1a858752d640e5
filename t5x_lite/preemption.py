"""Stop signals: SIGTERM (a preemption) and Ctrl-C (SIGINT) stop training at
a step boundary, with a checkpoint of that step.

    with preemption.PreemptionWatcher() as watcher:
      ...
      if watcher.reached(step):   # checkpoint `step`, then stop
        ...
      watcher.signal_name         # 'SIGTERM', 'SIGINT' or None

loop.py polls it after every step (set-up and compilation included: a
signal there stops the run before its first step).
"""
import signal
import threading
from typing import Optional

from absl import logging
import jax


class PreemptionWatcher:
  """SIGTERM or a first SIGINT -> checkpoint at the current step and stop.

  One process: Python handlers set a flag the loop polls after each step;
  `signal_name` says which signal it was (train.py exits 0 after SIGTERM,
  130 after SIGINT, the shell's status for Ctrl-C). The first SIGINT also
  restores SIGINT's default action, so a second Ctrl-C kills the process at
  once, even inside a long compilation, without a checkpoint.
  Several processes: JAX's distributed runtime already turns SIGTERM into a
  preemption notice, and `reached_preemption_sync_point(step)` makes every
  process stop at the same step (a Python handler would replace JAX's);
  SIGINT keeps Python's default there (KeyboardInterrupt), since a flag set
  on one process would stop it at another step than the others.
  """

  def __init__(self):
    self._flag = threading.Event()
    self._previous = {}
    self.signal_name: Optional[str] = None

  def __enter__(self):
    if jax.process_count() == 1 and (
        threading.current_thread() is threading.main_thread()):
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._on_signal)
    return self

  def __exit__(self, *exc):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}

  def _on_signal(self, signum, frame):
    del frame
    if self._flag.is_set():
      return
    self.signal_name = signal.Signals(signum).name
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.SIG_DFL)
      logging.warning('SIGINT: finishing this step, then checkpointing and '
                      'exiting (status 130); press Ctrl-C again to exit at '
                      'once without a checkpoint.')
    else:
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
