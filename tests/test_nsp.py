"""BERT's next-sentence prediction (objectives/nsp.py, tasks/sentence_pairs.py).

On the shipped corpus (`make data`): pair statistics over 1,000 pairs (50 ±
2% IsNext, a negative's B from another play, never A's true next text; in a
one-work corpus never overlapping A or its next segment), the rows
the task builds (`[CLS] A [SEP] B [SEP]`, token types, masking that never
touches [CLS]/[SEP], truncation), the segment embeddings (off: the default
tree; on: only added), the loss against a hand computation, the config
errors, the classifier restoring an NSP checkpoint, and (slow) the train
entrypoint on configs/pretrain_bert.py:nsp then fine-tuning from it.
"""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from e2e_runs import NEEDS_DATA, ROOT, jax_cache, subprocess_env  # pylint: disable=unused-import

from t5x_lite import network
from t5x_lite import objectives
from t5x_lite import params_checkpoints
from t5x_lite import partitioning
from t5x_lite.configs import finetune_classifier
from t5x_lite.configs import pretrain_bert
from t5x_lite.model_config import ConfigError, ModelConfig
from t5x_lite.objectives import nsp

tasks = pytest.importorskip('t5x_lite.tasks')
# pylint: disable=g-import-not-at-top,wrong-import-position
from t5x_lite.tasks import dataset as dataset_lib
from t5x_lite.tasks import sentence_pairs
from t5x_lite.tasks import vocabularies
# pylint: enable=g-import-not-at-top,wrong-import-position

LENGTH = 32


def _lines(split):
  return sentence_pairs.read_lines(tasks.corpora.split_path('shakespeare',
                                                             split))


def _nsp_config(length=LENGTH, batch=4):
  c = pretrain_bert.get_config('nsp')
  c.task.feature_lengths.inputs = length
  c.task.feature_lengths.targets = length
  c.train.batch_size = batch
  c.objective.name = 'mlm_nsp'
  return c


# ---- pairs ---------------------------------------------------------------------------


@NEEDS_DATA
def test_pair_statistics_over_1000_pairs():
  lines = _lines('train')
  works = sentence_pairs.work_ids(lines)
  k = sentence_pairs.SEGMENT_LINES
  pairs = sentence_pairs.build_pairs(lines)
  assert works[-1] + 1 >= 30  # the plays are told apart
  first = pairs[:1000]
  rate = np.mean([p[2] for p in first])
  assert abs(rate - 0.5) <= 0.02, rate
  for a, b, is_next in pairs:
    if is_next:  # the segment right after A, in A's work
      assert b == a + k and works[a] == works[b + k - 1]
    else:  # another work (BERT's other document), never A's next text
      assert works[b] != works[a] and works[b] == works[b + k - 1]
      assert lines[b:b + k] != lines[a + k:a + 2 * k]
  # A is every line whose 2k lines from it lie in one work; seeded.
  assert [p[0] for p in pairs] == [
      i for i in range(len(lines) - 2 * k + 1)
      if works[i] == works[i + 2 * k - 1]]
  assert pairs == sentence_pairs.build_pairs(lines)
  assert pairs != sentence_pairs.build_pairs(lines, seed=1)


def test_one_work_negatives_overlap_neither_a_nor_its_next():
  lines = [f'Line number {i} of a corpus without bylines.' for i in range(40)]
  for k in (1, 2, 3):
    pairs = sentence_pairs.build_pairs(lines, segment_lines=k)
    assert [p[0] for p in pairs] == list(range(len(lines) - 2 * k + 1))
    assert abs(np.mean([p[2] for p in pairs]) - 0.5) <= 1 / len(pairs)
    for a, b, is_next in pairs:
      if is_next:
        assert b == a + k
      else:  # [b, b + k) misses [a, a + 2k), and B is a whole segment
        assert (b + k <= a or b >= a + 2 * k) and b + k <= len(lines)
  assert sentence_pairs.segment_text(lines, 3, 2) == ' '.join(lines[3:5])
  with pytest.raises(ValueError, match='segment_lines'):
    sentence_pairs.build_pairs(lines, segment_lines=0)
  with pytest.raises(ValueError, match='too small|at least'):
    sentence_pairs.build_pairs(lines[:6], segment_lines=3)


