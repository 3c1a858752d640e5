"""compile.cache_dir -> JAX's persistent compilation cache settings.

That the cache fills on a first run and is read back on a second one is
tests/test_bench.py's tiny GPU check (its cache_hits / cache_misses keys).
"""
import os

import jax
import pytest

from t5x_lite import compile_cache
from t5x_lite.configs import default

SETTINGS = ('jax_enable_compilation_cache', 'jax_compilation_cache_dir',
            'jax_persistent_cache_min_compile_time_secs',
            'jax_persistent_cache_min_entry_size_bytes')


@pytest.fixture(autouse=True)
def _restore_jax_settings():
  saved = {k: getattr(jax.config, k) for k in SETTINGS}
  yield
  for k, v in saved.items():
    jax.config.update(k, v)


def test_the_config_key_defaults_to_auto():
  assert default.get_config().compile.cache_dir == compile_cache.AUTO


def test_auto_is_a_per_user_directory(monkeypatch):
  monkeypatch.delenv('JAX_COMPILATION_CACHE_DIR', raising=False)
  monkeypatch.setenv('XDG_CACHE_HOME', '/x/cache')
  assert compile_cache.resolve('auto') == '/x/cache/t5x_lite/jax'
  monkeypatch.delenv('XDG_CACHE_HOME')
  monkeypatch.setenv('HOME', '/home/u')
  assert compile_cache.resolve('auto') == '/home/u/.cache/t5x_lite/jax'
  monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', '/jax/own')
  assert compile_cache.resolve('auto') == '/jax/own'


def test_empty_disables_and_a_path_is_expanded(monkeypatch):
  monkeypatch.setenv('HOME', '/home/u')
  monkeypatch.setenv('RUN', 'r1')
  assert compile_cache.resolve('') is None
  assert compile_cache.resolve('  ') is None
  assert compile_cache.resolve('~/c/$RUN') == '/home/u/c/r1'


def test_enable_sets_jax_and_creates_the_directory(tmp_path):
  path = str(tmp_path / 'a' / 'b')
  assert compile_cache.enable(path) == path and os.path.isdir(path)
  assert jax.config.jax_enable_compilation_cache
  assert jax.config.jax_compilation_cache_dir == path
  assert (jax.config.jax_persistent_cache_min_compile_time_secs ==
          compile_cache.MIN_COMPILE_TIME_S)
  assert compile_cache.enable('') is None
  assert not jax.config.jax_enable_compilation_cache
