"""Mesh from config, logical axis rules, and the shardings of state and batch.

The model names every parameter dimension with a logical axis ('vocab',
'embed', 'mlp', ...; `nn.with_logical_partitioning`) and constrains
activations the same way (`nn.with_logical_constraint`). `config.mesh.rules`
maps those names onto the mesh axes ('data', 'fsdp', 'tensor'); this module
turns that table into `NamedSharding`s for the whole train state and the batch.

Two rules beyond flax's own `logical_to_mesh_sharding`:
  * a dimension whose size is not divisible by the mesh axes it maps to is
    replicated instead (jit rejects uneven in/out shardings), so a 4-head model
    still runs with tensor=8;
  * optimizer state leaves inherit their parameter's spec, including
    Adafactor's factored moments v_row / v_col, which drop one dimension.

Activation constraints resolve only while a mesh and the rules are in context:
`activation_context(mesh, rules)` is entered inside every jitted step (see
trainer.py); without it flax silently skips the constraints.
"""
import contextlib
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
from flax.core import meta
import jax
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
import numpy as np
import optax

from t5x_lite.model_config import ConfigError

MESH_AXES = ('data', 'fsdp', 'tensor')
# The logical axes of a [batch, length] input feature.
BATCH_LOGICAL_AXES = ('batch', 'length')


# ---- mesh -------------------------------------------------------------------


def mesh_shape(mesh_cfg, num_devices):
  """Resolves -1 in (data, fsdp, tensor); raises ConfigError if it can't."""
  dims = {k: mesh_cfg[k] for k in ('data', 'fsdp', 'tensor')}
  dcn = mesh_cfg.get('dcn_data', 1) * mesh_cfg.get('dcn_fsdp', 1)
  for k, v in dims.items():
    if v == 0 or v < -1:
      raise ConfigError(f'mesh.{k}={v}: use a positive size or -1 to fill.')
  fill = [k for k, v in dims.items() if v == -1]
  if len(fill) > 1:
    raise ConfigError(f'Only one mesh axis may be -1, got {fill}.')
  known = 1
  for v in dims.values():
    known *= v if v > 0 else 1
  total = known * dcn
  if fill:
    if num_devices % total:
      raise ConfigError(
          f'mesh {dict(mesh_cfg.items())} does not divide {num_devices} '
          f'devices: the fixed axes multiply to {total}.')
    dims[fill[0]] = num_devices // total
  elif total != num_devices:
    raise ConfigError(
        f'mesh data*fsdp*tensor*dcn = {total} but there are {num_devices} '
        'devices; set one axis to -1 or make the product match.')
  return dims


def make_mesh(mesh_cfg, devices: Optional[Sequence[Any]] = None) -> Mesh:
  """Builds the ('data', 'fsdp', 'tensor') mesh that `config.mesh` describes.

  `dcn_data` / `dcn_fsdp` (multi-slice) multiply the 'data' / 'fsdp' axes and
  are their outermost part, so the only traffic that crosses slices (or
  processes) is the data-parallel gradient reduction and the fsdp gathers.

  Args:
    mesh_cfg: `config.mesh` (data, fsdp, tensor, dcn_data, dcn_fsdp); -1 in one
      of data/fsdp/tensor takes the remaining devices.
    devices: devices to lay out; `jax.devices()` by default.
  Returns:
    a `Mesh` with Auto axis types (sharding decided by jit's in/out shardings
    and the logical constraints, pjit style).
  """
  devices = list(jax.devices() if devices is None else devices)
  ici = mesh_shape(mesh_cfg, len(devices))
  ici_shape = [ici[a] for a in MESH_AXES]
  dcn_shape = [mesh_cfg.get('dcn_data', 1), mesh_cfg.get('dcn_fsdp', 1), 1]
  if np.prod(dcn_shape) > 1:
    # Slices (TPU multi-slice) or, failing that, processes are the DCN granules.
    by_slice = hasattr(devices[0], 'slice_index')
    num_granules = len({(d.slice_index if by_slice else d.process_index)
                        for d in devices})
    if num_granules == np.prod(dcn_shape):
      device_array = mesh_utils.create_hybrid_device_mesh(
          ici_shape, dcn_shape, devices, process_is_granule=not by_slice,
          allow_split_physical_axes=True)
    else:
      # One granule (fake CPU devices, one big host): plain row-major layout
      # with the dcn factor outermost in each axis.
      device_array = np.asarray(devices).reshape(
          dcn_shape + ici_shape).transpose(0, 3, 1, 4, 2, 5).reshape(
              [d * i for d, i in zip(dcn_shape, ici_shape)])
  else:
    device_array = _device_mesh(ici_shape, devices)
  return Mesh(device_array, MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def _device_mesh(shape, devices):
  if len(devices) == 1:
    return np.asarray(devices).reshape(shape)
  try:
    return mesh_utils.create_device_mesh(
        shape, devices, allow_split_physical_axes=True)
  except (ValueError, NotImplementedError, AssertionError):
    # A device subset the topology-aware layout cannot place: row major.
    return np.asarray(devices).reshape(shape)


# ---- logical axis rules ------------------------------------------------------


def logical_rules(rules) -> Tuple[Tuple[str, Any], ...]:
  """`config.mesh.rules` as flax's tuple of (logical name, mesh axes) pairs.

  Configs written as JSON or overridden from the command line may hold lists;
  flax wants tuples, and a mesh axis name that does not exist is a user error.
  """
  out = []
  for pair in rules:
    if len(pair) != 2:
      raise ConfigError(
          f'mesh.rules entry {pair!r} must be a (logical_name, mesh_axes) '
          'pair.')
    name, axes = pair
    if isinstance(axes, (list, tuple)):
      axes = tuple(axes)
      names = axes
    else:
      names = () if axes is None else (axes,)
    for a in names:
      if a not in MESH_AXES:
        raise ConfigError(
            f'mesh.rules maps {name!r} to unknown mesh axis {a!r}; use one of '
            f'{MESH_AXES} or None.')
    out.append((str(name), axes))
  return tuple(out)


@contextlib.contextmanager
def activation_context(mesh: Mesh, rules):
  """Makes `nn.with_logical_constraint` resolve against `mesh` and `rules`.

  Usable while tracing inside jit (it sets the abstract mesh, which flax reads,
  and the rules), so a step function enters it itself and callers need not.
  """
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), \
      nn.logical_axis_rules(rules):
    yield


