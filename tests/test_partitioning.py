"""Meshes, logical rules and state/batch shardings on 8 fake CPU devices."""
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np
import optax
import pytest

from t5x_lite.configs import default
from t5x_lite import partitioning
from t5x_lite.config import ConfigError

RULES = partitioning.logical_rules(default.get_config().mesh.rules)


def _mesh_cfg(**kw):
  m = default.get_config().mesh
  for k, v in kw.items():
    m[k] = v
  return m


@pytest.mark.parametrize('kw,shape', [
    (dict(data=-1), (8, 1, 1)),
    (dict(data=1, fsdp=-1), (1, 8, 1)),
    (dict(data=2, fsdp=2, tensor=2), (2, 2, 2)),
    (dict(data=1, fsdp=-1, tensor=2), (1, 4, 2)),
])
def test_make_mesh_shapes(kw, shape):
  mesh = partitioning.make_mesh(_mesh_cfg(**kw))
  assert mesh.axis_names == ('data', 'fsdp', 'tensor')
  assert tuple(mesh.devices.shape) == shape
  assert sorted(d.id for d in mesh.devices.flat) == list(range(8))


def test_make_mesh_on_a_device_subset():
  mesh = partitioning.make_mesh(_mesh_cfg(data=-1), jax.devices()[:1])
  assert tuple(mesh.devices.shape) == (1, 1, 1)


def test_dcn_axes_are_outermost():
  # 2 "slices" of 4 devices: data = dcn_data(2) x ici data(4); one granule
  # here, so devices 0-3 form the first dcn block of the data axis.
  mesh = partitioning.make_mesh(_mesh_cfg(data=-1, dcn_data=2))
  assert tuple(mesh.devices.shape) == (8, 1, 1)
  ids = [d.id for d in mesh.devices[:, 0, 0]]
  assert ids[:4] == [0, 1, 2, 3] and ids[4:] == [4, 5, 6, 7]
  mesh = partitioning.make_mesh(_mesh_cfg(data=1, fsdp=2, tensor=2,
                                          dcn_fsdp=2))
  assert tuple(mesh.devices.shape) == (1, 4, 2)
  # Outer fsdp half = the first 4 devices (one slice).
  assert {d.id for d in mesh.devices[0, :2].flat} == {0, 1, 2, 3}


def test_bad_mesh_is_a_config_error():
  with pytest.raises(ConfigError, match='does not divide|product'):
    partitioning.make_mesh(_mesh_cfg(data=3, fsdp=1, tensor=1))


def test_rules_from_lists_and_unknown_axis():
  rules = partitioning.logical_rules(
      [['batch', ['data', 'fsdp']], ['embed', 'fsdp'], ['kv', None]])
  assert rules == (('batch', ('data', 'fsdp')), ('embed', 'fsdp'),
                   ('kv', None))
  with pytest.raises(ConfigError, match="unknown mesh axis 'model'"):
    partitioning.logical_rules([('mlp', 'model')])


def test_logical_to_mesh_spec_with_indivisible_fallback():
  mesh = partitioning.make_mesh(_mesh_cfg(data=1, fsdp=2, tensor=4))
  assert partitioning.logical_to_mesh_spec(('vocab', 'embed'), RULES) == P(
      'tensor', 'fsdp')
  # 6 heads cannot split over tensor=4: that dim is replicated, not an error.
  spec = partitioning.logical_to_mesh_spec(
      ('embed', 'heads', 'kv'), RULES, shape=(64, 6, 16), mesh=mesh)
  assert spec == P('fsdp')
  sh = partitioning.logical_to_sharding(
      {'a': P('embed', 'mlp')}, mesh, RULES,
      shapes={'a': jax.ShapeDtypeStruct((64, 128), jnp.float32)})
  assert sh['a'].spec == P('fsdp', 'tensor')


class _Tiny(nn.Module):
  """A params tree with logical names, like the real network's."""

  @nn.compact
  def __call__(self, x):
    part = nn.with_logical_partitioning
    emb = self.param('embedding', part(nn.initializers.normal(), ('vocab',
                                                                  'embed')),
                     (128, 32))
    wi = self.param('wi', part(nn.initializers.normal(),
                               ('layers', 'embed', 'mlp')), (2, 32, 64))
    scale = self.param('scale', part(nn.initializers.ones, ('embed',)), (32,))
    bias = self.param('bias', nn.initializers.zeros, (3,))  # no annotation
    h = emb[x] * scale
    h = nn.with_logical_constraint(h, ('batch', 'length', 'embed'))
    return jnp.einsum('ble,em->blm', h, wi[0]).sum() + bias.sum()


