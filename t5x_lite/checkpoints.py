"""Orbax checkpoints: save, resume (falling back past a bad step), params only.

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

`restore_params(path)` loads params only (fine-tuning, eval, infer) from a
training step dir, a checkpoints dir (its newest usable step) or a params-only
checkpoint: an `ocp.StandardCheckpointer` tree {'params': ...} in <dir>, next
to <dir>/config.json. `save_params_only` writes that format (HF import,
ELECTRA's discriminator export) and `read_params_only_config` reads its
config; nothing else touches the layout.
"""
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import tree as ocp_tree

from t5x_lite import checkpoint_failures

_describe = checkpoint_failures.describe_failure

CHECKPOINTS_DIR = 'checkpoints'
UNUSABLE_DIR = 'unusable'  # inside the checkpoints dir; not a step name
ITEMS = ('state', 'data', 'config')
# Optional (checkpoints written before it lack it): a fingerprint of the
# state's bytes, checked after every restore (see `fingerprint`).
FINGERPRINT_ITEM = 'fingerprint'
COMMIT_MARKER = 'commit_success.txt'  # Orbax writes it last, in every step
TMP_SUFFIX = '.orbax-checkpoint-tmp'


class CheckpointError(RuntimeError):
  """A checkpoint could not be written or no usable one could be read."""


class CheckpointMismatchError(CheckpointError):
  """A readable checkpoint of a different model or optimizer (no fallback:
  the older steps would not match either)."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, CHECKPOINTS_DIR)


# ---- inspecting step directories ---------------------------------------------


def step_dirs(directory: str) -> Dict[int, str]:
  """{step: path} of every directory named like a step (committed or not)."""
  if not os.path.isdir(directory):
    return {}
  out = {}
  for name in os.listdir(directory):
    path = os.path.join(directory, name)
    if name.isdigit() and os.path.isdir(path):
      out[int(name)] = path
  return out


def _describe_steps(directory: str) -> str:
  steps = sorted(step_dirs(directory))
  if not os.path.isdir(directory):
    return f'{directory} does not exist'
  if not steps:
    names = sorted(os.listdir(directory))[:8]
    return (f'{directory} holds no step directories'
            + (f' (it holds {names})' if names else ' (it is empty)'))
  return f'steps in {directory}: {steps}'


def inspect_step(step_path: str, items: Sequence[str] = ITEMS) -> Optional[str]:
  """Why the step dir cannot be restored, or None if it looks complete.

  Cheap checks only (names and sizes); a file whose bytes are damaged is
  caught by the restore itself.
  """
  if not os.path.isdir(step_path):
    return 'not a directory'
  if not os.path.exists(os.path.join(step_path, COMMIT_MARKER)):
    return (f'no commit marker ({COMMIT_MARKER}): the save did not finish')
  for item in items:
    item_path = os.path.join(step_path, item)
    if not os.path.isdir(item_path):
      return f'item {item!r} is missing'
    for root, _, files in os.walk(item_path):
      for f in files:
        path = os.path.join(root, f)
        try:
          size = os.path.getsize(path)
        except OSError as e:
          return f'cannot stat {os.path.relpath(path, step_path)}: {e}'
        if size == 0:
          return f'{os.path.relpath(path, step_path)} is empty (truncated)'
  return None


# ---- finiteness ----------------------------------------------------------------


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def all_finite(tree) -> bool:
  """True when every float leaf of `tree` is finite (one fused reduction)."""
  return bool(_all_finite(tree))


def _leaf_bits(x) -> jax.Array:
  """The sum of a leaf's bits as uint32 words, modulo 2**32: the same for
  any sharding or reduction order (modular addition commutes)."""
  x = jnp.asarray(x)
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  size = x.dtype.itemsize
  if size > 4:
    words = jax.lax.bitcast_convert_type(x, jnp.uint32)  # [..., size // 4]
  else:
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[size]
    words = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
  return jnp.sum(words, dtype=jnp.uint32)


_leaf_sums = jax.jit(lambda leaves: [_leaf_bits(x) for x in leaves])


def fingerprint(tree) -> Dict[str, Any]:
  """{'leaves': n, 'sha256': hex} of the per-leaf bit sums of `tree`.

  OCDBT's data files carry no checksum: bytes changed after a save (a bad
  disk, a partial copy, an overwrite of the same size) restore as other
  numbers, silently. The sums change with any such change (but for a
  2**-32 chance per leaf) and cost one pass over the arrays on device.
  """
  leaves = [x for x in jax.tree.leaves(tree) if hasattr(x, 'dtype')]
  sums = [int(v) for v in jax.device_get(_leaf_sums(leaves))]
  digest = hashlib.sha256(json.dumps(sums).encode()).hexdigest()
  return {'leaves': len(sums), 'sha256': digest}


def _abstract(tree):
  """Arrays -> ShapeDtypeStructs with their shardings (restore targets)."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                     sharding=getattr(x, 'sharding', None)),
      tree)


