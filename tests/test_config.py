"""Bad configs fail before anything compiles, each with one line that names
the key and the fix."""
import os

from absl import flags
import jax
import ml_collections
from ml_collections import config_flags
import pytest

from t5x_lite.configs import models
from t5x_lite import config as config_lib
from t5x_lite.config import ConfigError, ModelConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = os.path.join(ROOT, 'configs', 'default.py')


def _error(config, num_devices=8) -> str:
  with pytest.raises(ConfigError) as e:
    config_lib.validate(config, num_devices=num_devices)
  msg = str(e.value)
  assert '\n' not in msg, f'not one line: {msg!r}'
  return msg


def _parse_flags(*overrides):
  """Parses overrides through ml_collections.config_flags as train.py does."""
  fv = flags.FlagValues()
  argv = ['prog', f'--config={DEFAULT}', *overrides]
  config_flags.DEFINE_config_file('config', None, flag_values=fv,
                                  sys_argv=argv)
  fv(argv)
  return fv.config


def test_default_config_is_valid():
  config_lib.validate(config_lib.default_config(), num_devices=8)
  for name in models.SIZES:
    config_lib.validate(models.apply_size(config_lib.default_config(), name),
                        num_devices=8)


def test_unknown_key_suggests_the_right_one():
  c = config_lib.default_config()
  c.model.num_heds = 3
  msg = _error(c)
  assert "'model.num_heds'" in msg and "'num_heads'" in msg


def test_unknown_group_is_named():
  c = config_lib.default_config()
  c.trian = ml_collections.ConfigDict({'num_steps': 3})
  msg = _error(c)
  assert "'trian'" in msg and "'train'" in msg


def test_typo_in_flag_override_names_the_key():
  with pytest.raises(AttributeError) as e:
    _parse_flags('--config.model.num_heds=3')
  assert 'num_heds' in str(e.value) and 'num_heads' in str(e.value)


def test_flag_override_with_wrong_type_names_the_flag():
  with pytest.raises(flags.IllegalFlagValueError) as e:
    _parse_flags('--config.model.num_heads=four')
  assert 'config.model.num_heads' in str(e.value)


def test_good_flag_overrides_validate():
  c = _parse_flags('--config.model.num_heads=8', '--config.model.dtype=bfloat16')
  config_lib.validate(c, num_devices=8)
  assert ModelConfig.from_config(c.model).num_heads == 8


@pytest.mark.parametrize('key', ['num_heads', 'emb_dim', 'head_dim',
                                 'mlp_dim', 'vocab_size'])
def test_non_positive_dims(key):
  c = config_lib.default_config()
  c.model[key] = 0
  msg = _error(c)
  assert f'model.{key}' in msg and 'positive' in msg


@pytest.mark.parametrize('arch,key', [
    ('encoder_decoder', 'num_decoder_layers'),
    ('encoder_decoder', 'num_encoder_layers'),
    ('decoder_only', 'num_decoder_layers'),
    ('encoder_only', 'num_encoder_layers')])
def test_arch_needs_its_layers(arch, key):
  c = config_lib.default_config()
  c.model.arch = arch
  c.model[key] = 0
  msg = _error(c)
  assert f'--config.model.{key}=' in msg and arch in msg


def test_layers_the_arch_does_not_use_may_be_zero():
  c = config_lib.default_config()
  c.model.arch = 'decoder_only'
  c.model.num_encoder_layers = 0
  config_lib.validate(c, num_devices=8)


def test_wrong_type():
  d = config_lib.default_config().to_dict()
  d['model']['emb_dim'] = '512'  # e.g. a config built from JSON or a dict
  msg = _error(ml_collections.ConfigDict(d))
  assert 'model.emb_dim' in msg and 'int' in msg and "'512'" in msg


def test_bool_is_not_an_int():
  d = config_lib.default_config().to_dict()
  d['train']['batch_size'] = True
  msg = _error(ml_collections.ConfigDict(d))
  assert 'train.batch_size' in msg


@pytest.mark.parametrize('key,value,expect', [
    ('arch', 'encoder_decodr', "'encoder_decoder'"),
    ('dtype', 'bf16', 'bfloat16'),
    ('remat_policy', 'save_dot', "'save_dots'"),
    ('attention_impl', 'flash', 'xla, cudnn')])
def test_enum_values_list_the_options(key, value, expect):
  c = config_lib.default_config()
  c.model[key] = value
  msg = _error(c)
  assert f'model.{key}' in msg and expect in msg


def test_unknown_activation():
  c = config_lib.default_config()
  c.model.mlp_activations = ('gelu', 'lineer')
  msg = _error(c)
  assert 'mlp_activations' in msg and "'linear'" in msg


@pytest.mark.skipif(jax.default_backend() == 'gpu', reason='needs no GPU')
def test_cudnn_on_cpu_says_use_xla():
  c = config_lib.default_config()
  c.model.attention_impl = 'cudnn'
  msg = _error(c)
  assert '--config.model.attention_impl=xla' in msg


