"""ConfigDict at the edge, typed dataclasses inside.

`validate(config)` runs before anything compiles and raises `ConfigError` with
one line that names the key and the fix. The typed side is
t5x_lite/model_config.py (`ModelConfig`, the one definition of every
`config.model` field); an objective's own settings and checks are its module's
(t5x_lite/objectives/), looked up by `config.objective.name`.
"""
import difflib
import importlib.util
import os
import sys
from typing import Any

import ml_collections

from t5x_lite import adversarial
from t5x_lite import lengths
from t5x_lite import objectives
from t5x_lite import partitioning
from t5x_lite.model_config import ACTIVATIONS, ARCHS, ATTENTION_IMPLS, DTYPES, REMAT_POLICIES  # pylint: disable=g-multiple-import
from t5x_lite.model_config import ConfigError, ModelConfig  # pylint: disable=unused-import

OPTIMIZERS = ('adafactor', 'adamw')
SCHEDULES = ('rsqrt', 'linear', 'cosine', 'constant')
DECODE_METHODS = ('greedy', 'sample', 'beam')
FEATURE_LENGTH_KEYS = ('inputs', 'targets')
# Groups whose keys are free-form data rather than schema.
_FREE_FORM = ('mesh.rules',)

# Config keys that moved: an old key fails with a line naming the new one
# (objectives add theirs: Objective.renamed_keys).
RENAMED_KEYS = {'model.objective': 'objective.name'}


def _configs_of_a_source_checkout():
  """configs/ is the package t5x_lite.configs: setup.py maps it there for
  wheels and editable installs. A checkout used without any install (the
  repository on PYTHONPATH, as launch/slurm_gpu.sbatch falls back to) has no
  such mapping; there the configs/ beside the package gets that name."""
  if importlib.util.find_spec('t5x_lite.configs') is not None:
    return
  folder = os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), 'configs')
  init = os.path.join(folder, '__init__.py')
  if not os.path.isfile(init):
    return
  spec = importlib.util.spec_from_file_location(
      't5x_lite.configs', init, submodule_search_locations=[folder])
  module = importlib.util.module_from_spec(spec)
  sys.modules['t5x_lite.configs'] = module
  spec.loader.exec_module(module)
  setattr(sys.modules['t5x_lite'], 'configs', module)


_configs_of_a_source_checkout()


def default_config():
  from t5x_lite.configs import default  # pylint: disable=g-import-not-at-top
  return default.get_config()


def resolve_config_file(path: str) -> str:
  """`path` if it exists, else the packaged config it names, else `path`.

  `configs/<name>.py` and `<name>.py` name a config that ships in the package
  t5x_lite.configs, so `t5x-lite-train --config=configs/local_tiny.py` works
  from any directory after `pip install`. A `:arg` suffix
  (`configs/pretrain_t5.py:base`) is kept. A file on disk always wins.
  """
  if os.path.exists(path):
    return path
  file, sep, arg = path.partition(':')  # config_flags splits at the first ':'
  if os.path.exists(file):
    return path
  folder, name = os.path.split(os.path.normpath(file))
  if folder not in ('', 'configs') or not name.endswith('.py') or (
      name.startswith('_')):
    return path
  from t5x_lite import configs  # pylint: disable=g-import-not-at-top
  packaged = os.path.join(os.path.dirname(configs.__file__), name)
  return packaged + sep + arg if os.path.isfile(packaged) else path


# ---- schema checks -------------------------------------------------------------


def _closest(name, options):
  near = difflib.get_close_matches(name, list(options), n=3, cutoff=0.5)
  return f' Did you mean {" or ".join(repr(n) for n in near)}?' if near else ''


def renamed_key_hint(path: str) -> str:
  """' It moved to X.' when `path` is a key that was renamed, else ''."""
  new = dict(RENAMED_KEYS, **objectives.renamed_keys()).get(path)
  return f' It moved to {new}: set --config.{new}=... instead.' if new else ''


def _check_keys(cfg, ref, prefix=''):
  for key in cfg.keys():
    path = f'{prefix}{key}'
    if key not in ref and renamed_key_hint(path):
      raise ConfigError(f'Config key {path!r} was renamed.'
                        f'{renamed_key_hint(path)}')
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
  if m.num_block_positions < 0:
    raise ConfigError('model.num_block_positions must be >= 0 (0 disables '
                      'the block-position embedding).')
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




def _check_objective(c):
  """objective.name ('' or registered), its archs and its own checks."""
  if not c.objective.name:
    return
  obj = objectives.get(c.objective.name)
  if c.model.arch not in obj.archs:
    raise ConfigError(
        f'objective {obj.name!r} trains model.arch {" or ".join(obj.archs)}, '
        f'got {c.model.arch!r}; set --config.model.arch={obj.archs[0]} (its '
        f'recipe: {obj.recipe or "none"}).')
  if obj.check is not None:
    obj.check(c)


def _check_mesh_and_batch(c, num_devices):
  dims = partitioning.mesh_shape(c.mesh, num_devices)
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
  sources = lengths.MODEL_LENGTH_SOURCES[c.model.arch]
  for name, n in lengths.model_lengths(c.model.arch,
                                       c.task.feature_lengths).items():
    if n % 2:
      raise ConfigError(
          f"model.attention_impl='cudnn' needs even sequence lengths; "
          f'task.feature_lengths {sources[name]} = {n}. Make it even or use '
          '--config.model.attention_impl=xla.')


def validate(config, num_devices=None):
  """Checks a whole config; raises ConfigError naming the key and the fix."""
  _check_keys(config, default_config())
  _check_model(config.model)
  _check_objective(config)
  adversarial.check(config)  # config.adversarial
  _check_cudnn_lengths(config)
  _check_train(config)
  if num_devices is None:
    import jax  # pylint: disable=g-import-not-at-top
    num_devices = jax.device_count()
  _check_mesh_and_batch(config, num_devices)
  return config


def to_dict(config) -> Any:
  return config.to_dict()
