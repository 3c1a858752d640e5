"""Sentence pairs for BERT's next-sentence prediction (objective mlm_nsp).

The source: the lines of a built corpus (shakespeare: one speech or
paragraph a line, the plays one after another). As in BERT, a "sentence" is
a span of text, not one linguistic sentence: A and B are each `segment_lines`
consecutive lines (SEGMENT_LINES = 3, a short exchange of speeches). Every
line that starts an A whose next segment is in the same work starts one pair
(`build_pairs`, pure numpy, seeded):

  IsNext (1)   B = the segment right after A;
  NotNext (0)  B = a segment drawn uniformly from another work (BERT's
               "random sentence from another document"). A corpus of one
               work (no bylines) draws from anywhere that overlaps neither A
               nor its true next segment. Never a segment with the same text
               as A's true next one (a repeated "ACT II." would be a false
               negative).

With one line a side and negatives from anywhere (the first version), NSP
stayed at chance on the tiny encoder for 6000 steps: validation has two
plays, so half its negatives came from A's own play, and one speech each
leaves little to compare. With three lines a side the speakers of an
IsNext pair recur across the boundary: "A and B share a speaker's name"
alone is right on ~90% of the pairs (README, "BERT's next-sentence
prediction", says what the models learn of it).

The labels are balanced by construction, not drawn one by one: the pairs
come in consecutive blocks of two (in corpus order) and one of each block,
at random, is IsNext. Any run of pairs is then within one pair of 50%
IsNext, and shuffling (seqio's buffer) keeps no trace of the blocks. One
pass over a split (evaluation, `num_epochs=1`) is always the same pairs
(PAIR_SEED). A repeated split draws its pairs afresh each epoch, as BERT's
create_pretraining_data does with dupe_factor: epoch e uses the seed
(PAIR_SEED, e) (epoch 0 is the one-pass pairs), so every A is IsNext in
some epochs and NotNext, with a new B, in others (with one fixed draw a
long run meets each A with the same label and negative every epoch: ~5
epochs by step 6000 of the tiny recipe). A repeated split cycles through
DUPE_FACTOR draws; all are deterministic, so resume (skipping batches) sees
the same data.

Then per pair (`pair_and_mask`, stateless seeds from seqio's map seed, as
tasks/preprocessors.py does):

  inputs          [CLS] A [SEP] B [SEP] with BERT's masking over A and B
  targets         the unmasked pair
  loss_weights    1 at the selected positions (15% of A's and B's tokens)
  token_type_ids  0 for [CLS] A [SEP], 1 for B [SEP]
  is_next         1 IsNext / 0 NotNext

[CLS] is vocabularies.cls_id; [SEP] is EOS (prepend_cls_and_append_eos ends
a classifier's input with it too). [CLS] and [SEP] are never selected. When
the pair is longer than the row, the longer side is cut first (BERT's
rule); A keeps its end and B its beginning, the tokens next to the boundary
the prediction is about.
"""
from typing import List, Optional, Sequence, Tuple

import numpy as np
import seqio
import tensorflow as tf

from t5x_lite.tasks import corpora
from t5x_lite.tasks import preprocessors as prep
from t5x_lite.tasks import registry
from t5x_lite.tasks import vocabularies

PAIR_SEED = 0
# BERT's masking (the masked-LM objective's rates): 15% selected; of those
# 80% [MASK], 10% a random token, 10% kept.
SELECT_RATE, MASK_RATE, RANDOM_RATE = 0.15, 0.8, 0.1
# The line after a play's title line; a new work starts at the title.
WORK_BYLINE = 'by William Shakespeare'
# Lines per side of a pair: A and B are each this many consecutive lines.
SEGMENT_LINES = 3
# Fresh pair draws per cycle of a repeated split (BERT's dupe_factor).
DUPE_FACTOR = 10
TASKS = ('shakespeare_mlm_nsp',)


# ---- pairs (numpy, no TensorFlow needed to test them) ---------------------------


def work_ids(lines: Sequence[str], byline: str = WORK_BYLINE) -> np.ndarray:
  """[n] int: the index of the work each line belongs to. A work starts at
  the line before each `byline` (its title); a text without bylines is one
  work."""
  starts = np.zeros(len(lines), np.int64)
  for i, line in enumerate(lines):
    if line.strip() == byline and i > 0:
      starts[i - 1] = 1
  starts[0] = 0
  return np.cumsum(starts)


