"""Back translation on translate_en_de: the split, its tasks, synthetic pairs.

translate_en_de/train (48,574 English<TAB>German pairs) is split once, by a
seeded permutation of its line numbers (SPLIT_SEED), into two halves:

  parallel     pairs used as pairs, in both directions
  monolingual  German sentences whose English side is never read: the text
               back translation (Sennrich et al. 2016) turns into pairs

The split is a pure function of the file, so every run, the script and a
user's own code see the same halves (`parallel_pairs`, `monolingual_german`).

Tasks (builtin.register_all registers them when translate_en_de is built):

  translate_de_en_parallel  "translate German to English: <de>" -> <en>
                            on the parallel half: the reverse model
  translate_en_de_parallel  "translate English to German: <en>" -> <de>
                            on the parallel half: the real-only baseline

Their validation and test splits are translate_en_de's own (reversed for
de -> en), so BLEU is comparable with `translate_en_de/test`.

A run's synthetic pairs (scripts/back_translate.py writes them: the reverse
model's English for monolingual German, TSV `english<TAB>german`) become a
task and a mixture with one call in a task module:

    from t5x_lite.tasks import back_translation
    back_translation.register_synthetic('runs/bt/synthetic.tsv')

  translate_en_de_synthetic        "translate English to German: <tag> <en'>"
                                   -> <de> (train: the file; validation and
                                   test: translate_en_de's, untagged)
  translate_en_de_back_translated  mixture: translate_en_de_parallel +
                                   translate_en_de_synthetic, each at its
                                   number of examples (T5's examples-
                                   proportional rate, uncapped: the same as
                                   training on the two concatenated)

The tag marks synthetic sources so the model can tell them from real ones
(Caswell et al. 2019, "Tagged Back-Translation"); '' turns it off. Real test
inputs are never tagged.
"""
import functools
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np
import seqio
import tensorflow as tf

from t5x_lite.tasks import corpora
from t5x_lite.tasks import metrics
from t5x_lite.tasks import postprocessors
from t5x_lite.tasks import registry

CORPUS = 'translate_en_de'
SPLIT_SEED = 0
MONOLINGUAL_FRACTION = 0.5
EN_DE_PREFIX = 'translate English to German: '
DE_EN_PREFIX = 'translate German to English: '
# One piece of the corpus vocabulary (a sentinel), so the tag costs one token.
DEFAULT_TAG = '<extra_id_0>'

REVERSE_TASK = 'translate_de_en_parallel'
FORWARD_TASK = 'translate_en_de_parallel'
SYNTHETIC_TASK = 'translate_en_de_synthetic'
MIXTURE = 'translate_en_de_back_translated'
NAMES = (REVERSE_TASK, FORWARD_TASK)  # what register_all registers


# ---- the split -----------------------------------------------------------------


def split_indices(num_pairs: int, seed: int = SPLIT_SEED,
                  monolingual_fraction: float = MONOLINGUAL_FRACTION
                  ) -> Tuple[np.ndarray, np.ndarray]:
  """(parallel line numbers in file order, monolingual line numbers in the
  permutation's order). The two are disjoint and cover range(num_pairs);
  the first k monolingual numbers are a seeded random sample of size k."""
  # RandomState's permutation is fixed across numpy versions (legacy
  # stream), so the split never moves under an upgrade.
  order = np.random.RandomState(seed).permutation(num_pairs)
  num_mono = int(round(num_pairs * monolingual_fraction))
  return np.sort(order[num_mono:]), order[:num_mono]


@functools.lru_cache(maxsize=4)
def _train_lines(path: str) -> Tuple[str, ...]:
  with open(path, encoding='utf-8') as f:
    # '\n' only, as tf.data.TextLineDataset splits (str.splitlines would
    # also split at U+2028 and friends inside a sentence).
    lines = f.read().split('\n')
  if lines and not lines[-1]:
    lines.pop()  # the final newline ends the last line, as in tf.data
  return tuple(lines)


def train_lines() -> Tuple[str, ...]:
  """translate_en_de/train's TSV lines (English<TAB>German), in file order."""
  corpora.require(CORPUS)
  return _train_lines(corpora.split_path(CORPUS, 'train'))


def parallel_pairs(seed: int = SPLIT_SEED,
                   monolingual_fraction: float = MONOLINGUAL_FRACTION
                   ) -> List[str]:
  """The parallel half's TSV lines, in file order."""
  lines = train_lines()
  parallel, _ = split_indices(len(lines), seed, monolingual_fraction)
  return [lines[i] for i in parallel]


def monolingual_german(num: Optional[int] = None, seed: int = SPLIT_SEED,
                       monolingual_fraction: float = MONOLINGUAL_FRACTION
                       ) -> List[str]:
  """The German side of the monolingual half (the first `num` of it, a
  seeded random sample; None: all of it). Its English is never read."""
  lines = train_lines()
  _, mono = split_indices(len(lines), seed, monolingual_fraction)
  if num is not None:
    mono = mono[:num]
  return [lines[i].split('\t', 1)[1] if '\t' in lines[i] else ''
          for i in mono]


def num_parallel(monolingual_fraction: float = MONOLINGUAL_FRACTION) -> int:
  """Pairs in the parallel half, from the build manifest (no file read)."""
  total = (corpora.num_examples(CORPUS) or {}).get('train')
  if total is None:
    return len(parallel_pairs(monolingual_fraction=monolingual_fraction))
  return total - int(round(total * monolingual_fraction))


# ---- sources -------------------------------------------------------------------


