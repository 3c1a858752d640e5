"""Vocabularies: the default corpus SentencePiece, T5's, and special ids.

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


class CorpusVocabulary(seqio.SentencePieceVocabulary):
  """A SentencePieceVocabulary whose missing file names the build command."""

  def _model_context(self):
    if self._model is None and not tf.io.gfile.exists(
        self.sentencepiece_model_file):
      raise FileNotFoundError(corpora.missing_message(
          f'The vocabulary {self.sentencepiece_model_file}'))
    return super()._model_context()


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
