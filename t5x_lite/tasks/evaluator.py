"""seqio.Evaluator over a task or mixture, fed by decode / score callbacks.

The model side (t5x_lite/evaluation.py) supplies two numpy callbacks; this
module owns everything that touches seqio and tf.data: the evaluator, its
enumerated datasets turned into padded numpy batches, and its metrics.
"""
import time
from typing import Any, Callable, Dict, Iterator, Tuple

from absl import logging
import numpy as np
import seqio

from t5x_lite.batches import pad_rows
from t5x_lite.tasks import dataset

# features [batch, ...] (numpy, padded to a full batch) -> per-row results
PredictBatch = Callable[[Dict[str, np.ndarray]], np.ndarray]


def enumerated_batches(ds, batch_size: int
                       ) -> Iterator[Tuple[np.ndarray, Dict[str, np.ndarray],
                                           int]]:
  """seqio's enumerated eval dataset -> (indices, padded features, n real)."""
  for indices, feats in ds.batch(batch_size).as_numpy_iterator():
    feats = {k: v for k, v in feats.items() if np.asarray(v).dtype != object}
    yield np.asarray(indices), pad_rows(feats, batch_size), len(indices)


def to_jsonable(v):
  if isinstance(v, (np.floating, np.integer)):
    return v.item()
  if isinstance(v, np.ndarray):
    return v.tolist()
  if isinstance(v, (float, int, str, bool)) or v is None:
    return v
  if isinstance(v, dict):
    return {str(k): to_jsonable(x) for k, x in v.items()}
  if isinstance(v, (list, tuple)):
    return [to_jsonable(x) for x in v]
  value = getattr(v, 'value', None)  # seqio.metrics.Scalar and friends
  return to_jsonable(value) if value is not None else str(v)


def evaluate(config, step: int, batch_size: int, predict: PredictBatch,
             score: PredictBatch) -> Dict[str, Dict[str, Any]]:
  """{task: {metric: value}} over config.task.name's tasks with metric fns.

  predict(features) -> [batch, length] decoded token ids (full rows, zeros
  after EOS: seqio's vocabulary decodes up to the first EOS); score(features)
  -> [batch] log-likelihoods. Empty when no task has metric fns.
  """
  evaluator = seqio.Evaluator(
      mixture_or_task_name=config.task.name,
      feature_converter=dataset.feature_converter_for(config, pack=False),
      eval_split=config.task.eval_split,
      use_cached=bool(config.task.use_cached),
      seed=int(config.train.seed),
      sequence_length=dataset.task_feature_lengths(config),
      num_examples=int(config.eval.max_examples) or None,
      shuffle=False, async_compute_metrics=False)
  if not evaluator.eval_tasks:
    logging.info('No task of %r has metric fns for split %r: no task metrics.',
                 config.task.name, config.task.eval_split)
    return {}

  def over_rows(fn, convert):
    def run(ds):
      out = []
      for indices, feats, n in enumerated_batches(ds, batch_size):
        rows = fn(feats)
        out += [(int(indices[i]), convert(rows[i])) for i in range(n)]
      return out
    return run

  start = time.time()
  metrics_future, _ = evaluator.evaluate(
      compute_metrics=True, step=step,
      predict_fn=over_rows(predict, lambda r: np.asarray(r).tolist()),
      score_fn=over_rows(score, float))
  results = to_jsonable(metrics_future.result() or {})
  evaluator.close()
  logging.info('seqio metrics in %.1fs: %s', time.time() - start, results)
  return results
