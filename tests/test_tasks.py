"""Registered tasks end to end: the builder, every task and mixture through
its feature converter, exact resume, errors, metrics and seqio eval.

Tests that read corpora skip (saying how to build them) when the data
directory has no build; `make test` runs `make data` first. The TFDS tasks
run offline on tfds.testing.mock_data with the corpus vocabulary.
"""
import os
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from t5x_lite import objectives
from t5x_lite import tasks
from t5x_lite.config import ConfigError
from t5x_lite.config import default_config
from t5x_lite.tasks import corpora
from t5x_lite.tasks import metrics
from t5x_lite.tasks import postprocessors
from t5x_lite.tasks import tfds_tasks
from t5x_lite.tasks import vocabularies

from data import sources  # the repo root is on sys.path (conftest.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BUILT = corpora.is_built('shakespeare') and os.path.exists(corpora.vocab_path())
needs_data = pytest.mark.skipif(
    not BUILT, reason=f'corpora not built in {corpora.data_dir()}: run '
    '`make data` (python -m data.build)')


def _arch(name):
  """An arch the task's objective trains: the encoder-decoder where it is one
  (the inputs_targets checks below read encoder and decoder lengths), else
  its recipe's (the first)."""
  archs = objectives.get(tasks.objective_of(name)).archs
  return 'encoder_decoder' if 'encoder_decoder' in archs else archs[0]


def _config(name, inputs=128, targets=32, arch=None, **task):
  c = default_config()
  c.task.name = name
  c.task.feature_lengths.inputs = inputs
  c.task.feature_lengths.targets = targets
  c.task.shuffle_buffer_size = 256  # small: the first batch comes fast
  c.model.arch = arch or _arch(name)
  for k, v in task.items():
    c.task[k] = v
  return c


@pytest.fixture(scope='module')
def t5_tasks_on_corpus_vocab():
  """TFDS tasks on our vocabulary (T5's is on GCS); restored afterwards."""
  tasks.use_t5_vocabulary(corpora.vocab_path())
  yield
  tfds_tasks.register_all()


# ---- the builder -------------------------------------------------------------------


def test_strip_gutenberg_keeps_only_the_work():
  text = ('The Project Gutenberg EBook of Hamlet\nlicence words\n'
          '*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\n'
          'ACT I.\n\nWho\'s there?\n'
          '*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\nmore licence\n')
  assert sources.strip_gutenberg(text) == "ACT I.\n\nWho's there?"
  assert sources.paragraphs('a  b\nc\n\n\nd\n') == ['a b c', 'd']


def test_dictd_entry_parsing_drops_annotations_and_keeps_first_sense():
  entry = ('aus einem Land ausreisen\n {vi}\n   to exit a country; to leave '
           '{left; left} a country; to depart a\ncountry [Am.]\n')
  assert sources.parse_dictd_entry(entry) == ('aus einem Land ausreisen',
                                              'to exit a country')