def build_pairs(lines: Sequence[str], seed: int = PAIR_SEED,
                works: Optional[np.ndarray] = None,
                segment_lines: int = SEGMENT_LINES
                ) -> List[Tuple[int, int, int]]:
  """[(first line of A, first line of B, is_next)], one per line that starts
  an A of `segment_lines` lines with a next segment in its work, in corpus
  order (module doc for the rules). `segment_text` joins a segment."""
  n, k = len(lines), int(segment_lines)
  if k < 1:
    raise ValueError(f'segment_lines must be >= 1, got {segment_lines}.')
  works = work_ids(lines) if works is None else np.asarray(works)
  # A at a: lines a .. a + 2k - 1 (A and its next segment) in one work.
  starts = np.flatnonzero(works[:n - 2 * k + 1] == works[2 * k - 1:])
  if len(starts) < 2:
    raise ValueError(f'Sentence pairs of {k}-line segments need at least '
                     f'{2 * k + 1} lines in a work, got {n} lines.')
  rng = np.random.default_rng(seed)
  # One IsNext in each block of two pairs (the last block may be one pair).
  is_next = np.zeros(len(starts), np.int64)
  first = rng.integers(0, 2, size=(len(starts) + 1) // 2)
  is_next[0::2] = first[:len(is_next[0::2])]
  is_next[1::2] = 1 - first[:len(is_next[1::2])]
  if len(starts) % 2:  # a lone last pair: its own coin
    is_next[-1] = rng.integers(0, 2)
  # Segment starts (k lines in one work), and per work those of the others.
  segments = np.flatnonzero(works[:n - k + 1] == works[k - 1:])
  num_works = int(works.max()) + 1
  elsewhere = {w: segments[works[segments] != w] for w in range(num_works)}
  pairs = []
  for a, label in zip(starts.tolist(), is_next.tolist()):
    b = a + k
    if not label:
      b = _draw_negative(rng, lines, a, k, elsewhere[works[a]]
                         if num_works > 1 else segments, num_works == 1)
    pairs.append((a, b, int(label)))
  return pairs


def _draw_negative(rng, lines, a, k, pool, same_work):
  """A NotNext B for the A at `a`: uniform over `pool`, never A's true next
  text, and (one work) never overlapping A or its next segment."""
  true_next = lines[a + k:a + 2 * k]
  ok = lambda b: (lines[b:b + k] != true_next and
                  not (same_work and a - k < b < a + 2 * k))
  for _ in range(100):  # rejection: the pool is nearly all valid
    b = int(pool[rng.integers(0, len(pool))]) if len(pool) else None
    if b is not None and ok(b):
      return b
  valid = [int(b) for b in pool if ok(int(b))]
  if not valid:
    raise ValueError(f'No segment can be the NotNext B of line {a}: the '
                     'corpus is too small for sentence pairs.')
  return valid[rng.integers(0, len(valid))]


def segment_text(lines: Sequence[str], start: int,
                 segment_lines: int = SEGMENT_LINES) -> str:
  """The text of the segment at `start`: its lines joined by spaces."""
  return ' '.join(lines[start:start + segment_lines])


def read_lines(path: str) -> List[str]:
  """The non-empty lines of a corpus file, stripped."""
  with tf.io.gfile.GFile(path) as f:
    return [line.strip() for line in f if line.strip()]


class SentencePairSource(seqio.DataSource):
  """{'a', 'b': tf.string, 'is_next': tf.int32} pairs of a built corpus:
  A and B are `segment_lines`-line segments (build_pairs).

  The pairs of a split are built once per process (numpy) and served from
  memory; shards take every num_shards-th pair.
  """

  def __init__(self, corpus: str = 'shakespeare', seed: int = PAIR_SEED,
               segment_lines: int = SEGMENT_LINES):
    self._corpus = corpus
    self._seed = seed
    self.segment_lines = segment_lines
    self._cache = {}
    super().__init__(splits=corpora.CORPORA[corpus][1])

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def list_shards(self, split: str) -> Sequence[str]:
    corpora.require(self._corpus)
    return [corpora.split_path(self._corpus, split)]

  def pairs(self, split: str, epoch: int = 0
            ) -> Tuple[List[str], List[Tuple[int, int, int]]]:
    """(the split's lines, its pairs in `epoch`: seed PAIR_SEED for epoch
    0, (PAIR_SEED, epoch) after it)."""
    if (split, epoch) not in self._cache:
      if split not in self._cache:
        self._cache[split] = read_lines(self.list_shards(split)[0])
      seed = self._seed if epoch == 0 else [self._seed, epoch]
      self._cache[split, epoch] = build_pairs(
          self._cache[split], seed, segment_lines=self.segment_lines)
    return self._cache[split], self._cache[split, epoch]

  def num_input_examples(self, split: str) -> Optional[int]:
    if not corpora.is_built(self._corpus):
      return None
    return len(self.pairs(split)[1])

  def get_dataset(self, split='train', shuffle=True, seed=None,
                  shard_info=None, *, sequence_length=None, use_cached=False,
                  num_epochs=1):
    del shuffle, seed, sequence_length, use_cached  # the Task shuffles
    # Epochs of pairs, each its own draw (module doc); repeated forever
    # (num_epochs None): a cycle of DUPE_FACTOR draws.
    forever = num_epochs is None or num_epochs < 0
    epochs = DUPE_FACTOR if forever else max(1, num_epochs)
    lines = self.pairs(split)[0]
    starts = np.concatenate([np.asarray(self.pairs(split, e)[1], np.int64)
                             for e in range(epochs)])  # [pairs, (a, b, next)]
    table = tf.constant(lines)
    offsets = tf.range(self.segment_lines, dtype=tf.int64)

    def text(start):  # = segment_text(lines, start)
      return tf.strings.reduce_join(tf.gather(table, start + offsets),
                                    separator=' ')

    ds = tf.data.Dataset.from_tensor_slices({
        'a': starts[:, 0], 'b': starts[:, 1],
        'is_next': starts[:, 2].astype(np.int32)})
    if shard_info and shard_info.num_shards > 1:
      ds = ds.shard(shard_info.num_shards, shard_info.index)
    ds = ds.map(lambda x: {'a': text(x['a']), 'b': text(x['b']),
                           'is_next': x['is_next']},
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.repeat() if forever else ds


# ---- seqio steps --------------------------------------------------------------------


def tokenize_pair(dataset, output_features):
  """'a' and 'b' text -> int32 ids with the inputs vocabulary (no EOS)."""
  vocab = output_features['inputs'].vocabulary

  @prep.graph_fn
  def _fn(x):
    return {'a': tf.cast(vocab.encode_tf(x['a']), tf.int32),
            'b': tf.cast(vocab.encode_tf(x['b']), tf.int32),
            'is_next': x['is_next']}

  return dataset.map(_fn, num_parallel_calls=prep.AUTOTUNE)


def fit_lengths(len_a, len_b, budget):
  """(kept A, kept B) tokens, longest first: the shorter side is kept whole
  when it fits half the budget; otherwise both get about half."""
  keep_a = tf.minimum(len_a, tf.maximum(budget // 2, budget - len_b))
  return keep_a, tf.minimum(len_b, budget - keep_a)


def pair_and_mask(dataset, sequence_length, output_features,
                  select_rate=SELECT_RATE, mask_rate=MASK_RATE,
                  random_rate=RANDOM_RATE):
  """[CLS] A [SEP] B [SEP], token types, BERT masking (module doc)."""
  length = (sequence_length or {}).get('inputs')
  if not length or length < 5:
    raise ValueError(f'pair_and_mask needs sequence_length inputs >= 5 (got '
                     f'{sequence_length}); set task.feature_lengths.inputs.')
  vocab = output_features['inputs'].vocabulary
  cls, sep, mask = (vocabularies.cls_id(vocab), vocab.eos_id,
                    vocabularies.mask_id(vocab))
  low, high = vocabularies.regular_id_range(vocab)

  @seqio.map_over_dataset(num_seeds=3)
  @prep.graph_fn
  def _fn(x, seeds):
    keep_a, keep_b = fit_lengths(tf.size(x['a']), tf.size(x['b']), length - 3)
    a = x['a'][tf.size(x['a']) - keep_a:]  # A's end: next to the boundary
    b = x['b'][:keep_b]
    tokens = tf.concat([[cls], a, [sep], b, [sep]], 0)
    n = tf.size(tokens)
    types = tf.concat([tf.zeros([keep_a + 2], tf.int32),
                       tf.ones([keep_b + 1], tf.int32)], 0)
    special = tf.concat([[True], tf.zeros([keep_a], tf.bool), [True],
                         tf.zeros([keep_b], tf.bool), [True]], 0)
    # Exactly max(1, round(rate x text tokens)) text positions: the lowest
    # random keys, special positions pushed past every text one.
    num_text = keep_a + keep_b
    num = tf.maximum(1, tf.cast(tf.round(
        tf.cast(num_text, tf.float32) * select_rate), tf.int32))
    num = tf.minimum(num, num_text)
    keys = tf.random.stateless_uniform([n], seeds[0])
    keys = tf.where(special, 2.0, keys)
    order = tf.argsort(keys)
    selected = tf.scatter_nd(order[:num, None], tf.ones([num], tf.int32),
                             [n]) > 0
    inputs = prep.replace_selected(tokens, selected, seeds[1:], mask,
                                   (low, high), mask_rate, random_rate)
    return {'inputs': inputs, 'targets': tokens,
            'loss_weights': tf.cast(selected, tf.int32),
            'token_type_ids': types, 'is_next': x['is_next']}

  return _fn(dataset)


# ---- registration -------------------------------------------------------------------


def register_pair_task(name: str, corpus: str, objective: str, *,
                       vocabulary=None,
                       segment_lines: int = SEGMENT_LINES) -> seqio.Task:
  """A sentence-pair task over a built corpus's lines, training `objective`
  (one whose layout is masked_token_pairs): BERT's masking over
  [CLS] A [SEP] B [SEP], A and B `segment_lines` lines each.
  tasks/builtin.py registers TASKS with it."""
  return registry.register_task(
      name, SentencePairSource(corpus, segment_lines=segment_lines),
      [tokenize_pair, pair_and_mask],
      vocabularies.output_features(vocabularies.vocabulary(vocabulary),
                                   add_eos=False),
      objective=objective)
