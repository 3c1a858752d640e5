"""What can be checked about a task before anything compiles.

    checks.check_data(name, splits)          each split's files exist (or the
                                             source lists its shards), JSONL
                                             records have their fields, the
                                             vocabulary file loads
    checks.check_vocabulary(name, model_vocab_size, what=...)
                                             the task's ids fit the embedding

Both raise sources.DataError / ConfigError with one line naming the task, the
split and the path (or both sizes) and the fix; train_setup.check_task runs
them for train, eval and infer, model_loading for a checkpoint's embedding.
Without them a missing file is a 46-line TensorFlow NotFoundError after init
and compile, and an id past the embedding is silently clipped by the gather.
"""
from typing import Iterable, List

import seqio

from t5x_lite.model_config import ConfigError
from t5x_lite.tasks import registry
from t5x_lite.tasks import sources
from t5x_lite.tasks.sources import DataError

PAD_TO = 128  # what tasks.vocab rounds model.vocab_size up to


def _subtasks(name) -> List[seqio.Task]:
  return list(seqio.get_subtasks(registry.get_task_or_mixture(name)))


def _split_hint(task, split) -> str:
  if isinstance(task.source, seqio.FileDataSource):
    return ("give its source a dict {'train': ..., '" + split + "': ...}")
  return 'give its source that split'


def _check_split(task, split: str):
  source = task.source
  if split not in source.splits:
    raise DataError(
        f'task {task.name!r} has no split {split!r} (its splits: '
        f'{", ".join(source.splits) or "none"}): {_split_hint(task, split)}, '
        'or pick another with --config.task.train_split / '
        '--config.task.eval_split (--config.eval.num_batches=0 trains '
        'without evaluating).')
  try:
    shards = source.list_shards(split)
  except FileNotFoundError as e:  # a built-in corpus that was not built
    raise DataError(f'task {task.name!r}, split {split!r}: {e}') from e
  except Exception as e:  # pylint: disable=broad-except
    # TFDS and user sources fail in their own ways; one line either way.
    first = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
    raise DataError(f'task {task.name!r}, split {split!r}: cannot list its '
                    f'data ({type(e).__name__}: {first}).') from e
  if not shards:
    pattern = getattr(source, '_split_to_filepattern', {}).get(split, '?')
    if not isinstance(pattern, str):
      pattern = ' '.join(map(str, pattern))
    raise DataError(f'task {task.name!r}, split {split!r}: no file matches '
                    f'{pattern}; fix the path in its source (or build the '
                    'data first).')
  if isinstance(source, sources.JsonlDataSource):
    source.check_records(split)


def _vocabularies(task) -> list:
  return [f.vocabulary for f in task.output_features.values()
          if getattr(f, 'vocabulary', None) is not None]


def _is_remote(vocab) -> bool:
  path = getattr(vocab, 'sentencepiece_model_file', '') or ''
  return '://' in path and getattr(vocab, '_model', None) is None


def vocab_size(name) -> int:
  """The largest vocab_size (extra ids included) over the task's features
  (0 when only remote vocabularies: those are not fetched to check)."""
  size = 0
  for task in _subtasks(name):
    for vocab in _vocabularies(task):
      if _is_remote(vocab):
        continue
      try:
        size = max(size, int(vocab.vocab_size))
      except FileNotFoundError as e:
        raise DataError(f'task {task.name!r}: {e}') from e
  return size


def check_data(name, splits: Iterable[str]):
  """Every split of every task of `name` can be read; its vocabulary loads."""
  for task in _subtasks(name):
    for split in dict.fromkeys(splits):
      _check_split(task, split)
  vocab_size(name)


def padded(size: int) -> int:
  return -(-size // PAD_TO) * PAD_TO


def check_vocabulary(name, model_vocab_size: int, what: str = None):
  """The task's ids (extra ids included) fit `model_vocab_size` embedding
  rows. `what`: where the size comes from (default: model.vocab_size)."""
  size = vocab_size(name)
  if size <= int(model_vocab_size):
    return
  if what is None:
    raise ConfigError(
        f'task {name!r} has a vocabulary of {size} ids (extra ids included) '
        f'but model.vocab_size={model_vocab_size}: set '
        f'--config.model.vocab_size={padded(size)} (or give the task a '
        'smaller vocabulary).')
  raise ConfigError(
      f'{what} embeds {model_vocab_size} token ids but task {name!r} has a '
      f'vocabulary of {size} ids (extra ids included): ids past '
      f'{int(model_vocab_size) - 1} cannot be embedded; use a task with the '
      'vocabulary the checkpoint was trained with, or start from a '
      'checkpoint whose embedding has at least that many rows.')