@pytest.mark.parametrize('key,value,expect', [
    ('dtype', 'float32', '--config.model.dtype=bfloat16'),
    ('head_dim', 12, 'multiple of 8'),
    ('head_dim', 512, '<= 256')])
def test_cudnn_kernel_limits_on_gpu(monkeypatch, key, value, expect):
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  c = config_lib.default_config()
  c.model.attention_impl, c.model.dtype = 'cudnn', 'bfloat16'
  c.model[key] = value
  msg = _error(c)
  assert expect in msg and '--config.model.attention_impl=xla' in msg


def test_cudnn_needs_even_lengths_on_gpu(monkeypatch):
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  c = config_lib.default_config()
  c.model.attention_impl, c.model.dtype = 'cudnn', 'bfloat16'
  config_lib.validate(c, num_devices=8)  # 512 / 114: fine
  c.task.feature_lengths.targets = 113
  msg = _error(c)
  assert 'targets = 113' in msg and 'even' in msg


def test_mesh_that_does_not_divide_the_devices():
  c = config_lib.default_config()
  c.mesh.tensor = 3  # data=-1 fills: 8 devices are not a multiple of 3
  msg = _error(c, num_devices=8)
  assert 'does not divide 8 devices' in msg
  c = config_lib.default_config()
  c.mesh.data, c.mesh.fsdp = 2, 2  # fixed product 4 != 8 devices
  msg = _error(c, num_devices=8)
  assert '= 4' in msg and '8 devices' in msg and '-1' in msg


def test_two_fill_axes():
  c = config_lib.default_config()
  c.mesh.fsdp = -1
  msg = _error(c)
  assert 'Only one mesh axis may be -1' in msg


def test_batch_not_divisible_by_data_shards():
  c = config_lib.default_config()
  c.train.batch_size = 12
  msg = _error(c, num_devices=8)
  assert 'train.batch_size' in msg and '8 batch shards' in msg


def test_microbatches_must_divide_batch():
  c = config_lib.default_config()
  c.train.microbatches = 5
  msg = _error(c)
  assert 'train.microbatches=5' in msg


def test_feature_lengths():
  c = config_lib.default_config()
  c.task.feature_lengths.inputs = 0
  assert 'task.feature_lengths.inputs' in _error(c)
  c = config_lib.default_config()
  c.task.feature_lengths.input = 10
  assert 'task.feature_lengths.input' in _error(c)


def test_model_config_round_trip():
  c = models.apply_size(config_lib.default_config(), 'small')
  m = ModelConfig.from_config(c.model)
  assert m.emb_dim == 512 and m.mlp_activations == ('gelu', 'linear')
  assert m.replace(num_heads=2).num_heads == 2


# ---- objectives: looked up by name, their keys in their own group -----------


@pytest.mark.parametrize('old, value, new', [
    ('objective', 'electra', 'objective.name'),
    ('generator_size_fraction', 0.5,
     'objective.electra.generator_size_fraction'),
    ('electra_disc_weight', 10.0, 'objective.electra.disc_weight'),
])
def test_renamed_model_keys_name_the_new_key(old, value, new):
  c = config_lib.default_config()
  with c.unlocked():
    c.model[old] = value
  msg = _error(c)
  assert f"'model.{old}' was renamed" in msg and new in msg


def test_unknown_objective_lists_the_close_ones():
  c = config_lib.default_config()
  c.objective.name = 'electr'
  msg = _error(c)
  assert "'electra'" in msg and 'span_corruption' in msg


def test_objective_needs_one_of_its_archs():
  c = models.apply_size(config_lib.default_config(), 'tiny')
  c.objective.name = 'mlm'
  msg = _error(c)
  assert 'encoder_only' in msg and 'pretrain_bert.py' in msg


def test_objective_options_are_checked_by_their_objective():
  c = models.apply_size(config_lib.default_config(), 'encoder_tiny')
  c.objective.name = 'electra'
  c.objective.electra.generator_size_fraction = 1.5
  assert 'objective.electra.generator_size_fraction' in _error(c)


def test_model_group_is_derived_from_model_config():
  from t5x_lite import model_config  # pylint: disable=g-import-not-at-top
  import dataclasses  # pylint: disable=g-import-not-at-top
  fields = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
  assert dict(config_lib.default_config().model) == fields
  assert 'vocab_size' in model_config.STRUCTURAL_MODEL_KEYS
  assert 'dtype' not in model_config.STRUCTURAL_MODEL_KEYS


def test_span_corruption_targets_too_short_fails_in_validation():
  c = config_lib.default_config()
  c.objective.name = 'span_corruption'
  c.task.feature_lengths.inputs, c.task.feature_lengths.targets = 128, 16
  assert 'needs targets >= 29' in _error(c)
  c.task.feature_lengths.targets = 29
  config_lib.validate(c, num_devices=8)
