"""One trainer per workdir: the lock file workdir/LOCK.

    with workdir_lock.hold(workdir):      # WorkdirInUseError: one line
      ...train...

Two trainers on one workdir write the same metrics.jsonl and race for the
same checkpoint step directories (issue 15: every record twice, or both
saves of a step lost). The second one therefore stops before it builds
anything, naming the holder (host, pid, when it started) and the lock file.

The lock is an flock(2) on workdir/LOCK, whose one JSON line names the
holder. The kernel drops an flock when its process dies, so a killed run
never blocks the next one; the file's line still names the dead run, and
the next run says that it takes the lock over. Where flock is not available
(some network filesystems) the line decides: a live pid of this host holds
the lock; a dead one (or a reused pid: the start time differs) is taken over
with a warning. On another host a pid cannot be checked, so only the flock
(NFSv4 shares it between hosts) keeps two hosts apart there.

Multi-process runs share one workdir: process 0 takes the lock, and every
process learns the outcome (one allgather), so the others stop with it
instead of waiting for process 0 in a collective.
"""
import contextlib
import datetime
import errno
import json
import os
import socket
import sys
from typing import Any, Dict, Iterator, Optional

from absl import logging

try:
  import fcntl  # pylint: disable=g-import-not-at-top
except ImportError:  # not POSIX: the file's line alone decides
  fcntl = None

LOCK_FILE = 'LOCK'


class WorkdirInUseError(RuntimeError):
  """Another live run holds the workdir's lock (a usage error: exit 2)."""


def _proc_start(pid: int) -> Optional[str]:
  """The process's start time in clock ticks since boot (Linux), or None:
  tells a live holder from a new process that reused its pid."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      stat = f.read()
  except OSError:
    return None
  # Field 22; the command name (field 2) may hold spaces, so split after it.
  fields = stat.rsplit(')', 1)[-1].split()
  return fields[19] if len(fields) > 19 else None


def _alive(pid: int, start: Optional[str]) -> bool:
  """True when `pid` runs on this host (and is the process that started at
  `start`, where both are known). Zombies count as dead."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # another user's live process
  try:
    with open(f'/proc/{pid}/stat') as f:
      if f.read().rsplit(')', 1)[-1].split()[0] == 'Z':
        return False
  except (OSError, IndexError):
    pass
  now = _proc_start(pid)
  return start is None or now is None or now == start


def _record() -> Dict[str, Any]:
  return {'host': socket.gethostname(), 'pid': os.getpid(),
          'proc_start': _proc_start(os.getpid()),
          'since': datetime.datetime.now().isoformat(timespec='seconds'),
          'command': ' '.join(sys.argv)[:300]}


def _read(fd: int) -> Dict[str, Any]:
  os.lseek(fd, 0, os.SEEK_SET)
  raw = os.read(fd, 4096).decode('utf-8', errors='replace').strip()
  if not raw:
    return {}
  try:
    holder = json.loads(raw)
  except ValueError:
    return {'unreadable': raw[:100]}
  return holder if isinstance(holder, dict) else {'unreadable': raw[:100]}


def _who(holder: Dict[str, Any]) -> str:
  if 'pid' not in holder:
    return 'another run'
  return (f'host {holder.get("host", "?")} pid {holder["pid"]} (since '
          f'{holder.get("since", "?")})')


def _in_use(workdir: str, path: str, holder: Dict[str, Any]
            ) -> WorkdirInUseError:
  return WorkdirInUseError(
      f'--workdir {workdir} is in use by {_who(holder)}; lock file {path}. '
      'Wait for that run to finish or stop it, or pick another --workdir.')


class WorkdirLock:
  """The lock of one workdir, held from `acquire` until `release`."""

  def __init__(self, workdir: str):
    self.workdir = os.path.abspath(workdir)
    self.path = os.path.join(self.workdir, LOCK_FILE)
    self._fd: Optional[int] = None

  def _try_flock(self, fd: int) -> bool:
    """False when another open file holds the flock; True when we hold it
    or the filesystem has none (then the file's line decides)."""
    if fcntl is None:
      return True
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      return True
    except OSError as e:
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        return False
      logging.warning('flock on %s failed (%s); relying on the host and pid '
                      'it records.', self.path, e)
      return True

  def acquire(self):
    """Takes the lock or raises WorkdirInUseError (one line)."""
    for _ in range(5):  # the holder may delete the file while we open it
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      if not self._try_flock(fd):
        holder = _read(fd)
        os.close(fd)
        raise _in_use(self.workdir, self.path, holder)
      try:
        same_file = os.stat(self.path).st_ino == os.fstat(fd).st_ino
      except FileNotFoundError:
        same_file = False
      if not same_file:  # released (unlinked) between our open and flock
        os.close(fd)
        continue
      holder = _read(fd)
      self._check_stale(fd, holder)
      line = (json.dumps(_record(), sort_keys=True) + '\n').encode()
      os.ftruncate(fd, 0)
      os.pwrite(fd, line, 0)
      os.fsync(fd)
      self._fd = fd
      return
    raise WorkdirInUseError(
        f'--workdir {self.workdir}: could not take the lock file {self.path} '
        '(it kept changing); is another run starting there?')

  def _check_stale(self, fd: int, holder: Dict[str, Any]):
    """The flock is ours; a line naming a live run of this host still wins
    (a filesystem without flock), any other line is a dead run's."""
    if not holder or holder.get('pid') == os.getpid():
      return
    pid = holder.get('pid')
    same_host = holder.get('host') == socket.gethostname()
    if same_host and isinstance(pid, int) and _alive(
        pid, holder.get('proc_start')):
      os.close(fd)
      raise _in_use(self.workdir, self.path, holder)
    state = ('is no longer running' if same_host else
             'no longer holds it (its flock was released)')
    logging.warning('Taking over the lock %s: %s %s.', self.path,
                    _who(holder), state)

  def release(self):
    """Deletes the lock file, then drops the flock (in that order, so a run
    waiting on the old file sees it unlinked and opens a new one)."""
    if self._fd is None:
      return
    fd, self._fd = self._fd, None
    try:
      if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
        os.unlink(self.path)
    except OSError:
      pass
    os.close(fd)

  @property
  def held(self) -> bool:
    return self._fd is not None


def _all_processes_ok(ok: bool) -> bool:
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


@contextlib.contextmanager
def hold(workdir: str, *, process_index: Optional[int] = None
         ) -> Iterator[Optional[WorkdirLock]]:
  """Holds workdir's lock for the block (process 0 only; the others get
  None). Raises WorkdirInUseError on every process when process 0 could not
  take it."""
  if process_index is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index()
  lock, error = None, None
  if process_index == 0:
    lock = WorkdirLock(workdir)
    try:
      lock.acquire()
    except WorkdirInUseError as e:
      error = e
  if not _all_processes_ok(error is None):
    raise error or WorkdirInUseError(
        f'--workdir {os.path.abspath(workdir)} is in use: process 0 could not '
        f'take the lock {os.path.join(os.path.abspath(workdir), LOCK_FILE)} '
        '(its log names the holder).')
  try:
    yield lock
  finally:
    if lock is not None:
      lock.release()
