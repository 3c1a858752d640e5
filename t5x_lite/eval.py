r"""Evaluates a checkpoint. Intentionally short: flags in, `evaluate` out.

  python -m t5x_lite.eval --config=configs/local_tiny.py \
      --workdir=runs/local_tiny
  python -m t5x_lite.eval --config=configs/finetune.py:tiny --workdir=/tmp/ft \
      --checkpoint=/tmp/ft/checkpoints/2000 --config.decoding.method=beam

Restores the newest usable step of --workdir/checkpoints (or --checkpoint: a
step dir, a checkpoints dir or an HF-imported params-only dir), then reports
on config.task.eval_split: the teacher-forced loss, the task's seqio metrics
(decoded with config.decoding) and a few decoded samples. Writes
--workdir/eval_results.json and TensorBoard events under --workdir/eval.
A missing or unusable checkpoint exits 1 with one line naming the path and
the steps that exist; a config mistake exits 2.
"""
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from t5x_lite import config as config_lib

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, optionally with an argument: '
    'configs/finetune.py:tiny. Override fields with --config.a.b=value.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'eval_results.json and TensorBoard events go here; its '
    'checkpoints/ is the default checkpoint.')
_CHECKPOINT = flags.DEFINE_string(
    'checkpoint', None, 'Evaluate this checkpoint instead of the newest in '
    '--workdir/checkpoints.')
flags.mark_flags_as_required(['config', 'workdir'])


def _fail(message: str, status: int):
  print(f'error: {" ".join(str(message).split())}', file=sys.stderr,
        flush=True)
  sys.exit(status)


def main(argv):
  if len(argv) > 1:
    _fail(f'unexpected arguments {argv[1:]}; flags look like --name=value.', 2)
  config = _CONFIG.value
  from t5x_lite import checkpoints  # pylint: disable=g-import-not-at-top
  from t5x_lite import evaluation  # pylint: disable=g-import-not-at-top
  from t5x_lite import model_loading  # pylint: disable=g-import-not-at-top
  try:
    config_lib.validate(config)
    model_loading.resolve_checkpoint(
        _CHECKPOINT.value or model_loading.default_checkpoint(_WORKDIR.value))
    evaluation.evaluate(config, _WORKDIR.value, _CHECKPOINT.value)
  except config_lib.ConfigError as e:
    _fail(f'config: {e}', 2)
  except checkpoints.CheckpointError as e:
    _fail(e, 1)


def run_main():
  """Console script entry point (t5x-lite-eval)."""
  app.run(main)


if __name__ == '__main__':
  run_main()
