"""Params only: restore a model's params from any checkpoint, and the
params-only format (HF import, ELECTRA's discriminator export).

    restore_params(path)            # fine-tuning, eval, infer
    restore_params(path, abstract, fresh=('token_classifier',))
                                    # fine-tuning a new head: those params
                                    # are left out (the caller keeps its init)
    resolve_params_path(path)       # 'state:<step dir>' or 'params:<dir>'
    save_params_only(out_dir, params, config_dict)
    read_params_only_config(out_dir)

`restore_params(path)` loads params only from a training step dir, a
checkpoints dir (its newest usable step) or a params-only checkpoint: an
`ocp.StandardCheckpointer` tree {'params': ...} in <dir>, next to
<dir>/config.json. `save_params_only` writes that format and
`read_params_only_config` reads its config; nothing else touches the layout.
"""
import json
import os
from typing import Any, Dict, Optional, Tuple

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from t5x_lite import checkpoint_inspection as inspection

CheckpointError = inspection.CheckpointError
CheckpointMismatchError = inspection.CheckpointMismatchError


def _first_line(e: BaseException, limit: int = 300) -> str:
  text = str(e).strip().splitlines()
  text = text[0] if text else ''
  return text[:limit]


# ---- restoring params --------------------------------------------------------


def _numpy_target(meta_tree):
  """Restore args that read every array to host numpy (no mesh needed)."""
  return jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                      meta_tree)


def _matches(path: str, prefixes) -> bool:
  return any(path == p or path.startswith(p + '/') for p in prefixes)


def without_fresh(tree, fresh, path: str = ''):
  """`tree` (nested dicts) less the subtrees whose '/'-joined key path is
  one of the prefixes `fresh` or lies under one."""
  if not fresh or not hasattr(tree, 'items'):
    return tree
  out = {}
  for key, value in tree.items():
    sub = f'{path}/{key}' if path else str(key)
    if not _matches(sub, fresh):
      out[key] = without_fresh(value, fresh, sub)
  return out


def fresh_paths(tree, fresh, path: str = '') -> Tuple[str, ...]:
  """The '/'-joined paths of the leaves of `tree` that `fresh` names."""
  if not hasattr(tree, 'items'):
    return (path,) if _matches(path, fresh) else ()
  found = ()
  for key, value in tree.items():
    found += fresh_paths(value, fresh, f'{path}/{key}' if path else str(key))
  return found


def _restore_tree(path: str, abstract, *, subtree: Optional[str] = None,
                  partial: bool = False):
  """Restores (a subtree of) the PyTree checkpoint at `path`.

  abstract: ShapeDtypeStructs with shardings to restore into, or None for
  host numpy arrays shaped as stored.
  """
  ckptr = ocp.PyTreeCheckpointer()
  if abstract is None:
    tree = inspection.tree_metadata(path)
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
      partial_restore=subtree is not None or partial))
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
    hint = (f'; {inspection.describe_steps(parent)}'
            if inspection.step_dirs(parent) else '')
    raise CheckpointError(f'Checkpoint path {path} does not exist{hint}.')
  if os.path.isdir(os.path.join(path, 'state')):
    reason = inspection.inspect_step(path, items=('state',))
    if reason:
      raise CheckpointError(f'Checkpoint {path} is unusable: {reason}.')
    return f'state:{path}'
  if _is_tree_dir(path):
    return f'params:{path}'
  # A checkpoints dir, or a workdir holding one.
  for directory in (path, inspection.checkpoint_dir(path)):
    steps = sorted(inspection.step_dirs(directory), reverse=True)
    for s in steps:
      step_path = os.path.join(directory, str(s))
      reason = inspection.inspect_step(step_path, items=('state',))
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
      f'tree with _METADATA); {inspection.describe_steps(path)}.')


def restore_params(path: str, abstract_params=None, fresh=()):
  """Params only, for fine-tuning (checkpoint.restore_from), eval and infer.

  Args:
    path: a training step dir (…/checkpoints/<step>), a checkpoints dir or a
      workdir (its newest usable step is used), or a params-only checkpoint
      (interop/hf.py's: an ocp.StandardCheckpointer tree {'params': ...}; a
      tree without a 'params' key is taken as the params themselves).
    abstract_params: ShapeDtypeStructs with shardings to restore into (any
      mesh); None restores host numpy arrays shaped as stored.
    fresh: param path prefixes ('token_classifier', 'encoder/layers/mlp')
      that are not restored: a fine-tuning head the checkpoint lacks or has
      at another shape. They are left out of the stored tree, the target
      and the result (the caller keeps their init); every other param must
      match as always. Each prefix must name a param of abstract_params.
  Returns:
    the params tree (without the `fresh` subtrees).
  Raises:
    CheckpointError: nothing usable at `path` (the message names the path and
      the steps that exist), or the stored tree does not match
      (CheckpointMismatchError).
  """
  kind, where = resolve_params_path(path).split(':', 1)
  tree_path = os.path.join(where, 'state') if kind == 'state' else where
  try:
    stored = inspection.tree_metadata(tree_path)
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f'Cannot read the checkpoint at {tree_path}: '
                          f'{type(e).__name__}: {_first_line(e)}') from e
  subtree = 'params' if isinstance(stored, dict) and 'params' in stored else (
      None)
  if kind == 'state' and subtree is None:
    raise CheckpointError(f'{tree_path} holds no params; it holds '
                          f'{sorted(stored)}.')
  stored_params = stored[subtree] if subtree else stored
  fresh = tuple(fresh or ())
  if fresh and abstract_params is not None:
    unknown = [p for p in fresh if not fresh_paths(abstract_params, (p,))]
    if unknown:
      raise CheckpointMismatchError(
          f'fresh params {unknown} name no param of this model (its '
          f'top-level params: {sorted(abstract_params)}); fix '
          'checkpoint.fresh_params.')
    abstract_params = without_fresh(abstract_params, fresh)
  # A stored version of a fresh param (the head at another size) is skipped.
  skipped = fresh_paths(stored_params, fresh) if fresh else ()
  stored_params = without_fresh(stored_params, fresh)
  if abstract_params is not None:
    mismatch = inspection.describe_mismatch(stored_params, abstract_params)
    if mismatch:
      raise CheckpointMismatchError(
          f'The params at {where} do not fit this model: {mismatch}. Check '
          'config.model against the config the checkpoint was trained with.')
  try:
    params = _restore_tree(tree_path, abstract_params, subtree=subtree,
                           partial=bool(skipped))
    if abstract_params is None and fresh:
      params = without_fresh(params, fresh)
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(
        f'Restoring params from {where} failed: {type(e).__name__}: '
        f'{_first_line(e)}') from e
  saved = _saved_fingerprint(where) if kind == 'state' else {}
  # The saved fingerprint covers every stored param: it checks a full read.
  if saved.get('params') and not skipped and (
      saved['params'] != inspection.fingerprint(params)):
    raise CheckpointError(
        f'The params at {where} differ from the fingerprint saved with them: '
        'its files were changed after the save. Use another step.')
  logging.info('Restored params from %s.', where)
  return params


# ---- the params-only format --------------------------------------------------

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
    return inspection.read_json_item(step_path, inspection.FINGERPRINT_ITEM)
  except (OSError, ValueError):
    return {}