class PairsSource(seqio.FileDataSource):
  """TSV lines English<TAB>German. 'train' reads `train_path`, keeping the
  lines `keep_fn()` marks (a bool per line; None: all) and tagging their
  English side; 'validation' and 'test' are translate_en_de's files,
  untagged, so every direction and variant is scored on the real pairs.

  A file source (not a function of the lines) so seqio shards it across
  hosts and shuffles it as it does any text file.
  """

  def __init__(self, train_path: str, keep_fn=None, tag: str = '',
               num_train: Optional[int] = None):
    tag = f'{tag} ' if tag and not tag.endswith(' ') else tag
    counts = corpora.num_examples(CORPUS) or {}
    counts = {s: counts[s] for s in ('validation', 'test') if s in counts}
    if num_train is not None:
      counts['train'] = num_train
    splits = {'train': train_path}
    splits.update({s: corpora.split_path(CORPUS, s)
                   for s in ('validation', 'test')})

    def read_file_fn(path):
      # One function for every split's file: graph ops tell them apart.
      is_train = tf.equal(path, train_path)
      ds = tf.data.TextLineDataset(path)
      if keep_fn is not None:
        keep = tf.constant(keep_fn(), dtype=tf.bool)  # [train lines]
        ds = ds.enumerate().filter(lambda i, _: tf.logical_or(
            tf.logical_not(is_train), tf.gather(keep, i)))
        ds = ds.map(lambda _, line: line)
      ds = ds.filter(lambda line: tf.strings.length(tf.strings.strip(line)) > 0)
      if tag:
        # English is the first column: the tag goes in front of the line.
        ds = ds.map(lambda line: tf.where(
            is_train, tf.strings.join([tag, line]), line))
      return ds

    super().__init__(read_file_fn=read_file_fn, split_to_filepattern=splits,
                     num_input_examples=counts or None)

  def list_shards(self, split):
    corpora.require(CORPUS)
    return super().list_shards(split)


def parallel_mask(seed: int = SPLIT_SEED,
                  monolingual_fraction: float = MONOLINGUAL_FRACTION
                  ) -> np.ndarray:
  """[train lines] bool: True on the parallel half."""
  num = len(train_lines())
  parallel, _ = split_indices(num, seed, monolingual_fraction)
  mask = np.zeros(num, bool)
  mask[parallel] = True
  return mask


def read_tsv_lines(path: str) -> List[str]:
  """A synthetic-pairs TSV's non-empty lines (each `english<TAB>german`)."""
  with open(path, encoding='utf-8') as f:
    lines = [l.rstrip('\r') for l in f.read().split('\n') if l.strip()]
  for n, line in enumerate(lines, 1):
    if line.count('\t') != 1:
      raise ValueError(f'{path}:{n}: expected `english<TAB>german`, got '
                       f'{line.count(chr(9)) + 1} column(s).')
  return lines


# ---- tasks ---------------------------------------------------------------------


def _register_pairs(name, source, direction):
  """A text-to-text task over PairsSource lines, in `direction`."""
  prefix, input_key, target_key = {
      'en_de': (EN_DE_PREFIX, 'en', 'de'),
      'de_en': (DE_EN_PREFIX, 'de', 'en'),
  }[direction]
  return registry.register_text_to_text(
      name, source, prefix, field_names=('en', 'de'), input_key=input_key,
      target_key=target_key, metric_fns=[metrics.bleu],
      postprocess_fn=postprocessors.strip)


def register_all():
  """Registers the two parallel-half tasks (module doc)."""
  count = num_parallel()
  train = corpora.split_path(CORPUS, 'train')
  for name, direction in ((REVERSE_TASK, 'de_en'), (FORWARD_TASK, 'en_de')):
    _register_pairs(name, PairsSource(train, parallel_mask, num_train=count),
                    direction)


def register_synthetic(path: str, *, tag: str = DEFAULT_TAG,
                       name: str = SYNTHETIC_TASK, mixture: str = MIXTURE,
                       real_task: str = FORWARD_TASK,
                       synthetic_weight: float = 1.0) -> seqio.Mixture:
  """Registers the synthetic pairs at `path` as task `name` and the mixture
  `mixture` = `real_task` + `name` (module doc).

  Args:
    path: TSV, one `synthetic english<TAB>real german` per line.
    tag: put before each synthetic English input (after the task prefix);
      '' for plain (untagged) back translation.
    name, mixture: the names to register.
    real_task: the real pairs it is mixed with.
    synthetic_weight: scales the synthetic task's rate (its number of
      examples); 1.0 mixes in proportion to the data, as concatenating would.
  """
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f'Synthetic pairs {path} do not exist: scripts/back_translate.py '
        'writes them (its decode stage).')
  lines = read_tsv_lines(path)
  _register_pairs(name, PairsSource(path, tag=tag, num_train=len(lines)),
                  'en_de')
  real = seqio.TaskRegistry.get(real_task).num_input_examples('train') or 1
  return registry.register_mixture(
      mixture, [(real_task, float(real)),
                (name, float(len(lines)) * synthetic_weight)])


def write_synthetic(path: str, english: Sequence[str],
                    german: Sequence[str]) -> int:
  """Writes `english<TAB>german` lines (atomically); returns how many.
  Whitespace runs (tabs, newlines) become one space; a pair with an empty
  side is left out."""
  if len(english) != len(german):
    raise ValueError(f'{len(english)} English sentences for {len(german)} '
                     'German ones.')
  rows = []
  for en, de in zip(english, german):
    en, de = ' '.join(str(en).split()), ' '.join(str(de).split())
    if en and de:
      rows.append(f'{en}\t{de}\n')
  tmp = f'{path}.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.writelines(rows)
  os.replace(tmp, path)
  return len(rows)
