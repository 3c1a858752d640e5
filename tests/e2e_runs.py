"""What the end-to-end modules share: one persistent compilation cache for a
module and the subprocesses it starts (so each tiny program compiles once), the
skip when the shipped corpus is not built, and the tiny config from
command-line style overrides.

    from e2e_runs import jax_cache  # a fixture
    from e2e_runs import NEEDS_DATA, subprocess_env, tiny_config
"""
import os

from jax.experimental.compilation_cache import compilation_cache
import jax
import pytest

from t5x_lite.configs import local_tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_KEYS = ('jax_compilation_cache_dir',
         'jax_persistent_cache_min_compile_time_secs',
         'jax_persistent_cache_min_entry_size_bytes')


@pytest.fixture(scope='module')
def jax_cache(tmp_path_factory):
  """Persistent compilation cache for this module and its subprocesses."""
  path = str(tmp_path_factory.mktemp('jax_cache'))
  old = {k: getattr(jax.config, k) for k in _KEYS}
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  compilation_cache.reset_cache()
  yield path
  for k, v in old.items():
    jax.config.update(k, v)
  compilation_cache.reset_cache()


def subprocess_env(cache_dir):
  """os.environ for a subprocess that shares `cache_dir` and imports ROOT."""
  env = dict(os.environ)
  env.update(JAX_COMPILATION_CACHE_DIR=cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0',
             JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  return env


NEEDS_DATA = pytest.mark.skipif(
    not os.path.exists(os.path.join(ROOT, 'data', 'cache', 'manifest.json'))
    and not os.environ.get('T5X_LITE_DATA_DIR'),
    reason='the shipped corpus is not built: run `make data`')


def _parse(value: str):
  for cast in (int, float):
    try:
      return cast(value)
    except ValueError:
      pass
  return {'True': True, 'False': False}.get(value, value)


def tiny_config(overrides):
  """configs/local_tiny.py with `overrides` ('a.b=v' strings) applied."""
  c = local_tiny.get_config()
  for item in overrides:
    key, value = item.split('=', 1)
    *groups, leaf = key.split('.')
    node = c
    for g in groups:
      node = node[g]
    node[leaf] = _parse(value)
  return c