# ---- logical specs -> mesh shardings ----------------------------------------


def _axis_size(mesh: Mesh, axes) -> int:
  if axes is None:
    return 1
  if isinstance(axes, str):
    axes = (axes,)
  return int(np.prod([mesh.shape[a] for a in axes]))


def fit_spec(spec: P, shape: Sequence[int], mesh: Mesh) -> P:
  """Replicates each dim of `spec` that its mesh axes do not divide evenly."""
  entries = list(spec) + [None] * (len(shape) - len(spec))
  fixed = [a if a is None or dim % _axis_size(mesh, a) == 0 else None
           for a, dim in zip(entries, shape)]
  while fixed and fixed[-1] is None:
    fixed.pop()
  return P(*fixed)


def logical_to_mesh_spec(logical_spec, rules, shape=None, mesh=None) -> P:
  """One logical PartitionSpec (names) -> mesh PartitionSpec (axes).

  With `shape` and `mesh`, dims the mesh cannot split evenly are replicated.
  """
  spec = nn.logical_to_mesh_axes(tuple(logical_spec or ()), rules)
  if shape is not None and mesh is not None:
    spec = fit_spec(spec, shape, mesh)
  return spec


def _is_spec(x):
  return isinstance(x, P)


def logical_to_sharding(logical_spec_tree, mesh: Mesh, rules, shapes=None):
  """Tree of logical PartitionSpecs -> tree of NamedShardings on `mesh`.

  `shapes` (a matching tree of arrays/ShapeDtypeStructs) enables the
  replicate-if-indivisible fallback.
  """
  if shapes is None:
    return jax.tree.map(
        lambda s: NamedSharding(mesh, logical_to_mesh_spec(s, rules)),
        logical_spec_tree, is_leaf=_is_spec)
  return jax.tree.map(
      lambda s, x: NamedSharding(
          mesh, logical_to_mesh_spec(s, rules, x.shape, mesh)),
      logical_spec_tree, shapes, is_leaf=_is_spec)


def unbox(tree):
  """Strips flax partitioning metadata, without adding sharding constraints.

  (`nn.unbox` would constrain each param to its full spec, which jit rejects
  for dims we chose to replicate; placement comes from out_shardings instead.)
  """
  return jax.tree.map(
      lambda x: x.unbox(apply_constraint=False)
      if isinstance(x, meta.AxisMetadata) else x,
      tree, is_leaf=lambda x: isinstance(x, meta.AxisMetadata))


def params_specs(boxed_params, mesh: Mesh, rules):
  """Mesh PartitionSpecs of every parameter from its logical annotations.

  Args:
    boxed_params: params as `init` returns them (LogicallyPartitioned leaves),
      usually abstract from `jax.eval_shape`.
  Returns:
    a tree (the unboxed params' structure) of mesh `PartitionSpec`s;
    parameters without annotations are replicated.
  """
  logical = nn.get_partition_spec(boxed_params)
  return jax.tree.map(
      lambda s, x: logical_to_mesh_spec(s, rules, x.shape, mesh),
      logical, unbox(boxed_params), is_leaf=_is_spec)