def _flat_shapes(tree) -> Dict[str, tuple]:
  """{'params/encoder/...': shape} of every array leaf, Orbax's key paths."""
  flat = ocp_tree.to_flat_dict(tree)
  return {'/'.join(str(k) for k in key): tuple(v.shape)
          for key, v in flat.items() if hasattr(v, 'shape')}


def describe_mismatch(stored_tree, target_tree, limit: int = 3
                      ) -> Optional[str]:
  """What differs between a checkpoint's tree and the target, or None."""
  stored = _flat_shapes(stored_tree)
  target = _flat_shapes(ocp_tree.serialize_tree(target_tree,
                                                keep_empty_nodes=True))
  problems = []
  for key in sorted(set(stored) | set(target)):
    if key not in stored:
      problems.append(f'{key} is missing from the checkpoint')
    elif key not in target:
      problems.append(f'{key} is in the checkpoint but not in this model')
    elif stored[key] != target[key]:
      problems.append(f'{key} has shape {stored[key]} in the checkpoint but '
                      f'{target[key]} here')
  if not problems:
    return None
  more = len(problems) - limit
  return '; '.join(problems[:limit]) + (f' (and {more} more)' if more > 0
                                        else '')


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


# ---- one line per failure ----------------------------------------------------------


def on_disk(directory: str) -> str:
  """What a failed write leaves for the next start, said truthfully."""
  steps = sorted(step_dirs(directory))
  if steps:
    return (f'The previous checkpoints are intact: steps {steps}; a restart '
            f'resumes from step {steps[-1]}.')
  return 'No checkpoint is on disk yet: a restart begins at step 0.'


# ---- training checkpoints --------------------------------------------------------


@dataclasses.dataclass
class Restored:
  step: int
  state: Any
  data: Dict[str, Any]
  config: Dict[str, Any]


