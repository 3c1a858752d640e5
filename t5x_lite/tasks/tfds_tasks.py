"""The standard T5 tasks on their TFDS datasets, with T5's prefixes,
postprocessors and metrics.

  c4_v220_span_corruption  c4/en:3.1.0 'text' -> span corruption
  glue_cola_v2             "cola sentence: ..." -> unacceptable | acceptable
  glue_sst2_v2             "sst2 sentence: ..." -> negative | positive
  glue_mnli_v2             "mnli hypothesis: ... premise: ..." -> entailment |
                           neutral | contradiction
  glue_stsb_v2             "stsb sentence1: ... sentence2: ..." -> "3.4"
                           (label rounded to the nearest 0.2)
  cnn_dailymail_v3         "summarize: <article>" -> highlights (ROUGE)
  wmt14_ende_v3            "translate English to German: <en>" -> de (BLEU)

They use T5's SentencePiece vocabulary: $T5X_LITE_T5_VOCAB, else
gs://t5-data/vocabs/cc_all.32000/sentencepiece.model (read lazily, so
registering needs no network). `use_t5_vocabulary(path)` re-registers them
with another model (the tests use the corpus vocabulary and
tfds.testing.mock_data, fully offline).
"""
import functools

import seqio
import tensorflow as tf

from t5x_lite import objectives
from t5x_lite.tasks import metrics
from t5x_lite.tasks import postprocessors
from t5x_lite.tasks import preprocessors as prep
from t5x_lite.tasks import registry
from t5x_lite.tasks import vocabularies

# GLUE config (also T5's benchmark name): (label classes, metric fns)
GLUE = {
    'cola': (('unacceptable', 'acceptable'), [metrics.matthews_corrcoef]),
    'sst2': (('negative', 'positive'), [metrics.accuracy]),
    'mnli': (('entailment', 'neutral', 'contradiction'), [metrics.accuracy]),
}
TFDS_TASKS = ('c4_v220_span_corruption', 'glue_cola_v2', 'glue_sst2_v2',
              'glue_mnli_v2', 'glue_stsb_v2', 'cnn_dailymail_v3',
              'wmt14_ende_v3')


def glue(dataset, benchmark_name, label_names, feature_names=None):
  """T5's GLUE formatting: '<benchmark> key1: v1 key2: v2' -> label name.

  Features are joined in sorted key order unless `feature_names` is given;
  an unlabeled example (label -1, e.g. a test split) targets '<unk>'.
  """

  @prep.graph_fn
  def _fn(x):
    keys = feature_names or sorted(set(x.keys()) - {'label', 'idx'})
    parts = [benchmark_name]
    for k in keys:
      parts += [f'{k}:', x[k]]
    label = tf.cond(tf.equal(x['label'], -1), lambda: tf.constant('<unk>'),
                    lambda: tf.gather(label_names, x['label']))
    return {'inputs': tf.strings.join(parts, separator=' '),
            'targets': label, 'idx': x['idx']}

  return dataset.map(_fn, num_parallel_calls=tf.data.AUTOTUNE)


def stsb(dataset):
  """T5's STS-B as text: the 0-5 score rounded to the nearest 0.2, '%.1f'."""

  @prep.graph_fn
  def _fn(x):
    return {'inputs': tf.strings.join(['stsb sentence1:', x['sentence1'],
                                       'sentence2:', x['sentence2']],
                                      separator=' '),
            'targets': tf.strings.as_string(tf.round(x['label'] * 5) / 5,
                                            precision=1),
            'idx': x['idx']}

  return dataset.map(_fn, num_parallel_calls=tf.data.AUTOTUNE)


def summarize(dataset, article_key, summary_key):
  return dataset.map(
      lambda x: {'inputs': tf.strings.join(['summarize: ', x[article_key]]),
                 'targets': x[summary_key]},
      num_parallel_calls=tf.data.AUTOTUNE)


def translate(dataset, source_language, target_language, prefix):
  return dataset.map(
      lambda x: {'inputs': tf.strings.join([prefix, x[source_language]]),
                 'targets': x[target_language]},
      num_parallel_calls=tf.data.AUTOTUNE)


def _text_task(name, tfds_name, formatter, vocab, metric_fns,
               postprocess_fn=None):
  registry.register_task(
      name, seqio.TfdsDataSource(tfds_name=tfds_name),
      [formatter, seqio.preprocessors.tokenize,
       seqio.CacheDatasetPlaceholder(),
       seqio.preprocessors.append_eos_after_trim],
      vocabularies.output_features(vocab), metric_fns=metric_fns,
      postprocess_fn=postprocess_fn)


def register_all(vocab_path=None):
  """(Re)registers the TFDS tasks with T5's vocabulary (or `vocab_path`)."""
  vocab = vocabularies.t5_vocabulary(vocab_path)
  span = objectives.get('span_corruption')
  registry.register_task(
      'c4_v220_span_corruption', seqio.TfdsDataSource(tfds_name='c4/en:3.1.0'),
      [functools.partial(seqio.preprocessors.rekey,
                         key_map={'inputs': None, 'targets': 'text'}),
       seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder()]
      + list(span.preprocessors(prep)),
      vocabularies.output_features(vocab), objective=span.name)
  for name, (labels, metric_fns) in GLUE.items():
    _text_task(f'glue_{name}_v2', f'glue/{name}:2.0.0',
               functools.partial(glue, benchmark_name=name,
                                 label_names=list(labels)),
               vocab, metric_fns,
               functools.partial(postprocessors.string_label_to_class_id,
                                 label_classes=labels))
  _text_task('glue_stsb_v2', 'glue/stsb:2.0.0', stsb, vocab,
             [metrics.pearson_corrcoef, metrics.spearman_corrcoef],
             postprocessors.string_to_float)
  _text_task('cnn_dailymail_v3', 'cnn_dailymail:3.4.0',
             functools.partial(summarize, article_key='article',
                               summary_key='highlights'),
             vocab, [metrics.rouge])
  _text_task('wmt14_ende_v3', 'wmt14_translate/de-en:1.0.0',
             functools.partial(translate, source_language='en',
                               target_language='de',
                               prefix='translate English to German: '),
             vocab, [metrics.bleu])


def use_t5_vocabulary(path):
  """Points every TFDS task at the SentencePiece model `path`."""
  register_all(path)
