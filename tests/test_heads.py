"""Fine-tuning heads: token classification and extractive span.

The speaker tasks' labels are the plays' own `NAME.` structure, checked on
the whole validation split against the text; the metrics against hand
counts and brute force; the losses against a numpy cross entropy of the
network's logits; and fine-tuning from an MLM checkpoint restores every
encoder param bit for bit while the new head keeps its init, with a
wrong-size encoder still failing in one line.
"""
import logging as py_logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from e2e_runs import NEEDS_DATA
from t5x_lite import objectives
from t5x_lite import params_checkpoints
from t5x_lite import partitioning
from t5x_lite import train_setup
from t5x_lite.objectives import span_extraction
from t5x_lite.objectives import token_classification as tagging

O, B, I = tagging.OUTSIDE, tagging.BEGIN, tagging.INSIDE


# ---- the tasks: labels from the text's structure ---------------------------------


def _validation(task, length):
  import seqio  # pylint: disable=g-import-not-at-top
  import t5x_lite.tasks  # pylint: disable=g-import-not-at-top,unused-import
  ds = seqio.get_mixture_or_task(task).get_dataset(
      {'inputs': length, **({'token_labels': length} if 'tags' in task
                            else {'context_mask': length})},
      split='validation', shuffle=False)
  return list(ds.as_numpy_iterator())


def _runs(labels):
  """[(start, end)] of the B I* runs of one row's labels."""
  runs, start = [], None
  for t, label in enumerate(list(labels) + [O]):
    if start is not None and label != I:
      runs.append((start, t - 1))
      start = None
    if label == B:
      start = t
  return runs


@NEEDS_DATA
def test_speaker_tags_are_the_speaker_names_of_the_passage():
  from t5x_lite.tasks import speakers  # pylint: disable=g-import-not-at-top
  from t5x_lite.tasks import vocabularies  # pylint: disable=g-import-not-at-top
  vocab = vocabularies.default_vocabulary()
  passages = list(speakers.passages(speakers._lines('validation')))
  rows = _validation(speakers.TAGS_TASK, 128)
  assert len(rows) == len(passages) == 296
  whole = 0
  for row, passage in zip(rows, passages):
    tokens = [int(t) for t in row['inputs']]
    runs = _runs(row['token_labels'])
    if len(tokens) == 128:  # trimmed: the last name may be cut
      runs = runs[:-1]
    names = [vocab.decode(tokens[s:e + 1]) for s, e in runs]
    assert names and names == [n for n, _ in passage][:len(names)]
    for s, e in runs:  # the name's segment ends in its own "." piece
      assert tokens[e + 1] == vocab.encode('FLAVIUS.')[-1]
    if len(tokens) < 128:  # not trimmed: every speaker, the same pieces
      whole += 1
      assert len(names) == speakers.SPEECHES_PER_PASSAGE
      text = ' '.join(speakers.segments(passage)[0])
      assert tokens == list(vocab.encode(text)) + [vocab.eos_id]
  assert whole > 250


@NEEDS_DATA
def test_speaker_span_is_the_speaker_of_the_quoted_speech():
  from t5x_lite.tasks import speakers  # pylint: disable=g-import-not-at-top
  from t5x_lite.tasks import vocabularies  # pylint: disable=g-import-not-at-top
  vocab = vocabularies.default_vocabulary()
  examples = list(speakers.span_examples('validation'))
  rows = _validation(speakers.SPAN_TASK, 160)
  assert len(rows) == len(examples) == 1177
  for row, ex in zip(rows, examples):
    tokens = [int(t) for t in row['inputs']]
    quote = list(vocab.encode(ex['question']))
    assert tokens[:len(quote) + 2] == (
        [vocabularies.cls_id(vocab)] + quote + [vocab.eos_id])
    mask = row['context_mask']
    assert mask[:len(quote) + 2].sum() == 0
    assert mask[-1] == (len(tokens) == 160)  # the final EOS, unless trimmed
    s, e = int(row['start_position']), int(row['end_position'])
    name = ex['segments'][ex['answer_segment']][:-1]  # "NAME." less "."
    assert vocab.decode(tokens[s:e + 1]) == name
    assert mask[s] == mask[e] == 1
    speech = ex['segments'][ex['answer_segment'] + 1]
    assert ex['question'] in speech


# ---- metrics against hand counts --------------------------------------------------


def test_tagging_sums_count_tokens_and_whole_entities():
  gold = np.array([[B, I, O, B, O, B, I, I, O, O]])
  # entity 1 exact; entity 2 over-runs into an I; entity 3 cut short;
  # a stray I after O counts as a predicted entity (conlleval).
  pred = np.array([[B, I, O, B, I, B, I, O, I, I]])
  w = np.ones_like(gold)
  w[0, -1] = 0  # padding: the I there is not counted
  sums = {k: float(v) for k, v in tagging.tagging_sums(
      jnp.asarray(pred), jnp.asarray(gold), jnp.asarray(w)).items()}
  # tokens: gold in 6 (0 1 3 5 6 7); pred in 7 (0 1 3 4 5 6 8); both 5.
  assert sums['token_f1_num'] == 10 and sums['token_f1_den'] == 13
  # entities: gold 3; pred 4 (B0, B3, B5 and the I at 8); matched 1.
  assert sums['entity_f1_num'] == 2 and sums['entity_f1_den'] == 7
  perfect = tagging.tagging_sums(jnp.asarray(gold), jnp.asarray(gold),
                                 jnp.ones_like(jnp.asarray(gold)))
  assert float(perfect['entity_f1_num']) == float(perfect['entity_f1_den'])


