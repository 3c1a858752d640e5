"""Host-side numpy batch helpers shared by evaluation, inference and tasks/.

    batch = pad_rows(batch, rows)           # one compile for a short last batch
    ids = trim_decode(tokens, eos_id)       # decoded row -> ids before EOS
    rows = round_up(size, num_shards)       # every batch shard gets rows
    size = eval_batch_size(config, shards)  # eval.batch_size or train's

No JAX and no TensorFlow: t5x_lite/tasks/evaluator.py imports this module
(not evaluation.py), so neither side imports the other.
"""
from typing import Dict, List

import numpy as np


def pad_rows(batch: Dict[str, np.ndarray], rows: int) -> Dict[str, np.ndarray]:
  """Pads every [n, ...] feature with zero rows to [rows, ...] (one compile
  for the last, short batch)."""
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    if v.shape[0] < rows:
      pad = [(0, rows - v.shape[0])] + [(0, 0)] * (v.ndim - 1)
      v = np.pad(v, pad)
    out[k] = v
  return out


def trim_decode(tokens, eos_id: int) -> List[int]:
  """Token ids up to (not including) the first EOS, padding dropped."""
  out = []
  for t in np.asarray(tokens).tolist():
    if t == eos_id:
      break
    if t != 0:
      out.append(int(t))
  return out


def round_up(size: int, multiple: int) -> int:
  """`size` rounded up to a multiple (batch shards; padded rows are dropped)."""
  return -(-int(size) // multiple) * multiple


def eval_batch_size(config, num_shards: int = 1) -> int:
  """eval.batch_size (0: train.batch_size), rounded up to the batch shards."""
  size = int(config.eval.batch_size) or int(config.train.batch_size)
  return round_up(size, num_shards)
