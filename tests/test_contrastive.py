"""SimCSE contrastive sentence embeddings (objectives/contrastive.py).

InfoNCE against a numpy hand computation; mean pooling over real tokens;
on a real shakespeare_sentences batch the two dropout views differ (and
coincide without dropout), the loss is finite and > 0 and is InfoNCE of
those views; mlm_contrastive's loss is MLM mean + weight x InfoNCE mean;
dropout 0 is a config error; the train step lowers the loss; the retrieval
evaluation's sampling and ranking on known inputs. The slow test runs
configs/pretrain_simcse.py through `python -m t5x_lite.train` (checkpoints,
an exact resume) and `python -m t5x_lite.eval`, then retrieval on the
checkpoint.
"""
import functools
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from e2e_runs import jax_cache  # pylint: disable=unused-import
from e2e_runs import NEEDS_DATA, ROOT, subprocess_env
from one_device_step import train_state_and_step

from t5x_lite import config as config_lib
from t5x_lite import losses
from t5x_lite import models
from t5x_lite import objectives
from t5x_lite import params_checkpoints
from t5x_lite.configs import pretrain_simcse
from t5x_lite.model_config import ConfigError
from t5x_lite.objectives import contrastive

_PATH = os.path.join(ROOT, 'scripts', 'retrieval_eval.py')
_spec = importlib.util.spec_from_file_location('retrieval_eval', _PATH)
retrieval_eval = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(retrieval_eval)

BATCH, LENGTH = 8, 16


def _config(arg='tiny', **model):
  c = pretrain_simcse.get_config(arg)
  c.task.feature_lengths.inputs = c.task.feature_lengths.targets = LENGTH
  c.train.batch_size = BATCH
  c.optimizer.schedule = 'constant'
  c.optimizer.warmup_steps = 0
  for k, v in model.items():
    c.model[k] = v
  return c


_BATCHES = {}


def _batch(arg):
  if arg not in _BATCHES:
    from t5x_lite import tasks  # pylint: disable=g-import-not-at-top
    _BATCHES[arg] = next(tasks.get_dataset(_config(arg), 'train',
                                           batch_size=BATCH, seed=0))
  return _BATCHES[arg]


# ---- InfoNCE and pooling -----------------------------------------------------