@pytest.fixture(scope='module')
def tiny():
  mesh = partitioning.make_mesh(_mesh_cfg(data=2, fsdp=2, tensor=2))
  x = jnp.ones((8, 4), jnp.int32)
  boxed = jax.eval_shape(_Tiny().init, jax.random.PRNGKey(0), x)['params']
  params = partitioning.unbox(boxed)
  return mesh, x, boxed, params


def test_param_specs_follow_rules(tiny):
  mesh, _, boxed, _ = tiny
  specs = partitioning.params_specs(boxed, mesh, RULES)
  assert specs == {'embedding': P('tensor', 'fsdp'),
                   'wi': P(None, 'fsdp', 'tensor'),
                   'scale': P('fsdp'), 'bias': P()}


def test_adafactor_state_specs(tiny):
  mesh, _, boxed, params = tiny
  pspecs = partitioning.params_specs(boxed, mesh, RULES)
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.adafactor(1e-2, min_dim_size_to_factor=16))
  state = jax.eval_shape(tx.init, params)
  specs = partitioning.opt_state_specs(state, pspecs, params)
  fs = specs[1][0]
  assert isinstance(fs, optax.FactoredState)
  assert fs.count == P()
  # embedding [vocab 128, embed 32]: v_row drops vocab (the largest dim),
  # v_col drops embed. wi [layers 2, embed 32, mlp 64]: factored over
  # (embed, mlp); the layers dim stays.
  assert fs.v_row['embedding'] == P('fsdp')
  assert fs.v_col['embedding'] == P('tensor')
  assert fs.v_row['wi'] == P(None, 'fsdp')
  assert fs.v_col['wi'] == P(None, 'tensor')
  assert fs.v['scale'] == P('fsdp')  # 1-D: unfactored, same spec
  assert fs.v['embedding'] == P()  # (1,) placeholder
  # The specs fit the state's tree and shapes, so jit accepts them.
  shardings = partitioning.specs_to_shardings(specs, mesh, state)
  assert jax.tree.structure(shardings) == jax.tree.structure(state)
  for s, x in zip(jax.tree.leaves(shardings), jax.tree.leaves(state)):
    s.shard_shape(x.shape)  # raises if indivisible


def test_adamw_state_specs(tiny):
  mesh, _, boxed, params = tiny
  pspecs = partitioning.params_specs(boxed, mesh, RULES)
  tx = optax.adamw(1e-3, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p))
  state = jax.eval_shape(tx.init, params)
  specs = partitioning.opt_state_specs(state, pspecs, params)
  adam = specs[0]
  assert adam.mu == pspecs and adam.nu == pspecs and adam.count == P()
  shardings = partitioning.specs_to_shardings(specs, mesh, state)
  assert jax.tree.structure(shardings) == jax.tree.structure(state)


def test_activation_constraints_take_effect(tiny):
  mesh, x, _, params = tiny
  params = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), params)

  def fwd(params, x):
    with partitioning.activation_context(mesh, RULES):
      return _Tiny().apply({'params': params}, x)

  hlo = jax.jit(fwd).lower(params, x).as_text()
  assert 'sharding_constraint' in hlo
  assert '[{"data", "fsdp"}, {}, {"fsdp"}]' not in hlo  # fsdp used once
  assert '{"data", "fsdp"}' in hlo
  # Without the context flax drops the constraint silently.
  bare = jax.jit(lambda p, x: _Tiny().apply({'params': p}, x)).lower(
      params, x).as_text()
  assert 'sharding_constraint' not in bare


def test_shard_batch_places_rows_on_the_batch_axes():
  mesh = partitioning.make_mesh(_mesh_cfg(data=2, fsdp=2, tensor=2))
  sharding = partitioning.batch_sharding(mesh, RULES)
  assert sharding.spec == P(('data', 'fsdp'))
  assert partitioning.num_batch_shards(mesh, RULES) == 4
  batch = {'tokens': np.arange(8 * 3, dtype=np.int32).reshape(8, 3)}
  out = partitioning.shard_batch(batch, sharding)
  np.testing.assert_array_equal(np.asarray(out['tokens']), batch['tokens'])
  assert out['tokens'].sharding.spec == P(('data', 'fsdp'))
  shard_rows = {s.data.shape[0] for s in out['tokens'].addressable_shards}
  assert shard_rows == {2}


def test_rules_accept_a_configdict_with_lists():
  c = ml_collections.ConfigDict({'mesh': {'rules': [('embed', ['fsdp'])]}})
  assert partitioning.logical_rules(c.mesh.rules) == (('embed', ('fsdp',)),)
