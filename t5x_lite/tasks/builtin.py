"""Built-in tasks on the default corpora (python -m data.build).

Registration needs no data: sources and the vocabulary check for their files
only when a dataset is built, and then fail with "run `make data`".
translate_en_de is registered only when its corpus was built.

Task                         what it trains          (objective; its layout)
  shakespeare_span_corruption  T5 span corruption      (span_corruption; inputs_targets)
  shakespeare_prefix_lm        T5 prefix LM            (prefix_lm; inputs_targets)
  shakespeare_causal_lm        full causal LM          (causal_lm; targets)
  shakespeare_mlm              BERT MLM 80/10/10       (mlm; masked_tokens)
  shakespeare_electra          ELECTRA masking 85/15   (electra; masked_tokens)
  shakespeare_glm              GLM blank infilling     (glm; blank_infilling)
  shakespeare_transformer_xl   contiguous streams      (transformer_xl; targets, streams.py)
  shakespeare_mlm_nsp          BERT MLM + next sentence (mlm_nsp; masked_token_pairs)
  shakespeare_sentences        SimCSE, one paragraph a row (contrastive; sentences)
  shakespeare_mlm_contrastive  MLM + SimCSE InfoNCE    (mlm_contrastive; masked_tokens)
  shakespeare_speaker_tags     BIO speaker-name tags   (token_classification; token_labels)
  shakespeare_speaker_span     the speaker of a quote  (span_extraction; span)
  sentiment                    "sentiment: <snippet>" -> fresh | rotten
  sentiment_classification     the same as label 0 rotten / 1 fresh
  next_line                    "next line: <line>" -> the next line
  translate_en_de              "translate English to German: <en>" -> <de>
  translate_de_en_parallel     "translate German to English: <de>" -> <en>,
                               half of translate_en_de/train (back_translation.py)
  translate_en_de_parallel     "translate English to German: <en>" -> <de>,
                               the same half (the other half: monolingual German)
  multitask_mixture            span corruption + sentiment + next_line
                               (+ translate_en_de), examples-proportional
"""
import functools

import seqio
import tensorflow as tf

from t5x_lite.tasks import back_translation
from t5x_lite.tasks import corpora
from t5x_lite.tasks import metrics
from t5x_lite.tasks import postprocessors
from t5x_lite.tasks import preprocessors as prep
from t5x_lite.tasks import registry
from t5x_lite.tasks import sentence_pairs
from t5x_lite.tasks import speakers
from t5x_lite.tasks import streams
from t5x_lite.tasks import vocabularies

SENTIMENT_LABELS = ('rotten', 'fresh')  # class ids 0 and 1
_BUILTIN = ('shakespeare_span_corruption', 'shakespeare_prefix_lm',
            'shakespeare_causal_lm', 'shakespeare_mlm', 'shakespeare_electra',
            'shakespeare_glm', 'shakespeare_sentences',
            'shakespeare_mlm_contrastive', 'sentiment', 'sentiment_classification',
            'next_line', 'multitask_mixture') + sentence_pairs.TASKS + (
                speakers.TASKS)
NAMES = []  # what register_all registered (translate_en_de when built)
# Examples-proportional mixing (T5) with this cap on a task's rate.
MIXTURE_RATE_CAP = 10_000


class CorpusSource(seqio.TextLineDataSource):
  """Text lines of one built corpus; says how to build it when missing."""

  def __init__(self, corpus):
    self._corpus = corpus
    super().__init__({s: corpora.split_path(corpus, s)
                      for s in corpora.CORPORA[corpus][1]})

  def list_shards(self, split):
    corpora.require(self._corpus)
    return super().list_shards(split)

  def num_input_examples(self, split):
    counts = corpora.num_examples(self._corpus)
    return counts.get(split) if counts else None


def examples_rate(task):
  """min(train examples, cap): T5's examples-proportional mixing."""
  return min(task.num_input_examples('train') or 1, MIXTURE_RATE_CAP)


def register_all():
  """(Re)registers every built-in task and the mixture."""
  for objective in ('span_corruption', 'prefix_lm', 'causal_lm', 'mlm',
                    'electra', 'glm'):
    registry.register_pretraining(f'shakespeare_{objective}',
                                  CorpusSource('shakespeare'), objective)
  # SimCSE (objectives/contrastive.py): one paragraph per row; with MLM.
  for name, objective in (('shakespeare_sentences', 'contrastive'),
                          ('shakespeare_mlm_contrastive', 'mlm_contrastive')):
    registry.register_pretraining(name, CorpusSource('shakespeare'), objective)

  # BERT MLM + NSP: [CLS] A [SEP] B [SEP] pairs of lines (sentence_pairs.py).
  sentence_pairs.register_pair_task('shakespeare_mlm_nsp', 'shakespeare',
                                    'mlm_nsp')
  # Fine-tuning heads: speaker tags and spans of the plays (speakers.py).
  speakers.register('token_classification', 'span_extraction')
  # Transformer-XL: contiguous streams of the plays (tasks/streams.py).
  streams.register_stream_task('shakespeare_transformer_xl',
                               CorpusSource('shakespeare'), 'transformer_xl')
  registry.register_text_to_text(
      'sentiment', CorpusSource('sentiment'), 'sentiment: ',
      field_names=('label', 'text'), input_key='text', target_key='label',
      metric_fns=[metrics.accuracy])
  vocab = vocabularies.default_vocabulary()
  registry.register_task(
      'sentiment_classification', CorpusSource('sentiment'),
      [functools.partial(prep.parse_tsv, field_names=('label', 'text')),
       functools.partial(prep.label_to_id, label_classes=SENTIMENT_LABELS),
       seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
       prep.prepend_cls_and_append_eos],
      {'inputs': seqio.Feature(vocab, add_eos=True),
       'label': seqio.ContinuousFeature(dtype=tf.int32, rank=0)},
      objective='classification')
  registry.register_text_to_text(
      'next_line', CorpusSource('next_line'), 'next line: ',
      field_names=('line', 'next'), input_key='line', target_key='next',
      metric_fns=[metrics.bleu, metrics.rouge],
      postprocess_fn=postprocessors.strip)

  mixed = ['shakespeare_span_corruption', 'sentiment', 'next_line']
  seqio.TaskRegistry.remove('translate_en_de')
  if corpora.is_built('translate_en_de'):
    registry.register_text_to_text(
        'translate_en_de', CorpusSource('translate_en_de'),
        'translate English to German: ', field_names=('en', 'de'),
        input_key='en', target_key='de', metric_fns=[metrics.bleu],
        postprocess_fn=postprocessors.strip)
    mixed.append('translate_en_de')
    back_translation.register_all()
    built = back_translation.NAMES
  else:
    built = ()
  registry.register_mixture('multitask_mixture',
                            [(name, examples_rate) for name in mixed])
  NAMES[:] = sorted(_BUILTIN + tuple(n for n in mixed if n not in _BUILTIN)
                    + built)
