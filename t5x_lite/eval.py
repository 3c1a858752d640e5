r"""Evaluates a checkpoint. Intentionally short: flags in, `evaluate` out.

  python -m t5x_lite.eval --workdir=runs/local_tiny
  python -m t5x_lite.eval --config=configs/finetune.py:tiny --workdir=/tmp/ft \
      --checkpoint=/tmp/ft/checkpoints/2000 --config.decoding.method=beam

Restores the newest usable step of --workdir/checkpoints (or --checkpoint: a
step dir, a checkpoints dir or an HF-imported params-only dir), then reports
on config.task.eval_split: the teacher-forced loss, the task's seqio metrics
(decoded with config.decoding) and a few decoded samples. Without --config
the config saved with the checkpoint is used (--config.a.b=v still
overrides it). Writes --workdir/eval_results.json and TensorBoard events
under --workdir/eval. A missing or unusable checkpoint exits 1 with one line
naming the path and the steps that exist; a config mistake exits 2. Flags
shared with train and infer: t5x_lite/cli.py.
"""
from t5x_lite import cli  # first: it quiets library logs before they load

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags

from t5x_lite import config as config_lib

cli.define_flags('Config file, optionally with an argument: '
                 'configs/finetune.py:tiny. Default: the config saved with '
                 'the checkpoint.', config_required=False)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'eval_results.json and TensorBoard events go here; its '
    'checkpoints/ is the default checkpoint.')
_CHECKPOINT = flags.DEFINE_string(
    'checkpoint', None, 'Evaluate this checkpoint instead of the newest in '
    '--workdir/checkpoints.')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  cli.no_positional_args(argv)
  from t5x_lite import checkpoints
  from t5x_lite import evaluation
  from t5x_lite import model_loading
  path = _CHECKPOINT.value or model_loading.default_checkpoint(_WORKDIR.value)
  config = cli.load_config(saved=lambda: cli.checkpoint_config(path))
  cli.prepare(config)
  try:
    config_lib.validate(config)
    model_loading.resolve_checkpoint(path)
    evaluation.evaluate(config, _WORKDIR.value, _CHECKPOINT.value)
  except config_lib.ConfigError as e:
    cli.fail(f'config: {e}')
  except checkpoints.CheckpointError as e:
    cli.fail(e, 1)


def run_main():
  """Console script entry point (t5x-lite-eval)."""
  cli.run(main)


if __name__ == '__main__':
  run_main()