def test_best_spans_match_brute_force():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(5, 12, 2)).astype(np.float32)
  mask = np.zeros((5, 12), np.int32)
  mask[:, 3:11] = 1
  start, end = span_extraction.best_spans(jnp.asarray(logits),
                                          jnp.asarray(mask), 4)
  for b in range(5):
    best = max(((s, e) for s in range(3, 11) for e in range(s, min(s + 4, 11))),
               key=lambda p: logits[b, p[0], 0] + logits[b, p[1], 1])
    assert (int(start[b]), int(end[b])) == best
  sums = span_extraction.span_sums(
      jnp.array([2, 5, 0]), jnp.array([3, 8, 0]), jnp.array([2, 6, 4]),
      jnp.array([3, 7, 4]), jnp.array([1, 1, 0]))
  # row 0 exact (f1 1); row 1: overlap 2, p 2/4, r 2/2 -> f1 2/3; row 2 pad.
  assert float(sums['exact_match_num']) == 1 and float(sums['exact_match_den']) == 2
  np.testing.assert_allclose(float(sums['span_f1_num']), 1 + 2 / 3, rtol=1e-6)


# ---- the models' losses against numpy ----------------------------------------------


def _config(kind, length=32):
  from t5x_lite.configs import finetune_span  # pylint: disable=g-import-not-at-top
  from t5x_lite.configs import finetune_tagger  # pylint: disable=g-import-not-at-top
  c = (finetune_tagger if kind == 'tags' else finetune_span).get_config('tiny')
  c.model.emb_dim, c.model.num_heads, c.model.head_dim = 32, 2, 16
  c.model.mlp_dim, c.model.num_encoder_layers = 64, 1
  c.task.feature_lengths.inputs = length
  c.train.batch_size = 8
  c.train.z_loss = 0.0
  c.eval.num_batches = 1
  c.checkpoint.async_save = False
  return c


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_token_loss_is_the_cross_entropy_over_real_tokens():
  c = _config('tags', 16)
  model = objectives.build_model(c)
  rng = np.random.default_rng(1)
  tokens = rng.integers(2, 4000, size=(3, 16)).astype(np.int32)
  tokens[0, 10:] = 0
  labels = rng.integers(0, 3, size=(3, 16)).astype(np.int32)
  batch = {'encoder_input_tokens': jnp.asarray(tokens),
           'token_labels': jnp.asarray(labels)}
  params = model.init_params(jax.random.PRNGKey(0), batch)
  assert params['token_classifier']['kernel'].shape == (32, 3)
  loss, sums = model.loss_terms(params, batch, enable_dropout=False)
  logp = _log_softmax(np.asarray(model.apply(params, batch), np.float64))
  nll = -np.take_along_axis(logp, labels[..., None], -1)[..., 0]
  np.testing.assert_allclose(float(loss), nll[tokens > 0].sum(), rtol=1e-5)
  assert float(sums['num_tokens']) == (tokens > 0).sum()


def test_span_loss_is_start_plus_end_cross_entropy_over_the_context():
  c = _config('span', 16)
  model = objectives.build_model(c)
  rng = np.random.default_rng(2)
  tokens = rng.integers(2, 4000, size=(2, 16)).astype(np.int32)
  mask = np.zeros((2, 16), np.int32)
  mask[:, 5:14] = 1
  batch = {'encoder_input_tokens': jnp.asarray(tokens),
           'encoder_context_mask': jnp.asarray(mask),
           'start_position': jnp.array([6, 9]),
           'end_position': jnp.array([7, 9])}
  params = model.init_params(jax.random.PRNGKey(0), batch)
  loss, sums = model.loss_terms(params, batch, enable_dropout=False)
  logits = np.asarray(model.apply(params, batch), np.float64)  # [b, len, 2]
  want = 0.0
  for b, (s, e) in enumerate([(6, 7), (9, 9)]):
    for k, pos in ((0, s), (1, e)):
      want -= _log_softmax(logits[b, 5:14, k])[pos - 5]
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  assert float(sums['num_tokens']) == 4 and float(sums['exact_match_den']) == 2


# ---- fine-tuning from a pretrained encoder --------------------------------------------


class _Logs(py_logging.Handler):

  def __init__(self):
    super().__init__(py_logging.INFO)
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())

  def __enter__(self):
    logger = py_logging.getLogger('absl')
    self._level = logger.level
    logger.setLevel(py_logging.INFO)
    logger.addHandler(self)
    return self

  def __exit__(self, *exc):
    logger = py_logging.getLogger('absl')
    logger.removeHandler(self)
    logger.setLevel(self._level)


