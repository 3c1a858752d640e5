"""JAX's persistent compilation cache, on by default for train/eval/infer.

A T5 train step takes tens of seconds to compile (minutes for XL); the same
program compiled again (a restart, a resumed run, the eval after training)
is read back from disk instead. The entrypoints call

    compile_cache.enable(config.compile.cache_dir)

before anything compiles. cache_dir: 'auto' (the default) is
$JAX_COMPILATION_CACHE_DIR if set, else $XDG_CACHE_HOME/t5x_lite/jax, else
~/.cache/t5x_lite/jax: per user and per host, so hosts of a pod never share
files; '' turns the cache off; anything else is a directory (~ and $VARS
expanded). A cache entry is keyed by the program, the compile options, the
JAX/XLA version and the device kind, so a stale entry is never used.

On GPU, JAX also keeps XLA's autotuning results beside the executables
(jax_persistent_cache_enable_xla_caches' default), which is much of a GPU
compile.
"""
import os
from typing import Optional

import jax

AUTO = 'auto'

# JAX writes an entry only for programs that took at least this long to
# compile. Ours that matter (init, train/eval step, decode loop) take seconds;
# the many small ones (batch sharding, rng splits) take milliseconds, and
# reading those back would cost more than compiling them. JAX's own default
# is 1 s; 0.5 s also keeps the init and eval programs of small models.
MIN_COMPILE_TIME_S = 0.5
# 0 lets JAX pick the filesystem's best minimum entry size (its default).
MIN_ENTRY_SIZE_BYTES = 0


def default_dir() -> str:
  """The per-user cache directory that 'auto' stands for."""
  env = os.environ.get('JAX_COMPILATION_CACHE_DIR')
  if env:
    return env
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(
      os.path.expanduser('~'), '.cache')
  return os.path.join(base, 't5x_lite', 'jax')


def resolve(cache_dir: str) -> Optional[str]:
  """config.compile.cache_dir -> the directory, or None when disabled."""
  if cache_dir is None or not str(cache_dir).strip():
    return None
  if cache_dir == AUTO:
    return default_dir()
  return os.path.expandvars(os.path.expanduser(cache_dir))


def enable(cache_dir: str = AUTO,
           min_compile_time_s: float = MIN_COMPILE_TIME_S) -> Optional[str]:
  """Turns the persistent cache on at `cache_dir` (off for ''); returns the
  directory used, or None.

  Call before the first compile: JAX opens the cache once, at the first
  compilation of the process, and later changes of the directory are not
  seen by it.
  """
  path = resolve(cache_dir)
  if path is None:
    jax.config.update('jax_enable_compilation_cache', False)
    return None
  os.makedirs(path, exist_ok=True)
  jax.config.update('jax_enable_compilation_cache', True)
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs',
                    float(min_compile_time_s))
  jax.config.update('jax_persistent_cache_min_entry_size_bytes',
                    MIN_ENTRY_SIZE_BYTES)
  return path
