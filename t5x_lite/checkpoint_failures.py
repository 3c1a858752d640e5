"""A checkpoint failure in one line: its cause in a few words, Orbax's own
tracebacks out of the console.

    quiet_orbax_failures()     # once per process (Checkpointer does it)
    describe_failure(error)    # 'No space left on device (errno 28)'

Orbax logs a failed write or read from each thread it touched, with a
traceback (hundreds of lines for a full disk, TensorStore specs included),
and TensorStore callbacks that arrive after Orbax closed a failed write's
event loop print "Event loop is closed" tracebacks through
sys.unraisablehook. checkpoints.Checkpointer raises the failure itself as one
CheckpointError line (or logs the fallback past a damaged step as one
warning), so both are left out unless absl's verbosity is debug
(--verbosity=1).
"""
import logging as py_logging
import os
import re
import sys

from absl import logging


class _OrbaxErrorsAtDebug(py_logging.Filter):
  """On absl's logger: Orbax's ERROR records (a failed write or read, logged
  with a traceback by each thread it touched) pass only at debug verbosity;
  Checkpointer raises the failure as one CheckpointError line."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    if (record.levelno < py_logging.ERROR or
        '/orbax/' not in record.pathname.replace(os.sep, '/')):
      return True
    return py_logging.getLogger('absl').isEnabledFor(py_logging.DEBUG)


def _event_loop_closed(args) -> bool:
  return (isinstance(args.exc_value, RuntimeError) and
          str(args.exc_value) == 'Event loop is closed')


_QUIETED = []


def quiet_orbax_failures():
  """Installs the filter and an unraisable hook once per process. The hook
  drops only RuntimeError('Event loop is closed'): TensorStore completing an
  operation of a failed Orbax write after Orbax closed that write's event
  loop (harmless; the write's failure is raised on its own)."""
  if _QUIETED:
    return
  _QUIETED.append(True)
  py_logging.getLogger('absl').addFilter(_OrbaxErrorsAtDebug())
  previous = sys.unraisablehook

  def hook(args):
    if _event_loop_closed(args):
      logging.debug('TensorStore callback after its event loop closed: %s',
                    args.exc_value)
      return
    previous(args)

  sys.unraisablehook = hook


_OS_ERROR = re.compile(r"os_error_code='?(\d+)")


def describe_failure(e: BaseException, limit: int = 240) -> str:
  """The cause of an Orbax/TensorStore failure in a few words: the OS error
  where there is one ('No space left on device (errno 28)'), else the
  innermost message's first line without TensorStore's spec dump."""
  chain, seen = [], set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    chain.append(e)
    e = e.__cause__ or e.__context__
  for err in chain:
    if isinstance(err, OSError) and err.errno:
      return f'{os.strerror(err.errno)} (errno {err.errno})'
    match = _OS_ERROR.search(str(err))
    if match:
      code = int(match.group(1))
      return f'{os.strerror(code)} (errno {code})'
  err = chain[-1]
  lines = str(err).strip().splitlines()
  text = lines[0] if lines else ''
  text = re.split(r' \[tensorstore_spec=| See full TensorStore details',
                  text)[0]
  if len(text) > limit:
    text = text[:limit] + '...'
  return f'{type(err).__name__}: {text}'