@needs_data
def test_build_rerun_is_a_noop_that_prints_token_counts():
  proc = subprocess.run([sys.executable, '-m', 'data.build'], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = proc.stdout
  assert 'up to date' in out
  m = corpora.read_manifest()
  for corpus, info in m['corpora'].items():
    for split, c in info['splits'].items():
      assert c['examples'] > 0 and c['tokens'] > c['examples']
      assert f'{c["tokens"]:,}' in out, (corpus, split)
  assert m['vocab']['vocab_size'] == 4100


@needs_data
def test_corpus_vocabulary_follows_t5_conventions():
  vocab = tasks.get_vocabulary('shakespeare_span_corruption')
  assert vocab.vocab_size == 4100 and vocab.extra_ids == 100
  assert (vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2)
  assert vocab.tokenizer.bos_id() == -1
  ids = vocab.encode('To be, or not to be')
  assert vocab.decode(ids) == 'To be, or not to be'
  assert vocab.decode([vocabularies.mask_id(vocab)]) == '<extra_id_0>'


# ---- every registered task and mixture -------------------------------------------


def test_contract_task_names_are_registered():
  names = set(tasks.registered_names())
  assert {'shakespeare_span_corruption', 'shakespeare_prefix_lm',
          'shakespeare_causal_lm', 'shakespeare_mlm', 'shakespeare_electra',
          'shakespeare_glm', 'sentiment', 'sentiment_classification',
          'next_line', 'multitask_mixture', 'c4_v220_span_corruption',
          'glue_cola_v2', 'glue_sst2_v2', 'glue_mnli_v2', 'glue_stsb_v2',
          'cnn_dailymail_v3', 'wmt14_ende_v3'} <= names
  assert ('translate_en_de' in names) == corpora.is_built('translate_en_de')
  mixed = {t.name for t in tasks.get_task_or_mixture('multitask_mixture').tasks}
  assert mixed == {'shakespeare_span_corruption', 'sentiment', 'next_line'} | (
      {'translate_en_de'} & names)


def _decode_check(name, batch, batch_size, lengths):
  vocab = tasks.get_vocabulary(name)
  for k, v in batch.items():
    assert v.dtype == np.int32, k
    assert v.shape[0] == batch_size, k
  if 'label' in batch:
    assert batch['label'].shape == (batch_size,)
    assert set(batch['label'].tolist()) <= {0, 1}
    assert batch['encoder_input_tokens'].shape == (batch_size, lengths)
    text = vocab.decode(batch['encoder_input_tokens'][0].tolist())
  else:
    key = next(k for k in ('decoder_target_tokens', 'encoder_target_tokens',
                           'encoder_input_tokens') if k in batch)
    # Per-token features are [batch, len]; per-example ones (a span's start
    # and end) are [batch].
    assert all(v.shape in ((batch_size, lengths), (batch_size,))
               for v in batch.values()), {k: v.shape for k, v in batch.items()}
    row = batch[key][0]
    text = vocab.decode(row[row > 0].tolist())
  assert isinstance(text, str) and text.strip(), (name, text)


@needs_data
# Every task and mixture t5x_lite.tasks registers (a user's own tasks, if a
# test module registered any, are not ours to feed).
@pytest.mark.parametrize('name', sorted(tasks.builtin.NAMES +
                                        list(tfds_tasks.TFDS_TASKS)))
def test_every_task_and_mixture_yields_converted_batches(
    name, t5_tasks_on_corpus_vocab):
  del t5_tasks_on_corpus_vocab
  cfg = _config(name, shuffle=False)
  kind = tasks.layout_of(name)
  # One sequence of inputs + targets (160) where the layout has no inputs.
  length = 160 if kind in ('targets', 'blank_infilling') else 128
  if kind == 'inputs_targets':
    length = None  # inputs 128, targets 32: checked per feature below
  with tfds.testing.mock_data(num_examples=16), mock.patch.object(
      seqio.TfdsDataSource, 'num_input_examples', lambda self, split: None):
    # (mock_data has no split sizes; seqio only uses them to decide caching)
    batch = next(tasks.get_dataset(cfg, 'train', batch_size=2))
  if length is None:
    for k, v in batch.items():
      want = 128 if k.startswith('encoder') else 32
      assert v.shape == (2, want) and v.dtype == np.int32, k
    row = batch['decoder_target_tokens'][0]
    assert tasks.get_vocabulary(name).decode(row[row > 0].tolist()).strip()
    assert 'encoder_segment_ids' in batch  # config.task.pack=True
  else:
    _decode_check(name, batch, 2, length)


@needs_data
def test_prefix_lm_task_on_a_decoder_only_model_concatenates():
  cfg = _config('sentiment', arch='decoder_only', shuffle=False)
  batch = next(tasks.get_dataset(cfg, 'validation', batch_size=2))
  assert batch['decoder_causal_attention'].shape == (2, 160)
  assert batch['decoder_loss_weights'].sum() > 0


@needs_data
def test_register_text_to_text_reads_a_tsv_text_line_source(tmp_path):
  path = tmp_path / 'qa.tsv'
  path.write_text('who is there\tnay answer me\n' * 8)
  tasks.register_text_to_text(
      'my_qa', seqio.TextLineDataSource({'train': str(path)}), 'question: ',
      metric_fns=[metrics.accuracy])
  try:
    batch = next(tasks.get_dataset(_config('my_qa', shuffle=False), 'train',
                                   batch_size=2))
    vocab = tasks.get_vocabulary('my_qa')
    assert vocab.decode(batch['encoder_input_tokens'][0].tolist()) == (
        'question: who is there')
    assert vocab.decode(batch['decoder_target_tokens'][0].tolist()) == (
        'nay answer me')
  finally:
    seqio.TaskRegistry.remove('my_qa')


def test_glue_and_stsb_formatting_match_t5(t5_tasks_on_corpus_vocab):
  del t5_tasks_on_corpus_vocab
  ds = tf.data.Dataset.from_tensors(
      {'sentence1': 'a b', 'sentence2': 'c', 'label': tf.constant(2.53),
       'idx': 0})
  ex = next(tfds_tasks.stsb(ds).as_numpy_iterator())
  assert ex['inputs'] == b'stsb sentence1: a b sentence2: c'
  assert ex['targets'] == b'2.6'  # nearest 0.2
  ds = tf.data.Dataset.from_tensors(
      {'premise': 'p', 'hypothesis': 'h', 'label': tf.constant(2, tf.int64),
       'idx': 0})
  ex = next(tfds_tasks.glue(ds, 'mnli', ['entailment', 'neutral',
                                         'contradiction']).as_numpy_iterator())
  assert ex['inputs'] == b'mnli hypothesis: h premise: p'
  assert ex['targets'] == b'contradiction'


# ---- exact resume, seeds, shards ----------------------------------------------------


def _batches(cfg, n, **kw):
  it = tasks.get_dataset(cfg, 'train', batch_size=4, **kw)
  return [next(it) for _ in range(n)]


def _same(a, b):
  return all(np.array_equal(a[k], b[k]) for k in a)


@needs_data
def test_get_dataset_is_deterministic_resumable_and_sharded():
  cfg = _config('shakespeare_span_corruption')
  first = _batches(cfg, 3, seed=0)
  again = _batches(cfg, 3, seed=0)
  assert all(_same(a, b) for a, b in zip(first, again))
  assert not _same(first[0], _batches(cfg, 1, seed=1)[0])
  resumed = _batches(cfg, 1, seed=0, skip_batches=2)[0]
  assert _same(resumed, first[2])
  shard0 = _batches(cfg, 1, seed=0, shard_id=0, num_shards=2)[0]
  shard1 = _batches(cfg, 1, seed=0, shard_id=1, num_shards=2)[0]
  assert not _same(shard0, shard1)


# ---- errors that name the fix ------------------------------------------------------------


def test_unknown_task_names_the_closest_registered_ones():
  with pytest.raises(ConfigError) as e:
    tasks.get_task_or_mixture('shakespeare_span_corruptoin')
  msg = str(e.value)
  assert '\n' not in msg
  assert 'closest registered: shakespeare_span_corruption' in msg


@needs_data
def test_too_short_targets_fail_with_the_length_that_fits():
  cfg = _config('shakespeare_span_corruption', targets=16)
  with pytest.raises(ValueError, match='needs targets >= 29'):
    tasks.get_dataset(cfg, 'train', batch_size=2)


def test_objective_arch_mismatch_names_the_arch():
  cfg = _config('shakespeare_mlm', arch='encoder_decoder')
  with pytest.raises(ValueError, match='model.arch=encoder_only'):
    tasks.feature_converter_for(cfg)


def test_missing_data_says_how_to_build_it(tmp_path, monkeypatch):
  monkeypatch.setenv(corpora.DATA_DIR_ENV, str(tmp_path))
  source = tasks.builtin.CorpusSource('sentiment')
  with pytest.raises(FileNotFoundError, match=r'make data.*data\.build'):
    source.get_dataset('train')
  vocab = vocabularies.CorpusVocabulary(str(tmp_path / 'spm.model'),
                                        extra_ids=100)
  with pytest.raises(FileNotFoundError, match='make data'):
    _ = vocab.vocab_size


# ---- metrics, postprocessors, seqio evaluation ---------------------------------------


def test_metric_fns_match_hand_computed_values():
  assert metrics.accuracy(['a', 'b', 'c', 'd'], ['a', 'b', 'x', 'd']) == {
      'accuracy': 75.0}
  assert metrics.bleu(['the cat sat on the mat'],
                      ['the cat sat on the mat'])['bleu'] == pytest.approx(100)
  r = metrics.rouge(['the cat sat'], ['the cat sat'])
  assert r == pytest.approx({'rouge1': 100, 'rouge2': 100, 'rougeLsum': 100})
  assert metrics.rouge(['a b c d'], ['a b x y'])['rouge1'] == pytest.approx(50)
  p = metrics.pearson_corrcoef([1.0, 2.0, 3.0], [2.0, 4.0, 6.0])
  assert p['pearson_corrcoef'] == pytest.approx(100)
  # tp=2 tn=1 fp=1 fn=0 -> (2 - 0) / sqrt(3 * 2 * 2 * 1) = 0.57735
  mcc = metrics.matthews_corrcoef([1, 1, 0, 0], [1, 1, 1, 0])
  assert mcc['matthews_corrcoef'] == pytest.approx(57.735, abs=1e-3)
  assert postprocessors.string_to_float('3.4') == 3.4
  assert postprocessors.string_to_float('many') == -1.0
  assert postprocessors.string_label_to_class_id(
      'positive', label_classes=('negative', 'positive')) == 1


@needs_data
def test_seqio_evaluator_scores_perfect_predictions_at_100():
  cfg = _config('sentiment')
  evaluator = seqio.Evaluator(
      'sentiment', feature_converter=tasks.feature_converter_for(cfg,
                                                                 pack=False),
      eval_split='validation', sequence_length=tasks.task_feature_lengths(cfg),
      num_examples=8)

  def predict_fn(ds, model_feature_shapes=None):
    del model_feature_shapes
    return [(i, ex['decoder_target_tokens'])
            for i, ex in ds.as_numpy_iterator()]

  all_metrics, _ = evaluator.evaluate(compute_metrics=True,
                                      predict_fn=predict_fn)
  assert all_metrics.result()['sentiment']['accuracy'] == 100.0


# ---- the walkthrough corpus and the checks before compiling ---------------------------


def test_fortune_cookies_become_one_line_each(tmp_path):
  (tmp_path / 'wisdom').write_text(
      'A clash of doctrine is not a disaster.\n%\n'
      'A dream will always\n\ttriumph over reality.\n\t\t-- Stanislaw Lem\n%\n'
      'B\x08Bold and _\x08u_\x08n_\x08d_\x08e_\x08r words.\n%\n'
      'A clash of doctrine is not a disaster.\n%\n')
  (tmp_path / 'ascii-art').write_text('  /\\_/\\\n ( o.o )\n%\n')
  (tmp_path / 'wisdom.dat').write_bytes(b'\x00\x01index')
  rows = sources.read_fortunes(str(tmp_path))
  lines = sorted(rows['train'] + rows['validation'])
  assert lines == ['A clash of doctrine is not a disaster.',
                   'A dream will always triumph over reality. -- Stanislaw Lem',
                   'Bold and under words.']


def test_check_data_names_the_task_split_and_the_build(tmp_path, monkeypatch):
  monkeypatch.setenv(corpora.DATA_DIR_ENV, str(tmp_path))
  with pytest.raises(tasks.DataError) as e:
    tasks.check_data('shakespeare_span_corruption', ['train'])
  assert str(e.value).startswith(
      "task 'shakespeare_span_corruption', split 'train': Corpus "
      f"'shakespeare' is not built in {tmp_path}: run `make data`")
  with pytest.raises(tasks.DataError, match=(
      r"task 'sentiment' has no split 'dev' \(its splits: train, "
      r'validation, test\)')):
    tasks.check_data('sentiment', ['dev'])


@needs_data
def test_vocabulary_larger_than_the_model_names_both_sizes():
  tasks.check_vocabulary('multitask_mixture', 4224)
  with pytest.raises(ConfigError) as e:
    tasks.check_vocabulary('multitask_mixture', 4096)
  assert str(e.value) == (
      "task 'multitask_mixture' has a vocabulary of 4100 ids (extra ids "
      'included) but model.vocab_size=4096: set --config.model.vocab_size='
      '4224 (or give the task a smaller vocabulary).')
