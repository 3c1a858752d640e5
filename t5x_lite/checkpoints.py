"""Training checkpoints (Orbax): save, resume, fall back past a bad step.

A training checkpoint is one Orbax step directory, workdir/checkpoints/<step>/:

  state/    the TrainState (ocp.StandardSave: OCDBT + zarr). Restored with
            target shardings (ShapeDtypeStructs carrying NamedShardings), so a
            checkpoint written on one mesh restores into any other.
  data/     where the input pipeline stands (JSON): batches consumed per
            process, the seed and the batch geometry; resume skips exactly
            that many batches, so the data order survives a restart.
  config/   the run's resolved config (JSON), for the record and for tools.
  fingerprint/  sums of the state's (and the params') bits (JSON), checked
            after every restore: OCDBT files carry no checksum, so bytes
            changed after the save would otherwise restore as other numbers.
  commit_success.txt, _CHECKPOINT_METADATA   Orbax's commit marker and index.

Orbax writes a step into `<step>.orbax-checkpoint-tmp-*` and renames it when
every file is written, so a killed save never looks like a step. What can
still go wrong on disk (a step dir without its commit marker, a truncated or
missing file) is caught when resuming: `Checkpointer.restore` warns with the
step and the reason, moves the step aside to `checkpoints/unusable/` (never
deleted: it is evidence) and restores the previous step instead. Every
corruption Orbax's format can suffer either fails the restore or touches a
redundant file (tests/test_checkpoints.py truncates each kind in turn).

A failed write (no space, permissions) raises `CheckpointError` from `save`,
or, for the asynchronous part of a save, from `poll` (the loop calls it after
every step, so the failure stops the run within a step or two of it), the
next `save`, `wait_until_finished` or `close`; the previous steps are
untouched, and the message says which are on disk. A state whose params are
not all finite is never written. With several processes every one of them
raises at the same call (they agree first), so none is left waiting in a
collective for one that stopped.

One line per event on the console: the `CheckpointError` (or the fallback's
warning) says what happened; Orbax's own tracebacks of it are left out unless
absl's verbosity is debug (t5x_lite/checkpoint_failures.py).

Params only (fine-tuning, eval, infer; the params-only format of the HF
import and ELECTRA's export): params_checkpoints.py. The checks a restore
makes (a step's completeness, finiteness, fingerprints, the tree's shapes)
and the errors: checkpoint_inspection.py.
"""
import contextlib
import dataclasses
import os
import shutil
import sys
import time
from typing import Any, Dict, List, Optional

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from t5x_lite import checkpoint_failures
from t5x_lite import checkpoint_inspection as inspection

_describe = checkpoint_failures.describe_failure

UNUSABLE_DIR = 'unusable'  # inside the checkpoints dir; not a step name
# Raised by this module and by params_checkpoints.py; callers catch them here.
CheckpointError = inspection.CheckpointError
CheckpointMismatchError = inspection.CheckpointMismatchError


def _abstract(tree):
  """Arrays -> ShapeDtypeStructs with their shardings (restore targets)."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                     sharding=getattr(x, 'sharding', None)),
      tree)


def _all_processes_agree(ok: bool) -> bool:
  """True only when `ok` holds on every process (one process: `ok`)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  flags = multihost_utils.process_allgather(np.int32(ok))
  return bool(np.all(flags))


def _sync(name: str):
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


# ---- one line per failure ----------------------------------------------------


def on_disk(directory: str) -> str:
  """What a failed write leaves for the next start, said truthfully."""
  steps = sorted(inspection.step_dirs(directory))
  if steps:
    return (f'The previous checkpoints are intact: steps {steps}; a restart '
            f'resumes from step {steps[-1]}.')
  return 'No checkpoint is on disk yet: a restart begins at step 0.'


# ---- training checkpoints ----------------------------------------------------


@dataclasses.dataclass
class Restored:
  step: int
  state: Any
  data: Dict[str, Any]
  config: Dict[str, Any]


