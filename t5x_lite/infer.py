r"""Decodes (or scores) text with a checkpoint; JSON lines out.

  python -m t5x_lite.infer --checkpoint=runs/local_tiny/checkpoints \
      --input="sentiment: A gem."
  python -m t5x_lite.infer --checkpoint=runs/local_tiny/checkpoints \
      --task_split=validation --num_examples=4
  python -m t5x_lite.infer --config=configs/finetune.py:tiny --checkpoint=CKPT \
      --input_file=inputs.jsonl --output=preds.jsonl \
      --config.decoding.method=beam
  python -m t5x_lite.infer --checkpoint=CKPT --mode=score \
      --input="sentiment: A gem." --targets=fresh

Inputs: repeatable --input, --input_file (JSONL with "input" [+ "target"], or
one text per line) or --task_split (the first --num_examples preprocessed
examples of config.task.name). --checkpoint: a step dir, a checkpoints dir
(its newest usable step), a workdir or an HF-imported params-only dir.
Without --config the config saved with the checkpoint is used (overrides
still apply; an HF import needs --config.task.name and, for your own task,
--task_module). Output: one JSON object per example on stdout or in
--output: {"input", "prediction", "score"[, "target"]}, or with --mode=score
{"input", "target", "log_likelihood", "num_target_tokens"}. Decoding follows
config.decoding (--config.decoding.method=greedy|sample|beam, ...). A missing
or unusable checkpoint exits 1 with one line naming the path and the steps
that exist; a usage mistake exits 2. Flags shared with train and eval:
t5x_lite/cli.py.
"""
from t5x_lite import cli  # first: it quiets library logs before they load

# pylint: disable=g-import-not-at-top,wrong-import-position
import json

from absl import flags
from absl import logging

from t5x_lite import config as config_lib

cli.define_flags('Config file (the model and task the checkpoint was '
                 'trained with). Default: the config saved with the '
                 'checkpoint.', config_required=False)
_CHECKPOINT = flags.DEFINE_string(
    'checkpoint', None, 'Step dir, checkpoints dir, workdir or params-only '
    '(HF-imported) dir.')
_INPUT = flags.DEFINE_multi_string('input', [], 'Input text (repeatable).')
_TARGETS = flags.DEFINE_multi_string(
    'targets', [], 'Target text per --input (for --mode=score).')
_INPUT_FILE = flags.DEFINE_string(
    'input_file', None, 'JSONL ({"input": ..., "target": ...}) or text lines.')
_TASK_SPLIT = flags.DEFINE_string(
    'task_split', None, 'Take inputs from this split of config.task.name.')
_NUM_EXAMPLES = flags.DEFINE_integer(
    'num_examples', 4, 'Examples to take with --task_split.')
_MODE = flags.DEFINE_enum('mode', 'predict', ['predict', 'score'],
                          'predict: decode; score: log-likelihood of targets.')
_OUTPUT = flags.DEFINE_string('output', None,
                              'Write JSONL here instead of stdout.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 8, 'Examples per batch.')
flags.mark_flags_as_required(['checkpoint'])


def _examples(config):
  from t5x_lite import inference
  if _INPUT.value:
    return inference.text_examples(config, _INPUT.value, _TARGETS.value)
  if _INPUT_FILE.value:
    return inference.file_examples(config, _INPUT_FILE.value)
  return inference.task_examples(config, _TASK_SPLIT.value,
                                 _NUM_EXAMPLES.value)


def main(argv):
  cli.no_positional_args(argv)
  sources = [bool(_INPUT.value), bool(_INPUT_FILE.value),
             bool(_TASK_SPLIT.value)]
  if sum(sources) != 1:
    cli.fail('give exactly one of --input, --input_file or --task_split.')
  from t5x_lite import checkpoints
  from t5x_lite import inference
  from t5x_lite import model_loading
  config = cli.load_config(
      saved=lambda: cli.checkpoint_config(_CHECKPOINT.value))
  cli.prepare(config)
  try:
    config_lib.validate(config)
    # A bad checkpoint path fails here, before the input pipeline loads.
    model_loading.resolve_checkpoint(_CHECKPOINT.value)
    records = inference.run(config, _CHECKPOINT.value, _examples(config),
                            mode=_MODE.value, batch_size=_BATCH_SIZE.value)
  except config_lib.ConfigError as e:
    cli.fail(f'config: {e}')
  except (ValueError, FileNotFoundError) as e:
    cli.fail(e)
  except checkpoints.CheckpointError as e:
    cli.fail(e, 1)
  lines = [json.dumps(r, ensure_ascii=False) for r in records]
  if _OUTPUT.value:
    with open(_OUTPUT.value, 'w') as f:
      f.write('\n'.join(lines) + '\n')
    logging.info('Wrote %d records to %s.', len(lines), _OUTPUT.value)
  else:
    print('\n'.join(lines), flush=True)


def run_main():
  """Console script entry point (t5x-lite-infer)."""
  cli.run(main)


if __name__ == '__main__':
  run_main()
