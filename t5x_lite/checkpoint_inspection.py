"""A checkpoint's files, read without restoring it: the layout's names, the
errors, the step directories, whether a step looks complete, its JSON items,
and the checks a restore makes of what it read.

    step_dirs(checkpoint_dir(workdir))   # {step: path}, committed or not
    inspect_step(step_path)              # why it cannot be restored, or None
    read_json_item(step_path, 'data')    # the data position, without Orbax
    tree_metadata(item_path)             # the stored tree's shapes and dtypes
    describe_mismatch(stored, target)    # what differs from the model, or None
    all_finite(params), fingerprint(tree)

checkpoints.Checkpointer (training checkpoints) and params_checkpoints.py
(params only) both check what they restore with these.
"""
import hashlib
import json
import os
from typing import Any, Dict, Optional, Sequence

from etils import epath
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from orbax.checkpoint import tree as ocp_tree

CHECKPOINTS_DIR = 'checkpoints'
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


def describe_steps(directory: str) -> str:
  """The steps in `directory`, or why it holds none (for error messages)."""
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


def read_json_item(step_path: str, item: str) -> Dict[str, Any]:
  """The JSON item ('data' or 'config') of a step dir, without Orbax."""
  with open(os.path.join(step_path, item, 'metadata')) as f:
    return json.load(f)


def tree_metadata(path: str):
  """The metadata tree (shapes, dtypes) of the Orbax PyTree at `path`."""
  # The handler reads the tree's own metadata (the Checkpointer would also
  # look for step-level metadata an item directory does not have).
  meta = ocp.PyTreeCheckpointHandler().metadata(epath.Path(path))
  return getattr(meta, 'tree', meta)


# ---- finiteness --------------------------------------------------------------


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


# ---- the stored tree against the model's -------------------------------------


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