# ---- optimizer state --------------------------------------------------------


def _factored_dims(shape):
  """Adafactor's (d1, d0) as optax computes them: the two largest dims."""
  sorted_dims = np.argsort(shape)
  return int(sorted_dims[-2]), int(sorted_dims[-1])


def _drop(spec: P, ndim: int, axis: int) -> P:
  entries = list(spec) + [None] * (ndim - len(spec))
  del entries[axis]
  return P(*entries)


def _like_param(leaf, pspec, param):
  """Spec of a leaf that mirrors a parameter: the param's if same shape."""
  if tuple(leaf.shape) == tuple(param.shape):
    return pspec
  return P()  # placeholders ((1,) zeros of unfactored Adafactor) and scalars


def _factored_state_specs(state, pspecs, params):
  def row(leaf, pspec, param):
    if leaf.ndim == param.ndim - 1 and param.ndim >= 2:
      d1, d0 = _factored_dims(param.shape)
      if tuple(leaf.shape) == tuple(np.delete(param.shape, d0)):
        return _drop(pspec, param.ndim, d0)
    return P()

  def col(leaf, pspec, param):
    if leaf.ndim == param.ndim - 1 and param.ndim >= 2:
      d1, d0 = _factored_dims(param.shape)
      if tuple(leaf.shape) == tuple(np.delete(param.shape, d1)):
        return _drop(pspec, param.ndim, d1)
    return P()

  tree_map = lambda f, t: jax.tree.map(f, t, pspecs, params, is_leaf=_is_spec)
  return optax.FactoredState(
      count=P(),
      v_row=tree_map(row, state.v_row),
      v_col=tree_map(col, state.v_col),
      v=tree_map(_like_param, state.v))


def opt_state_specs(opt_state, pspecs, params):
  """Mesh PartitionSpecs of every optimizer state leaf.

  Walks the optax state: any subtree shaped like the params (Adam's mu/nu,
  Adafactor's v and momentum) takes the param specs leaf by leaf; Adafactor's
  factored moments drop the factored dimension from the param's spec; counts,
  scalars and anything else are replicated.

  Args:
    opt_state: the optimizer state, usually abstract (jax.eval_shape(tx.init)).
    pspecs: mesh PartitionSpecs of the params (params_specs).
    params: the (abstract) unboxed params.
  """
  params_def = jax.tree.structure(params)

  def walk(node):
    if isinstance(node, optax.FactoredState):
      return _factored_state_specs(node, pspecs, params)
    if jax.tree.structure(node) == params_def and params_def.num_leaves:
      return jax.tree.map(lambda leaf, s, p: _like_param(leaf, s, p),
                          node, pspecs, params, is_leaf=_is_spec)
    if isinstance(node, tuple) and hasattr(node, '_fields'):  # NamedTuple
      return type(node)(*[walk(c) for c in node])
    if isinstance(node, (tuple, list)):
      return type(node)(walk(c) for c in node)
    if isinstance(node, dict):
      return type(node)((k, walk(v)) for k, v in node.items())
    if node is None or not hasattr(node, 'shape'):
      # Empty states (optax.EmptyState) and other leafless nodes.
      return jax.tree.map(lambda _: P(), node)
    return P()

  return walk(opt_state)


def specs_to_shardings(spec_tree, mesh: Mesh, shapes=None):
  """Tree of mesh PartitionSpecs -> NamedShardings (fitting to `shapes`)."""
  if shapes is None:
    return jax.tree.map(lambda s: NamedSharding(mesh, s), spec_tree,
                        is_leaf=_is_spec)
  return jax.tree.map(lambda s, x: NamedSharding(mesh, fit_spec(s, x.shape,
                                                                mesh)),
                      spec_tree, shapes, is_leaf=_is_spec)


# ---- batch -------------------------------------------------------------------


def batch_spec(rules) -> P:
  """Spec of the batch dimension: what 'batch' maps to in the rules."""
  return nn.logical_to_mesh_axes(('batch',), rules)


def batch_sharding(mesh: Mesh, rules) -> NamedSharding:
  """Sharding of every [batch, ...] input feature (dim 0 over 'batch')."""
  return NamedSharding(mesh, batch_spec(rules))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def num_batch_shards(mesh: Mesh, rules) -> int:
  spec = batch_spec(rules)
  return _axis_size(mesh, spec[0]) if len(spec) else 1


def shard_batch(batch, sharding: NamedSharding):
  """Host-local numpy batch -> global jax.Arrays sharded along the batch dim.

  Each process passes the rows its devices hold (its slice of the global
  batch: `distributed.host_shard`); on one process that is the whole batch.
  """
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      batch)