class Checkpointer:
  """Orbax CheckpointManager over workdir/checkpoints with our safety rules.

    ckpt = Checkpointer(checkpoint_dir(workdir), keep=3, async_save=True)
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
    for item in ('data', 'config', FINGERPRINT_ITEM):
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

  # ---- queries ------------------------------------------------------------------

  def all_steps(self) -> List[int]:
    """Steps present on disk (usable or not), ascending."""
    return sorted(step_dirs(self.directory))

  def latest_step(self) -> Optional[int]:
    steps = self.all_steps()
    return steps[-1] if steps else None

  # ---- save ---------------------------------------------------------------------

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
    if not all_finite(state.params if hasattr(state, 'params') else state):
      raise CheckpointError(
          f'Refusing to checkpoint step {step}: the params hold NaN or inf.')
    self.wait_until_finished()  # surfaces a failed previous async write
    if step in step_dirs(self.directory):
      logging.info('Checkpoint step %d already exists in %s; not saving.',
                   step, self.directory)
      return False
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(dict(data or {})),
        config=ocp.args.JsonSave(dict(config or {})),
        **{FINGERPRINT_ITEM: ocp.args.JsonSave(
            {'state': fingerprint(state), 'params': fingerprint(
                state.params if hasattr(state, 'params') else state)})})
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
    if error is None and step is not None and step not in step_dirs(
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

  # ---- restore ------------------------------------------------------------------

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
    steps = sorted(step_dirs(self.directory), reverse=True)
    if step is not None:
      if step not in steps:
        raise CheckpointError(
            f'No checkpoint step {step}: {_describe_steps(self.directory)}.')
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
    reason = inspect_step(step_path)
    if reason is not None:
      return None, reason
    try:
      stored = _tree_metadata(os.path.join(step_path, 'state'))
    except Exception as e:  # pylint: disable=broad-except
      return None, f'unreadable state metadata: {_describe(e)}'
    mismatch = describe_mismatch(stored, abstract_state)
    if mismatch:
      raise CheckpointMismatchError(
          f'Checkpoint step {s} in {self.directory} was written for another '
          f'model or optimizer: {mismatch}. Use a new --workdir, or the '
          f'config it was trained with ({step_path}/config).')
    items = dict(state=ocp.args.StandardRestore(abstract_state),
                 data=ocp.args.JsonRestore(), config=ocp.args.JsonRestore())
    if os.path.isdir(os.path.join(step_path, FINGERPRINT_ITEM)):
      items[FINGERPRINT_ITEM] = ocp.args.JsonRestore()
    try:
      restored = self._mngr.restore(s, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except
      return None, f'restore failed: {_describe(e)}'
    params = getattr(restored.state, 'params', restored.state)
    if not all_finite(params):
      return None, 'its params hold NaN or inf'
    saved = (restored.get(FINGERPRINT_ITEM) if FINGERPRINT_ITEM in items
             else None) or {}
    if saved.get('state') and saved['state'] != fingerprint(restored.state):
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


def _first_line(e: BaseException, limit: int = 300) -> str:
  text = str(e).strip().splitlines()
  text = text[0] if text else ''
  return text[:limit]


# ---- params only -------------------------------------------------------------------


def _numpy_target(meta_tree):
  """Restore args that read every array to host numpy (no mesh needed)."""
  return jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                      meta_tree)


def _tree_metadata(path: str):
  # The handler reads the tree's own metadata (the Checkpointer would also
  # look for step-level metadata an item directory does not have).
  meta = ocp.PyTreeCheckpointHandler().metadata(epath.Path(path))
  return getattr(meta, 'tree', meta)


def _restore_tree(path: str, abstract, *, subtree: Optional[str] = None):
  """Restores (a subtree of) the PyTree checkpoint at `path`.

  abstract: ShapeDtypeStructs with shardings to restore into, or None for
  host numpy arrays shaped as stored.
  """
  ckptr = ocp.PyTreeCheckpointer()
  if abstract is None:
    tree = _tree_metadata(path)
    if subtree is not None:
      tree = tree[subtree]
    target, restore_args = tree, _numpy_target(tree)
  else:
    target = abstract
    restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
  if subtree is not None:
    target, restore_args = {subtree: target}, {subtree: restore_args}
  restored = ckptr.restore(path, args=ocp.args.PyTreeRestore(
      item=target, restore_args=restore_args,
      partial_restore=subtree is not None))
  return restored[subtree] if subtree is not None else restored


def _is_tree_dir(path: str) -> bool:
  """An Orbax PyTree checkpoint directory (ocp.StandardCheckpointer's)."""
  return os.path.isfile(os.path.join(path, '_METADATA'))


def resolve_params_path(path: str) -> str:
  """What restore_params would read, as 'kind:directory'.

  'state:<step dir>' for a training checkpoint (also when `path` is a
  checkpoints dir or a workdir: its newest usable step), or 'params:<dir>'
  for a params-only checkpoint (interop/hf.py: a StandardCheckpointer tree
  {'params': ...} in <dir>, with <dir>/config.json next to it).
  Raises CheckpointError naming the path and the steps that exist.
  """
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(path):
    parent = os.path.dirname(path)
    hint = (f'; {_describe_steps(parent)}' if step_dirs(parent) else '')
    raise CheckpointError(f'Checkpoint path {path} does not exist{hint}.')
  if os.path.isdir(os.path.join(path, 'state')):
    reason = inspect_step(path, items=('state',))
    if reason:
      raise CheckpointError(f'Checkpoint {path} is unusable: {reason}.')
    return f'state:{path}'
  if _is_tree_dir(path):
    return f'params:{path}'
  # A checkpoints dir, or a workdir holding one.
  for directory in (path, checkpoint_dir(path)):
    steps = sorted(step_dirs(directory), reverse=True)
    for s in steps:
      step_path = os.path.join(directory, str(s))
      reason = inspect_step(step_path, items=('state',))
      if reason is None:
        if s != steps[0]:
          logging.warning('Using checkpoint step %d of %s.', s, directory)
        return f'state:{step_path}'
      logging.warning('Checkpoint step %d in %s is unusable: %s; trying the '
                      'previous step.', s, directory, reason)
    if steps:
      raise CheckpointError(
          f'No usable checkpoint in {directory}: steps {sorted(steps)} are '
          'all incomplete or damaged (see the warnings above).')
  raise CheckpointError(
      f'No checkpoint at {path}: expected a step directory (with state/), a '
      'checkpoints directory, a workdir or a params-only checkpoint (an Orbax '
      f'tree with _METADATA); {_describe_steps(path)}.')


def restore_params(path: str, abstract_params=None):
  """Params only, for fine-tuning (checkpoint.restore_from), eval and infer.

  Args:
    path: a training step dir (…/checkpoints/<step>), a checkpoints dir or a
      workdir (its newest usable step is used), or a params-only checkpoint
      (interop/hf.py's: an ocp.StandardCheckpointer tree {'params': ...}; a
      tree without a 'params' key is taken as the params themselves).
    abstract_params: ShapeDtypeStructs with shardings to restore into (any
      mesh); None restores host numpy arrays shaped as stored.
  Returns:
    the params tree.
  Raises:
    CheckpointError: nothing usable at `path` (the message names the path and
      the steps that exist), or the stored tree does not match
      (CheckpointMismatchError).
  """
  kind, where = resolve_params_path(path).split(':', 1)
  tree_path = os.path.join(where, 'state') if kind == 'state' else where
  try:
    stored = _tree_metadata(tree_path)
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f'Cannot read the checkpoint at {tree_path}: '
                          f'{type(e).__name__}: {_first_line(e)}') from e
  subtree = 'params' if isinstance(stored, dict) and 'params' in stored else (
      None)
  if kind == 'state' and subtree is None:
    raise CheckpointError(f'{tree_path} holds no params; it holds '
                          f'{sorted(stored)}.')
  if abstract_params is not None:
    mismatch = describe_mismatch(stored[subtree] if subtree else stored,
                                 abstract_params)
    if mismatch:
      raise CheckpointMismatchError(
          f'The params at {where} do not fit this model: {mismatch}. Check '
          'config.model against the config the checkpoint was trained with.')
  try:
    params = _restore_tree(tree_path, abstract_params, subtree=subtree)
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(
        f'Restoring params from {where} failed: {type(e).__name__}: '
        f'{_first_line(e)}') from e
  saved = _saved_fingerprint(where) if kind == 'state' else {}
  if saved.get('params') and saved['params'] != fingerprint(params):
    raise CheckpointError(
        f'The params at {where} differ from the fingerprint saved with them: '
        'its files were changed after the save. Use another step.')
  logging.info('Restored params from %s.', where)
  return params


