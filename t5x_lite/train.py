r"""Trains a model. Intentionally short: flags in, `loop.train_and_evaluate`.

  python -m t5x_lite.train --config=configs/local_tiny.py --workdir=/tmp/run \
      --config.train.num_steps=50
  python -m t5x_lite.train --config=configs/pretrain_t5.py:small \
      --task_module=my_tasks --config.task.name=my_corpus_span --workdir=W

Rerunning the same command resumes from the newest usable checkpoint in the
workdir. SIGTERM checkpoints the current step and exits 0 (a preemption: the
scheduler restarts the run). Ctrl-C (SIGINT) does the same but exits 130, the
shell's status for an interrupted command, so `train && eval` stops there; a
second Ctrl-C kills the process at once, without a checkpoint. A config
mistake (a config file that is missing or does not load, an unknown key, a
bad value, a task module that does not import, an unknown task, a mesh that
does not fit, a batch size a resume cannot convert its data position to) and
a workdir another live run holds stop before anything compiles with one line
on stderr and exit status 2. A run that fails (a non-finite loss, a
checkpoint that cannot be read or written) prints one line and exits 1.
Flags shared with eval and infer: t5x_lite/cli.py.
"""
from t5x_lite import cli  # first: it quiets library logs before they load

# pylint: disable=g-import-not-at-top,wrong-import-position
import os
import sys

from absl import flags
from absl import logging

from t5x_lite import config as config_lib

cli.define_flags('Config file, optionally with an argument: '
                 'configs/pretrain_t5.py:base.', config_required=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Checkpoints, metrics.jsonl, TensorBoard events and '
    'config.json go here; an existing workdir is resumed.')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  cli.no_positional_args(argv)
  config = cli.load_config()
  # Before any other JAX call: multi-host runs join their peers here.
  from t5x_lite import distributed
  try:
    distributed.initialize(config)
  except ValueError as e:  # bad coordinator / process id / count settings
    cli.fail(f'distributed: {e}')
  cli.prepare(config)
  from t5x_lite import checkpoints
  from t5x_lite import loop
  from t5x_lite import workdir_lock
  try:
    config_lib.validate(config)
    result = loop.train_and_evaluate(config, _WORKDIR.value)
  except config_lib.ConfigError as e:
    cli.fail(f'config: {e}')
  except workdir_lock.WorkdirInUseError as e:
    cli.fail(e)
  except loop.NonFiniteError as e:
    cli.fail(e, 1)
  except checkpoints.CheckpointError as e:
    print(f'error: {" ".join(str(e).split())}', file=sys.stderr, flush=True)
    sys.stdout.flush()
    # Not sys.exit: after a failed write Orbax threads can wait up to 300 s
    # for a signal that never comes, and interpreter exit joins them.
    os._exit(1)  # pylint: disable=protected-access
  if result.get('stopped_by') == 'SIGINT':
    sys.exit(130)
  logging.info('Done: %s', _WORKDIR.value)


def run_main():
  """Console script entry point (t5x-lite-train)."""
  cli.run(main)


if __name__ == '__main__':
  run_main()