@NEEDS_DATA
def test_shuffled_train_pipeline_is_half_is_next():
  c = _nsp_config()
  ds = dataset_lib.get_dataset(c, 'train', batch_size=100, seed=0)
  labels = np.concatenate([next(ds)['is_next_labels'] for _ in range(10)])
  assert labels.shape == (1000,)
  assert abs(labels.mean() - 0.5) <= 0.02, labels.mean()


def test_fit_lengths_cuts_the_longer_side_first():
  fit = lambda a, b, n: tuple(int(x) for x in sentence_pairs.fit_lengths(
      a, b, n))
  assert fit(5, 7, 29) == (5, 7)  # fits: kept whole
  assert fit(100, 5, 29) == (24, 5)  # the short side is kept whole
  assert fit(5, 100, 29) == (5, 24)
  assert fit(100, 100, 29) == (14, 15)  # both long: about half each
  assert fit(20, 20, 29) == (14, 15)


@NEEDS_DATA
def test_rows_are_cls_a_sep_b_sep_with_types_and_masking():
  c = _nsp_config()
  ds = dataset_lib.get_dataset(c, 'validation', batch_size=8, shuffle=False,
                               num_epochs=1)
  batch = next(ds)
  source = sentence_pairs.SentencePairSource()
  lines, pairs = source.pairs('validation')
  vocab = tasks.get_vocabulary(c.task.name)
  cls, sep, mask = (vocabularies.cls_id(vocab), vocab.eos_id,
                    vocabularies.mask_id(vocab))
  for row in range(8):
    a, b, is_next = pairs[row]  # unshuffled: the source's order
    tgt = batch['encoder_target_tokens'][row]
    inp = batch['encoder_input_tokens'][row]
    types = batch['encoder_token_type_ids'][row]
    weights = batch['encoder_loss_weights'][row]
    assert batch['is_next_labels'][row] == is_next
    n = int((tgt > 0).sum())
    seps = np.flatnonzero(tgt == sep)
    assert tgt[0] == cls and len(seps) == 2 and seps[1] == n - 1
    # A keeps its end, B its beginning (the tokens at the boundary).
    a_ids = vocab.encode(sentence_pairs.segment_text(lines, a))
    b_ids = vocab.encode(sentence_pairs.segment_text(lines, b))
    kept_a, kept_b = tgt[1:seps[0]].tolist(), tgt[seps[0] + 1:n - 1].tolist()
    assert kept_a == a_ids[len(a_ids) - len(kept_a):]
    assert kept_b == b_ids[:len(kept_b)]
    assert len(kept_a) + len(kept_b) == min(len(a_ids) + len(b_ids),
                                            LENGTH - 3)
    np.testing.assert_array_equal(
        types, [0] * (seps[0] + 1) + [1] * (n - seps[0] - 1) + [0] *
        (LENGTH - n))
    # 15% of A's and B's tokens selected, never [CLS], [SEP] or padding;
    # the input differs from the text only where selected.
    text = n - 3
    assert weights.sum() == max(1, round(0.15 * text))
    assert not weights[[0, seps[0], n - 1]].any() and not weights[n:].any()
    assert ((inp != tgt) <= (weights > 0)).all()
  # Over the batch most selected positions are [MASK] (80%).
  sel = batch['encoder_loss_weights'] > 0
  assert (batch['encoder_input_tokens'][sel] == mask).mean() > 0.5


# ---- the network ----------------------------------------------------------------------


def _encoder(type_vocab_size):
  cfg = ModelConfig(arch='encoder_only', vocab_size=64, emb_dim=16,
                    num_heads=2, head_dim=8, mlp_dim=32, num_encoder_layers=1,
                    type_vocab_size=type_vocab_size)
  return cfg, network.build(cfg)


