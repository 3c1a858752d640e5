"""Speaker tasks from the plays' own structure: fine-tuning heads' data.

The shipped Shakespeare split files hold one speech a line, `NAME. text`
(the speaker in capitals, then ". "); stage directions, act/scene headings
and Milton's prose have no speaker. A *passage* is a run of
SPEECHES_PER_PASSAGE consecutive speech lines of one play (a line without a
speaker ends a run, so a passage never crosses a scene or a work), each
speech cut to its first WORDS_PER_SPEECH words, joined with spaces (no
newlines: where a speech starts must be read from the text).

  shakespeare_speaker_tags  (the tagging objective; token_labels layout)
      inputs: the passage + EOS; token_labels: B on the first token of each
      speaker name, I on its other tokens, O elsewhere (the "." after the
      name, the speech, EOS). One example per passage.
  shakespeare_speaker_span  (the extractive-span objective; span layout)
      inputs: [CLS] <quote> EOS <passage> EOS, where the quote is up to
      QUOTE_WORDS consecutive words of one speech (found in no other speech
      of the passage); start/end_position: the first and last token of
      that speech's speaker name; context_mask: 1 on the passage tokens.
      One example per speech of each passage.

How the labels survive tokenization: the passage is kept as segments
(name + ".", then the speech) and the preprocessor tokenizes each segment
on its own (vocab.encode_tf over the segment list, a RaggedTensor). Every
segment boundary is a space, and SentencePiece splits on spaces before
anything else, so the concatenated pieces are those of the whole passage;
a segment's tokens carry its label. The name segment's last piece is the
"." (tests/test_heads.py checks both on the validation split), so the name
is every piece of its segment but the last.

Names stay in the text as written: capitals followed by "." after the end
of the previous speech. The tagger can learn them from capitals and place;
the span task needs the quote found first, then the name before it.
Validation is held out by work (The Tempest, Julius Caesar; Paradise
Regained has no speakers).
"""
import functools
import re
from typing import Dict, Iterator, List, Tuple

import seqio
import tensorflow as tf

from t5x_lite.tasks import corpora
from t5x_lite.tasks import preprocessors as prep
from t5x_lite.tasks import registry
from t5x_lite.tasks import vocabularies

SPEECHES_PER_PASSAGE = 4
WORDS_PER_SPEECH = 16
QUOTE_WORDS = 6
# BIO label ids, as the tagging objective scores them (objectives/).
OUTSIDE, BEGIN, INSIDE = 0, 1, 2
SPLITS = ('train', 'validation')
TAGS_TASK = 'shakespeare_speaker_tags'
SPAN_TASK = 'shakespeare_speaker_span'
TASKS = (TAGS_TASK, SPAN_TASK)
# A speaker: one to four words of capitals (FIRST CITIZEN, DUKE SENIOR),
# then ". " and the speech. Headings look the same and are not speakers.
_SPEECH = re.compile(r"^([A-Z][A-Z'&-]*(?: [A-Z][A-Z'&-]*){0,3})\. (\S.*)$")
_HEADINGS = ('ACT', 'SCENE', 'PROLOGUE', 'EPILOGUE', 'BOOK', 'THE', 'CHORUS')


def parse_speech(line: str):
  """(speaker, speech) of a speech line, or None."""
  m = _SPEECH.match(line.strip())
  if not m or m.group(1).split()[0] in _HEADINGS:
    return None
  return m.group(1), m.group(2)


def passages(lines) -> Iterator[List[Tuple[str, str]]]:
  """Runs of SPEECHES_PER_PASSAGE consecutive speeches [(name, words)], each
  speech cut to WORDS_PER_SPEECH words; a line without a speaker ends a run."""
  run = []
  for line in lines:
    speech = parse_speech(line)
    if speech is None:
      run = []
      continue
    name, text = speech
    run.append((name, ' '.join(text.split()[:WORDS_PER_SPEECH])))
    if len(run) == SPEECHES_PER_PASSAGE:
      yield run
      run = []


def segments(passage) -> Tuple[List[str], List[int]]:
  """(segment texts, 1 for a speaker-name segment) of a passage."""
  texts, is_name = [], []
  for name, text in passage:
    texts += [name + '.', text]
    is_name += [1, 0]
  return texts, is_name


def quote_of(passage, index: int, salt: int):
  """Up to QUOTE_WORDS consecutive words of speech `index` found in no
  other speech of the passage (None when there is none); where in the
  speech is a fixed function of `salt` (the example's number)."""
  words = passage[index][1].split()
  n = min(QUOTE_WORDS, len(words))
  starts = list(range(len(words) - n + 1))
  for k in range(len(starts)):
    start = starts[(salt + k) % len(starts)]
    quote = ' '.join(words[start:start + n])
    if not any(quote in text for j, (_, text) in enumerate(passage)
               if j != index):
      return quote
  return None


def _lines(split):
  with open(corpora.split_path('shakespeare', split)) as f:
    return f.read().splitlines()


def tag_examples(split) -> Iterator[Dict]:
  for passage in passages(_lines(split)):
    texts, is_name = segments(passage)
    yield {'segments': texts, 'segment_is_name': is_name}


