r"""Decodes (or scores) text with a checkpoint; JSON lines out.

  python -m t5x_lite.infer --config=configs/local_tiny.py \
      --checkpoint=runs/local_tiny/checkpoints --input="sentiment: A gem."
  python -m t5x_lite.infer --config=configs/local_tiny.py \
      --checkpoint=runs/local_tiny/checkpoints --task_split=validation \
      --num_examples=4
  python -m t5x_lite.infer --config=configs/finetune.py:tiny --checkpoint=CKPT \
      --input_file=inputs.jsonl --output=preds.jsonl \
      --config.decoding.method=beam
  python -m t5x_lite.infer --config=... --checkpoint=CKPT --mode=score \
      --input="sentiment: A gem." --targets=fresh

Inputs: repeatable --input, --input_file (JSONL with "input" [+ "target"], or
one text per line) or --task_split (the first --num_examples preprocessed
examples of config.task.name). --checkpoint: a step dir, a checkpoints dir
(its newest usable step), a workdir or an HF-imported params-only dir.
Output: one JSON object per example on stdout or in --output:
{"input", "prediction", "score"[, "target"]}, or with --mode=score
{"input", "target", "log_likelihood", "num_target_tokens"}. Decoding follows
config.decoding (--config.decoding.method=greedy|sample|beam, ...). A missing
or unusable checkpoint exits 1 with one line naming the path and the steps
that exist; a usage mistake exits 2.
"""
import json
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from t5x_lite import config as config_lib

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file (the model and task the checkpoint was '
    'trained with). Override fields with --config.a.b=value.',
    lock_config=True)
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
flags.mark_flags_as_required(['config', 'checkpoint'])


def _fail(message, status: int):
  print(f'error: {" ".join(str(message).split())}', file=sys.stderr,
        flush=True)
  sys.exit(status)


def main(argv):
  if len(argv) > 1:
    _fail(f'unexpected arguments {argv[1:]}; flags look like --name=value.', 2)
  sources = [bool(_INPUT.value), bool(_INPUT_FILE.value),
             bool(_TASK_SPLIT.value)]
  if sum(sources) != 1:
    _fail('give exactly one of --input, --input_file or --task_split.', 2)
  config = _CONFIG.value
  from t5x_lite import checkpoints  # pylint: disable=g-import-not-at-top
  from t5x_lite import inference  # pylint: disable=g-import-not-at-top
  from t5x_lite import model_loading  # pylint: disable=g-import-not-at-top
  try:
    config_lib.validate(config)
    # A bad checkpoint path fails here, before the input pipeline loads.
    model_loading.resolve_checkpoint(_CHECKPOINT.value)
    if _INPUT.value:
      examples = inference.text_examples(config, _INPUT.value, _TARGETS.value)
    elif _INPUT_FILE.value:
      examples = inference.file_examples(config, _INPUT_FILE.value)
    else:
      examples = inference.task_examples(config, _TASK_SPLIT.value,
                                         _NUM_EXAMPLES.value)
    records = inference.run(config, _CHECKPOINT.value, examples,
                            mode=_MODE.value, batch_size=_BATCH_SIZE.value)
  except config_lib.ConfigError as e:
    _fail(f'config: {e}', 2)
  except (ValueError, FileNotFoundError) as e:
    _fail(e, 2)
  except checkpoints.CheckpointError as e:
    _fail(e, 1)
  lines = [json.dumps(r, ensure_ascii=False) for r in records]
  if _OUTPUT.value:
    with open(_OUTPUT.value, 'w') as f:
      f.write('\n'.join(lines) + '\n')
    logging.info('Wrote %d records to %s.', len(lines), _OUTPUT.value)
  else:
    print('\n'.join(lines), flush=True)


def run_main():
  """Console script entry point (t5x-lite-infer)."""
  app.run(main)


if __name__ == '__main__':
  run_main()