def test_segment_embeddings_off_keep_the_tree_and_on_only_add():
  tokens = jnp.array([[5, 6, 7, 1, 8, 9, 1, 0]], jnp.int32)
  types = jnp.array([[0, 0, 0, 0, 1, 1, 1, 0]], jnp.int32)
  _, plain = _encoder(0)
  _, pairs = _encoder(2)
  p0 = plain.init(jax.random.PRNGKey(0), tokens)['params']
  p2 = pairs.init(jax.random.PRNGKey(0), tokens)['params']
  assert set(p2) - set(p0) == {'token_type_embedder', 'nsp_head'}
  assert set(p0) <= set(p2)
  assert jax.tree.structure(p0) == jax.tree.structure(
      {k: p2[k] for k in p0})
  # Same params and a zero type table: the same logits as without types.
  shared = dict({k: p2[k] for k in p0 if k != 'token_embedder'},
                token_embedder=p2['token_embedder'])
  zeroed = jax.tree.map(jnp.zeros_like, p2['token_type_embedder'])
  with_types = pairs.apply({'params': dict(p2, token_type_embedder=zeroed)},
                           tokens, encoder_token_type_ids=types)
  without = plain.apply({'params': shared}, tokens)
  np.testing.assert_allclose(with_types, without, rtol=1e-6, atol=1e-6)
  # A real table changes the output, and no ids means all segment 0.
  a = pairs.apply({'params': p2}, tokens, encoder_token_type_ids=types)
  assert not np.allclose(a, with_types)
  np.testing.assert_allclose(
      pairs.apply({'params': p2}, tokens),
      pairs.apply({'params': p2}, tokens,
                  encoder_token_type_ids=jnp.zeros_like(types)), rtol=1e-6)
  mlm, nsp_logits = pairs.apply({'params': p2}, tokens,
                                encoder_token_type_ids=types, head='vocab_nsp')
  assert mlm.shape == (1, 8, 64) and nsp_logits.shape == (1, 2)
  with pytest.raises(ValueError, match='type_vocab_size=2'):
    plain.apply({'params': p0}, tokens, encoder_token_type_ids=types)
  with pytest.raises(ValueError, match='type_vocab_size=2'):
    plain.apply({'params': p0}, tokens, head='nsp')


def test_loss_is_mlm_mean_plus_nsp_mean_by_hand():
  cfg, module = _encoder(2)
  # Half the positions selected: more than K, so every position is scored.
  model = nsp.NspModel(module, cfg, nsp.Options(nsp_weight=0.5,
                                                max_predictions=0))
  rng = np.random.default_rng(0)
  b, n = 3, 8
  batch = {
      'encoder_input_tokens': jnp.asarray(rng.integers(3, 60, (b, n)),
                                          jnp.int32),
      'encoder_target_tokens': jnp.asarray(rng.integers(3, 60, (b, n)),
                                           jnp.int32),
      'encoder_loss_weights': jnp.asarray(rng.integers(0, 2, (b, n)),
                                          jnp.int32),
      'encoder_token_type_ids': jnp.asarray([[0] * 4 + [1] * 4] * b,
                                            jnp.int32),
      'is_next_labels': jnp.asarray([1, 0, 1], jnp.int32)}
  params = model.init_params(jax.random.PRNGKey(1), batch)
  mlm, nsp_logits = model.logits(params, batch)
  logp = jax.nn.log_softmax(mlm)
  w = np.asarray(batch['encoder_loss_weights'], np.float64)
  tgt = np.asarray(batch['encoder_target_tokens'])
  nll = -np.take_along_axis(np.asarray(logp), tgt[..., None], -1)[..., 0]
  lse = np.asarray(jax.nn.logsumexp(mlm, -1))
  mlm_mean = (nll * w).sum() / w.sum()
  z_mean = (model.z_loss * lse ** 2 * w).sum() / w.sum()
  nsp_lp = np.asarray(jax.nn.log_softmax(nsp_logits))
  labels = np.asarray(batch['is_next_labels'])
  nsp_mean = -nsp_lp[np.arange(b), labels].mean()
  loss, metrics = model.loss_fn(params, batch, enable_dropout=False)
  np.testing.assert_allclose(loss, mlm_mean + z_mean + 0.5 * nsp_mean,
                             rtol=1e-5)
  np.testing.assert_allclose(metrics['nsp_loss'], nsp_mean, rtol=1e-5)
  np.testing.assert_allclose(metrics['mlm_loss'], mlm_mean + z_mean, rtol=1e-5)
  np.testing.assert_allclose(
      metrics['nsp_accuracy'],
      (np.asarray(nsp_logits).argmax(-1) == labels).mean(), rtol=1e-6)
  np.testing.assert_allclose(metrics['is_next_rate'], 2 / 3, rtol=1e-6)


