"""ConfigDict at the edge, typed dataclasses inside.

`validate(config)` runs before anything compiles and raises `ConfigError` with
one line that names the key and the fix. `ModelConfig.from_config(config)`
turns `config.model` into the frozen dataclass the network takes.
"""
import dataclasses
import difflib
import os
import sys
from typing import Any, Tuple

import ml_collections

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:  # config files import `configs.default`
  sys.path.insert(0, _REPO_ROOT)

ARCHS = ('encoder_decoder', 'decoder_only', 'encoder_only')
DTYPES = ('float32', 'bfloat16', 'float16')
ATTENTION_IMPLS = ('xla', 'cudnn')
REMAT_POLICIES = ('none', 'full', 'save_dots', 'save_dots_no_batch',
                  'save_attn_out')
ACTIVATIONS = ('gelu', 'relu', 'linear', 'silu', 'gelu_new')
OPTIMIZERS = ('adafactor', 'adamw')
SCHEDULES = ('rsqrt', 'linear', 'cosine', 'constant')
DECODE_METHODS = ('greedy', 'sample', 'beam')
# model.objective -> the arch it needs (None: any); models.from_config picks.
OBJECTIVES = {'auto': None, 'electra': 'encoder_only',
              'classify': 'encoder_only'}
FEATURE_LENGTH_KEYS = ('inputs', 'targets')
# Groups whose keys are free-form data rather than schema.
_FREE_FORM = ('mesh.rules',)


class ConfigError(ValueError):
  """A config a user wrote is wrong; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The network's view of `config.model` (T5X's T5Config)."""
  arch: str = 'encoder_decoder'
  size: str = 'tiny'
  vocab_size: int = 32128
  emb_dim: int = 64
  num_heads: int = 4
  head_dim: int = 16
  mlp_dim: int = 128
  num_encoder_layers: int = 2
  num_decoder_layers: int = 2
  mlp_activations: Tuple[str, ...] = ('gelu', 'linear')
  logits_via_embedding: bool = False
  dropout_rate: float = 0.0
  dtype: str = 'float32'
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  attention_impl: str = 'xla'
  remat_policy: str = 'none'
  scan_layers: bool = True
  num_classes: int = 2
  generator_size_fraction: float = 0.25
  generator_layers_fraction: float = 1.0
  electra_disc_weight: float = 50.0
  objective: str = 'auto'  # auto | electra | classify (models.from_config)
  num_block_positions: int = 0  # GLM block-position embedding rows (0: none)

  @classmethod
  def from_config(cls, model_cfg) -> 'ModelConfig':
    d = dict(model_cfg)
    d['mlp_activations'] = tuple(d['mlp_activations'])
    return cls(**d)

  def replace(self, **kw) -> 'ModelConfig':
    return dataclasses.replace(self, **kw)


def default_config():
  from configs import default  # pylint: disable=g-import-not-at-top
  return default.get_config()


# ---- schema checks -------------------------------------------------------------


def _closest(name, options):
  near = difflib.get_close_matches(name, list(options), n=3, cutoff=0.5)
  return f' Did you mean {" or ".join(repr(n) for n in near)}?' if near else ''


def _check_keys(cfg, ref, prefix=''):
  for key in cfg.keys():
    path = f'{prefix}{key}'
    if key not in ref:
      raise ConfigError(
          f'Unknown config key {path!r}.{_closest(key, ref.keys())} '
          f'Every key must exist in configs/default.py.')
    if path in _FREE_FORM:
      continue
    val, ref_val = cfg[key], ref[key]
    if path == 'task.feature_lengths':
      for k, v in val.items():
        if k not in FEATURE_LENGTH_KEYS:
          raise ConfigError(
              f'Unknown feature length {path}.{k}; use one of '
              f'{FEATURE_LENGTH_KEYS}.')
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
          raise ConfigError(f'{path}.{k} must be a positive int, got {v!r}.')
      continue
    if isinstance(ref_val, ml_collections.ConfigDict):
      if not isinstance(val, (ml_collections.ConfigDict, dict)):
        raise ConfigError(f'{path} must be a group (ConfigDict), got {val!r}.')
      _check_keys(val, ref_val, path + '.')
      continue
    _check_type(path, val, ref_val)


def _check_type(path, val, ref_val):
  if ref_val is None:
    return
  ok = isinstance(val, type(ref_val))
  if isinstance(ref_val, float) and isinstance(val, int) and not isinstance(
      val, bool):
    ok = True
  if isinstance(ref_val, int) and not isinstance(ref_val, bool) and isinstance(
      val, bool):
    ok = False
  if isinstance(ref_val, (tuple, list)) and isinstance(val, (tuple, list)):
    ok = True
  if not ok:
    raise ConfigError(
        f'{path} must be {type(ref_val).__name__}, got {val!r} '
        f'({type(val).__name__}).')


def _one_of(path, val, options):
  if val not in options:
    raise ConfigError(
        f'{path}={val!r} is not one of {", ".join(options)}.'
        f'{_closest(str(val), options)}')


