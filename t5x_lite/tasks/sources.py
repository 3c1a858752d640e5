"""The sources a user brings: text lines, TSV, JSONL, globs, split -> globs.

`as_source(source, input_format, keys)` turns what `register_pretraining` and
`register_text_to_text` accept into a seqio DataSource:

  a seqio.DataSource             used as it is
  'my/*.txt' or ['a.txt', ...]   the 'train' split (no validation split:
                                 give a dict to evaluate)
  {'train': 'my/train-*.jsonl',  one glob (or a list of them) per split
   'validation': 'my/val.jsonl'}

The format follows the files' extension unless `input_format` says:
'.jsonl'/'.json' JSONL (one object a line; `keys` are read, other fields
ignored, numbers become text), '.tsv' tab-separated, anything else text
lines (one document each). `text_as_targets` is the first preprocessing step
of a pretraining task: the line, TSV column or JSONL field becomes 'targets';
empty texts are dropped.
"""
import json
import os
from typing import Iterable, List, Sequence, Tuple

import seqio
import tensorflow as tf

from t5x_lite.model_config import ConfigError
from t5x_lite.tasks import preprocessors as prep

FORMATS = ('lines', 'tsv', 'jsonl')
_EXTENSIONS = {'.jsonl': 'jsonl', '.json': 'jsonl', '.tsv': 'tsv'}
# Records of each file read up front by `check_records`.
CHECK_RECORDS = 1000


class DataError(ConfigError):
  """A task's data cannot be read (missing files or split, a record without
  its field): the user's input, so the entrypoints exit 2 with the line."""


def _patterns(spec) -> List[str]:
  return [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)


def _absolute(pattern) -> str:
  pattern = os.fspath(pattern)
  return pattern if '://' in pattern else os.path.abspath(
      os.path.expanduser(pattern))


def format_of(split_to_patterns, input_format=None) -> str:
  """`input_format`, else the one format the patterns' extensions imply."""
  if input_format is not None:
    if input_format not in FORMATS:
      raise ValueError(f'input_format={input_format!r}: use one of '
                       f'{", ".join(FORMATS)}.')
    return input_format
  found = {_EXTENSIONS.get(os.path.splitext(p)[1].lower(), 'lines')
           for ps in split_to_patterns.values() for p in ps}
  if len(found) > 1:
    raise ValueError(f'The files {split_to_patterns} mix formats '
                     f'{sorted(found)}; pass input_format=.')
  return found.pop() if found else 'lines'


def parse_record(line: str, path: str, number: int,
                 keys: Sequence[str]) -> Tuple[str, ...]:
  """The `keys` of one JSONL line as strings; a bad line is one DataError
  naming the file, the line number and the key."""
  try:
    record = json.loads(line)
  except ValueError as e:
    raise DataError(f'{path}:{number}: not valid JSON ({e}).') from e
  if not isinstance(record, dict):
    raise DataError(f'{path}:{number}: a JSONL line must be an object, got '
                    f'{type(record).__name__}.')
  out = []
  for key in keys:
    if key not in record:
      raise DataError(
          f'{path}:{number}: no "{key}" key (its keys: '
          f'{", ".join(sorted(record)) or "none"}); name the field holding '
          'the text (text_key=, input_key=/target_key=) when registering '
          'the task.')
    value = record[key]
    out.append(value if isinstance(value, str) else
               '' if value is None else json.dumps(value, ensure_ascii=False))
  return tuple(out)


class JsonlDataSource(seqio.FileDataSource):
  """JSON lines -> {key: tf.string} for each of `keys` (other fields are
  ignored). Files are read in Python (json), one generator per file, so a
  bad record names its file and line; `check_records` finds those up front."""

  def __init__(self, split_to_filepattern, keys: Sequence[str], **kwargs):
    self.keys = tuple(keys)
    spec = tuple(tf.TensorSpec((), tf.string) for _ in self.keys)

    def records(path):
      path = path.decode() if isinstance(path, bytes) else str(path)
      with tf.io.gfile.GFile(path) as f:
        for n, line in enumerate(f, 1):
          if line.strip():
            yield parse_record(line, path, n, self.keys)

    def read_file_fn(path):
      ds = tf.data.Dataset.from_generator(records, args=(path,),
                                          output_signature=spec)
      return ds.map(lambda *values: dict(zip(self.keys, values)))

    super().__init__(read_file_fn=read_file_fn,
                     split_to_filepattern=split_to_filepattern, **kwargs)

  def check_records(self, split: str, limit: int = CHECK_RECORDS):
    """Parses the first `limit` records of each file of `split`."""
    for path in self.list_shards(split):
      with tf.io.gfile.GFile(path) as f:
        seen = 0
        for n, line in enumerate(f, 1):
          if not line.strip():
            continue
          parse_record(line, path, n, self.keys)
          seen += 1
          if seen >= limit:
            break


def as_source(source, input_format=None, keys: Iterable[str] = ('text',)
              ) -> Tuple[seqio.DataSource, str]:
  """(a seqio DataSource, its format) for what a user passed (module doc).

  A DataSource given as such is 'lines' unless `input_format` says (TSV
  lines) or its elements are dicts (then 'jsonl' here means "has fields").
  """
  if isinstance(source, seqio.DataSource):
    return source, input_format or 'lines'
  splits = source if isinstance(source, dict) else {'train': source}
  splits = {s: [_absolute(p) for p in _patterns(v)] for s, v in splits.items()}
  fmt = format_of(splits, input_format)
  if fmt == 'jsonl':
    return JsonlDataSource(splits, keys=tuple(dict.fromkeys(keys))), fmt
  return seqio.TextLineDataSource(splits), fmt


def text_as_targets(dataset, text_key='text', field_names=None):
  """Each example's text becomes {'targets': text}; empty ones are dropped.

  Text lines are the text; TSV lines (field_names given) are split on tabs
  and the `text_key` column taken (missing columns read as ''); examples
  that are dicts (JSONL, TFDS) give their `text_key` field.
  """
  if isinstance(dataset.element_spec, tf.TensorSpec):
    if not field_names:
      dataset = prep.line_to_targets(dataset)
    else:
      index = list(field_names).index(text_key)

      @prep.graph_fn
      def _column(line):
        cols = tf.strings.split(line, '\t')
        cols = tf.concat([cols, [''] * (index + 1)], 0)  # pad short rows
        return {'targets': cols[index]}

      dataset = dataset.map(_column, num_parallel_calls=prep.AUTOTUNE)
  else:
    if text_key not in dataset.element_spec:
      raise DataError(f'The source yields fields {sorted(dataset.element_spec)}'
                      f', none named {text_key!r}: pass text_key=.')
    dataset = dataset.map(prep.graph_fn(lambda x: {'targets': x[text_key]}),
                          num_parallel_calls=prep.AUTOTUNE)
  return dataset.filter(prep.graph_fn(
      lambda x: tf.strings.length(tf.strings.strip(x['targets'])) > 0))