# ---- the params-only format ----------------------------------------------------

PARAMS_ONLY_CONFIG = 'config.json'  # beside the tree, in the same directory


def save_params_only(out_dir: str, params, config_dict: Optional[Dict[str, Any]]
                     = None) -> str:
  """Writes a params-only checkpoint; returns out_dir (absolute).

  out_dir/ gets the `ocp.StandardCheckpointer` tree {'params': params} (every
  leaf as host numpy) and, when `config_dict` is given, out_dir/config.json
  (what eval/infer take the model's structural fields from).
  Raises FileExistsError when out_dir exists (nothing is overwritten).
  """
  path = os.path.abspath(out_dir)
  if os.path.exists(path):
    raise FileExistsError(f'{path} exists; pick a new output directory.')
  tree = {'params': jax.tree.map(np.asarray, params)}
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, tree)
    ckptr.wait_until_finished()
  if config_dict is not None:
    with open(os.path.join(path, PARAMS_ONLY_CONFIG), 'w') as f:
      json.dump(config_dict, f, indent=2, sort_keys=True)
  return path


def read_params_only_config(directory: str) -> Dict[str, Any]:
  """The config dict saved beside a params-only checkpoint ({} when it was
  written without one). Raises ValueError for a config.json that is not JSON.
  """
  path = os.path.join(os.path.abspath(directory), PARAMS_ONLY_CONFIG)
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    try:
      return json.load(f)
    except ValueError as e:
      raise ValueError(f'{path} is not valid JSON ({e}); rewrite it or '
                       'delete it and pass the config on the command line.'
                       ) from e


def _saved_fingerprint(step_path: str) -> Dict[str, Any]:
  """The fingerprint item of a step dir ({} for older checkpoints)."""
  try:
    return read_json_item(step_path, FINGERPRINT_ITEM)
  except (OSError, ValueError):
    return {}


def read_json_item(step_path: str, item: str) -> Dict[str, Any]:
  """The JSON item ('data' or 'config') of a step dir, without Orbax."""
  with open(os.path.join(step_path, item, 'metadata')) as f:
    return json.load(f)
