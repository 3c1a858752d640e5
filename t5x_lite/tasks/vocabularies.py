"""Vocabularies: the default corpus SentencePiece, T5's, a user's, special ids.

`vocabulary(spec)` is what `register_pretraining(vocabulary=...)` and
`register_text_to_text` take: None (the shipped corpus vocabulary), a path to
a SentencePiece model (python -m t5x_lite.tasks.vocab builds one; T5's 100
sentinels are added on top) or a seqio.Vocabulary.

Special ids for the objectives live at the top of the vocabulary, where T5
keeps its sentinels (`<extra_id_0>` = vocab_size - 1, counting down):

  mask_id(vocab)       = vocab_size - 1   BERT/ELECTRA [MASK], GLM part-A mask
  cls_id(vocab)        = vocab_size - 2   first token of a pooled classifier
  span_start_id(vocab)  = vocab_size - 3   GLM part-B span start [S]

They are therefore the same ids as `<extra_id_0..2>`: fine, because span
corruption (which uses the sentinels) and these objectives never share a
batch. Random MLM replacements are drawn from `regular_id_range(vocab)`:
past pad/eos/unk and below the extra ids.
"""
import os

import seqio
import tensorflow as tf

from t5x_lite.tasks import corpora

T5_VOCAB_ENV = 'T5X_LITE_T5_VOCAB'
T5_DEFAULT_VOCAB = 'gs://t5-data/vocabs/cc_all.32000/sentencepiece.model'
T5_EXTRA_IDS = 100
NUM_SPECIAL_IDS = 3  # mask, cls, glm start


class FileVocabulary(seqio.SentencePieceVocabulary):
  """A SentencePieceVocabulary whose missing file names the command that
  builds it (loaded lazily: constructing one needs no file)."""

  def missing_message(self) -> str:
    return (f'The vocabulary {self.sentencepiece_model_file} does not exist: '
            'build it with `python -m t5x_lite.tasks.vocab --input=... '
            f'--vocab_size=N --out={self.sentencepiece_model_file}`.')

  def _model_context(self):
    if self._model is None and not tf.io.gfile.exists(
        self.sentencepiece_model_file):
      raise FileNotFoundError(self.missing_message())
    return super()._model_context()


class CorpusVocabulary(FileVocabulary):
  """The shipped vocabulary: its missing file says `make data`."""

  def missing_message(self) -> str:
    return corpora.missing_message(
        f'The vocabulary {self.sentencepiece_model_file}')


_BY_PATH = {}


def from_path(path: str, extra_ids: int = T5_EXTRA_IDS) -> FileVocabulary:
  """The SentencePiece model at `path` + `extra_ids` sentinels; one object
  per (absolute path, extra_ids), so tasks on one file share a vocabulary."""
  if '://' not in path:
    path = os.path.abspath(os.path.expanduser(path))
  key = (path, extra_ids)
  if key not in _BY_PATH:
    _BY_PATH[key] = FileVocabulary(path, extra_ids=extra_ids)
  return _BY_PATH[key]


def vocabulary(spec=None) -> seqio.Vocabulary:
  """None: the shipped corpus vocabulary; a str: `from_path(spec)`; a
  seqio.Vocabulary: itself."""
  if spec is None:
    return default_vocabulary()
  if isinstance(spec, (str, os.PathLike)):
    return from_path(os.fspath(spec))
  if isinstance(spec, seqio.Vocabulary):
    return spec
  raise TypeError(f'vocabulary={spec!r}: give a SentencePiece model path, a '
                  'seqio.Vocabulary or None (the shipped vocabulary).')


_DEFAULT = None


def default_vocabulary() -> seqio.SentencePieceVocabulary:
  """The corpus vocabulary: 4000 pieces + 100 extra ids = vocab_size 4100.

  Loaded lazily: constructing it (at task registration) needs no file.
  """
  global _DEFAULT
  if _DEFAULT is None:
    _DEFAULT = CorpusVocabulary(corpora.vocab_path(),
                                extra_ids=corpora.VOCAB_EXTRA_IDS)
  return _DEFAULT


def t5_vocabulary_path() -> str:
  """$T5X_LITE_T5_VOCAB, else T5's public cc_all.32000 SentencePiece model."""
  return os.environ.get(T5_VOCAB_ENV) or T5_DEFAULT_VOCAB


def t5_vocabulary(path: str = None) -> seqio.SentencePieceVocabulary:
  """T5's default vocabulary (32000 pieces + 100 extra ids) or `path`'s."""
  return seqio.SentencePieceVocabulary(path or t5_vocabulary_path(),
                                       extra_ids=T5_EXTRA_IDS)


def output_features(vocab, add_eos=True, keys=('inputs', 'targets')):
  """{key: seqio.Feature(vocab)} for text-to-text tasks."""
  return {k: seqio.Feature(vocabulary=vocab, add_eos=add_eos) for k in keys}


# ---- special ids ------------------------------------------------------------------


def mask_id(vocab) -> int:
  return vocab.vocab_size - 1


def cls_id(vocab) -> int:
  return vocab.vocab_size - 2


def span_start_id(vocab) -> int:
  return vocab.vocab_size - 3


def regular_id_range(vocab):
  """[low, high) of ordinary pieces: after pad/eos/unk, before extra ids."""
  reserved_top = max(vocab.extra_ids, NUM_SPECIAL_IDS)
  return 3, vocab.vocab_size - reserved_top
