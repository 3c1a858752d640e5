"""Input-pipeline throughput: one JSON line per measurement.

    python bench/data_throughput.py                        # make run's task
    python bench/data_throughput.py --inputs=512 --targets=114 --seconds=30
    python bench/data_throughput.py --task=shakespeare_glm --arch=decoder_only

Measures t5x_lite.tasks.get_dataset end to end (text lines -> SentencePiece
-> concat/split -> span corruption -> shuffle -> seqio packing -> batches ->
numpy) for --seconds after the first batch, which is reported apart
(first_batch_s: tracing plus filling the shuffle buffer). Per-core numbers
divide by the cores this process may use; examples_per_cpu_s divides by the
CPU time the process actually spent, which stays meaningful on a shared
machine. Needs the corpora: `make data`.
"""
import json
import os
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags

from t5x_lite.config import default_config

_TASK = flags.DEFINE_string('task', 'shakespeare_span_corruption', 'Task.')
_ARCH = flags.DEFINE_string('arch', 'encoder_decoder', 'model.arch.')
_INPUTS = flags.DEFINE_integer('inputs', 128, 'feature_lengths.inputs.')
_TARGETS = flags.DEFINE_integer('targets', 32, 'feature_lengths.targets.')
_BATCH = flags.DEFINE_integer('batch', 32, 'Batch size.')
_PACK = flags.DEFINE_bool('pack', True, 'Pack examples (seqio).')
_SHUFFLE_BUFFER = flags.DEFINE_integer('shuffle_buffer', 1000,
                                       'Task shuffle buffer.')
_SECONDS = flags.DEFINE_float('seconds', 20.0, 'Timed seconds.')


def _cores():
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def main(argv):
  del argv
  from t5x_lite import tasks  # TensorFlow and seqio load here
  from t5x_lite.tasks import corpora
  if not corpora.is_built('shakespeare'):
    sys.exit(corpora.missing_message('The default corpus'))
  c = default_config()
  c.task.name = _TASK.value
  c.model.arch = _ARCH.value
  c.task.feature_lengths.inputs = _INPUTS.value
  c.task.feature_lengths.targets = _TARGETS.value
  c.task.pack = _PACK.value
  c.task.shuffle_buffer_size = _SHUFFLE_BUFFER.value

  start = time.time()
  it = tasks.get_dataset(c, 'train', batch_size=_BATCH.value)
  batch = next(it)
  first_batch_s = time.time() - start
  seg_key = next((k for k in batch if k.endswith('segment_ids')), None)

  rows = examples = tokens = 0
  wall0, cpu0 = time.time(), time.process_time()
  while time.time() - wall0 < _SECONDS.value:
    batch = next(it)
    rows += _BATCH.value
    # Packed rows hold several examples: count segments, not rows.
    if seg_key:
      examples += int(sum(len(set(r[r > 0].tolist())) for r in batch[seg_key]))
    else:
      examples += _BATCH.value
    tokens += int(sum((v > 0).sum() for k, v in batch.items()
                      if k.endswith('input_tokens')))
  wall, cpu = time.time() - wall0, time.process_time() - cpu0
  cores = _cores()
  print(json.dumps(dict(
      bench='data_throughput', task=_TASK.value, arch=_ARCH.value,
      feature_lengths=dict(inputs=_INPUTS.value, targets=_TARGETS.value),
      pack=_PACK.value, batch=_BATCH.value,
      examples_per_s=round(examples / wall, 1),
      examples_per_s_per_core=round(examples / wall / cores, 1),
      examples_per_cpu_s=round(examples / cpu, 1),
      rows_per_s=round(rows / wall, 1),
      input_tokens_per_s=round(tokens / wall),
      cores=cores, load_avg_1m=round(os.getloadavg()[0], 2),
      first_batch_s=round(first_batch_s, 2), seconds=round(wall, 1))))


if __name__ == '__main__':
  app.run(main)
