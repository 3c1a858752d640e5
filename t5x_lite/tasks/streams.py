"""Contiguous token streams for Transformer-XL training and evaluation.

A stream task is a seqio task (its source, tokenizer and objective, so the
task checks and decoded samples work as for any other) whose train and eval
batches come from here instead of seqio's packed rows:

  the split's documents, tokenized by the task's own pre-cache steps (in file
  order) and joined with EOS after each document, are cut into `num_streams`
  contiguous streams of equal length S (the tail that does not fill the last
  stream is dropped); step k serves columns [j*L, (j+1)*L) of every stream as
  decoder_input_tokens and the same columns + 1 as decoder_target_tokens,
  where L is the segment length and j = k mod (the segments in a stream),
  so every row continues the same row of the previous step, as Transformer-XL
  trains. When j wraps to 0 the batch's `memory_reset` is 1: the memory left
  over from the end of the stream does not precede its start.

Deterministic and stateless: batch k is a function of (task, split, streams,
segment length, k), so resuming after k batches is `skip_batches=k` (no
iterator state to save beyond the count loop.py checkpoints). Each host
serves its own rows: host i of n holds streams [i*b, (i+1)*b) of the n*b.

  register_stream_task(name, source, objective, vocabulary=None)
  is_stream_task(name)
  get_stream_dataset(config, split, *, batch_size, shard_id=0, num_shards=1,
                     skip_batches=0, num_epochs=None) -> iterator of batches
"""
import functools
from typing import Dict, Iterator

import numpy as np
import tensorflow as tf

from t5x_lite import lengths
from t5x_lite import memory as memory_lib
from t5x_lite.model_config import ConfigError
from t5x_lite.tasks import registry

_STREAM_TASKS = set()


def register_stream_task(name, source, objective, vocabulary=None):
  """Registers `name` (`objective`, e.g. transformer_xl, over `source`'s
  text) and marks it as served by streams."""
  task = registry.register_pretraining(name, source, objective,
                                       vocabulary=vocabulary)
  _STREAM_TASKS.add(name)
  return task


def is_stream_task(name: str) -> bool:
  return name in _STREAM_TASKS


@functools.lru_cache(maxsize=8)
def split_tokens(name: str, split: str) -> np.ndarray:
  """int32 [N]: every document of the split in file order, EOS after each."""
  task = registry.get_task_or_mixture(name)
  eos = task.output_features['targets'].vocabulary.eos_id
  ds = task.source.get_dataset(split=split, shuffle=False)
  ds = task.preprocess_precache(ds, seed=0)  # text -> tokenized 'targets'
  ds = ds.map(lambda ex: tf.cast(ex['targets'], tf.int32))
  ds = ds.filter(lambda ids: tf.size(ids) > 0)
  ds = ds.map(lambda ids: tf.concat([ids, [eos]], 0))
  # Ragged batches: one host copy per many documents, not per document.
  pieces = [b.flat_values.numpy().astype(np.int32)
            for b in ds.ragged_batch(4096)]
  return np.concatenate(pieces) if pieces else np.zeros((0,), np.int32)


class Streams:
  """`num_streams` contiguous rows of a token array, read L columns a step."""

  def __init__(self, tokens: np.ndarray, num_streams: int,
               segment_length: int, where: str = ''):
    self.segment_length = int(segment_length)
    length = len(tokens) // int(num_streams)
    self.num_segments = (length - 1) // self.segment_length if length else 0
    if self.num_segments < 1:
      raise ConfigError(
          f'{where}: {len(tokens)} tokens make {num_streams} streams of '
          f'{length}, fewer than one segment of {segment_length} + 1: lower '
          'the batch size or task.feature_lengths (the segment).')
    self.rows = np.asarray(tokens[:length * num_streams], np.int32).reshape(
        num_streams, length)

  def batch(self, k: int, rows: slice) -> Dict[str, np.ndarray]:
    """Step k's segment of the streams `rows`."""
    j = k % self.num_segments
    start, seg = j * self.segment_length, self.segment_length
    x = self.rows[rows, start:start + seg + 1]
    n = x.shape[0]
    return {
        'decoder_input_tokens': x[:, :-1],
        'decoder_target_tokens': x[:, 1:],
        'decoder_loss_weights': np.ones((n, seg), np.int32),
        memory_lib.RESET_FEATURE: np.full((n,), int(j == 0), np.int32),
    }


def segment_length(config) -> int:
  """The model's sequence length: task.feature_lengths inputs + targets."""
  return lengths.model_lengths('decoder_only',
                               config.task.feature_lengths)['decoder']


def get_stream_dataset(config, split, *, batch_size, shard_id=0,
                       num_shards=1, skip_batches=0, num_epochs=None
                       ) -> Iterator[Dict[str, np.ndarray]]:
  """This host's batches of config.task.name's streams of `split`.

  batch_size: rows per host (the streams are batch_size * num_shards);
  skip_batches: resume after that many steps; num_epochs: None repeats
  (wrapping around, memory_reset marks it), 1 reads each segment once.
  """
  name = config.task.name
  streams = Streams(split_tokens(name, split), batch_size * num_shards,
                    segment_length(config), where=f'{name}/{split}')
  rows = slice(shard_id * batch_size, (shard_id + 1) * batch_size)
  stop = None if num_epochs is None else num_epochs * streams.num_segments
  k = int(skip_batches)
  while stop is None or k < stop:
    yield streams.batch(k, rows)
    k += 1