def test_info_nce_matches_a_hand_computation():
  q = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 2.0], [5.0, 5.0]])
  k = np.array([[2.0, 0.1], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
  w = np.array([1.0, 1.0, 1.0, 0.0])  # row 3 is padding
  tau = 0.5
  loss, hits, n = losses.info_nce(jnp.asarray(q), jnp.asarray(k), tau,
                                  jnp.asarray(w))
  # By hand: cosine of unit rows, / tau, softmax over the 3 real keys.
  qn = q / np.linalg.norm(q, axis=1, keepdims=True)
  kn = k / np.linalg.norm(k, axis=1, keepdims=True)
  want, want_hits = 0.0, 0
  for i in range(3):
    logits = np.array([qn[i] @ kn[j] for j in range(3)]) / tau
    want += -(logits[i] - np.log(np.sum(np.exp(logits))))
    want_hits += int(np.argmax(logits) == i)
  np.testing.assert_allclose(float(loss), want, rtol=1e-6)
  assert (float(hits), float(n)) == (want_hits, 3.0)
  assert want_hits == 1  # queries 1 and 2 are nearer key 2 and key 1


def test_mean_pool_averages_real_tokens_only():
  hidden = jnp.arange(2 * 3 * 2, dtype=jnp.float32).reshape(2, 3, 2)
  tokens = jnp.array([[5, 7, 0], [0, 0, 0]])
  got = np.asarray(contrastive.mean_pool(hidden, tokens))
  np.testing.assert_allclose(got[0], [(0 + 2) / 2, (1 + 3) / 2])
  np.testing.assert_allclose(got[1], [0.0, 0.0])  # all padding: zeros


# ---- the objectives on real batches ------------------------------------------


@NEEDS_DATA
def test_two_dropout_views_differ_and_the_loss_is_their_info_nce():
  c = _config()
  config_lib.validate(c, num_devices=1)
  batch = _batch('tiny')
  tokens = batch['encoder_input_tokens']
  assert tokens.shape == (BATCH, LENGTH)
  assert (tokens > 0).any(1).all()  # one text per row, none empty
  model = objectives.build_model(c)
  params = model.init_params(jax.random.PRNGKey(0), batch)
  rng = jax.random.PRNGKey(3)
  z1, z2 = jax.jit(functools.partial(contrastive.two_views, model))(
      params, tokens, rng)
  cos = np.asarray(contrastive.cosine(z1, z2))
  assert np.all(cos < 0.99), cos  # dropout makes two different views
  loss, sums = jax.jit(model.loss_terms)(params, batch, rng)
  assert np.isfinite(float(loss)) and float(loss) > 1e-3, float(loss)
  want, _, _ = losses.info_nce(z1, z2, c.objective.contrastive.temperature)
  np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)
  np.testing.assert_allclose(float(sums['view_cosine_num']), cos.sum(),
                             rtol=1e-5)
  # Without dropout the two views are the same vector.
  plain = objectives.build_model(_config(dropout_rate=0.0))
  p1, p2 = jax.jit(functools.partial(contrastive.two_views, plain))(
      params, tokens, rng)
  np.testing.assert_array_equal(np.asarray(p1), np.asarray(p2))


@NEEDS_DATA
def test_mlm_contrastive_loss_is_mlm_mean_plus_weighted_info_nce():
  c = _config('mlm')
  c.objective.mlm_contrastive.contrastive_weight = 2.0
  config_lib.validate(c, num_devices=1)
  batch = _batch('mlm')
  model = objectives.build_model(c)
  params = model.init_params(jax.random.PRNGKey(0), batch)
  loss, sums = jax.jit(model.loss_terms)(params, batch,
                                         jax.random.PRNGKey(5))
  m = {k: float(v) for k, v in
       jax.device_get(models.finalize_metrics(sums)).items()}
  np.testing.assert_allclose(float(loss) / m['num_tokens'],
                             m['mlm_loss'] + 2.0 * m['contrastive_loss'],
                             rtol=1e-5)
  assert m['num_tokens'] == float(batch['encoder_loss_weights'].sum())
  assert m['contrastive_loss'] > 0 and m['view_cosine'] < 0.99


def test_dropout_zero_and_bad_settings_are_config_errors():
  with pytest.raises(ConfigError, match='dropout_rate=0.1'):
    config_lib.validate(_config(dropout_rate=0.0), num_devices=1)
  c = _config()
  c.objective.contrastive.temperature = 0.0
  with pytest.raises(ConfigError, match='temperature must be > 0'):
    config_lib.validate(c, num_devices=1)
  c = _config('mlm')
  c.task.pack = True
  with pytest.raises(ConfigError, match='task.pack=False'):
    config_lib.validate(c, num_devices=1)


@NEEDS_DATA
@pytest.mark.parametrize('arg', ['tiny', 'mlm'])
def test_train_steps_lower_the_loss(arg):
  c = _config(arg)
  batch = _batch(arg)
  state, step = train_state_and_step(c)
  seen = []
  for i in range(6):
    state, m = step(state, batch, jax.random.PRNGKey(i))
    seen.append(float(m['loss']))
  assert np.all(np.isfinite(seen)), seen
  assert seen[-1] < seen[0], seen
  assert 0.0 < float(m['view_cosine']) < 1.0


# ---- retrieval evaluation: sampling and ranking ------------------------------


def test_retrieval_candidates_hold_the_truth_first_and_distinct_others():
  queries, cands = retrieval_eval.sample_queries(50, 20, 7, seed=1)
  assert len(set(queries.tolist())) == 20 and cands.shape == (20, 7)
  np.testing.assert_array_equal(cands[:, 0], queries)
  for row in cands:
    assert len(set(row.tolist())) == 7 and row.max() < 50
  again = retrieval_eval.sample_queries(50, 20, 7, seed=1)
  np.testing.assert_array_equal(again[1], cands)  # seeded
  with pytest.raises(ConfigError, match='num_candidates'):
    retrieval_eval.sample_queries(5, 2, 6, seed=0)


def test_retrieval_recall_and_mrr_on_known_scores():
  scores = np.array([[0.9, 0.1, 0.2],    # rank 1
                     [0.5, 0.7, 0.1],    # rank 2
                     [0.1, 0.3, 0.2],    # rank 3
                     [0.4, 0.4, 0.0]])   # tie: counts against -> rank 2
  m = retrieval_eval.rank_metrics(scores)
  np.testing.assert_array_equal(m['ranks'], [1, 2, 3, 2])
  assert m['recall_at_1'] == 0.25
  np.testing.assert_allclose(m['mrr'], (1 + 1 / 2 + 1 / 3 + 1 / 2) / 4)
  np.testing.assert_allclose(retrieval_eval.chance(3)['mrr'],
                             (1 + 1 / 2 + 1 / 3) / 3)
  pairs = [('a', 'x'), ('b', 'y'), ('c', 'x'), ('', 'z')]
  assert retrieval_eval.unambiguous_pairs(pairs) == [('b', 'y')]


# ---- end to end: the entrypoints ---------------------------------------------

_E2E = ('train.num_steps=4', 'train.batch_size=8', 'checkpoint.every_steps=2',
        'eval.every_steps=2', 'eval.num_batches=1', 'train.log_every_steps=1',
        f'task.feature_lengths.inputs={LENGTH}',
        f'task.feature_lengths.targets={LENGTH}', 'optimizer.warmup_steps=1')


def _entrypoint(module, workdir, jax_cache_dir, *extra):
  cmd = [sys.executable, '-m', module,
         '--config=configs/pretrain_simcse.py:tiny', f'--workdir={workdir}',
         *[f'--config.{o}' for o in _E2E + extra]]
  r = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(jax_cache_dir),
                     timeout=300, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr[-3000:]
  return r


@NEEDS_DATA
@pytest.mark.slow
def test_train_resume_eval_and_retrieval_through_the_entrypoints(
    tmp_path, jax_cache):
  a = str(tmp_path / 'a')
  _entrypoint('t5x_lite.train', a, jax_cache)
  assert sorted(os.listdir(os.path.join(a, 'checkpoints'))) >= ['2', '4']
  records = [json.loads(l) for l in open(os.path.join(a, 'metrics.jsonl'))]
  evals = [r for r in records if 'eval/contrastive_loss' in r]
  assert evals and all(0 < r['eval/view_cosine'] < 1 for r in evals), records
  # Resume: the same run stopped after step 2 and restarted ends bit-exact.
  b = str(tmp_path / 'b')
  shutil.copytree(a, b)
  shutil.rmtree(os.path.join(b, 'checkpoints', '4'))
  _entrypoint('t5x_lite.train', b, jax_cache)
  for x, y in zip(jax.tree.leaves(params_checkpoints.restore_params(a)),
                  jax.tree.leaves(params_checkpoints.restore_params(b)),
                  strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  _entrypoint('t5x_lite.eval', a, jax_cache)
  with open(os.path.join(a, 'eval_results.json')) as f:
    results = json.load(f)
  text = json.dumps(results)
  assert 'contrastive_loss' in text and 'inbatch_accuracy' in text, text
  # The checkpoint embeds lines for next-line retrieval.
  got = retrieval_eval.evaluate(pretrain_simcse.get_config('tiny'), a,
                                num_candidates=5, num_queries=40, seed=0,
                                max_length=LENGTH)
  assert got['num_queries'] == 40 and 'step 4' in got['encoder']
  assert 0.0 <= got['recall_at_1'] <= 1.0 and got['mrr'] >= 1 / 5