def test_gathered_positions_give_the_full_loss_and_gradients():
  """BERT's masked_lm_positions: the vocabulary logits at the first K
  selected positions only (K = max_predictions) give the same loss, metrics
  and gradients as logits at every position, when no row selects more."""
  cfg, module = _encoder(2)
  n = 32
  k = nsp.max_predictions(n)
  assert k == 6 and nsp.max_predictions(128) == 21
  assert nsp.max_predictions(n, 0) == n and nsp.max_predictions(n, 4) == 4
  rng = np.random.default_rng(0)
  weights = np.zeros((4, n), np.int32)
  for row, count in enumerate((1, 3, 5, k)):  # up to K per row
    weights[row, rng.choice(np.arange(1, n), count, replace=False)] = 1
  batch = {
      'encoder_input_tokens': jnp.asarray(rng.integers(3, 60, (4, n)),
                                          jnp.int32),
      'encoder_target_tokens': jnp.asarray(rng.integers(3, 60, (4, n)),
                                           jnp.int32),
      'encoder_loss_weights': jnp.asarray(weights),
      'encoder_token_type_ids': jnp.asarray([[0] * 16 + [1] * 16] * 4,
                                            jnp.int32),
      'is_next_labels': jnp.asarray([1, 0, 1, 0], jnp.int32)}
  gathered = nsp.NspModel(module, cfg)
  full = nsp.NspModel(module, cfg, nsp.Options(max_predictions=0))
  params = gathered.init_params(jax.random.PRNGKey(1), batch)
  grad = lambda m: jax.grad(lambda p: m.loss_fn(p, batch,
                                                enable_dropout=False)[0])
  (loss_g, met_g), (loss_f, met_f) = (
      m.loss_fn(params, batch, enable_dropout=False) for m in (gathered, full))
  np.testing.assert_allclose(loss_g, loss_f, rtol=1e-6)
  for key in ('mlm_loss', 'accuracy', 'nsp_loss', 'num_tokens'):
    np.testing.assert_allclose(met_g[key], met_f[key], rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-7),
               grad(gathered)(params), grad(full)(params))


@NEEDS_DATA
def test_pair_rows_never_select_more_than_max_predictions():
  c = _nsp_config(length=128, batch=64)
  ds = dataset_lib.get_dataset(c, 'train', batch_size=64, seed=0)
  counts = np.concatenate([next(ds)['encoder_loss_weights'].sum(1)
                           for _ in range(8)])
  assert counts.max() < nsp.max_predictions(128), counts.max()


# ---- configs and checkpoints ------------------------------------------------------------


def test_config_variant_and_errors():
  c = pretrain_bert.get_config('nsp')
  assert (c.task.name, c.model.type_vocab_size, c.task.pack) == (
      'shakespeare_mlm_nsp', 2, False)
  assert pretrain_bert.get_config('small_nsp').model.emb_dim == (
      pretrain_bert.get_config('small').model.emb_dim)
  assert pretrain_bert.get_config('tiny').model.type_vocab_size == 0
  with pytest.raises(ValueError, match='nsp or <size>_nsp'):
    pretrain_bert.get_config('huge')
  assert objectives.get('mlm_nsp').layout == 'masked_token_pairs'
  assert tasks.objective_of('shakespeare_mlm_nsp') == 'mlm_nsp'
  c.model.type_vocab_size = 0
  with pytest.raises(ConfigError, match='--config.model.type_vocab_size=2'):
    objectives.build_model(_with_objective(c))


def _with_objective(c):
  c.objective.name = 'mlm_nsp'
  return c