def _check_model(m):
  _one_of('model.arch', m.arch, ARCHS)
  _one_of('model.dtype', m.dtype, DTYPES)
  _one_of('model.attention_impl', m.attention_impl, ATTENTION_IMPLS)
  _one_of('model.remat_policy', m.remat_policy, REMAT_POLICIES)
  for a in m.mlp_activations:
    _one_of('model.mlp_activations', a, ACTIVATIONS)
  for key in ('vocab_size', 'emb_dim', 'num_heads', 'head_dim', 'mlp_dim',
              'relative_attention_num_buckets',
              'relative_attention_max_distance'):
    if m[key] <= 0:
      raise ConfigError(f'model.{key} must be positive, got {m[key]}.')
  needs = {'encoder_decoder': ('num_encoder_layers', 'num_decoder_layers'),
           'decoder_only': ('num_decoder_layers',),
           'encoder_only': ('num_encoder_layers',)}[m.arch]
  for key in needs:
    if m[key] <= 0:
      raise ConfigError(
          f'model.{key}={m[key]} but arch {m.arch!r} needs at least one '
          f'layer there; set --config.model.{key}=N.')
  if m.relative_attention_num_buckets < 2:
    raise ConfigError('model.relative_attention_num_buckets must be >= 2.')
  if not 0.0 <= m.dropout_rate < 1.0:
    raise ConfigError(f'model.dropout_rate must be in [0, 1), got '
                      f'{m.dropout_rate}.')
  if not 0.0 < m.generator_size_fraction <= 1.0:
    raise ConfigError('model.generator_size_fraction must be in (0, 1].')
  _one_of('model.objective', m.objective, tuple(OBJECTIVES))
  needed = OBJECTIVES[m.objective]
  if needed and m.arch != needed:
    raise ConfigError(
        f'model.objective={m.objective!r} needs model.arch={needed!r}, got '
        f'{m.arch!r}; set --config.model.arch={needed}.')
  if m.num_block_positions < 0:
    raise ConfigError('model.num_block_positions must be >= 0 (0 disables '
                      "GLM's block-position embedding).")
  if m.attention_impl == 'cudnn':
    import jax  # pylint: disable=g-import-not-at-top
    if jax.default_backend() != 'gpu':
      raise ConfigError(
          "model.attention_impl='cudnn' needs an NVIDIA GPU but JAX's backend "
          f"is {jax.default_backend()!r}; use --config.model.attention_impl=xla.")
    # cuDNN flash attention kernels: half precision, head_dim % 8 == 0, <= 256.
    if m.dtype == 'float32':
      raise ConfigError(
          "model.attention_impl='cudnn' has no float32 kernel; set "
          '--config.model.dtype=bfloat16 or --config.model.attention_impl=xla.')
    if m.head_dim % 8 or m.head_dim > 256:
      raise ConfigError(
          f"model.attention_impl='cudnn' needs model.head_dim a multiple of 8 "
          f'and <= 256, got {m.head_dim}; use --config.model.attention_impl=xla.')


def _check_train(c):
  t = c.train
  if t.batch_size <= 0 or t.num_steps < 0:
    raise ConfigError('train.batch_size must be > 0 and train.num_steps >= 0.')
  if t.microbatches <= 0 or t.batch_size % t.microbatches:
    raise ConfigError(
        f'train.batch_size={t.batch_size} is not divisible by '
        f'train.microbatches={t.microbatches}.')
  _one_of('optimizer.name', c.optimizer.name, OPTIMIZERS)
  _one_of('optimizer.schedule', c.optimizer.schedule, SCHEDULES)
  _one_of('decoding.method', c.decoding.method, DECODE_METHODS)
  if c.optimizer.learning_rate <= 0:
    raise ConfigError('optimizer.learning_rate must be positive.')
  if c.checkpoint.every_steps <= 0 or c.checkpoint.keep <= 0:
    raise ConfigError('checkpoint.every_steps and checkpoint.keep must be > 0.')
  if c.eval.every_steps <= 0:
    raise ConfigError('eval.every_steps must be > 0.')


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


def _check_mesh_and_batch(c, num_devices):
  dims = mesh_shape(c.mesh, num_devices)
  shards = dims['data'] * dims['fsdp'] * c.mesh.dcn_data * c.mesh.dcn_fsdp
  per_micro = c.train.batch_size // c.train.microbatches
  if per_micro % shards:
    raise ConfigError(
        f'train.batch_size/microbatches = {per_micro} is not divisible by the '
        f'{shards} batch shards (mesh data*fsdp); change the batch or the mesh.')


def _check_cudnn_lengths(c):
  """cuDNN's fused attention trains with a bias only at even lengths."""
  if c.model.attention_impl != 'cudnn':
    return
  fl = dict(c.task.feature_lengths)
  inputs, targets = fl.get('inputs', 0), fl.get('targets', 0)
  lengths = {'encoder_decoder': {'inputs': inputs, 'targets': targets},
             'decoder_only': {'inputs + targets': inputs + targets},
             'encoder_only': {'inputs': inputs or targets}}[c.model.arch]
  for name, n in lengths.items():
    if n % 2:
      raise ConfigError(
          f"model.attention_impl='cudnn' needs even sequence lengths; "
          f'task.feature_lengths {name} = {n}. Make it even or use '
          '--config.model.attention_impl=xla.')


def validate(config, num_devices=None):
  """Checks a whole config; raises ConfigError naming the key and the fix."""
  _check_keys(config, default_config())
  _check_model(config.model)
  _check_cudnn_lengths(config)
  _check_train(config)
  if num_devices is None:
    import jax  # pylint: disable=g-import-not-at-top
    num_devices = jax.device_count()
  _check_mesh_and_batch(config, num_devices)
  return config


def to_dict(config) -> Any:
  return config.to_dict()
