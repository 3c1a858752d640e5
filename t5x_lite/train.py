r"""Trains a model. Intentionally short: flags in, `loop.train_and_evaluate`.

  python -m t5x_lite.train --config=configs/local_tiny.py --workdir=/tmp/run \
      --config.train.num_steps=50

Rerunning the same command resumes from the newest usable checkpoint in the
workdir. SIGTERM checkpoints the current step and exits 0. A config mistake
(unknown key, bad value, unknown task, mesh that does not fit) stops before
anything compiles with one line on stderr and exit status 2.
"""
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from t5x_lite import config as config_lib

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, optionally with an argument: '
    'configs/pretrain_t5.py:base. Override fields with --config.a.b=value.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Checkpoints, metrics.jsonl, TensorBoard events and '
    'config.json go here; an existing workdir is resumed.')
flags.mark_flags_as_required(['config', 'workdir'])


def _fail(message: str):
  """One line on stderr, exit status 2 (a usage error, not a crash)."""
  print(f'error: {" ".join(str(message).split())}', file=sys.stderr,
        flush=True)
  sys.exit(2)


def _explain_override(argv, error) -> str:
  """A --config.x.y=v naming a key that does not exist, said plainly."""
  ref = config_lib.default_config()
  for arg in argv[1:]:
    if not arg.startswith('--config.'):
      continue
    path = arg[len('--config.'):].split('=', 1)[0]
    if config_lib.renamed_key_hint(path):
      return (f'config key --config.{path} was renamed.'
              f'{config_lib.renamed_key_hint(path)}')
    node, seen = ref, []
    for key in path.split('.'):
      if not hasattr(node, 'keys') or key not in node:
        where = '.'.join(seen) or 'the config'
        options = node.keys() if hasattr(node, 'keys') else []
        return (f'unknown config override --config.{path}: {where} has no '
                f'key {key!r}.{config_lib._closest(key, options)} '  # pylint: disable=protected-access
                'Every key is listed in configs/default.py.')
      node = node[key]
      seen.append(key)
  return f'bad command line: {error}'


def parse_flags(argv):
  """absl flag parsing, with config override mistakes as one clear line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(f'{e}. Pass --helpfull to see the flags.')
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    _fail(_explain_override(argv, e))


class _QuietLibraries:
  """Drops Orbax's per-save INFO chatter (dozens of lines per checkpoint)
  from the absl log; its warnings and errors still show."""

  def filter(self, record) -> bool:
    return record.levelno >= 30 or '/orbax/' not in record.pathname


def main(argv):
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if len(argv) > 1:
    _fail(f'unexpected arguments {argv[1:]}; flags look like --name=value.')
  try:
    config = _CONFIG.value
  except (OSError, ImportError, SyntaxError) as e:
    _fail(f'cannot load --config: {e}')
  # Before any other JAX call: multi-host runs join their peers here.
  from t5x_lite import distributed  # pylint: disable=g-import-not-at-top
  try:
    distributed.initialize(config)
  except ValueError as e:  # bad coordinator / process id / count settings
    _fail(f'distributed: {e}')
  from t5x_lite import checkpoints  # pylint: disable=g-import-not-at-top
  from t5x_lite import loop  # pylint: disable=g-import-not-at-top
  try:
    config_lib.validate(config)
    loop.train_and_evaluate(config, _WORKDIR.value)
  except config_lib.ConfigError as e:
    _fail(f'config: {e}')
  except (loop.NonFiniteError, checkpoints.CheckpointError) as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(1)
  logging.info('Done: %s', _WORKDIR.value)


def run_main():
  """Console script entry point (t5x-lite-train)."""
  app.run(main, flags_parser=parse_flags)


if __name__ == '__main__':
  run_main()
