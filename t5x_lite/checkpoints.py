"""Orbax checkpoints: save, resume (falling back past a bad step), params only.

A training checkpoint is one Orbax step directory, workdir/checkpoints/<step>/:

  state/    the TrainState (ocp.StandardSave: OCDBT + zarr). Restored with
            target shardings (ShapeDtypeStructs carrying NamedShardings), so a
            checkpoint written on one mesh restores into any other.
  data/     where the input pipeline stands (JSON): batches consumed per
            process, the seed and the batch geometry; resume skips exactly
            that many batches, so the data order survives a restart.
  config/   the run's resolved config (JSON), for the record and for tools.
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
or, for the asynchronous part of a save, from the next `save`,
`wait_until_finished` or `close`; the previous step is untouched. A state
whose params are not all finite is never written.

`restore_params(path)` loads params only (fine-tuning, eval, infer) from a
training step dir, a checkpoints dir (its newest usable step) or a params-only
checkpoint: an `ocp.StandardCheckpointer` tree {'params': ...} in <dir>, next
to <dir>/config.json. `save_params_only` writes that format (HF import,
ELECTRA's discriminator export) and `read_params_only_config` reads its
config; nothing else touches the layout.
"""
import dataclasses
import json
import os
import shutil
import time
from typing import Any, Dict, List, Optional, Sequence

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import tree as ocp_tree

CHECKPOINTS_DIR = 'checkpoints'
UNUSABLE_DIR = 'unusable'  # inside the checkpoints dir; not a step name
ITEMS = ('state', 'data', 'config')
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
    for item in ('data', 'config'):
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
    self._mngr = ocp.CheckpointManager(self.directory, options=options,
                                       handler_registry=registry)
    self._pending_step = None  # the step an async save is still writing

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
        config=ocp.args.JsonSave(dict(config or {})))
    try:
      self._mngr.save(step, args=args, force=True)
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f'Saving checkpoint step {step} to {self.directory} failed: '
          f'{type(e).__name__}: {e}. The previous checkpoints are intact.'
      ) from e
    self._pending_step = step
    return True

  def wait_until_finished(self):
    """Blocks until the last save is on disk; raises if it failed."""
    step, self._pending_step = self._pending_step, None
    try:
      self._mngr.wait_until_finished()
      self._mngr.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f'Writing checkpoint step {step} to {self.directory} failed: '
          f'{type(e).__name__}: {e}. The previous checkpoints are intact.'
      ) from e
    if step is not None and step not in step_dirs(self.directory):
      raise CheckpointError(
          f'Writing checkpoint step {step} to {self.directory} failed: the '
          'step directory was never committed (see the Orbax errors above). '
          'The previous checkpoints are intact.')

  def close(self):
    try:
      self.wait_until_finished()
    finally:
      self._mngr.close()

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

  def _set_aside(self, step: int, reason: str):
    """Moves an unusable step to checkpoints/unusable/ (process 0 only)."""
    if self.read_only:
      return
    if jax.process_index() == 0:
      src = os.path.join(self.directory, str(step))
      dst_dir = os.path.join(self.directory, UNUSABLE_DIR)
      dst = os.path.join(dst_dir, f'{step}.{int(time.time())}')
      try:
        os.makedirs(dst_dir, exist_ok=True)
        shutil.move(src, dst)
        with open(os.path.join(dst, 'REASON.txt'), 'w') as f:
          f.write(reason + '\n')
        logging.warning('Moved unusable checkpoint step %d to %s.', step, dst)
      except OSError as e:
        logging.warning('Could not move unusable step %d aside: %s', step, e)
    _sync(f't5x_lite_set_aside_{step}')
    self._mngr.reload()

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
    failures = []
    for s in steps:
      step_path = os.path.join(self.directory, str(s))
      reason = inspect_step(step_path)
      restored = None
      if reason is None:
        try:
          stored = _tree_metadata(os.path.join(step_path, 'state'))
        except Exception as e:  # pylint: disable=broad-except
          reason = (f'unreadable state metadata: {type(e).__name__}: '
                    f'{_first_line(e)}')
      if reason is None:
        mismatch = describe_mismatch(stored, abstract_state)
        if mismatch:
          raise CheckpointMismatchError(
              f'Checkpoint step {s} in {self.directory} was written for '
              f'another model or optimizer: {mismatch}. Use a new --workdir, '
              f'or the config it was trained with ({step_path}/config).')
        try:
          restored = self._mngr.restore(s, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract_state),
              data=ocp.args.JsonRestore(),
              config=ocp.args.JsonRestore()))
        except Exception as e:  # pylint: disable=broad-except
          reason = f'restore failed: {type(e).__name__}: {_first_line(e)}'
      if reason is None:
        params = getattr(restored.state, 'params', restored.state)
        if not all_finite(params):
          reason = 'its params hold NaN or inf'
      ok = _all_processes_agree(reason is None)
      if ok:
        if failures:
          logging.warning('Resuming from checkpoint step %d instead.', s)
        return Restored(step=s, state=restored.state,
                        data=dict(restored.data or {}),
                        config=dict(restored.config or {}))
      reason = reason or 'restore failed on another process'
      failures.append((s, reason))
      msg = (f'Checkpoint step {s} in {self.directory} is unusable: {reason}.')
      if step is not None:
        raise CheckpointError(msg)
      logging.warning('%s Falling back to the previous step.', msg)
      self._set_aside(s, reason)
    raise CheckpointError(
        f'No usable checkpoint in {self.directory}: ' +
        '; '.join(f'step {s}: {r}' for s, r in failures) +
        f'. They were moved to {os.path.join(self.directory, UNUSABLE_DIR)}; '
        'the next start begins from scratch unless you restore one by hand.')


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


def read_json_item(step_path: str, item: str) -> Dict[str, Any]:
  """The JSON item ('data' or 'config') of a step dir, without Orbax."""
  with open(os.path.join(step_path, item, 'metadata')) as f:
    return json.load(f)