def test_classifier_restores_an_nsp_checkpoint(tmp_path):
  pre = _nsp_config()
  model = objectives.build_model(pre)
  shapes = model.input_shapes(dict(pre.task.feature_lengths), 2)
  params = model.init_params(jax.random.PRNGKey(0), shapes)
  path = params_checkpoints.save_params_only(
      str(tmp_path / 'nsp'), jax.tree.map(np.asarray, params))
  ft = finetune_classifier.get_config('tiny')
  ft.model.type_vocab_size = 2
  clf = objectives.build_model(ft)
  target = clf.abstract_params(clf.input_shapes(
      dict(ft.task.feature_lengths), 2))
  restored = params_checkpoints.restore_params(path, _on_one_device(target))
  jax.tree.map(np.testing.assert_array_equal, restored, params)
  ft.model.type_vocab_size = 0  # the plain classifier lacks the pair params
  clf = objectives.build_model(ft)
  target = clf.abstract_params(clf.input_shapes(
      dict(ft.task.feature_lengths), 2))
  with pytest.raises(params_checkpoints.CheckpointError,
                     match='token_type_embedder|nsp_head'):
    params_checkpoints.restore_params(path, _on_one_device(target))


def _on_one_device(boxed):
  """Abstract params as the trainer restores into: with a sharding."""
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype,
                                                     sharding=one),
                      partitioning.unbox(boxed))


# ---- the entrypoint ---------------------------------------------------------------------


def _train(workdir, config, *flags, cache):
  cmd = [sys.executable, '-m', 't5x_lite.train', f'--config={config}',
         f'--workdir={workdir}', *flags]
  out = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(cache), timeout=600,
                       capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.slow
@NEEDS_DATA
def test_pretrain_nsp_then_finetune_from_it(tmp_path, jax_cache):
  from t5x_lite import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  pre = str(tmp_path / 'pre')
  _train(pre, 'configs/pretrain_bert.py:nsp',
         '--config.task.feature_lengths.inputs=32',
         '--config.task.feature_lengths.targets=32',
         '--config.train.batch_size=8', '--config.train.num_steps=20',
         '--config.optimizer.warmup_steps=2',
         '--config.eval.every_steps=20', '--config.eval.num_batches=2',
         '--config.checkpoint.every_steps=20', cache=jax_cache)
  evals = [r for r in metrics_lib.read_metrics(pre) if 'eval/nsp_accuracy' in r]
  assert evals and evals[-1]['step'] == 20
  assert 0.0 <= evals[-1]['eval/nsp_accuracy'] <= 1.0
  assert np.isfinite(evals[-1]['eval/mlm_loss'])
  ft = str(tmp_path / 'ft')
  _train(ft, 'configs/finetune_classifier.py:tiny',
         f'--config.checkpoint.restore_from={pre}',
         '--config.model.type_vocab_size=2', '--config.train.batch_size=8',
         '--config.train.num_steps=5', '--config.optimizer.warmup_steps=1',
         '--config.eval.every_steps=5',
         '--config.eval.num_batches=2', cache=jax_cache)
  evals = [r for r in metrics_lib.read_metrics(ft) if 'eval/accuracy' in r]
  assert evals and evals[-1]['step'] == 5


@NEEDS_DATA
def test_repeated_split_draws_fresh_pairs_each_epoch():
  """BERT's dupe_factor: epoch e of a repeated split is its own draw (seed
  (PAIR_SEED, e)); one pass is epoch 0; the text is segment_text's."""
  source = sentence_pairs.SentencePairSource()
  lines, first = source.pairs('validation')
  _, second = source.pairs('validation', 1)
  assert [p[0] for p in first] == [p[0] for p in second]  # the same As
  flipped = np.mean([p[2] != q[2] for p, q in zip(first, second)])
  assert 0.4 < flipped < 0.6, flipped  # each A's label drawn afresh
  assert abs(np.mean([q[2] for q in second]) - 0.5) <= 0.01
  assert sentence_pairs.build_pairs(lines, [sentence_pairs.PAIR_SEED, 1]) == (
      second)
  n = len(first)
  ds = source.get_dataset('validation', num_epochs=None)
  got = [(x['a'].decode(), x['b'].decode(), int(x['is_next']))
         for x in ds.take(2 * n + 3).as_numpy_iterator()]
  text = lambda i: sentence_pairs.segment_text(lines, i)
  want = [(text(a), text(b), is_next) for a, b, is_next in first + second]
  assert got[:2 * n] == want
  assert [(x['a'].decode(), int(x['is_next']))
          for x in source.get_dataset('validation').as_numpy_iterator()] == [
              (text(a), is_next) for a, _, is_next in first]