def span_examples(split) -> Iterator[Dict]:
  number = 0
  for passage in passages(_lines(split)):
    texts, _ = segments(passage)
    for index in range(len(passage)):
      number += 1
      quote = quote_of(passage, index, number)
      if quote is not None:
        yield {'question': quote, 'segments': texts,
               'answer_segment': 2 * index}


def _source(examples_fn, signature):
  """A seqio source of the examples of `examples_fn(split)`."""

  def dataset_fn(split, shuffle_files=False, seed=None):
    del shuffle_files, seed  # one small file per split; seqio shuffles
    corpora.require('shakespeare')
    return tf.data.Dataset.from_generator(
        lambda: examples_fn(split), output_signature=signature)

  return seqio.FunctionDataSource(dataset_fn, splits=SPLITS)


_SEGMENTS = tf.TensorSpec([None], tf.string)


def tag_source():
  return _source(tag_examples, {
      'segments': _SEGMENTS,
      'segment_is_name': tf.TensorSpec([None], tf.int32)})


def span_source():
  return _source(span_examples, {
      'question': tf.TensorSpec([], tf.string), 'segments': _SEGMENTS,
      'answer_segment': tf.TensorSpec([], tf.int32)})


# ---- preprocessors: tokens and labels together ----------------------------------


def _segment_tokens(vocab, texts):
  """RaggedTensor [segments, pieces] and each piece's index in its segment."""
  pieces = vocab.encode_tf(texts)
  within = tf.ragged.range(pieces.row_lengths())
  return pieces, within


def tag_tokens(dataset, output_features, sequence_length=None):
  """segments -> inputs (the passage's pieces + EOS) and token_labels (BIO:
  the name segment's pieces but its final "."), trimmed together."""
  vocab = output_features['inputs'].vocabulary
  limit = (sequence_length or {}).get('inputs')

  @prep.graph_fn
  def _fn(x):
    pieces, within = _segment_tokens(vocab, x['segments'])
    last = tf.expand_dims(pieces.row_lengths() - 1, 1)
    name = tf.cast(tf.expand_dims(x['segment_is_name'], 1), tf.bool)
    labels = tf.where(name & (within == 0), BEGIN,
                      tf.where(name & (within < last), INSIDE, OUTSIDE))
    tokens = tf.cast(pieces.flat_values, tf.int32)
    labels = tf.cast(labels.flat_values, tf.int32)
    if limit is not None:
      tokens, labels = tokens[:limit - 1], labels[:limit - 1]
    return {'inputs': tf.concat([tokens, [vocab.eos_id]], 0),
            'token_labels': tf.concat([labels, [OUTSIDE]], 0)}

  return dataset.map(_fn, num_parallel_calls=prep.AUTOTUNE)


def span_tokens(dataset, output_features, sequence_length=None):
  """question + segments -> [CLS] quote EOS passage EOS, context_mask on the
  passage, start/end_position of the answer segment's name. Examples whose
  answer does not fit sequence_length['inputs'] are dropped."""
  vocab = output_features['inputs'].vocabulary
  cls, eos = vocabularies.cls_id(vocab), vocab.eos_id
  limit = (sequence_length or {}).get('inputs')

  @prep.graph_fn
  def _fn(x):
    question = tf.cast(vocab.encode_tf(x['question']), tf.int32)
    pieces, _ = _segment_tokens(vocab, x['segments'])
    passage = tf.cast(pieces.flat_values, tf.int32)
    offset = tf.cast(tf.size(question) + 2, tf.int32)  # [CLS] quote EOS
    starts = tf.cast(pieces.row_starts(), tf.int32)
    answer = x['answer_segment']
    start = offset + starts[answer]
    # The name is its segment's pieces but the final ".".
    end = start + tf.cast(pieces.row_lengths()[answer], tf.int32) - 2
    tokens = tf.concat([[cls], question, [eos], passage, [eos]], 0)
    mask = tf.concat([tf.zeros([offset], tf.int32),
                      tf.ones_like(passage), [0]], 0)
    if limit is not None:
      tokens, mask = tokens[:limit], mask[:limit]
    return {'inputs': tokens, 'context_mask': mask,
            'start_position': start, 'end_position': end}

  dataset = dataset.map(_fn, num_parallel_calls=prep.AUTOTUNE)
  if limit is not None:
    dataset = dataset.filter(lambda x: x['end_position'] < limit)
  return dataset


def register(tags_objective: str, span_objective: str):
  """Registers shakespeare_speaker_tags (training `tags_objective`, a
  token tagger) and shakespeare_speaker_span (`span_objective`, start/end
  positions); builtin.py names them."""
  vocab = vocabularies.default_vocabulary()
  inputs = seqio.Feature(vocab, add_eos=False)  # the steps add EOS
  ints = functools.partial(seqio.ContinuousFeature, dtype=tf.int32)
  registry.register_task(
      TAGS_TASK, tag_source(), [tag_tokens],
      {'inputs': inputs, 'token_labels': ints(rank=1)},
      objective=tags_objective)
  registry.register_task(
      SPAN_TASK, span_source(), [span_tokens],
      {'inputs': inputs, 'context_mask': ints(rank=1),
       'start_position': ints(rank=0), 'end_position': ints(rank=0)},
      objective=span_objective)
  return TASKS