class Checkpointer:
  """Orbax CheckpointManager over workdir/checkpoints with our safety rules.

    ckpt = Checkpointer(checkpoint_inspection.checkpoint_dir(workdir),
                        keep=3, async_save=True)
    restored = ckpt.restore(abstract_state)    # None when there is none
    ckpt.save(step, state, data={...}, config=config.to_dict())
    ckpt.close()                               # waits; raises if a write failed

  Every process calls every method (Orbax synchronises them); only process 0
  moves unusable steps aside.
  """

  def __init__(self, directory: str, *, keep: int = 3,
               async_save: bool = True, read_only: bool = False):
    self.directory = os.path.abspath(directory)
    self.read_only = read_only
    if not read_only:
      try:
        os.makedirs(self.directory, exist_ok=True)
      except OSError as e:
        raise CheckpointError(
            f'Cannot create the checkpoint directory {self.directory}: {e}. '
            'Check the --workdir path and its permissions.') from e
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    registry.add('state', ocp.args.StandardSave)
    registry.add('state', ocp.args.StandardRestore)
    for item in ('data', 'config', inspection.FINGERPRINT_ITEM):
      registry.add(item, ocp.args.JsonSave)
      registry.add(item, ocp.args.JsonRestore)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        enable_async_checkpointing=async_save and not read_only,
        create=not read_only,
        read_only=read_only,
        # Leftovers of a save that was killed half way.
        cleanup_tmp_directories=not read_only,
        save_interval_steps=1,
    )
    checkpoint_failures.quiet_orbax_failures()
    self._mngr = ocp.CheckpointManager(self.directory, options=options,
                                       handler_registry=registry)
    self._pending_step = None  # the step an async save is still writing
    self._closed = False

  # ---- queries ---------------------------------------------------------------

  def all_steps(self) -> List[int]:
    """Steps present on disk (usable or not), ascending."""
    return sorted(inspection.step_dirs(self.directory))

  def latest_step(self) -> Optional[int]:
    steps = self.all_steps()
    return steps[-1] if steps else None

  # ---- save ------------------------------------------------------------------

  def save(self, step: int, state, *, data: Optional[Dict[str, Any]] = None,
           config: Optional[Dict[str, Any]] = None,
           loss: Optional[float] = None) -> bool:
    """Starts saving `state` (and the data position, config) as `step`.

    Returns False when `step` is already on disk (nothing is overwritten).
    Raises:
      CheckpointError: non-finite params or loss (nothing written), or a write
        that failed, this one's or the previous asynchronous one's.
    """
    step = int(step)
    if self.read_only:
      raise CheckpointError(f'{self.directory} was opened read-only.')
    if loss is not None and not np.isfinite(loss):
      raise CheckpointError(
          f'Refusing to checkpoint step {step}: the loss is {loss}.')
    params = state.params if hasattr(state, 'params') else state
    if not inspection.all_finite(params):
      raise CheckpointError(
          f'Refusing to checkpoint step {step}: the params hold NaN or inf.')
    self.wait_until_finished()  # surfaces a failed previous async write
    if step in inspection.step_dirs(self.directory):
      logging.info('Checkpoint step %d already exists in %s; not saving.',
                   step, self.directory)
      return False
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(dict(data or {})),
        config=ocp.args.JsonSave(dict(config or {})),
        **{inspection.FINGERPRINT_ITEM: ocp.args.JsonSave(
            {'state': inspection.fingerprint(state),
             'params': inspection.fingerprint(params)})})
    try:
      self._mngr.save(step, args=args, force=True)
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(self._write_failed(step, _describe(e))
                            ) from e
    self._pending_step = step
    return True

  def _write_failed(self, step, cause: str) -> str:
    return (f'Writing checkpoint step {step} to {self.directory} failed: '
            f'{cause}. {on_disk(self.directory)}')

  def wait_until_finished(self):
    """Blocks until the last save is on disk; raises if it failed (on every
    process when it failed on any)."""
    step, self._pending_step = self._pending_step, None
    error = None
    try:
      self._mngr.wait_until_finished()
      self._mngr.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except
      error = CheckpointError(self._write_failed(step, _describe(e)))
      error.__cause__ = e
    if error is None and step is not None and step not in inspection.step_dirs(
        self.directory):
      error = CheckpointError(self._write_failed(
          step, 'the step directory was never committed'))
    if not _all_processes_agree(error is None):
      raise error or CheckpointError(self._write_failed(
          step, 'it failed on another process (see that process\'s log)'))

  def poll(self):
    """Raises the failure of the last asynchronous save once it is known,
    without waiting for a save in progress. One process only: with several,
    each would learn of it at a different step, so they learn at the next
    `save` or `close` together."""
    if (self._pending_step is None or jax.process_count() > 1 or
        self._mngr.is_saving_in_progress()):
      return
    self.wait_until_finished()

  def close(self):
    if self._closed:
      return
    self._closed = True
    try:
      self.wait_until_finished()
    finally:
      self._mngr.close()

  def abandon(self):
    """Stops using the manager without waiting for its threads: after a
    failed write, Orbax threads can wait up to its 300 s coordination
    timeout for a signal the failed thread never sends (the issue's hang
    after a collided save). The process should exit soon after."""
    self._closed = True
    self._pending_step = None

  @contextlib.contextmanager
  def closed_on_error(self):
    """Closes the manager (quietly) when the block raises."""
    try:
      yield self
    except BaseException:
      self.__exit__(*sys.exc_info())
      raise

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    if exc[0] is None:
      self.close()
    else:  # keep the original error; still release Orbax's threads
      try:
        self.close()
      except CheckpointError as e:
        logging.error('%s', e)

  # ---- restore ---------------------------------------------------------------

  def set_aside(self, step: int, reason: str) -> str:
    """Moves step to checkpoints/unusable/<step>.<time>/ with REASON.txt
    (process 0 moves; every process calls). Returns where it went."""
    if self.read_only:
      return ''
    src = os.path.join(self.directory, str(step))
    dst = os.path.join(self.directory, UNUSABLE_DIR,
                       f'{step}.{int(time.time())}')
    if jax.process_index() == 0:
      try:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.move(src, dst)
        with open(os.path.join(dst, 'REASON.txt'), 'w') as f:
          f.write(reason + '\n')
      except OSError as e:
        logging.warning('Could not move unusable step %d aside: %s', step, e)
        dst = src
    _sync(f't5x_lite_set_aside_{step}')
    self._mngr.reload()
    return dst

  def restore(self, abstract_state, *, step: Optional[int] = None
              ) -> Optional[Restored]:
    """Restores the newest usable step (or exactly `step`).

    Args:
      abstract_state: the TrainState as ShapeDtypeStructs with shardings
        (trainer.abstract_train_state): the mesh to restore into.
      step: a specific step; then no fallback, an unusable step raises.
    Returns:
      Restored(step, state, data, config), or None when no step exists.
    Raises:
      CheckpointError: `step` is missing/unusable, or steps exist but none is
        usable (each was reported and moved to checkpoints/unusable/).
    """
    steps = sorted(inspection.step_dirs(self.directory), reverse=True)
    if step is not None:
      if step not in steps:
        raise CheckpointError(
            f'No checkpoint step {step}: '
            f'{inspection.describe_steps(self.directory)}.')
      steps = [step]
    if not steps:
      return None
    failures = []  # (step, reason, where it was moved)
    for s in steps:
      restored, reason = self._restore_step(s, abstract_state)
      if _all_processes_agree(reason is None):
        if failures:
          logging.warning('%s', self._fallback_line(failures, s))
        return Restored(step=s, state=restored.state,
                        data=dict(restored.data or {}),
                        config=dict(restored.config or {}))
      reason = reason or 'restore failed on another process'
      if step is not None:
        raise CheckpointError(
            f'Checkpoint step {s} in {self.directory} is unusable: {reason}.')
      failures.append((s, reason, self.set_aside(s, reason)))
    raise CheckpointError(
        f'No usable checkpoint in {self.directory}: ' +
        '; '.join(f'step {s}: {r}' for s, r, _ in failures) +
        f'. They were moved to {os.path.join(self.directory, UNUSABLE_DIR)}; '
        'the next start begins from scratch unless you restore one by hand.')

  def _restore_step(self, s: int, abstract_state) -> tuple:
    """(Orbax's restored composite, None) or (None, why step s is unusable).
    Raises CheckpointMismatchError for a readable checkpoint of another
    model (no fallback: the older steps would not match either)."""
    step_path = os.path.join(self.directory, str(s))
    reason = inspection.inspect_step(step_path)
    if reason is not None:
      return None, reason
    try:
      stored = inspection.tree_metadata(os.path.join(step_path, 'state'))
    except Exception as e:  # pylint: disable=broad-except
      return None, f'unreadable state metadata: {_describe(e)}'
    mismatch = inspection.describe_mismatch(stored, abstract_state)
    if mismatch:
      raise CheckpointMismatchError(
          f'Checkpoint step {s} in {self.directory} was written for another '
          f'model or optimizer: {mismatch}. Use a new --workdir, or the '
          f'config it was trained with ({step_path}/config).')
    items = dict(state=ocp.args.StandardRestore(abstract_state),
                 data=ocp.args.JsonRestore(), config=ocp.args.JsonRestore())
    if os.path.isdir(os.path.join(step_path, inspection.FINGERPRINT_ITEM)):
      items[inspection.FINGERPRINT_ITEM] = ocp.args.JsonRestore()
    try:
      restored = self._mngr.restore(s, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except
      return None, f'restore failed: {_describe(e)}'
    params = getattr(restored.state, 'params', restored.state)
    if not inspection.all_finite(params):
      return None, 'its params hold NaN or inf'
    item = inspection.FINGERPRINT_ITEM
    saved = (restored.get(item) if item in items else None) or {}
    if saved.get('state') and (
        saved['state'] != inspection.fingerprint(restored.state)):
      return None, ('its arrays differ from the fingerprint saved with them '
                    '(files changed after the save)')
    return restored, None

  def _fallback_line(self, failures, resumed: int) -> str:
    """The recovery's one warning line."""
    if len(failures) == 1:
      s, reason, moved = failures[0]
      return (f'Checkpoint step {s} in {self.directory} is unusable '
              f'({reason}); moved it to {moved} and resumed from step '
              f'{resumed}.')
    steps = ', '.join(str(s) for s, _, _ in failures)
    reasons = '; '.join(f'step {s}: {r}' for s, r, _ in failures)
    return (f'Checkpoint steps {steps} in {self.directory} are unusable '
            f'({reasons}); moved them to '
            f'{os.path.join(self.directory, UNUSABLE_DIR)} and resumed from '
            f'step {resumed}.')