def _mlm_checkpoint(path, tagger_config, **model_overrides):
  """A params-only checkpoint of an MLM encoder of the tagger's dims (seed 7)."""
  from t5x_lite.configs import pretrain_bert  # pylint: disable=g-import-not-at-top
  c = pretrain_bert.get_config('tiny')
  c.model = ml_collections.ConfigDict(tagger_config.model.to_dict())
  with c.unlocked():
    for k, v in model_overrides.items():
      c.model[k] = v
  c.task.feature_lengths.inputs = c.task.feature_lengths.targets = 32
  model = objectives.build_model(c)
  params = model.init_params(jax.random.PRNGKey(7), model.input_shapes(
      c.task.feature_lengths, 1))
  params_checkpoints.save_params_only(path, params, c.to_dict())
  return params


def _host(tree):
  return jax.tree.map(np.asarray, partitioning.unbox(tree))


@NEEDS_DATA
def test_fresh_head_from_an_mlm_checkpoint(tmp_path):
  c = _config('tags')
  mlm = _mlm_checkpoint(str(tmp_path / 'mlm'), c)
  assert 'token_classifier' not in mlm
  c.checkpoint.restore_from = str(tmp_path / 'mlm')
  with _Logs() as logs:
    run = train_setup.setup(c, str(tmp_path / 'ft'))
  run.ckpt.close()
  params = _host(run.state.params)
  # What a from-scratch run initialises (setup's init rng, trainer's init).
  model = objectives.build_model(c)
  init_rng, _ = jax.random.split(jax.random.PRNGKey(int(c.train.seed)))
  init = _host(model.init_params(init_rng, model.input_shapes(
      c.task.feature_lengths, 1)))
  assert ('Fresh params (initialised, not restored): '
          'token_classifier/kernel.') in logs.messages
  # Every param the MLM checkpoint has is its own, bit for bit ...
  for path, want in jax.tree_util.tree_flatten_with_path(mlm)[0]:
    got = params
    for key in path:
      got = got[key.key]
    np.testing.assert_array_equal(got, np.asarray(want), err_msg=str(path))
  # ... and the new head is the init a from-scratch run gets.
  for k in ('kernel',):
    np.testing.assert_array_equal(params['token_classifier'][k],
                                  init['token_classifier'][k])
  # (the restored encoder is not that init: seed 7 against the run's seed)
  assert not np.array_equal(params['token_embedder']['embedding'],
                            init['token_embedder']['embedding'])


@NEEDS_DATA
def test_a_wrong_size_encoder_still_fails_in_one_line(tmp_path):
  c = _config('span')
  _mlm_checkpoint(str(tmp_path / 'mlm'), c, mlp_dim=96)
  c.checkpoint.restore_from = str(tmp_path / 'mlm')
  with pytest.raises(params_checkpoints.CheckpointMismatchError) as e:
    train_setup.setup(c, str(tmp_path / 'ft'))
  text = str(e.value)
  assert '\n' not in text and 'do not fit this model' in text
  assert 'mlp' in text and 'span_head' not in text
  c.checkpoint.fresh_params = 'span_head,no_such_head'
  with pytest.raises(params_checkpoints.CheckpointMismatchError,
                     match=r"\['no_such_head'\] name no param"):
    train_setup.setup(c, str(tmp_path / 'ft2'))


def test_a_stored_head_of_another_size_is_skipped(tmp_path):
  c = _config('tags', 16)
  with c.unlocked():
    c.model.num_token_labels = 5
  old = objectives.build_model(c)
  shapes = old.input_shapes(c.task.feature_lengths, 1)
  stored = old.init_params(jax.random.PRNGKey(3), shapes)
  params_checkpoints.save_params_only(str(tmp_path / 'tagger5'), stored)
  c.model.num_token_labels = 3
  new = objectives.build_model(c)
  abstract = partitioning.unbox(new.abstract_params(shapes))
  with pytest.raises(params_checkpoints.CheckpointMismatchError,
                     match='token_classifier/kernel has shape'):
    params_checkpoints.restore_params(str(tmp_path / 'tagger5'), abstract)
  got = params_checkpoints.restore_params(
      str(tmp_path / 'tagger5'), abstract, fresh=('token_classifier',))
  assert 'token_classifier' not in got
  for a, b in zip(jax.tree.leaves(got),
                  jax.tree.leaves({k: v for k, v in stored.items()
                                   if k != 'token_classifier'})):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_the_tasks_bio_ids_are_the_objectives():
  from t5x_lite.tasks import speakers  # pylint: disable=g-import-not-at-top
  assert (speakers.OUTSIDE, speakers.BEGIN, speakers.INSIDE) == (O, B, I)


def test_each_head_declares_its_fresh_params():
  for name, head in (('token_classification', 'token_classifier'),
                     ('span_extraction', 'span_head')):
    assert objectives.get(name).fresh_params == (head,)
  c = _config('span')
  c.checkpoint.fresh_params = ' pooler, classifier/ '
  assert train_setup.fresh_params(c) == ('span_head', 'pooler', 'classifier')
